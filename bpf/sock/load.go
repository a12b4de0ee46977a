package sock

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/qbo/qbo/bpf"
)

// DefaultCgroup is the cgroup v2 root on these hosts (cgroup v1 with the
// unified hierarchy mounted beside it).
const DefaultCgroup = "/sys/fs/cgroup/unified"

// Options configure Load.
type Options struct {
	PinDir string // default bpf.DefaultPinDir
	Cgroup string // default DefaultCgroup
}

// Objects is the loaded socket LB.
type Objects struct {
	objs  sockObjects
	links []link.Link
}

// Load loads the object (reusing pinned maps) and attaches every program to
// the cgroup through pinned links, kept or updated in place across restarts.
func Load(opts Options) (*Objects, error) {
	if opts.PinDir == "" {
		opts.PinDir = bpf.DefaultPinDir
	}
	if opts.Cgroup == "" {
		opts.Cgroup = DefaultCgroup
	}
	spec, err := loadSock()
	if err != nil {
		return nil, fmt.Errorf("loading sock object: %w", err)
	}
	o := &Objects{}
	if err := spec.LoadAndAssign(&o.objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: opts.PinDir}}); err != nil {
		return nil, fmt.Errorf("loading sock object: %w", err)
	}
	p := &o.objs.sockPrograms
	for _, a := range []struct {
		name string
		prog *ebpf.Program
		typ  ebpf.AttachType
	}{
		{"connect4", p.SockConnect4, ebpf.AttachCGroupInet4Connect},
		{"connect6", p.SockConnect6, ebpf.AttachCGroupInet6Connect},
		{"sendmsg4", p.SockSendmsg4, ebpf.AttachCGroupUDP4Sendmsg},
		{"sendmsg6", p.SockSendmsg6, ebpf.AttachCGroupUDP6Sendmsg},
		{"recvmsg4", p.SockRecvmsg4, ebpf.AttachCGroupUDP4Recvmsg},
		{"recvmsg6", p.SockRecvmsg6, ebpf.AttachCGroupUDP6Recvmsg},
		{"getpeer4", p.SockGetpeer4, ebpf.AttachCgroupInet4GetPeername},
		{"getpeer6", p.SockGetpeer6, ebpf.AttachCgroupInet6GetPeername},
	} {
		path := filepath.Join(bpf.LinksDir(opts.PinDir), "sock_"+a.name)
		l, err := bpf.EnsureLink(path, a.prog, func() (link.Link, error) {
			return link.AttachCgroup(link.CgroupOptions{Path: opts.Cgroup, Attach: a.typ, Program: a.prog})
		})
		if err != nil {
			o.Close()
			return nil, fmt.Errorf("attaching sock_%s to %s: %w", a.name, opts.Cgroup, err)
		}
		o.links = append(o.links, l)
	}
	return o, nil
}

// Close releases the handles; the pinned links keep balancing.
func (o *Objects) Close() error {
	var errs []error
	for _, l := range o.links {
		errs = append(errs, l.Close())
	}
	o.links = nil
	errs = append(errs, o.objs.Close())
	return errors.Join(errs...)
}

// Detach removes the pinned cgroup links.
func Detach(pinDir string) error {
	for _, n := range []string{"connect4", "connect6", "sendmsg4", "sendmsg6", "recvmsg4", "recvmsg6", "getpeer4", "getpeer6"} {
		if err := bpf.DetachPinned(filepath.Join(bpf.LinksDir(pinDir), "sock_"+n)); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	return nil
}

// NatMap is lb_sock_nat: socket cookie -> the VIP and backend it was
// balanced between.
func (o *Objects) NatMap() *ebpf.Map { return o.objs.LbSockNat }

// NatVal is the value of lb_sock_nat.
type NatVal = sockLbSockNatVal

// Destroy terminates every node socket that connect-time balancing sent to
// backend (bpf_sock_destroy from a TCP and a UDP socket iterator) and
// returns how many it terminated.
func (o *Objects) Destroy(backend uint32) (int, error) {
	before, err := o.destroyed()
	if err != nil {
		return 0, err
	}
	if err := o.objs.LbSockKill.Put(uint32(0), backend); err != nil {
		return 0, fmt.Errorf("setting backend to terminate: %w", err)
	}
	defer o.objs.LbSockKill.Put(uint32(0), uint32(0))
	for _, p := range []*ebpf.Program{o.objs.SockKillTcp, o.objs.SockKillUdp} {
		it, err := link.AttachIter(link.IterOptions{Program: p})
		if err != nil {
			return 0, fmt.Errorf("attaching socket iterator: %w", err)
		}
		r, err := it.Open()
		if err == nil {
			_, err = io.Copy(io.Discard, r)
			r.Close()
		}
		it.Close()
		if err != nil {
			return 0, fmt.Errorf("running socket iterator: %w", err)
		}
	}
	after, err := o.destroyed()
	return int(after - before), err
}

func (o *Objects) destroyed() (uint64, error) {
	var per []uint64
	if err := o.objs.LbSockStats.Lookup(uint32(3), &per); err != nil {
		return 0, fmt.Errorf("reading lb_sock_stats: %w", err)
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n, nil
}
