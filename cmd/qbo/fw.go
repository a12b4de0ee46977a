package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
)

func init() {
	extensions = append(extensions, func(g *globals) []subcommand {
		return []subcommand{
			{"add", addRuleCommand(g)},
			{"get", getCommand(g, "rules", "firewall rules with their packet and byte counters", printRules)},
			{"get", policiesCommand(g)},
			{"delete", deleteRuleCommand(g)},
			{"set", setPolicyCommand(g)},
			{"add", prefilterCommand(g, "add")},
			{"delete", prefilterCommand(g, "delete")},
			{"get", getCommand(g, "prefilter", "source prefixes the XDP prefilter drops on the uplinks", printPrefilter)},
		}
	})
}

type ruleRow struct {
	Name      string `json:"name"`
	Priority  int    `json:"priority"`
	Action    string `json:"action"`
	Log       bool   `json:"log"`
	Direction string `json:"direction"`
	Src       string `json:"src"`
	Dst       string `json:"dst"`
	Proto     string `json:"proto"`
	Port      string `json:"port"`
	Target    string `json:"target"`
	Packets   uint64 `json:"packets"`
	Bytes     uint64 `json:"bytes"`
}

func orAny(s string) string {
	if s == "" {
		return "any"
	}
	return s
}

func printRules(w io.Writer, list []json.RawMessage) error {
	return printTable(w, list, "NAME\tPRIO\tACTION\tDIR\tSRC\tDST\tPROTO\tPORT\tTARGET\tPACKETS\tBYTES", func(r ruleRow) string {
		act := r.Action
		if r.Log {
			act += "+log"
		}
		return fmt.Sprintf("%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d", r.Name, r.Priority, act, r.Direction,
			orAny(r.Src), orAny(r.Dst), orAny(r.Proto), orAny(r.Port), r.Target, r.Packets, r.Bytes)
	})
}

// policiesCommand is "get policies [TARGET]": the name of a policy is its
// target.
func policiesCommand(g *globals) *cobra.Command {
	cmd := getCommand(g, "policies", "firewall default policies, or those of TARGET (node, iface:IF or instance:NAME)", printPolicies)
	cmd.Use = "policies [TARGET]"
	return cmd
}

func printPolicies(w io.Writer, list []json.RawMessage) error {
	return printTable(w, list, "TARGET\tDIRECTION\tACTION", func(p struct{ Target, Direction, Action string }) string {
		return fmt.Sprintf("%s\t%s\t%s", p.Target, p.Direction, p.Action)
	})
}

func addRuleCommand(g *globals) *cobra.Command {
	var a struct {
		action, direction, src, dst, proto, port, iface, instance string
		log                                                       bool
		priority                                                  int
	}
	cmd := &cobra.Command{
		Use:   "rule NAME --action allow|deny [--log] [--direction ingress|egress] [--src CIDR] [--dst CIDR] [--proto tcp|udp|icmp] [--port N[-M]] [--priority N] [--iface IF | --instance NAME]",
		Short: "add or replace a firewall rule (first match by priority wins; lower is first)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if a.action == "" {
				return usageError{fmt.Errorf("--action is required")}
			}
			if a.iface != "" && a.instance != "" {
				return usageError{fmt.Errorf("--iface and --instance are exclusive")}
			}
			req := map[string]any{"name": args[0], "action": a.action, "log": a.log, "direction": a.direction,
				"src": a.src, "dst": a.dst, "proto": a.proto, "port": a.port, "iface": a.iface, "instance": a.instance}
			if cmd.Flags().Changed("priority") {
				req["priority"] = a.priority
			}
			var res json.RawMessage
			if err := g.do(cmd.Context(), "add rule", req, &res); err != nil {
				return err
			}
			if g.output == "json" {
				return printJSON(os.Stdout, res)
			}
			return printRules(os.Stdout, []json.RawMessage{res})
		},
	}
	f := cmd.Flags()
	f.StringVar(&a.action, "action", "", "allow or deny")
	f.BoolVar(&a.log, "log", false, "send denied packets (rate-limited) to the firewall mirror")
	f.StringVar(&a.direction, "direction", "ingress", "ingress (into the target) or egress (out of it)")
	f.StringVar(&a.src, "src", "", "source CIDR (IPv4 or IPv6)")
	f.StringVar(&a.dst, "dst", "", "destination CIDR")
	f.StringVar(&a.proto, "proto", "", "tcp, udp or icmp")
	f.StringVar(&a.port, "port", "", "destination port N or range N-M (needs --proto tcp|udp)")
	f.IntVar(&a.priority, "priority", 1000, "lower numbers are evaluated first")
	f.StringVar(&a.iface, "iface", "", "apply to this interface (default: the whole node)")
	f.StringVar(&a.instance, "instance", "", "apply to this container or instance's interfaces")
	return cmd
}

func deleteRuleCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "rule NAME",
		Short: "delete a firewall rule",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var res json.RawMessage
			if err := g.do(cmd.Context(), "delete rule", map[string]string{"name": args[0]}, &res); err != nil {
				return err
			}
			if g.output == "json" {
				return printJSON(os.Stdout, res)
			}
			fmt.Printf("rule %s deleted\n", args[0])
			return nil
		},
	}
}

func setPolicyCommand(g *globals) *cobra.Command {
	var action, direction, iface, instance string
	var reevaluate bool
	cmd := &cobra.Command{
		Use:   "policy {--action allow|deny [--direction ingress|egress] [--iface IF | --instance NAME] | --reevaluate=true|false}",
		Short: "set a firewall target's default policy (taken when no rule matches), or whether established flows are re-evaluated",
		Long: `Set a firewall target's default policy, taken when no rule matches: the
node's (the default), one interface's (--iface) or a container's or
instance's (--instance), for traffic into it (--direction ingress, the
default) or out of it (egress).

--reevaluate=true makes established connections subject to rule changes:
a connection created under an older rule set is classified again by the
current one on its next packet (with false, the default, rule changes
apply to new connections only, as with iptables and conntrack). This
setting is node-wide: one switch for every tracked flow, not per target or
direction. Given alone it changes only that setting, and --direction,
--iface and --instance are refused; given with --action it is set as well
as the target's policy.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			re := cmd.Flags().Changed("reevaluate")
			if action == "" && !re {
				return usageError{fmt.Errorf("--action or --reevaluate is required")}
			}
			if iface != "" && instance != "" {
				return usageError{fmt.Errorf("--iface and --instance are exclusive")}
			}
			// Only what was given: with --reevaluate alone, qbod refuses a
			// direction or target rather than ignore it.
			req := map[string]any{}
			for name, v := range map[string]string{"action": action, "iface": iface, "instance": instance} {
				if v != "" {
					req[name] = v
				}
			}
			if cmd.Flags().Changed("direction") {
				req["direction"] = direction
			}
			if re {
				req["reevaluate"] = reevaluate
			}
			var res json.RawMessage
			if err := g.do(cmd.Context(), "set policy", req, &res); err != nil {
				return err
			}
			if g.output == "json" {
				return printJSON(os.Stdout, res)
			}
			fmt.Println(string(res))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&action, "action", "", "allow or deny")
	f.StringVar(&direction, "direction", "ingress", "ingress or egress")
	f.StringVar(&iface, "iface", "", "the interface (default: the whole node)")
	f.StringVar(&instance, "instance", "", "the container or instance")
	f.BoolVar(&reevaluate, "reevaluate", false, "judge established connections by rule changes too (node-wide)")
	return cmd
}

func printPrefilter(w io.Writer, list []json.RawMessage) error {
	return printTable(w, list, "CIDR", func(p struct{ CIDR string }) string { return p.CIDR })
}

func prefilterCommand(g *globals, verb string) *cobra.Command {
	short := "deny source prefixes in the uplinks' XDP prefilter"
	if verb == "delete" {
		short = "remove source prefixes from the XDP prefilter"
	}
	return &cobra.Command{
		Use:   "prefilter CIDR...",
		Short: short,
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var res json.RawMessage
			if err := g.do(cmd.Context(), verb+" prefilter", map[string]any{"cidrs": args}, &res); err != nil {
				return err
			}
			if g.output == "json" {
				return printJSON(os.Stdout, res)
			}
			fmt.Println(string(res))
			return nil
		},
	}
}
