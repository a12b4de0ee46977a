package instance

import (
	"context"

	"errors"
	"fmt"
	cerrdefs "github.com/containerd/errdefs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/qbo/qbo/runtime"
	"github.com/qbo/qbo/runtime/engine"
	"github.com/qbo/qbo/runtime/image"
)

// Statuses an instance goes through.
const (
	StatusCreating = "creating" // steps before the container starts
	StatusStarting = "starting" // container started, inner dockerd not answering yet
	StatusReady    = "ready"    // inner dockerd answers on the host-side socket
	StatusStopped  = "stopped"  // container not running
	StatusDeleting = "deleting"
)

// Config is how a Manager places instances on this host.
type Config struct {
	// StateDir is qbod's state directory; instance sockets live in
	// StateDir/instances/NAME/docker.sock.
	StateDir string
	// Network is the name of the shared bridge network of instances, Bridge
	// the host interface name it gets, Subnet its addresses.
	Network string
	Bridge  string
	Subnet  netip.Prefix
	// ReadyTimeout bounds the wait for an inner dockerd to answer.
	ReadyTimeout time.Duration
}

// DefaultConfig are the settings qbod uses unless configured otherwise.
func DefaultConfig(stateDir string) Config {
	return Config{
		StateDir: stateDir, Network: "qbo-instances", Bridge: "qbo-inst0",
		Subnet: netip.MustParsePrefix("10.213.0.0/24"), ReadyTimeout: 60 * time.Second,
	}
}

// Instance is the observed state of one instance.
type Instance struct {
	Name       string           `json:"name"`
	ID         string           `json:"id,omitempty"`
	Status     string           `json:"status"`
	Step       string           `json:"step,omitempty"` // the creation step under way
	Image      string           `json:"image,omitempty"`
	CPUs       float64          `json:"cpus,omitempty"`
	Memory     int64            `json:"memory,omitempty"`
	GPUs       int              `json:"gpus,omitempty"`
	Address    string           `json:"address,omitempty"`   // on the instance network
	HostVeth   string           `json:"host_veth,omitempty"` // host side of its veth pair
	Socket     string           `json:"socket,omitempty"`    // inner dockerd, from the host
	PID        int              `json:"pid,omitempty"`
	Created    time.Time        `json:"created,omitzero"`
	Containers []InnerContainer `json:"containers"`
}

// InnerContainer is a container of an instance's own dockerd.
type InnerContainer struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Image string `json:"image"`
	State string `json:"state"`
}

// Manager creates, lists and deletes instances in one host dockerd.
type Manager struct {
	docker *client.Client
	cfg    Config

	lifecycle sync.Mutex // one create, delete or recovery at a time

	mu     sync.Mutex
	ops    map[string]*Instance      // operations in flight, by name
	inner  map[string]*client.Client // clients of inner dockerds, by name
	byID   map[string]string         // container ID -> "instance" or "instance/container"
	notify func(Instance)            // progress of operations
}

// New returns a Manager using the host dockerd behind docker. notify, if
// set, is called (synchronously) at each step of a create or delete.
func New(docker *client.Client, cfg Config, notify func(Instance)) *Manager {
	if notify == nil {
		notify = func(Instance) {}
	}
	return &Manager{docker: docker, cfg: cfg, ops: map[string]*Instance{}, inner: map[string]*client.Client{},
		byID: map[string]string{}, notify: notify}
}

func containerName(name string) string { return "qbo-" + name }
func volumeName(name string) string    { return "qbo-" + name + "-docker" }

// SocketDir is the host directory mounted at /run/qbo in the instance.
func (m *Manager) SocketDir(name string) string {
	return filepath.Join(m.cfg.StateDir, "instances", name)
}

// Socket is the host path of the inner dockerd's socket.
func (m *Manager) Socket(name string) string {
	return filepath.Join(m.SocketDir(name), "docker.sock")
}

func (m *Manager) labels(name, role string) map[string]string {
	return map[string]string{engine.LabelManaged: "true", engine.LabelOwner: m.cfg.StateDir,
		engine.LabelInstance: name, engine.LabelRole: role}
}

// managed filters what this Manager owns, narrowed by more label=value terms.
func (m *Manager) managed(terms ...string) client.Filters {
	return engine.Managed(append([]string{engine.LabelOwner + "=" + m.cfg.StateDir}, terms...)...)
}

