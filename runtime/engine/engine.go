package engine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"
)

// Labels: every object qbo creates carries LabelManaged; the others say what
// it is for.
const (
	Prefix = "dev.qbo."
	// LabelManaged marks every container, volume, network and image qbo made.
	LabelManaged = Prefix + "managed"
	// LabelInstance names the instance an object belongs to.
	LabelInstance = Prefix + "instance"
	// LabelRole says which part of an instance an object is: RoleInstance
	// (the container), RoleStorage (the /var/lib/docker volume), RoleNetwork
	// (the shared instance bridge), RoleImage (the built instance image).
	LabelRole = Prefix + "role"
	// LabelSocketDir is the host directory bind-mounted at /run/qbo in an
	// instance, where its inner dockerd's socket appears.
	LabelSocketDir = Prefix + "socket-dir"
	// LabelOwner is the state directory of the qbod that owns an object:
	// several qbods (a test's and the node's) can share one dockerd, and
	// each lists, recovers and deletes only its own.
	LabelOwner = Prefix + "owner"
	// LabelContent is the content key of a built image.
	LabelContent = Prefix + "content"

	RoleInstance = "instance"
	RoleStorage  = "storage"
	RoleNetwork  = "network"
	RoleImage    = "image"
)

// Errors callers branch on; the runtime packages wrap them.
var (
	ErrNotFound    = errors.New("not found")
	ErrExists      = errors.New("already exists")
	ErrInvalid     = errors.New("invalid")
	ErrUnavailable = errors.New("engine unavailable")
)

// DefaultDockerHost is the host dockerd's socket.
const DefaultDockerHost = "unix:///var/run/docker.sock"

// Docker connects to the dockerd at host ("unix:///path" or any address the
// moby client accepts) with API version negotiation, and checks that it
// answers.
func Docker(ctx context.Context, host string) (*client.Client, error) {
	c, err := client.New(client.WithHost(host)) // negotiates the API version on first use (down to 1.41 for dockerd 20.10)
	if err != nil {
		return nil, fmt.Errorf("connecting to dockerd at %s: %w", host, err)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := c.Ping(pctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		c.Close()
		return nil, fmt.Errorf("pinging dockerd at %s: %w: %w", host, ErrUnavailable, err)
	}
	return c, nil
}

// DockerAtSocket is Docker for a unix socket path.
func DockerAtSocket(ctx context.Context, path string) (*client.Client, error) {
	return Docker(ctx, "unix://"+path)
}

// PingSocket asks the dockerd listening on the unix socket at path for
// /_ping once, without building a client: the cheap readiness probe.
func PingSocket(ctx context.Context, path string) error {
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		},
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/_ping", nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("pinging %s: %w", path, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("pinging %s: status %s", path, resp.Status)
	}
	return nil
}

// Managed is the filter for everything qbo created, optionally narrowed
// by more label=value terms.
func Managed(labels ...string) client.Filters {
	f := make(client.Filters).Add("label", LabelManaged+"=true")
	for _, l := range labels {
		f.Add("label", l)
	}
	return f
}

// IsNotFound reports whether an engine error means the object does not exist.
func IsNotFound(err error) bool { return cerrdefs.IsNotFound(err) }

// IsConflict reports whether an engine error means the object already exists
// or is in use.
func IsConflict(err error) bool { return cerrdefs.IsConflict(err) }
