package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

func init() {
	extensions = append(extensions, func(g *globals) []subcommand {
		return []subcommand{
			{"add", addServiceCommand(g)},
			{"get", getCommand(g, "services", "load-balanced services and their backends", printServices)},
			{"delete", simpleCommand(g, "service NAME", "delete a service", "delete service", 1,
				func(a []string) any { return map[string]string{"name": a[0]} }, "service %s deleted")},
			{"add", simpleCommand(g, "backend SERVICE IP:PORT[@WEIGHT]", "add a backend to a service", "add backend", 2,
				func(a []string) any { return map[string]string{"service": a[0], "backend": a[1]} }, "backend %[2]s added to %[1]s")},
			{"delete", simpleCommand(g, "backend SERVICE IP:PORT", "delete a backend (its existing flows drain)", "delete backend", 2,
				func(a []string) any { return map[string]string{"service": a[0], "backend": a[1]} }, "backend %[2]s of %[1]s deleted (draining)")},
		}
	})
}

func addServiceCommand(g *globals) *cobra.Command {
	var (
		vip      string
		backends []string
		mode     string
		drain    bool
	)
	cmd := &cobra.Command{
		Use:   "service NAME --vip IP:PORT/PROTO --backend IP:PORT[@WEIGHT] ...",
		Short: "add a load-balanced service",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if vip == "" {
				return usageError{fmt.Errorf("--vip is required")}
			}
			req := map[string]any{"name": args[0], "vip": vip, "backends": backends, "mode": mode, "drain": drain}
			var res json.RawMessage
			if err := g.do(cmd.Context(), "add service", req, &res); err != nil {
				return err
			}
			if g.output == "json" {
				return printJSON(os.Stdout, res)
			}
			return printServices(os.Stdout, []json.RawMessage{res})
		},
	}
	f := cmd.Flags()
	f.StringVar(&vip, "vip", "", "virtual IP, port and protocol, e.g. 10.0.0.1:80/tcp or [fd00::1]:53/udp")
	f.StringArrayVar(&backends, "backend", nil, "backend IP:PORT[@WEIGHT] (repeat for more)")
	f.StringVar(&mode, "mode", "nat", "nat (local backends: DNAT + reverse NAT) or dsr (remote backends: IPIP, direct return)")
	f.BoolVar(&drain, "drain", false, "keep node sockets to a deleted backend open instead of destroying them")
	return cmd
}

// simpleCommand sends one command built from n positional arguments and
// prints msg (formatted with the arguments) or the JSON result.
func simpleCommand(g *globals, use, short, command string, n int, args func([]string) any, msg string) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  exactArgs(n),
		RunE: func(cmd *cobra.Command, a []string) error {
			var res json.RawMessage
			if err := g.do(cmd.Context(), command, args(a), &res); err != nil {
				return err
			}
			if g.output == "json" {
				return printJSON(os.Stdout, res)
			}
			fa := make([]any, len(a))
			for i := range a {
				fa[i] = a[i]
			}
			fmt.Printf(msg+"\n", fa...)
			return nil
		},
	}
}

type serviceRow struct {
	Name     string `json:"name"`
	VIP      string `json:"vip"`
	Proto    string `json:"proto"`
	Mode     string `json:"mode"`
	Backends []struct {
		Addr   string `json:"addr"`
		Weight uint32 `json:"weight"`
		State  string `json:"state"`
		Flows  int    `json:"flows"`
	} `json:"backends"`
}

func printServices(w io.Writer, list []json.RawMessage) error {
	return printTable(w, list, "NAME\tVIP\tMODE\tBACKENDS (addr@weight flows)", func(s serviceRow) string {
		var bs []string
		for _, b := range s.Backends {
			x := fmt.Sprintf("%s@%d %d", b.Addr, b.Weight, b.Flows)
			if b.State != "active" {
				x += " " + b.State
			}
			bs = append(bs, x)
		}
		return fmt.Sprintf("%s\t%s/%s\t%s\t%s", s.Name, s.VIP, s.Proto, s.Mode, strings.Join(bs, ", "))
	})
}