// progress records the state of an operation and reports it.
func (m *Manager) progress(op *Instance, status, step string) {
	m.mu.Lock()
	op.Status, op.Step = status, step
	snap := *op
	m.mu.Unlock()
	m.notify(snap)
}

// action is one creation step and its undo.
type action struct {
	name string
	do   func(ctx context.Context) error
	undo func(ctx context.Context) error
}

// Create makes an instance and waits until its dockerd answers. On any
// failure every step already done is undone, so nothing is left behind.
// Run it on a context that outlives the caller's request.
func (m *Manager) Create(ctx context.Context, spec Spec) (Instance, error) {
	if err := spec.Validate(); err != nil {
		return Instance{}, err
	}
	m.lifecycle.Lock()
	defer m.lifecycle.Unlock()
	if err := m.checkFree(ctx, spec.Name); err != nil {
		return Instance{}, err
	}
	// Before the instance is shown: a missing image is a refused request,
	// not an instance that appears and vanishes.
	ref, err := m.resolveImage(ctx, spec.Image)
	if err != nil {
		return Instance{}, err
	}
	op := &Instance{Name: spec.Name, Status: StatusCreating, Image: ref, CPUs: spec.CPUs, Memory: spec.Memory,
		GPUs: spec.GPUs, Socket: m.Socket(spec.Name), Containers: []InnerContainer{}}
	m.mu.Lock()
	m.ops[spec.Name] = op
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.ops, spec.Name)
		m.mu.Unlock()
	}()
	var id string
	actions := []action{
		{name: "socket-dir",
			do:   func(context.Context) error { return os.MkdirAll(m.SocketDir(spec.Name), 0o700) },
			undo: func(context.Context) error { return os.RemoveAll(m.SocketDir(spec.Name)) }},
		{name: "volume",
			do: func(ctx context.Context) error {
				_, err := m.docker.VolumeCreate(ctx, client.VolumeCreateOptions{Name: volumeName(spec.Name), Labels: m.labels(spec.Name, engine.RoleStorage)})
				return err
			},
			undo: func(ctx context.Context) error {
				_, err := m.docker.VolumeRemove(ctx, volumeName(spec.Name), client.VolumeRemoveOptions{Force: true})
				return ignoreNotFound(err)
			}},
		{name: "network",
			do:   m.ensureNetwork,
			undo: func(ctx context.Context) error { return m.removeNetworkIfUnused(ctx, spec.Name) }},
		{name: "container",
			do: func(ctx context.Context) error {
				var err error
				id, err = m.createContainer(ctx, spec, ref)
				return err
			},
			undo: func(ctx context.Context) error {
				_, err := m.docker.ContainerRemove(ctx, containerName(spec.Name), client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
				return ignoreNotFound(err)
			}},
		{name: "start",
			do: func(ctx context.Context) error {
				_, err := m.docker.ContainerStart(ctx, id, client.ContainerStartOptions{})
				return err
			}},
		{name: "ready",
			do: func(ctx context.Context) error { return m.waitReady(ctx, spec.Name, id) }},
	}
	var done []action
	for _, a := range actions {
		status := StatusCreating
		if a.name == "ready" {
			status = StatusStarting
		}
		m.progress(op, status, a.name)
		if err := a.do(ctx); err != nil {
			rerr := m.rollback(done)
			if rerr != nil {
				return Instance{}, fmt.Errorf("creating instance %s: %s: %w (rollback: %v)", spec.Name, a.name, err, rerr)
			}
			return Instance{}, fmt.Errorf("creating instance %s: %s: %w", spec.Name, a.name, err)
		}
		done = append(done, a)
	}
	m.mu.Lock()
	delete(m.ops, spec.Name)
	m.mu.Unlock()
	inst, err := m.describe(ctx, id)
	if err != nil {
		return Instance{}, fmt.Errorf("inspecting instance %s: %w", spec.Name, err)
	}
	m.notify(inst)
	return inst, nil
}

// rollback undoes done steps in reverse order, on a context of its own so
// that a cancelled creation is still cleaned up.
func (m *Manager) rollback(done []action) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var errs []error
	for i := len(done) - 1; i >= 0; i-- {
		if done[i].undo != nil {
			if err := done[i].undo(ctx); err != nil {
				errs = append(errs, fmt.Errorf("undoing %s: %w", done[i].name, err))
			}
		}
	}
	return errors.Join(errs...)
}

