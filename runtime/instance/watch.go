package instance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/moby/moby/client"

	"github.com/qbo/qbo/runtime/engine"
)

// HostContainer is one container of the host dockerd.
type HostContainer struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	Image    string `json:"image"`
	State    string `json:"state"`
	Instance string `json:"instance,omitempty"` // set for an instance's container
	Managed  bool   `json:"managed"`            // made by qbo
	Engine   string `json:"engine"`             // "docker"
}

// Containers lists every container of the host dockerd.
func (m *Manager) Containers(ctx context.Context) ([]HostContainer, error) {
	cl, err := m.docker.ContainerList(ctx, client.ContainerListOptions{All: true})
	if err != nil {
		return nil, fmt.Errorf("listing host containers: %w", err)
	}
	out := make([]HostContainer, 0, len(cl.Items))
	for _, c := range cl.Items {
		n := c.ID[:12]
		if len(c.Names) > 0 {
			n = strings.TrimPrefix(c.Names[0], "/")
		}
		out = append(out, HostContainer{ID: c.ID, Name: n, Image: c.Image, State: string(c.State),
			Instance: c.Labels[engine.LabelInstance], Managed: c.Labels[engine.LabelManaged] == "true", Engine: "docker"})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Watch streams the host dockerd's container, network and volume events and
// calls hint for each; events are hints only (the stream can skip), the
// caller re-lists. It returns when the stream ends or ctx is done.
func (m *Manager) Watch(ctx context.Context, hint func()) error {
	return watchEvents(ctx, m.docker, hint)
}

// WatchInner is Watch for the dockerd inside an instance.
func (m *Manager) WatchInner(ctx context.Context, name string, hint func()) error {
	c, err := m.Inner(ctx, name)
	if err != nil {
		return err
	}
	return watchEvents(ctx, c, hint)
}

func watchEvents(ctx context.Context, c *client.Client, hint func()) error {
	f := make(client.Filters).Add("type", "container", "network", "volume")
	res := c.Events(ctx, client.EventsListOptions{Filters: f})
	for {
		select {
		case <-res.Messages:
			hint()
		case err := <-res.Err:
			if err == nil || errors.Is(err, io.EOF) || ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("docker events: %w", err)
		}
	}
}
