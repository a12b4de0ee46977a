package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/qbo/qbo/cmd/internal/buildinfo"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := newCommand().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "qbod:", err)
		os.Exit(1)
	}
}

func newCommand() *cobra.Command {
	var (
		configPath string
		cleanup    bool
		over       config // flag values, applied only when the flag was set
	)
	cmd := &cobra.Command{
		Use:           "qbod",
		Short:         "qbo node daemon: eBPF datapath, runtime and mirrors",
		Version:       buildinfo.Version,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(configPath)
			if err != nil {
				return err
			}
			f := cmd.Flags()
			if f.Changed("listen") {
				cfg.Listen = over.Listen
			}
			if f.Changed("socket") {
				cfg.Socket = over.Socket
			}
			if f.Changed("state-dir") {
				cfg.StateDir = over.StateDir
			}
			if f.Changed("pin-dir") {
				cfg.PinDir = over.PinDir
			}
			if f.Changed("uplink") {
				cfg.Uplinks = over.Uplinks
			}
			if f.Changed("log-level") {
				cfg.LogLevel = over.LogLevel
			}
			if err := cfg.validate(); err != nil {
				return err
			}
			log, err := newLogger(cfg.LogLevel)
			if err != nil {
				return err
			}
			if cleanup {
				return runCleanup(cfg, log)
			}
			return run(cmd.Context(), cfg, log)
		},
	}
	f := cmd.Flags()
	f.StringVar(&configPath, "config", "", "YAML config file (default "+defaultConfigPath+" when it exists)")
	f.StringVar(&over.Listen, "listen", "", "TCP listen address for the API, metrics and web page (\"\" disables)")
	f.StringVar(&over.Socket, "socket", "", "unix socket for local root clients (\"\" disables)")
	f.StringVar(&over.StateDir, "state-dir", "", "directory for the lock file, token and persisted state")
	f.StringVar(&over.PinDir, "pin-dir", "", "bpffs directory for pinned maps and links")
	f.StringSliceVar(&over.Uplinks, "uplink", nil, "uplink interface for the XDP entry point (repeatable)")
	f.StringVar(&over.LogLevel, "log-level", "", "debug, info, warn or error")
	f.BoolVar(&cleanup, "cleanup", false, "remove everything qbod pinned (detaching its programs) and exit")
	return cmd
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: %w", level, err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

// runCleanup removes the pin directory (unpinning a link detaches its
// program once no process holds it) and the unix socket. It refuses while
// a qbod holds the lock, since that qbod would keep its links alive.
func runCleanup(cfg *config, log *slog.Logger) error {
	lock, err := acquireLock(cfg.StateDir)
	if err != nil {
		return err
	}
	defer lock.release()
	var errs []error
	if err := os.RemoveAll(cfg.PinDir); err != nil {
		errs = append(errs, fmt.Errorf("removing %s: %w", cfg.PinDir, err))
	}
	if cfg.Socket != "" {
		if err := os.Remove(cfg.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	log.Info("cleaned up", "pin_dir", cfg.PinDir)
	return errors.Join(errs...)
}
