package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// DefaultPinDir is where every qbo map is pinned. Links live in its links/
// subdirectory so that removing the directory detaches everything.
const DefaultPinDir = "/sys/fs/bpf/qbo"

// LinksDir returns the directory under pinDir that holds pinned links.
func LinksDir(pinDir string) string { return filepath.Join(pinDir, "links") }

// LoadPinnedLink returns the link pinned at path, or nil if there is none.
func LoadPinnedLink(path string) (link.Link, error) {
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("opening pinned link: %w", err)
	}
	return l, nil
}

// SameProgram reports whether l runs a program identical to prog: the same
// tag (a hash of the instructions, map references excluded) and the same
// maps, so that a kept link writes where the caller reads.
func SameProgram(l link.Link, prog *ebpf.Program) (bool, error) {
	li, err := l.Info()
	if err != nil {
		return false, err
	}
	old, err := ebpf.NewProgramFromID(li.Program)
	if err != nil {
		return false, err
	}
	defer old.Close()
	oi, err := old.Info()
	if err != nil {
		return false, err
	}
	ni, err := prog.Info()
	if err != nil {
		return false, err
	}
	if oi.Tag != ni.Tag {
		return false, nil
	}
	om, ok1 := oi.MapIDs()
	nm, ok2 := ni.MapIDs()
	if !ok1 || !ok2 {
		return false, nil
	}
	slices.Sort(om)
	slices.Sort(nm)
	return slices.Equal(om, nm), nil
}

// DetachPinned detaches the link pinned at path, then removes the pin.
// Only unpinning would leave the program attached until the bpffs inode is
// freed after an RCU grace period, and for as long as any process still
// holds the link open; BPF_LINK_DETACH takes the program off its hook
// before returning. Links whose type cannot be detached explicitly fall
// back to unpinning. A missing pin is not an error.
func DetachPinned(path string) error {
	l, err := LoadPinnedLink(path)
	if err != nil {
		return err
	}
	var derr error
	if l != nil {
		derr = l.Detach()
		l.Close()
		// A link whose hook is already gone (interface or cgroup removed)
		// has nothing left to detach.
		if errors.Is(derr, ebpf.ErrNotSupported) || errors.Is(derr, unix.ENOLINK) || errors.Is(derr, unix.ENODEV) {
			derr = nil
		}
	}
	if err := Unlink(path); err != nil {
		return err
	}
	if derr != nil {
		return fmt.Errorf("detaching %s: %w", path, derr)
	}
	return nil
}

// Unlink removes a pin if it exists. (bpffs refuses names with a dot, so
// pins in flight use a "_next" suffix.)
func Unlink(path string) error {
	if err := unix.Unlink(path); err != nil && !errors.Is(err, unix.ENOENT) {
		return &os.PathError{Op: "unlink", Path: path, Err: err}
	}
	return nil
}

// EnsureLink makes sure a link running prog is pinned at path: a pinned
// link running the same program is kept; one running another program is
// updated in place (link.Update swaps the program atomically, so nothing is
// left unhandled during an upgrade); a missing or unusable one is replaced
// by attach's link, pinned.
func EnsureLink(path string, prog *ebpf.Program, attach func() (link.Link, error)) (link.Link, error) {
	old, err := LoadPinnedLink(path)
	if err != nil {
		return nil, err
	}
	if old != nil {
		same, err := SameProgram(old, prog)
		if err == nil && !same {
			err = old.Update(prog)
		}
		if err == nil {
			return old, nil
		}
		// The link is unusable (e.g. its interface is gone): replace it.
		old.Close()
		if err := Unlink(path); err != nil {
			return nil, err
		}
	}
	l, err := attach()
	if err != nil {
		return nil, err
	}
	if err := l.Pin(path); err != nil {
		l.Close()
		return nil, fmt.Errorf("pinning link: %w", err)
	}
	return l, nil
}