func ignoreNotFound(err error) error {
	if err != nil && engine.IsNotFound(err) {
		return nil
	}
	return err
}

// checkFree fails when any object of that instance exists.
func (m *Manager) checkFree(ctx context.Context, name string) error {
	objs, err := m.objects(ctx, name)
	if err != nil {
		return err
	}
	if objs.container != nil || len(objs.volumes) > 0 {
		return fmt.Errorf("instance %s: %w", name, engine.ErrExists)
	}
	// Names are global in dockerd: another qbod's instance, or anything
	// else, may hold them. A volume create would silently reuse a volume,
	// and the rollback would then remove what is not ours.
	if _, err := m.docker.ContainerInspect(ctx, containerName(name), client.ContainerInspectOptions{}); err == nil {
		return fmt.Errorf("instance %s: container %s: %w", name, containerName(name), engine.ErrExists)
	} else if !engine.IsNotFound(err) {
		return fmt.Errorf("inspecting container %s: %w", containerName(name), err)
	}
	if _, err := m.docker.VolumeInspect(ctx, volumeName(name), client.VolumeInspectOptions{}); err == nil {
		return fmt.Errorf("instance %s: volume %s: %w", name, volumeName(name), engine.ErrExists)
	} else if !engine.IsNotFound(err) {
		return fmt.Errorf("inspecting volume %s: %w", volumeName(name), err)
	}
	return nil
}

// resolveImage returns the image to run: the built instance image (built
// now if needed) or a named image that must already be on the host, since
// no registry is reachable and creation never pulls.
func (m *Manager) resolveImage(ctx context.Context, ref string) (string, error) {
	if ref == "" {
		res, err := image.Build(ctx, m.docker)
		if err != nil {
			return "", fmt.Errorf("building the instance image: %w", err)
		}
		return res.Ref, nil
	}
	if _, err := m.docker.ImageInspect(ctx, ref); err != nil {
		if engine.IsNotFound(err) {
			return "", fmt.Errorf("image %q is not on this host (instances never pull; build it with 'qbo build image instance' or load it with 'docker load'): %w", ref, engine.ErrNotFound)
		}
		return "", fmt.Errorf("inspecting image %q: %w", ref, err)
	}
	return ref, nil
}

// ensureNetwork creates the shared instance bridge unless it exists.
func (m *Manager) ensureNetwork(ctx context.Context) error {
	if _, err := m.docker.NetworkInspect(ctx, m.cfg.Network, client.NetworkInspectOptions{}); err == nil {
		return nil
	} else if !engine.IsNotFound(err) {
		return err
	}
	_, err := m.docker.NetworkCreate(ctx, m.cfg.Network, client.NetworkCreateOptions{
		Driver: "bridge",
		IPAM:   &network.IPAM{Config: []network.IPAMConfig{{Subnet: m.cfg.Subnet}}},
		// A fixed bridge name lets the firewall and load balancer attach to
		// the instance network without asking Docker.
		Options: map[string]string{"com.docker.network.bridge.name": m.cfg.Bridge},
		Labels:  map[string]string{engine.LabelManaged: "true", engine.LabelOwner: m.cfg.StateDir, engine.LabelRole: engine.RoleNetwork},
	})
	if err != nil && engine.IsConflict(err) {
		return nil
	}
	return err
}

// removeNetworkIfUnused removes the shared network when no instance but
// except uses it.
func (m *Manager) removeNetworkIfUnused(ctx context.Context, except string) error {
	list, err := m.docker.ContainerList(ctx, client.ContainerListOptions{All: true,
		Filters: m.managed(engine.LabelRole + "=" + engine.RoleInstance)})
	if err != nil {
		return err
	}
	for _, c := range list.Items {
		if c.Labels[engine.LabelInstance] != except {
			return nil
		}
	}
	_, err = m.docker.NetworkRemove(ctx, m.cfg.Network, client.NetworkRemoveOptions{})
	if err != nil && (engine.IsConflict(err) || cerrdefs.IsPermissionDenied(err) || strings.Contains(err.Error(), "active endpoints")) {
		return nil // another qbod's instances still use it
	}
	return ignoreNotFound(err)
}

