package instance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	"golang.org/x/sys/unix"

	"github.com/qbo/qbo/runtime/engine"
)

// waitReady waits for the signal that the inner dockerd is up: its socket
// appearing in the host-side directory (inotify) and answering /_ping. It
// fails early when the container exits, and at the deadline.
func (m *Manager) waitReady(ctx context.Context, name, id string) error {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.ReadyTimeout)
	defer cancel()
	sock := m.Socket(name)
	changed, stop, err := watchDir(filepath.Dir(sock))
	if err != nil {
		return err
	}
	defer stop()
	wait := m.docker.ContainerWait(ctx, id, client.ContainerWaitOptions{Condition: container.WaitConditionNotRunning})
	// A ping that fails although the socket exists (dockerd listening but
	// not serving yet) is retried on the next change or this backstop.
	backstop := time.NewTicker(250 * time.Millisecond)
	defer backstop.Stop()
	for {
		if _, err := os.Stat(sock); err == nil {
			pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
			err := engine.PingSocket(pctx, sock)
			pcancel()
			if err == nil {
				return nil
			}
		}
		select {
		case <-changed:
		case <-backstop.C:
		case r := <-wait.Result:
			return fmt.Errorf("instance exited with status %d before its dockerd answered: %s", r.StatusCode, m.logTail(id))
		case err := <-wait.Error:
			if ctx.Err() == nil {
				return fmt.Errorf("waiting on the instance container: %w", err)
			}
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("inner dockerd did not answer on %s within %s: %s", sock, m.cfg.ReadyTimeout, m.logTail(id))
			}
			return ctx.Err()
		}
	}
}

// watchDir reports (coalesced) each file created in dir.
func watchDir(dir string) (<-chan struct{}, func(), error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, nil, fmt.Errorf("inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_MOVED_TO|unix.IN_ATTRIB); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("watching %s: %w", dir, err)
	}
	f := os.NewFile(uintptr(fd), "inotify") // non-blocking: Read parks in the poller
	ch := make(chan struct{}, 1)
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, err := f.Read(buf); err != nil {
				return
			}
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}()
	return ch, func() { f.Close() }, nil
}

// logTail is the end of a container's output, for error messages.
func (m *Manager) logTail(id string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := m.docker.ContainerLogs(ctx, id, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true, Tail: "15"})
	if err != nil {
		return "(no logs: " + err.Error() + ")"
	}
	defer r.Close()
	var out bytes.Buffer
	stdcopy.StdCopy(&out, &out, io.LimitReader(r, 64<<10))
	return "last log lines:\n" + strings.TrimSpace(out.String())
}

// ExecResult is the outcome of a command run in an instance.
type ExecResult struct {
	ExitCode int    `json:"exit_code"`
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
}

// maxOutput bounds what Exec keeps of each stream.
const maxOutput = 16 << 20

// Exec runs argv in the instance (not in a nested container) and collects
// its output and exit code.
func (m *Manager) Exec(ctx context.Context, name string, argv []string) (ExecResult, error) {
	if len(argv) == 0 {
		return ExecResult{}, fmt.Errorf("exec: %w: no command", engine.ErrInvalid)
	}
	objs, err := m.objects(ctx, name)
	if err != nil {
		return ExecResult{}, err
	}
	if objs.container == nil {
		return ExecResult{}, fmt.Errorf("instance %s: %w", name, engine.ErrNotFound)
	}
	ex, err := m.docker.ExecCreate(ctx, objs.container.ID, client.ExecCreateOptions{AttachStdout: true, AttachStderr: true, Cmd: argv})
	if err != nil {
		return ExecResult{}, fmt.Errorf("exec in %s: %w", name, err)
	}
	att, err := m.docker.ExecAttach(ctx, ex.ID, client.ExecAttachOptions{})
	if err != nil {
		return ExecResult{}, fmt.Errorf("exec in %s: %w", name, err)
	}
	defer att.Close()
	var stdout, stderr limitedBuffer
	stdout.max, stderr.max = maxOutput, maxOutput
	if _, err := stdcopy.StdCopy(&stdout, &stderr, att.Reader); err != nil {
		return ExecResult{}, fmt.Errorf("exec in %s: reading output: %w", name, err)
	}
	in, err := m.docker.ExecInspect(ctx, ex.ID, client.ExecInspectOptions{})
	if err != nil {
		return ExecResult{}, fmt.Errorf("exec in %s: %w", name, err)
	}
	return ExecResult{ExitCode: in.ExitCode, Stdout: stdout.String(), Stderr: stderr.String()}, nil
}

