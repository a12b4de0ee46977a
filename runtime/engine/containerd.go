package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/containerd/containerd/api/services/tasks/v1"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// DefaultContainerdAddress is the host containerd's socket.
const DefaultContainerdAddress = "/run/containerd/containerd.sock"

// DockerNamespace is where dockerd keeps its containers in containerd; they
// are listed through dockerd, which knows their names and labels.
const DockerNamespace = "moby"

// Containerd connects to the containerd at address and checks it answers.
// Only the classic services (namespaces, containers, tasks, events,
// version) are used, so containerd 1.6 works; the transfer and sandbox services (1.7+)
// are not.
func Containerd(ctx context.Context, address string) (*containerd.Client, error) {
	c, err := containerd.New(address, containerd.WithTimeout(10*time.Second))
	if err != nil {
		return nil, fmt.Errorf("connecting to containerd at %s: %w: %w", address, ErrUnavailable, err)
	}
	vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := c.Version(vctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("asking containerd at %s for its version: %w: %w", address, ErrUnavailable, err)
	}
	return c, nil
}

// ContainerdContainer is a container that exists in containerd outside
// dockerd's namespace (made with ctr, nerdctl, a kubelet, ...).
type ContainerdContainer struct {
	Namespace string            `json:"namespace"`
	ID        string            `json:"id"`
	Image     string            `json:"image,omitempty"`
	Runtime   string            `json:"runtime,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	// State is the status of the container's task in containerd's words
	// (created, running, paused, pausing, stopped, unknown), or "created"
	// when it has none: a container is only metadata until a task runs
	// it, and is again once its task is deleted.
	State string `json:"state"`
}

// NoTask is the State of a containerd container without a task, as Docker
// names a container that was never started.
const NoTask = "created"

// ContainerdContainers lists the containers of every containerd namespace
// except dockerd's.
func ContainerdContainers(ctx context.Context, c *containerd.Client) ([]ContainerdContainer, error) {
	nss, err := c.NamespaceService().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing containerd namespaces: %w", err)
	}
	var out []ContainerdContainer
	for _, ns := range nss {
		if ns == DockerNamespace {
			continue
		}
		nctx := namespaces.WithNamespace(ctx, ns)
		cs, err := c.Containers(nctx)
		if err != nil {
			return nil, fmt.Errorf("listing containers of namespace %s: %w", ns, err)
		}
		states, err := taskStates(nctx, c)
		if err != nil {
			return nil, fmt.Errorf("listing tasks of namespace %s: %w", ns, err)
		}
		for _, ctr := range cs {
			info, err := ctr.Info(nctx)
			if err != nil {
				continue // removed while listing
			}
			state, ok := states[info.ID]
			if !ok {
				state = NoTask
			}
			out = append(out, ContainerdContainer{Namespace: ns, ID: info.ID, Image: info.Image,
				Runtime: info.Runtime.Name, Labels: info.Labels, State: state})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// taskStates gives the status of every task of ctx's namespace by container
// ID: one call per namespace, not two per container as loading each task
// would take. A task's ID is its container's.
func taskStates(ctx context.Context, c *containerd.Client) (map[string]string, error) {
	r, err := c.TaskService().List(ctx, &tasks.ListTasksRequest{})
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(r.Tasks))
	for _, t := range r.Tasks {
		out[t.ID] = strings.ToLower(t.Status.String()) // RUNNING -> running, as containerd's client says
	}
	return out, nil
}

// WatchContainerd calls hint for each container or task event of any
// namespace (task events: create, start, pause, resume, exit, delete, ...,
// which change a container's State); like Docker's, these are hints and
// the caller re-lists. It
// returns when the stream fails or ctx is done.
func WatchContainerd(ctx context.Context, c *containerd.Client, hint func()) error {
	ch, errs := c.Subscribe(ctx, `topic~="^/containers/"`, `topic~="^/tasks/"`)
	for {
		select {
		case <-ch:
			hint()
		case err := <-errs:
			if err == nil || errors.Is(err, io.EOF) || ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("containerd events: %w", err)
		}
	}
}
