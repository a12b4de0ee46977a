package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/qbo/qbo/mirror"
)

// Exit codes, as documented in the README.
const (
	exitOK           = 0
	exitError        = 1
	exitUsage        = 2
	exitUnauthorized = 4
	exitNotFound     = 5
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	err := newRoot().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "qbo:", err)
	}
	os.Exit(exitCode(err))
}

// usageError marks a mistake on the command line (exit code 2).
type usageError struct{ error }

func exitCode(err error) int {
	var ue usageError
	var me *mirror.Error
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue), strings.HasPrefix(err.Error(), "unknown command"):
		return exitUsage
	case errors.As(err, &me):
		switch me.Code {
		case mirror.CodeUnauthorized:
			return exitUnauthorized
		case mirror.CodeNotFound:
			return exitNotFound
		case mirror.CodeBadRequest:
			return exitUsage
		}
	}
	return exitError
}

// globals are the flags every command shares.
type globals struct {
	socket string
	server string
	token  string
	output string
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "qbo",
		Short:         "qbo talks to qbod over its websocket API",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if g.output != "table" && g.output != "json" {
				return usageError{fmt.Errorf("--output must be table or json, not %q", g.output)}
			}
			return nil
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.socket, "socket", "/run/qbo/qbod.sock", "qbod unix socket (root only)")
	pf.StringVar(&g.server, "server", "", "qbod TCP address HOST:PORT or ws:// URL instead of the socket")
	pf.StringVar(&g.token, "token", "", "token for --server (default $QBO_TOKEN, else /var/lib/qbo/token)")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })

	get := &cobra.Command{Use: "get", Short: "list objects", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return noArgs(cmd, nil) }}
	get.AddCommand(
		getCommand(g, "mirrors", "mirrors and their sequence numbers", printMirrors),
		getCommand(g, "processes", "processes of the node (PID to show one)", printProcesses),
		getCommand(g, "connections", "TCP connections of the node", printConnections),
	)
	root.AddCommand(versionCommand(g), statusCommand(g), get, watchCommand(g))
	// Verbs with a noun (add service, delete rule, ...) group under their verb.
	verbs := map[string]*cobra.Command{"get": get}
	for _, ext := range extensions {
		for _, c := range ext(g) {
			if c.verb == "" {
				root.AddCommand(c.cmd)
				continue
			}
			parent := verbs[c.verb]
			if parent == nil {
				parent = &cobra.Command{Use: c.verb, Short: c.verb + " objects", Args: noArgs,
					RunE: func(cmd *cobra.Command, _ []string) error { return noArgs(cmd, nil) }}
				verbs[c.verb] = parent
				root.AddCommand(parent)
			}
			parent.AddCommand(c.cmd)
		}
	}
	return root
}

// subcommand is a command contributed by a subsystem's file: cmd goes under
// verb ("get", "add", "delete", ...) or at the top when verb is empty.
type subcommand struct {
	verb string
	cmd  *cobra.Command
}

// extensions are registered from init by the files of each subsystem
// (services, rules, instances, ...), so those files stay independent.
var extensions []func(*globals) []subcommand

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 && cmd.HasSubCommands() {
		return usageError{fmt.Errorf("unknown command %q for %q; see %s --help", args[0], cmd.CommandPath(), cmd.CommandPath())}
	}
	if len(args) > 0 {
		return usageError{fmt.Errorf("%s takes no argument %q; see %s --help", cmd.CommandPath(), args[0], cmd.CommandPath())}
	}
	if cmd.HasSubCommands() {
		return usageError{fmt.Errorf("%s needs a subcommand; see %s --help", cmd.CommandPath(), cmd.CommandPath())}
	}
	return nil
}

func maxArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) > n {
			return usageError{fmt.Errorf("%s takes at most %d argument(s)", cmd.CommandPath(), n)}
		}
		return nil
	}
}

func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError{fmt.Errorf("%s takes %d argument(s)", cmd.CommandPath(), n)}
		}
		return nil
	}
}

// dial connects to qbod as the global flags say.
func (g *globals) dial(ctx context.Context) (*mirror.Client, error) {
	opts := mirror.DialOptions{Socket: g.socket}
	if g.server != "" {
		url := g.server
		if !strings.Contains(url, "://") {
			url = "ws://" + url + "/ws"
		}
		tok := g.token
		if tok == "" {
			tok = os.Getenv("QBO_TOKEN")
		}
		if tok == "" {
			if b, err := os.ReadFile("/var/lib/qbo/token"); err == nil {
				tok = strings.TrimSpace(string(b))
			}
		}
		opts = mirror.DialOptions{URL: url, Token: tok}
	}
	return mirror.Dial(ctx, opts)
}

// do runs one command and decodes its result.
func (g *globals) do(ctx context.Context, command string, args, result any) error {
	c, err := g.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Do(ctx, command, args, result)
}