type limitedBuffer struct {
	bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); room < len(p) {
		if room > 0 {
			b.Buffer.Write(p[:room])
		}
		return len(p), nil
	}
	return b.Buffer.Write(p)
}

// LoadImage loads an image tar (as made by docker save) from a file on the
// node into the instance's dockerd and returns what it loaded.
func (m *Manager) LoadImage(ctx context.Context, name, path string) ([]string, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("image file %q: %w: give an absolute path on the node", path, engine.ErrInvalid)
	}
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("image file %s: %w", path, engine.ErrNotFound)
		}
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	defer f.Close()
	objs, err := m.objects(ctx, name)
	if err != nil {
		return nil, err
	}
	if objs.container == nil {
		return nil, fmt.Errorf("instance %s: %w", name, engine.ErrNotFound)
	}
	c, err := m.Inner(ctx, name)
	if err != nil {
		return nil, err
	}
	body, err := c.ImageLoad(ctx, f, client.ImageLoadWithQuiet(true))
	if err != nil {
		return nil, fmt.Errorf("loading %s into %s: %w", path, name, err)
	}
	defer body.Close()
	lines, err := engine.DrainMessages(body)
	if err != nil {
		return nil, fmt.Errorf("loading %s into %s: %w", path, name, err)
	}
	var loaded []string
	for _, l := range lines {
		for _, p := range []string{"Loaded image: ", "Loaded image ID: "} {
			if s, ok := strings.CutPrefix(l, p); ok {
				loaded = append(loaded, s)
			}
		}
	}
	return loaded, nil
}

// Recovery says what Recover did with each instance it found.
type Recovery struct {
	Completed []string `json:"completed,omitempty"`
	Removed   []string `json:"removed,omitempty"`
}

// Recover makes the labelled objects consistent after a crash: an instance
// whose container exists is completed (started if it never was, then waited
// for), and removed if that fails; volumes and socket directories without a
// container are removed, and so is the shared network when no instance is
// left. A stopped instance that once ran is left alone.
func (m *Manager) Recover(ctx context.Context) (Recovery, error) {
	m.lifecycle.Lock()
	defer m.lifecycle.Unlock()
	var rec Recovery
	names := map[string]bool{}
	cl, err := m.docker.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: m.managed()})
	if err != nil {
		return rec, fmt.Errorf("listing containers: %w", err)
	}
	for _, c := range cl.Items {
		if n := c.Labels[engine.LabelInstance]; n != "" {
			names[n] = true
		}
	}
	vl, err := m.docker.VolumeList(ctx, client.VolumeListOptions{Filters: m.managed()})
	if err != nil {
		return rec, fmt.Errorf("listing volumes: %w", err)
	}
	for _, v := range vl.Items {
		if n := v.Labels[engine.LabelInstance]; n != "" {
			names[n] = true
		}
	}
	if dirs, err := os.ReadDir(filepath.Join(m.cfg.StateDir, "instances")); err == nil {
		for _, d := range dirs {
			names[d.Name()] = true
		}
	}
	var errs []error
	for name := range names {
		objs, err := m.objects(ctx, name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if objs.container != nil {
			switch objs.container.State {
			case container.StateRunning, container.StateCreated, container.StateRestarting:
				pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				err := engine.PingSocket(pctx, m.Socket(name))
				cancel()
				if err == nil {
					continue // complete and ready: nothing to do
				}
				if err := m.complete(ctx, name, objs.container); err == nil {
					rec.Completed = append(rec.Completed, name)
					continue
				}
			default:
				continue // a stopped instance that ran: the user's to start or delete
			}
		}
		if err := m.remove(ctx, name, objs); err != nil {
			errs = append(errs, err)
			continue
		}
		rec.Removed = append(rec.Removed, name)
	}
	if len(names) == 0 {
		if err := m.removeNetworkIfUnused(ctx, ""); err != nil {
			errs = append(errs, err)
		}
	}
	return rec, errors.Join(errs...)
}

// complete finishes a creation that was interrupted after the container was
// made.
func (m *Manager) complete(ctx context.Context, name string, c *container.Summary) error {
	if c.State == container.StateCreated {
		if _, err := m.docker.ContainerStart(ctx, c.ID, client.ContainerStartOptions{}); err != nil {
			return err
		}
	}
	return m.waitReady(ctx, name, c.ID)
}
