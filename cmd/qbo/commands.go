package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/qbo/qbo/cmd/internal/buildinfo"
	"github.com/qbo/qbo/mirror"
)

func versionCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "print the client and server versions",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var server json.RawMessage
			err := g.do(cmd.Context(), "version", nil, &server)
			if g.output == "json" {
				out := map[string]any{"client": map[string]string{"version": buildinfo.Version}}
				if err == nil {
					out["server"] = server
				}
				if perr := printJSON(os.Stdout, out); perr != nil {
					return perr
				}
				return err
			}
			fmt.Printf("client: %s\n", buildinfo.Version)
			if err != nil {
				return fmt.Errorf("server: %w", err)
			}
			var v struct{ Version, Go, Kernel string }
			json.Unmarshal(server, &v)
			fmt.Printf("server: %s (%s, kernel %s)\n", v.Version, v.Go, v.Kernel)
			return nil
		},
	}
}

func statusCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "show qbod's state: telemetry counters and mirrors",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var raw json.RawMessage
			if err := g.do(cmd.Context(), "status", nil, &raw); err != nil {
				return err
			}
			if g.output == "json" {
				return printJSON(os.Stdout, raw)
			}
			var st struct {
				Version string `json:"version"`
				PID     int    `json:"pid"`
				Uptime  string `json:"uptime"`
				PinDir  string `json:"pin_dir"`
				Trace   struct {
					Enabled      bool   `json:"enabled"`
					Error        string `json:"error"`
					Received     uint64 `json:"received"`
					QueueDropped uint64 `json:"queue_dropped"`
					RingLost     uint64 `json:"ring_lost"`
				} `json:"trace"`
				Mirrors []mirror.MirrorInfo `json:"mirrors"`
			}
			if err := json.Unmarshal(raw, &st); err != nil {
				return fmt.Errorf("decoding status: %w", err)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintf(w, "version:\t%s\n", st.Version)
			fmt.Fprintf(w, "pid:\t%d\n", st.PID)
			fmt.Fprintf(w, "uptime:\t%s\n", st.Uptime)
			fmt.Fprintf(w, "pin dir:\t%s\n", st.PinDir)
			trace := "disabled"
			if st.Trace.Enabled {
				trace = fmt.Sprintf("on: %d events, %d lost in ring, %d lost in queue",
					st.Trace.Received, st.Trace.RingLost, st.Trace.QueueDropped)
			}
			if st.Trace.Error != "" {
				trace += " (" + st.Trace.Error + ")"
			}
			fmt.Fprintf(w, "telemetry:\t%s\n", trace)
			for _, m := range st.Mirrors {
				fmt.Fprintf(w, "mirror %s:\t%d objects, seq %d, %d subscribers\n", m.Name, m.Objects, m.Seq, m.Subscribers)
			}
			return w.Flush()
		},
	}
}

// getCommand builds "get KIND [NAME]", which sends the command "get KIND"
// with {"name": NAME}.
func getCommand(g *globals, kind, short string, table func(io.Writer, []json.RawMessage) error) *cobra.Command {
	return &cobra.Command{
		Use:   kind + " [NAME]",
		Short: short,
		Args:  maxArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var req any
			if len(args) == 1 {
				req = map[string]string{"name": args[0]}
			}
			var list []json.RawMessage
			if err := g.do(cmd.Context(), "get "+kind, req, &list); err != nil {
				return err
			}
			if g.output == "json" {
				if list == nil {
					list = []json.RawMessage{}
				}
				return printJSON(os.Stdout, list)
			}
			return table(os.Stdout, list)
		},
	}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printTable decodes each object into T and prints one row per object.
func printTable[T any](w io.Writer, list []json.RawMessage, header string, row func(T) string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, raw := range list {
		var v T
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Errorf("decoding %s: %w", raw, err)
		}
		fmt.Fprintln(tw, row(v))
	}
	return tw.Flush()
}

