// Package netnstest gives the root-only test tiers (bpf, e2e) private,
// named network namespaces and the few per-thread operations they need in
// them: entering one for the rest of a test, running a function in one,
// and switching an interface's offload feature without an ethtool binary
// (the host has none). It is imported only by tests; it imports the
// standard library and golang.org/x/sys.
package netnstest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// New creates a network namespace with a fresh name (ip netns add, so it
// is visible as /run/netns/NAME to ip and nsenter) and its loopback up,
// and deletes it, with everything in it, when the test ends. The name
// starts with qbo-t-, which scripts/test.sh also sweeps.
func New(t testing.TB) string {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	ns := "qbo-t-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s", ns, err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s link set lo up: %v\n%s", ns, err, out)
	}
	return ns
}

// Enter moves the calling goroutine's thread into ns until the test ends;
// the goroutine stays locked to it until then. Cleanups registered after
// Enter run first, still inside ns.
func Enter(t testing.TB, ns string) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if err := setns(ns); err != nil {
		orig.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		defer orig.Close()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			t.Errorf("returning to the original netns: %v", err)
			return // leave the thread locked: it is in the wrong netns
		}
		runtime.UnlockOSThread()
	})
}

// Do runs fn on a new thread that entered ns. The thread is never returned
// to the scheduler (its goroutine ends locked, so the runtime discards it).
func Do(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := setns(ns); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

func setns(ns string) error {
	f, err := os.Open("/run/netns/" + ns)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("setns %s: %w", ns, err)
	}
	return nil
}

// SetFeature switches one of ifname's features on or off with a legacy
// ethtool set command (cmd is unix.ETHTOOL_SGRO, unix.ETHTOOL_STXCSUM, ...),
// in the calling thread's network namespace.
func SetFeature(ifname string, cmd uint32, on bool) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	value := struct{ cmd, data uint32 }{cmd: cmd}
	if on {
		value.data = 1
	}
	var ifr [40]byte // struct ifreq: the name, then a pointer to the ethtool command
	copy(ifr[:unix.IFNAMSIZ-1], ifname)
	*(*unsafe.Pointer)(unsafe.Pointer(&ifr[unix.IFNAMSIZ])) = unsafe.Pointer(&value)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	runtime.KeepAlive(&value)
	if errno != 0 {
		return fmt.Errorf("ethtool command %#x on %s: %w", cmd, ifname, errno)
	}
	return nil
}