func (m *Manager) createContainer(ctx context.Context, spec Spec, ref string) (string, error) {
	yes := true
	res := container.Resources{
		NanoCPUs: int64(spec.CPUs * 1e9),
		Memory:   spec.Memory,
		// The inner runc creates device nodes (/dev/null, /dev/zero, ...)
		// for nested containers; the instance's device cgroup must allow
		// them. This is the device half of what --privileged would grant.
		DeviceCgroupRules: []string{"a *:* rwm"},
	}
	if spec.GPUs != 0 {
		// --gpus N: a device request dockerd hands to a GPU device driver
		// (the NVIDIA container toolkit registers one). Without one, start
		// fails with "could not select device driver" and creation rolls back.
		res.DeviceRequests = []container.DeviceRequest{{Count: spec.GPUs, Capabilities: [][]string{{"gpu"}}}}
	}
	lbl := m.labels(spec.Name, engine.RoleInstance)
	lbl[engine.LabelSocketDir] = m.SocketDir(spec.Name)
	created, err := m.docker.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name: containerName(spec.Name),
		Config: &container.Config{
			Image: ref, Hostname: spec.Name, Labels: lbl,
			Env: []string{"QBO_INSTANCE=" + spec.Name},
		},
		HostConfig: &container.HostConfig{
			// dockerd inside needs nearly every capability (mounts,
			// namespaces, iptables, cgroups). --privileged is refused on
			// these hosts because CAP_SYS_RESOURCE is not in the bounding
			// set, so grant everything else explicitly.
			CapAdd:  []string{"ALL"},
			CapDrop: []string{"SYS_RESOURCE"},
			SecurityOpt: []string{
				// The default profile blocks mount, unshare, pivot_root and
				// keyctl, which the inner runc uses for every container.
				"seccomp=unconfined",
				// docker-default forbids mounts; the init script remounts
				// /sys and the cgroup hierarchies read-write.
				"apparmor=unconfined",
			},
			// What the CLI's --security-opt systempaths=unconfined sends:
			// empty (not absent) lists, so /proc/sys and friends are neither
			// masked nor read-only. The inner dockerd writes sysctls of its
			// own network namespace there; host-wide keys stay unwritable
			// to it as they are to any non-init netns (checked by the e2e
			// sysctl comparison).
			MaskedPaths:   []string{},
			ReadonlyPaths: []string{},
			// A private cgroup namespace shows the instance its own cgroup
			// as the root, so the inner dockerd manages a subtree and nested
			// containers land under /docker/OUTER/docker/INNER on the host.
			CgroupnsMode: container.CgroupnsModePrivate,
			// docker-init as PID 1 reaps what exec'd commands leave behind.
			Init: &yes,
			Mounts: []mount.Mount{
				// overlay2 works on a volume but not on the container's own
				// overlay root.
				{Type: mount.TypeVolume, Source: volumeName(spec.Name), Target: "/var/lib/docker"},
				// Host-side directory where the inner dockerd's socket appears.
				{Type: mount.TypeBind, Source: m.SocketDir(spec.Name), Target: "/run/qbo"},
			},
			Tmpfs:         map[string]string{"/run": "rw,nosuid,nodev,mode=755", "/tmp": "rw,nosuid,nodev"},
			NetworkMode:   container.NetworkMode(m.cfg.Network),
			Resources:     res,
			RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyUnlessStopped},
			LogConfig:     container.LogConfig{Type: "json-file", Config: map[string]string{"max-size": "10m", "max-file": "2"}},
		},
	})
	if err != nil {
		return "", err
	}
	return created.ID, nil
}

// Delete removes an instance and everything labelled as its own; the shared
// network goes with the last instance.
func (m *Manager) Delete(ctx context.Context, name string) error {
	m.lifecycle.Lock()
	defer m.lifecycle.Unlock()
	objs, err := m.objects(ctx, name)
	if err != nil {
		return err
	}
	if objs.container == nil && len(objs.volumes) == 0 && !objs.socketDir {
		return fmt.Errorf("instance %s: %w", name, engine.ErrNotFound)
	}
	op := &Instance{Name: name, Status: StatusDeleting, Containers: []InnerContainer{}}
	m.mu.Lock()
	m.ops[name] = op
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.ops, name)
		m.mu.Unlock()
	}()
	m.notify(*op)
	return m.remove(ctx, name, objs)
}

