package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

// Compute instances: add/get/delete instance, exec, load image, build image,
// get containers. Each is one websocket command; see cmd/qbod/runtime.go.
func init() {
	extensions = append(extensions, func(g *globals) []subcommand {
		return []subcommand{
			{verb: "add", cmd: addInstanceCommand(g)},
			{verb: "get", cmd: getCommand(g, "instances", "compute instances (NAME to show one)", printInstances)},
			{verb: "get", cmd: getCommand(g, "containers", "containers of the host dockerd", printContainers)},
			{verb: "delete", cmd: deleteInstanceCommand(g)},
			{verb: "load", cmd: loadImageCommand(g)},
			{verb: "build", cmd: buildImageCommand(g)},
			{cmd: execCommand(g)},
		}
	})
}

type instanceRow struct {
	Name       string  `json:"name"`
	Status     string  `json:"status"`
	Step       string  `json:"step"`
	Image      string  `json:"image"`
	CPUs       float64 `json:"cpus"`
	Memory     int64   `json:"memory"`
	GPUs       int     `json:"gpus"`
	Address    string  `json:"address"`
	HostVeth   string  `json:"host_veth"`
	Containers []struct {
		Name string `json:"name"`
	} `json:"containers"`
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func printInstances(w io.Writer, list []json.RawMessage) error {
	return printTable(w, list, "NAME\tSTATUS\tCPUS\tMEMORY\tGPUS\tADDRESS\tHOST VETH\tCONTAINERS\tIMAGE", func(i instanceRow) string {
		status := i.Status
		if i.Step != "" {
			status += " (" + i.Step + ")"
		}
		cpus, mem := "-", "-"
		if i.CPUs > 0 {
			cpus = strconv.FormatFloat(i.CPUs, 'f', -1, 64)
		}
		if i.Memory > 0 {
			mem = strconv.FormatInt(i.Memory>>20, 10) + "MiB"
		}
		return fmt.Sprintf("%s\t%s\t%s\t%s\t%d\t%s\t%s\t%d\t%s", i.Name, status, cpus, mem, i.GPUs,
			dash(i.Address), dash(i.HostVeth), len(i.Containers), dash(i.Image))
	})
}

type containerRow struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	Image    string `json:"image"`
	State    string `json:"state"`
	Instance string `json:"instance"`
}

func printContainers(w io.Writer, list []json.RawMessage) error {
	return printTable(w, list, "NAME\tSTATE\tINSTANCE\tIMAGE\tID", func(c containerRow) string {
		id := c.ID
		if len(id) > 12 {
			id = id[:12]
		}
		return fmt.Sprintf("%s\t%s\t%s\t%s\t%s", c.Name, c.State, dash(c.Instance), c.Image, id)
	})
}

// printResult prints a command's result as JSON, or as one table row.
func printResult(g *globals, raw json.RawMessage, table func(io.Writer, []json.RawMessage) error) error {
	if g.output == "json" {
		return printJSON(os.Stdout, raw)
	}
	return table(os.Stdout, []json.RawMessage{raw})
}

func addInstanceCommand(g *globals) *cobra.Command {
	var a struct {
		Name   string  `json:"name"`
		CPUs   float64 `json:"cpus,omitempty"`
		Memory string  `json:"memory,omitempty"`
		Image  string  `json:"image,omitempty"`
		GPUs   int     `json:"gpus,omitempty"`
	}
	cmd := &cobra.Command{
		Use:   "instance NAME",
		Short: "create a compute instance (a container with its own dockerd) and wait until it is ready",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			a.Name = args[0]
			var raw json.RawMessage
			if err := g.do(cmd.Context(), "add instance", a, &raw); err != nil {
				return err
			}
			return printResult(g, raw, printInstances)
		},
	}
	f := cmd.Flags()
	f.Float64Var(&a.CPUs, "cpus", 0, "CPU limit, a fraction of host CPUs (0: none)")
	f.StringVar(&a.Memory, "memory", "", "memory limit, e.g. 512m or 2g (at least 64m)")
	f.StringVar(&a.Image, "image", "", "image to run (default: the instance image built from this host's binaries; never pulled)")
	f.IntVar(&a.GPUs, "gpus", 0, "GPUs to request from the host dockerd's GPU driver (-1: all)")
	return cmd
}

func deleteInstanceCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "instance NAME",
		Short: "delete an instance and everything it owns",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var raw json.RawMessage
			if err := g.do(cmd.Context(), "delete instance", map[string]string{"name": args[0]}, &raw); err != nil {
				return err
			}
			if g.output == "json" {
				return printJSON(os.Stdout, raw)
			}
			fmt.Printf("deleted instance %s\n", args[0])
			return nil
		},
	}
}

func execCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "exec NAME -- CMD [ARG...]",
		Short: "run a command in an instance; prints its output and exits with its exit code",
		Long: "Runs CMD in the instance (where its dockerd runs; use 'docker' there for nested\n" +
			"containers). Output is collected and printed when the command ends; there is no stdin\n" +
			"or terminal. -o json prints {exit_code, stdout, stderr} and exits 0.",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 || cmd.ArgsLenAtDash() != 1 {
				return usageError{fmt.Errorf("usage: %s NAME -- CMD [ARG...]", cmd.CommandPath())}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			var res struct {
				ExitCode int    `json:"exit_code"`
				Stdout   string `json:"stdout"`
				Stderr   string `json:"stderr"`
			}
			var raw json.RawMessage
			if err := g.do(cmd.Context(), "exec", map[string]any{"name": args[0], "argv": args[1:]}, &raw); err != nil {
				return err
			}
			if g.output == "json" {
				return printJSON(os.Stdout, raw)
			}
			if err := json.Unmarshal(raw, &res); err != nil {
				return fmt.Errorf("decoding exec result: %w", err)
			}
			os.Stdout.WriteString(res.Stdout)
			os.Stderr.WriteString(res.Stderr)
			if res.ExitCode != 0 {
				os.Exit(res.ExitCode) // the command's own status, as docker exec does
			}
			return nil
		},
	}
}

func loadImageCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "image NAME FILE",
		Short: "load an image tar (docker save format) from this node into an instance",
		Args:  exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			// qbod reads the file: the path must be valid on the node.
			path, err := filepath.Abs(args[1])
			if err != nil {
				return err
			}
			var res struct {
				Loaded []string `json:"loaded"`
			}
			var raw json.RawMessage
			if err := g.do(cmd.Context(), "load image", map[string]string{"name": args[0], "path": path}, &raw); err != nil {
				return err
			}
			if g.output == "json" {
				return printJSON(os.Stdout, raw)
			}
			json.Unmarshal(raw, &res)
			fmt.Printf("loaded into %s: %s\n", args[0], strings.Join(res.Loaded, ", "))
			return nil
		},
	}
}

func buildImageCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "image instance",
		Short: "build the instance image offline from this host's dockerd, containerd, runc and busybox (cached by content)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var raw json.RawMessage
			if err := g.do(cmd.Context(), "build image", map[string]string{"name": args[0]}, &raw); err != nil {
				return err
			}
			if g.output == "json" {
				return printJSON(os.Stdout, raw)
			}
			var res struct {
				Ref    string `json:"ref"`
				Cached bool   `json:"cached"`
			}
			json.Unmarshal(raw, &res)
			how := "built"
			if res.Cached {
				how = "cached"
			}
			fmt.Printf("%s (%s)\n", res.Ref, how)
			return nil
		},
	}
}