func printMirrors(w io.Writer, list []json.RawMessage) error {
	return printTable(w, list, "NAME\tKIND\tOBJECTS\tSUBSCRIBERS\tSEQ\tDESCRIPTION", func(m mirror.MirrorInfo) string {
		return fmt.Sprintf("%s\t%s\t%d\t%d\t%d\t%s", m.Name, m.Kind, m.Objects, m.Subscribers, m.Seq, m.Description)
	})
}

type processRow struct {
	PID     uint32 `json:"pid"`
	PPID    uint32 `json:"ppid"`
	Comm    string `json:"comm"`
	Exe     string `json:"exe"`
	UID     uint32 `json:"uid"`
	Threads int    `json:"threads"`
}

func printProcesses(w io.Writer, list []json.RawMessage) error {
	return printTable(w, list, "PID\tPPID\tUID\tTHREADS\tCOMM\tEXE", func(p processRow) string {
		return fmt.Sprintf("%d\t%d\t%d\t%d\t%s\t%s", p.PID, p.PPID, p.UID, p.Threads, p.Comm, p.Exe)
	})
}

type connectionRow struct {
	Src, Dst, State, Comm string
	PID                   uint32
}

func printConnections(w io.Writer, list []json.RawMessage) error {
	return printTable(w, list, "SOURCE\tDESTINATION\tSTATE\tPID\tCOMM", func(c connectionRow) string {
		return fmt.Sprintf("%s\t%s\t%s\t%d\t%s", c.Src, c.Dst, c.State, c.PID, c.Comm)
	})
}

func watchCommand(g *globals) *cobra.Command {
	var since string
	cmd := &cobra.Command{
		Use:   "watch MIRROR",
		Short: "print a mirror's snapshot, then every change as it happens",
		Long: "Prints the mirror's objects, then one line per delta until interrupted.\n" +
			"Table output: snapshot rows are \"= KEY OBJECT\", deltas are \"SEQ OP CAUSE KEY OBJECT\";\n" +
			"-o json prints every protocol message as one JSON line. Progress and the resume\n" +
			"token go to stderr; --since TOKEN resumes where an earlier watch stopped.",
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := g.dial(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			sub, err := c.Watch(ctx, args[0], since)
			if err != nil {
				return err
			}
			var last mirror.Token
			defer func() {
				if last.Epoch != "" {
					fmt.Fprintf(os.Stderr, "# resume with --since %s\n", last)
				}
			}()
			enc := json.NewEncoder(os.Stdout)
			for {
				m, err := sub.Next(ctx)
				if err != nil {
					if ctx.Err() != nil {
						return nil // interrupted: a normal end of a watch
					}
					return err
				}
				if m.Epoch != "" {
					last = mirror.Token{Epoch: m.Epoch, Seq: m.Seq}
				}
				if g.output == "json" {
					if err := enc.Encode(m); err != nil {
						return err
					}
					continue
				}
				printWatchLine(m)
			}
		},
	}
	cmd.Flags().StringVar(&since, "since", "", "resume token EPOCH:SEQ from an earlier watch")
	return cmd
}

func printWatchLine(m mirror.Message) {
	orDash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	switch m.Type {
	case mirror.TypeSnapshot:
		for _, o := range m.Objects {
			fmt.Printf("= %s %s\n", o.Key, o.Object)
		}
	case mirror.TypeSnapshotEnd:
		how := "snapshot"
		if m.Recovered != nil && *m.Recovered {
			how = "resumed"
		}
		n := 0
		if m.Count != nil {
			n = *m.Count
		}
		fmt.Fprintf(os.Stderr, "# %s of %s: %d objects at %s:%d\n", how, m.Mirror, n, m.Epoch, m.Seq)
	case mirror.TypeDelta:
		obj := string(m.Object)
		fmt.Printf("%d %s %s %s %s\n", m.Seq, m.Op, orDash(m.Cause), orDash(m.Key), orDash(strings.TrimSpace(obj)))
	case mirror.TypeLagged:
		fmt.Fprintf(os.Stderr, "# %s: this client fell behind; resume with --since %s\n", m.Mirror, m.Resume)
	}
}