func (m *Manager) remove(ctx context.Context, name string, objs objects) error {
	m.dropInner(name)
	if objs.container != nil {
		if _, err := m.docker.ContainerRemove(ctx, objs.container.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true}); ignoreNotFound(err) != nil {
			return fmt.Errorf("removing container of %s: %w", name, err)
		}
	}
	for _, v := range objs.volumes {
		if _, err := m.docker.VolumeRemove(ctx, v, client.VolumeRemoveOptions{Force: true}); ignoreNotFound(err) != nil {
			return fmt.Errorf("removing volume %s: %w", v, err)
		}
	}
	if err := os.RemoveAll(m.SocketDir(name)); err != nil {
		return fmt.Errorf("removing %s: %w", m.SocketDir(name), err)
	}
	if err := m.removeNetworkIfUnused(ctx, name); err != nil {
		return fmt.Errorf("removing network %s: %w", m.cfg.Network, err)
	}
	return nil
}

// objects are what exists of one instance, found by label.
type objects struct {
	container *container.Summary
	volumes   []string
	socketDir bool
}

func (m *Manager) objects(ctx context.Context, name string) (objects, error) {
	var o objects
	f := m.managed(engine.LabelInstance + "=" + name)
	cl, err := m.docker.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		return o, fmt.Errorf("listing containers: %w", err)
	}
	for i := range cl.Items {
		if cl.Items[i].Labels[engine.LabelRole] == engine.RoleInstance {
			o.container = &cl.Items[i]
		}
	}
	vl, err := m.docker.VolumeList(ctx, client.VolumeListOptions{Filters: f})
	if err != nil {
		return o, fmt.Errorf("listing volumes: %w", err)
	}
	for _, v := range vl.Items {
		o.volumes = append(o.volumes, v.Name)
	}
	if _, err := os.Stat(m.SocketDir(name)); err == nil {
		o.socketDir = true
	}
	return o, nil
}

// Get returns one instance.
func (m *Manager) Get(ctx context.Context, name string) (Instance, error) {
	all, err := m.List(ctx)
	if err != nil {
		return Instance{}, err
	}
	for _, i := range all {
		if i.Name == name {
			return i, nil
		}
	}
	return Instance{}, fmt.Errorf("instance %s: %w", name, engine.ErrNotFound)
}

// List returns every instance, found by label, with operations in flight
// shown as such, and the containers of each ready one.
func (m *Manager) List(ctx context.Context) ([]Instance, error) {
	m.mu.Lock()
	ops := map[string]Instance{}
	for n, op := range m.ops {
		ops[n] = *op
	}
	m.mu.Unlock()
	cl, err := m.docker.ContainerList(ctx, client.ContainerListOptions{All: true,
		Filters: m.managed(engine.LabelRole + "=" + engine.RoleInstance)})
	if err != nil {
		return nil, fmt.Errorf("listing instances: %w", err)
	}
	byID := map[string]string{}
	var out []Instance
	for _, c := range cl.Items {
		name := c.Labels[engine.LabelInstance]
		if op, ok := ops[name]; ok {
			delete(ops, name)
			op.ID = c.ID
			out = append(out, op)
			byID[c.ID] = name
			continue
		}
		inst, err := m.describe(ctx, c.ID)
		if err != nil {
			if engine.IsNotFound(err) {
				continue // removed while listing
			}
			return nil, err
		}
		byID[c.ID] = name
		for _, ic := range inst.Containers {
			byID[ic.ID] = name + "/" + ic.Name
		}
		out = append(out, inst)
	}
	for _, op := range ops {
		out = append(out, op)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	m.mu.Lock()
	m.byID = byID
	m.mu.Unlock()
	return out, nil
}

// describe inspects one instance container.
func (m *Manager) describe(ctx context.Context, id string) (Instance, error) {
	res, err := m.docker.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if err != nil {
		return Instance{}, err
	}
	c := res.Container
	name := c.Config.Labels[engine.LabelInstance]
	inst := Instance{Name: name, ID: c.ID, Image: c.Config.Image, Socket: m.Socket(name), Containers: []InnerContainer{}}
	if c.HostConfig != nil {
		inst.CPUs = float64(c.HostConfig.NanoCPUs) / 1e9
		inst.Memory = c.HostConfig.Memory
		for _, r := range c.HostConfig.DeviceRequests {
			inst.GPUs += r.Count
		}
	}
	if t, err := time.Parse(time.RFC3339Nano, c.Created); err == nil {
		inst.Created = t
	}
	if c.NetworkSettings != nil {
		if ep := c.NetworkSettings.Networks[m.cfg.Network]; ep != nil && ep.IPAddress.IsValid() {
			inst.Address = ep.IPAddress.String()
		}
	}
	inst.Status = StatusStopped
	if c.State != nil && c.State.Running {
		inst.PID = c.State.Pid
		inst.HostVeth = hostVeth(c.State.Pid)
		inst.Status = StatusStarting
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := engine.PingSocket(pctx, inst.Socket)
		cancel()
		if err == nil {
			inst.Status = StatusReady
			if ics, err := m.innerContainers(ctx, name); err == nil {
				inst.Containers = ics
			}
		}
	}
	return inst, nil
}

// hostVeth finds the host end of the instance's eth0: its iflink is the
// ifindex of the peer in the host namespace. /proc/PID/root/sys is the
// instance's sysfs, which shows its own network namespace.
func hostVeth(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/root/sys/class/net/eth0/iflink")
	if err != nil {
		return ""
	}
	idx, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return ""
	}
	ifc, err := net.InterfaceByIndex(idx)
	if err != nil {
		return ""
	}
	return ifc.Name
}

