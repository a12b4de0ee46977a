package main

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/qbo/qbo/bpf/trace"
	"github.com/qbo/qbo/mirror"
)

// daemon is everything one qbod process runs.
type daemon struct {
	cfg     *config
	log     *slog.Logger
	started time.Time
	hub     *mirror.Hub
	procM   *mirror.State
	connM   *mirror.State
	events  *mirror.Stream
	tokens  []tokenConfig

	tracer   *trace.Tracer // nil when telemetry is disabled or failed to load
	reader   *trace.Reader
	traceErr error

	subsysErr map[string]string // subsystem name -> why it failed to start
}

func run(ctx context.Context, cfg *config, log *slog.Logger) error {
	lock, err := acquireLock(cfg.StateDir)
	if err != nil {
		return err
	}
	defer lock.release()
	if err := ensureBPFFS(cfg.PinDir); err != nil {
		return err
	}
	tokens, err := loadTokens(cfg)
	if err != nil {
		return err
	}

	hub := mirror.NewHub()
	d := &daemon{
		cfg:     cfg,
		log:     log,
		started: time.Now(),
		hub:     hub,
		procM:   hub.NewState("processes", "running processes of the node: snapshot from /proc, then exec, fork, clone and exit from the kernel"),
		connM:   hub.NewState("connections", "TCP connections of the node: state changes from the kernel"),
		events:  hub.NewStream("events", "kernel events: packet drops with their reason, event loss", 256),
		tokens:  tokens,
	}
	d.registerCommands()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()

	if cfg.Trace.Enabled {
		if err := d.loadTelemetry(); err != nil {
			// qbod keeps serving without telemetry; status reports why.
			d.traceErr = err
			log.Error("kernel telemetry unavailable", "err", err)
		}
	}
	defer d.closeTelemetry()
	d.subsysErr = map[string]string{}
	for _, s := range subsystems {
		if err := s.start(ctx, d, &wg); err != nil {
			d.subsysErr[s.name] = err.Error()
			log.Error("subsystem unavailable", "subsystem", s.name, "err", err)
		}
		if s.stop != nil {
			defer s.stop()
		}
	}
	if d.tracer != nil {
		if err := d.runTelemetry(ctx, &wg); err != nil {
			d.traceErr = err
			log.Error("kernel telemetry unavailable", "err", err)
		}
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(newCollector(d), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	var servers []*http.Server
	var wsServers []*mirror.Server
	serve := func(l net.Listener, auth func(*http.Request) (mirror.Principal, error)) {
		ws := mirror.NewServer(hub, log, mirror.ServerOptions{
			Auth:           auth,
			OriginPatterns: cfg.Mirror.Origins,
			SendBudget:     cfg.Mirror.SendBudget,
		})
		srv := &http.Server{Handler: d.mux(ws, reg), ReadHeaderTimeout: 10 * time.Second,
			ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
		servers, wsServers = append(servers, srv), append(wsServers, ws)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("http server stopped", "addr", l.Addr(), "err", err)
				cancel()
			}
		}()
	}
	if cfg.Socket != "" {
		l, err := listenUnix(cfg.Socket)
		if err != nil {
			return err
		}
		serve(l, func(*http.Request) (mirror.Principal, error) {
			return mirror.Principal{Name: "root", Scopes: []string{"*"}}, nil
		})
		log.Info("serving unix socket (root only, no token)", "socket", cfg.Socket)
	}
	if cfg.Listen != "" {
		l, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			return fmt.Errorf("listening on %s: %w", cfg.Listen, err)
		}
		serve(l, d.authToken)
		addr := l.Addr().String()
		log.Info("serving websocket", "url", "ws://"+addr+"/ws", "token_file", filepath.Join(cfg.StateDir, "token"))
		log.Info("serving web page", "url", "http://"+addr+"/?token="+tokens[0].Token)
	}
	log.Info("qbod ready", "pid", os.Getpid(), "pin_dir", cfg.PinDir)

	<-ctx.Done()
	log.Info("shutting down")
	shutdownCtx, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	for _, ws := range wsServers {
		ws.Close()
	}
	for _, srv := range servers {
		srv.Shutdown(shutdownCtx)
	}
	return nil
}

func (d *daemon) mux(ws http.Handler, reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/ws", ws)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/asyncapi.yaml", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		w.Write(mirror.AsyncAPI)
	})
	mux.Handle("/", mirror.WebHandler())
	return mux
}

// listenUnix replaces a stale socket (the lock proves no other qbod owns
// it) and restricts it to root.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating socket dir: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale socket: %w", err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("restricting %s: %w", path, err)
	}
	return l, nil
}

// loadTokens returns the configured tokens or, when there are none, one
// admin token kept in state_dir/token so that it survives restarts.
func loadTokens(cfg *config) ([]tokenConfig, error) {
	if len(cfg.Tokens) > 0 {
		return cfg.Tokens, nil
	}
	path := filepath.Join(cfg.StateDir, "token")
	data, err := os.ReadFile(path)
	tok := strings.TrimSpace(string(data))
	if err != nil || len(tok) < 16 {
		buf := make([]byte, 24)
		rand.Read(buf)
		tok = hex.EncodeToString(buf)
		if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
			return nil, fmt.Errorf("writing token: %w", err)
		}
	}
	return []tokenConfig{{Name: "admin", Token: tok, Scopes: []string{"*"}}}, nil
}

var errBadToken = errors.New("missing or unknown token")

// authToken accepts the token as a bearer header (CLI, programs) or as the
// token query parameter (the web page, which cannot set headers on a
// websocket).
func (d *daemon) authToken(r *http.Request) (mirror.Principal, error) {
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if tok == "" {
		tok = r.URL.Query().Get("token")
	}
	for _, t := range d.tokens {
		if tok != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(t.Token)) == 1 {
			return mirror.Principal{Name: t.Name, Scopes: t.Scopes}, nil
		}
	}
	return mirror.Principal{}, errBadToken
}
