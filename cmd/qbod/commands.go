package main

import (
	"context"
	"encoding/json"
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/qbo/qbo/cmd/internal/buildinfo"
	"github.com/qbo/qbo/mirror"
)

type versionInfo struct {
	Version string `json:"version"`
	Go      string `json:"go"`
	Kernel  string `json:"kernel"`
}

type statusInfo struct {
	Version  string              `json:"version"`
	PID      int                 `json:"pid"`
	Started  time.Time           `json:"started"`
	Uptime   string              `json:"uptime"`
	PinDir   string              `json:"pin_dir"`
	StateDir string              `json:"state_dir"`
	Trace    traceStatus         `json:"trace"`
	Systems  map[string]any      `json:"systems,omitempty"`
	Commands []string            `json:"commands"`
	Mirrors  []mirror.MirrorInfo `json:"mirrors"`
}

// getArgs names one object of a mirror; empty means all.
type getArgs struct {
	Name string `json:"name,omitempty"`
}

// required is the error of a command whose argument field is absent or
// empty: "bad_request", not the "not_found" a lookup of "" would give.
func required(req *mirror.Request, field, value string) error {
	if value == "" {
		return mirror.Errorf(mirror.CodeBadRequest, "%s: %s is required", req.Command, field)
	}
	return nil
}

// decodeName decodes the arguments of a command on one named object
// (delete rule NAME, ...), whose name is required.
func decodeName(req *mirror.Request) (string, error) {
	var a getArgs
	if err := req.Decode(&a); err != nil {
		return "", err
	}
	return a.Name, required(req, "name", a.Name)
}

func (d *daemon) registerCommands() {
	d.hub.Handle("version", func(context.Context, *mirror.Request) (any, error) {
		var u unix.Utsname
		unix.Uname(&u)
		return versionInfo{Version: buildinfo.Version, Go: runtime.Version(), Kernel: unix.ByteSliceToString(u.Release[:])}, nil
	})
	d.hub.Handle("status", func(context.Context, *mirror.Request) (any, error) {
		return statusInfo{
			Version: buildinfo.Version, PID: os.Getpid(), Started: d.started,
			Uptime: time.Since(d.started).Round(time.Second).String(), PinDir: d.cfg.PinDir,
			StateDir: d.cfg.StateDir, Trace: d.traceStatus(), Mirrors: d.hub.Mirrors(),
			Systems: d.systemsStatus(), Commands: d.hub.Commands(),
		}, nil
	})
	d.hub.Handle("get processes", getFrom(d.procM, "process"))
	d.hub.Handle("get connections", getFrom(d.connM, "connection"))
}

// getFrom answers "get KIND [NAME]" from a state mirror: all objects, or the
// one whose key is NAME.
func getFrom(s *mirror.State, kind string) mirror.HandlerFunc {
	return func(_ context.Context, req *mirror.Request) (any, error) {
		var args getArgs
		if err := req.Decode(&args); err != nil {
			return nil, err
		}
		if args.Name != "" {
			obj, ok := s.Get(args.Name)
			if !ok {
				return nil, mirror.Errorf(mirror.CodeNotFound, "%s %q not found", kind, args.Name)
			}
			return []json.RawMessage{obj}, nil
		}
		list := s.List()
		out := make([]json.RawMessage, len(list))
		for i, o := range list {
			out[i] = o.Object
		}
		return out, nil
	}
}

// systemsStatus gathers each subsystem's status, or why it is not running.
func (d *daemon) systemsStatus() map[string]any {
	out := map[string]any{}
	for _, s := range subsystems {
		switch {
		case d.subsysErr[s.name] != "":
			out[s.name] = map[string]string{"error": d.subsysErr[s.name]}
		case s.status != nil:
			out[s.name] = s.status()
		}
	}
	return out
}