// Inner returns a client of the instance's own dockerd.
func (m *Manager) Inner(ctx context.Context, name string) (*client.Client, error) {
	m.mu.Lock()
	c := m.inner[name]
	m.mu.Unlock()
	if c != nil {
		return c, nil
	}
	if _, err := os.Stat(m.Socket(name)); err != nil {
		return nil, fmt.Errorf("instance %s: %w", name, engine.ErrNotFound)
	}
	c, err := engine.DockerAtSocket(ctx, m.Socket(name))
	if err != nil {
		return nil, fmt.Errorf("instance %s: %w", name, err)
	}
	m.mu.Lock()
	if old := m.inner[name]; old != nil {
		c.Close()
		c = old
	} else {
		m.inner[name] = c
	}
	m.mu.Unlock()
	return c, nil
}

func (m *Manager) dropInner(name string) {
	m.mu.Lock()
	c := m.inner[name]
	delete(m.inner, name)
	m.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

func (m *Manager) innerContainers(ctx context.Context, name string) ([]InnerContainer, error) {
	c, err := m.Inner(ctx, name)
	if err != nil {
		return nil, err
	}
	list, err := c.ContainerList(ctx, client.ContainerListOptions{All: true})
	if err != nil {
		m.dropInner(name)
		return nil, fmt.Errorf("listing containers of %s: %w", name, err)
	}
	out := make([]InnerContainer, 0, len(list.Items))
	for _, ic := range list.Items {
		n := ""
		if len(ic.Names) > 0 {
			n = strings.TrimPrefix(ic.Names[0], "/")
		}
		out = append(out, InnerContainer{ID: ic.ID, Name: n, Image: ic.Image, State: string(ic.State)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Attribution says which instance and nested container a process runs in.
type Attribution struct {
	// Container is the host container ID (an instance's or any other).
	Container string `json:"container,omitempty"`
	// Instance is set when the process runs in an instance.
	Instance string `json:"instance,omitempty"`
	// Nested is the name of the container inside the instance, if any.
	Nested string `json:"nested,omitempty"`
}

// Attribute maps a process to its container and instance, from its cgroup
// and the IDs seen by the last List. A host process gives a zero value.
func (m *Manager) Attribute(pid int) (Attribution, error) {
	ids, err := runtime.PIDContainers(pid)
	if err != nil || len(ids) == 0 {
		return Attribution{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	a := Attribution{Container: ids[0]}
	if name, ok := m.byID[ids[0]]; ok {
		a.Instance = name
		if len(ids) > 1 {
			if n, ok := m.byID[ids[1]]; ok {
				a.Nested = strings.TrimPrefix(n, name+"/")
			} else {
				a.Nested = ids[1][:12]
			}
		}
	}
	return a, nil
}

// BuildImage makes sure the instance image for this host's binaries exists
// (see runtime/image).
func (m *Manager) BuildImage(ctx context.Context) (image.Result, error) {
	return image.Build(ctx, m.docker)
}
