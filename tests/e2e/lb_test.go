//go:build e2e

package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	bpflb "github.com/qbo/qbo/bpf/lb"
	"github.com/qbo/qbo/internal/netnstest"
	"github.com/qbo/qbo/mirror"
)

// lbNet is the e2e topology of the load balancer:
//
//	client ns (cl0 10.199.0.2) --veth-- node ns (up0 10.199.0.1, XDP + TC of qbod)
//	node ns (bkN 10.199.N.1) --veth-- backend ns N (eth0 10.199.N.2), N = 1..3
//
// qbod runs inside the node namespace, so that forwarding between its
// veths never meets the host's iptables (dockerd's FORWARD policy is DROP).
type lbNet struct {
	node, client string
	backends     []string
}

func nsRun(t *testing.T, ns string, args ...string) string {
	t.Helper()
	return run(t, "ip", append([]string{"netns", "exec", ns}, args...)...)
}

func veth(t *testing.T, a, aName, b, bName string) {
	t.Helper()
	tmpA, tmpB := "qv"+randomSuffix(), "qv"+randomSuffix()
	run(t, "ip", "link", "add", tmpA, "type", "veth", "peer", "name", tmpB)
	t.Cleanup(func() { exec.Command("ip", "link", "del", tmpA).Run() })
	run(t, "ip", "link", "set", tmpA, "netns", a, "name", aName)
	run(t, "ip", "link", "set", tmpB, "netns", b, "name", bName)
	run(t, "ip", "-n", a, "link", "set", aName, "up")
	run(t, "ip", "-n", b, "link", "set", bName, "up")
}

func newLBNet(t *testing.T) *lbNet {
	n := &lbNet{node: netnstest.New(t), client: netnstest.New(t)}
	veth(t, n.node, "up0", n.client, "cl0")
	run(t, "ip", "-n", n.node, "addr", "add", "10.199.0.1/24", "dev", "up0")
	run(t, "ip", "-n", n.node, "addr", "add", "fd00:199::1/64", "dev", "up0", "nodad")
	run(t, "ip", "-n", n.client, "addr", "add", "10.199.0.2/24", "dev", "cl0")
	run(t, "ip", "-n", n.client, "addr", "add", "fd00:199::2/64", "dev", "cl0", "nodad")
	run(t, "ip", "-n", n.client, "route", "add", "10.199.100.0/24", "via", "10.199.0.1")
	run(t, "ip", "-n", n.client, "route", "add", "fd00:199:100::/64", "via", "fd00:199::1")
	nsRun(t, n.node, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	for i := 1; i <= 3; i++ {
		b := netnstest.New(t)
		n.backends = append(n.backends, b)
		bk := fmt.Sprintf("bk%d", i)
		veth(t, n.node, bk, b, "eth0")
		run(t, "ip", "-n", n.node, "addr", "add", fmt.Sprintf("10.199.%d.1/24", i), "dev", bk)
		run(t, "ip", "-n", n.node, "addr", "add", fmt.Sprintf("fd00:199:%d::1/64", i), "dev", bk, "nodad")
		run(t, "ip", "-n", b, "addr", "add", fmt.Sprintf("10.199.%d.2/24", i), "dev", "eth0")
		run(t, "ip", "-n", b, "addr", "add", fmt.Sprintf("fd00:199:%d::2/64", i), "dev", "eth0", "nodad")
		run(t, "ip", "-n", b, "route", "add", "default", "via", fmt.Sprintf("10.199.%d.1", i))
		run(t, "ip", "-n", b, "route", "add", "default", "via", fmt.Sprintf("fd00:199:%d::1", i))
		startBackend(t, b, fmt.Sprintf("b%d", i), 8080)
	}
	return n
}

// remote adds a backend host that is not connected to the node at all:
//
//	client ns (rm0 10.199.9.1, forwarding) --veth-- remote ns (eth0 10.199.9.2, VIP 10.199.100.3 on lo)
//
// The node reaches it through the client namespace (route 10.199.9.0/24 via
// 10.199.0.2), so lb_xdp encapsulates and sends the packet back out of the
// uplink (XDP_TX); the remote decapsulates (lb_decap at TC ingress: this
// kernel has no ipip device) and its only route back is straight to the
// client. It returns the remote namespace.
func (n *lbNet) remote(t *testing.T) string {
	t.Helper()
	r := netnstest.New(t)
	veth(t, n.client, "rm0", r, "eth0")
	run(t, "ip", "-n", n.client, "addr", "add", "10.199.9.1/24", "dev", "rm0")
	nsRun(t, n.client, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
		"net.ipv4.conf.default.rp_filter=0", "net.ipv4.conf.rm0.rp_filter=0", "net.ipv4.conf.cl0.rp_filter=0")
	run(t, "ip", "-n", r, "addr", "add", "10.199.9.2/24", "dev", "eth0")
	run(t, "ip", "-n", r, "addr", "add", "10.199.100.3/32", "dev", "lo")
	run(t, "ip", "-n", r, "route", "add", "default", "via", "10.199.9.1")
	run(t, "ip", "-n", n.node, "route", "add", "10.199.9.0/24", "via", "10.199.0.2")
	startBackend(t, r, "remote", 80)
	// veth hands the client's packets over with a partial (offloaded) TCP
	// checksum; once XDP_TX turns them into frames, nothing completes it and
	// the remote would drop them. A real NIC receives full checksums: give
	// the client's veth software checksums, as a wire would.
	if err := netnstest.Do(n.client, func() error { return netnstest.SetFeature("cl0", unix.ETHTOOL_STXCSUM, false) }); err != nil {
		t.Fatal(err)
	}

	pin := "/sys/fs/bpf/qbo-e2e-" + randomSuffix()
	t.Cleanup(func() { os.RemoveAll(pin) })
	obj, err := bpflb.LoadUnattached(bpflb.Options{PinDir: pin})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { obj.Close() })
	// veth delivers XDP_TX frames only to a peer whose receive side runs
	// in NAPI mode, which an attached XDP program turns on: give cl0 one
	// that passes everything.
	pass, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pass.Close() })
	attach := func(ns, ifname string, fn func(idx int) (link.Link, error)) {
		err := netnstest.Do(ns, func() error {
			iface, err := net.InterfaceByName(ifname)
			if err != nil {
				return err
			}
			l, err := fn(iface.Index)
			if err != nil {
				return err
			}
			t.Cleanup(func() { l.Close() })
			return nil
		})
		if err != nil {
			t.Fatalf("attaching to %s in %s: %v", ifname, ns, err)
		}
	}
	attach(n.client, "cl0", func(idx int) (link.Link, error) {
		return link.AttachXDP(link.XDPOptions{Program: pass, Interface: idx})
	})
	attach(r, "eth0", func(idx int) (link.Link, error) {
		return link.AttachTCX(link.TCXOptions{Program: obj.Decap(), Interface: idx, Attach: ebpf.AttachTCXIngress})
	})
	return r
}

// udpServer answers every datagram on port 5353 (IPv4 and IPv6) with the
// backend's name.
const udpServer = `
import socket, select, sys
name = sys.argv[1].encode()
a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); a.bind(("0.0.0.0", 5353))
b = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
b.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1); b.bind(("::", 5353))
print("ready", flush=True)
while True:
    r, _, _ = select.select([a, b], [], [])
    for s in r:
        d, addr = s.recvfrom(2048)
        s.sendto(name, addr)
`

// startBackend runs busybox httpd serving the backend's name on port, and
// a UDP responder on 5353, inside ns.
func startBackend(t *testing.T, ns, name string, port int) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "index.html"), []byte(name+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	httpd := exec.Command("ip", "netns", "exec", ns, "busybox", "httpd", "-f", "-p", fmt.Sprint(port), "-h", dir)
	if err := httpd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { httpd.Process.Kill(); httpd.Wait() })
	udp := exec.Command("ip", "netns", "exec", ns, "python3", "-c", udpServer, name)
	out, err := udp.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := udp.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { udp.Process.Kill(); udp.Wait() })
	if line, _ := bufio.NewReader(out).ReadString('\n'); line != "ready\n" {
		t.Fatalf("udp server in %s: %q", ns, line)
	}
	// httpd is ready when it accepts a connection.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := netnstest.Do(ns, func() error {
			c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("httpd in %s not accepting: %v", ns, err)
		}
		time.Sleep(20 * time.Millisecond) // polling interval of the readiness check
	}
}

// httpGet does one HTTP/1.0 request on a new connection and returns the
// body (a backend's name).
func httpGet(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\nHost: vip\r\n\r\n"); err != nil {
		return "", err
	}
	resp, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	_, body, ok := strings.Cut(string(resp), "\r\n\r\n")
	if !ok || !strings.HasPrefix(string(resp), "HTTP/1.") || !strings.Contains(strings.SplitN(string(resp), "\r\n", 2)[0], " 200") {
		return "", fmt.Errorf("bad response %q", resp)
	}
	return strings.TrimSpace(body), nil
}

type svcView struct {
	Name     string `json:"name"`
	Backends []struct {
		Addr  string `json:"addr"`
		State string `json:"state"`
		Flows int    `json:"flows"`
	} `json:"backends"`
}

func (d *daemon) mustQbo(args ...string) string {
	d.t.Helper()
	out, errOut, code := d.qbo(args...)
	if code != 0 {
		d.t.Fatalf("qbo %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// startNode runs qbod in the node namespace with up0 as its uplink and
// returns it with the cgroup its socket LB is attached to.
func (n *lbNet) startNode(t *testing.T) (*daemon, string) {
	t.Helper()
	// Socket LB goes to a cgroup of the test's own, not the root: the client
	// namespace stands for hosts outside the node, and its connections (made
	// by this process) must not be balanced at connect time.
	cg := "/sys/fs/cgroup/unified/qbo-e2e-" + randomSuffix()
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(cg) })
	d := newDaemon(t)
	cfg := filepath.Join(t.TempDir(), "qbod.yaml")
	if err := os.WriteFile(cfg, []byte("lb:\n  drain_timeout: 1s\n  cgroup: "+cg+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d.extra = []string{"--uplink", "up0", "--config", cfg}
	d.startInNetns(n.node)
	return d, cg
}

func TestLoadBalancer(t *testing.T) {
	n := newLBNet(t)
	d, cg := n.startNode(t)

	d.mustQbo("add", "service", "web", "--vip", "10.199.100.1:80/tcp",
		"--backend", "10.199.1.2:8080", "--backend", "10.199.2.2:8080", "--backend", "10.199.3.2:8080@2")

	t.Run("weighted shares over 3000 connections", func(t *testing.T) {
		counts := map[string]int{}
		err := netnstest.Do(n.client, func() error {
			for range 3000 {
				name, err := httpGet("10.199.100.1:80")
				if err != nil {
					return err
				}
				counts[name]++
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]float64{"b1": 0.25, "b2": 0.25, "b3": 0.5}
		for name, share := range want {
			got := float64(counts[name]) / 3000
			if got < share-0.05 || got > share+0.05 {
				t.Errorf("backend %s got %.3f of connections, want %.2f +- 0.05 (%v)", name, got, share, counts)
			}
		}
		t.Logf("shares: %v", counts)
	})

	t.Run("services mirror counts flows per backend", func(t *testing.T) {
		w := d.watch("services")
		w.waitFor("flow counts", 30*time.Second, func(m mirror.Message) bool {
			var v svcView
			if json.Unmarshal(m.Object, &v) != nil || v.Name != "web" {
				return false
			}
			total := 0
			for _, b := range v.Backends {
				total += b.Flows
			}
			// Connections that reuse an ephemeral port share one flow
			// entry, so the table holds fewer than 3000.
			return total >= 2000
		})
		out := d.mustQbo("get", "services", "web", "-o", "json")
		var list []svcView
		if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 1 || len(list[0].Backends) != 3 {
			t.Fatalf("get services web: %v %s", err, out)
		}
	})

	t.Run("udp: same 5-tuple same backend; deleting a backend moves only its flows", func(t *testing.T) {
		d.mustQbo("add", "service", "dns", "--vip", "10.199.100.1:53/udp",
			"--backend", "10.199.1.2:5353", "--backend", "10.199.2.2:5353", "--backend", "10.199.3.2:5353")
		w := d.watch("services")
		err := netnstest.Do(n.client, func() error {
			var conns []net.Conn
			defer func() {
				for _, c := range conns {
					c.Close()
				}
			}()
			ask := func(c net.Conn) (string, error) {
				c.SetDeadline(time.Now().Add(3 * time.Second))
				if _, err := c.Write([]byte("q")); err != nil {
					return "", err
				}
				buf := make([]byte, 64)
				k, err := c.Read(buf)
				return string(buf[:k]), err
			}
			first := map[int]string{}
			for i := range 300 {
				c, err := net.Dial("udp", "10.199.100.1:53")
				if err != nil {
					return err
				}
				conns = append(conns, c)
				if first[i], err = ask(c); err != nil {
					return err
				}
			}
			for i, c := range conns {
				got, err := ask(c)
				if err != nil {
					return err
				}
				if got != first[i] {
					return fmt.Errorf("flow %d answered by %s then %s", i, first[i], got)
				}
			}
			d.mustQbo("delete", "backend", "dns", "10.199.2.2:5353")
			// Draining: flows on the deleted backend stay there.
			for i, c := range conns {
				if got, err := ask(c); err != nil || got != first[i] {
					return fmt.Errorf("while draining, flow %d answered by %s (%v), was %s", i, got, err, first[i])
				}
			}
			// Once drained (drain_timeout 1s), the backend is gone from the
			// mirror; now only its flows move.
			w.waitFor("b2 forgotten", 30*time.Second, func(m mirror.Message) bool {
				var v svcView
				return json.Unmarshal(m.Object, &v) == nil && v.Name == "dns" && len(v.Backends) == 2
			})
			moved := 0
			for i, c := range conns {
				got, err := ask(c)
				if err != nil {
					return err
				}
				switch {
				case first[i] == "b2" && got == "b2":
					return fmt.Errorf("flow %d still on the deleted backend", i)
				case first[i] == "b2":
					moved++
				case got != first[i]:
					return fmt.Errorf("flow %d moved from %s to %s though its backend stayed", i, first[i], got)
				}
			}
			if moved == 0 {
				return fmt.Errorf("no flow was on b2")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})

	t.Run("ipv6", func(t *testing.T) {
		d.mustQbo("add", "service", "web6", "--vip", "[fd00:199:100::1]:80/tcp",
			"--backend", "[fd00:199:1::2]:8080", "--backend", "[fd00:199:2::2]:8080", "--backend", "[fd00:199:3::2]:8080")
		d.mustQbo("add", "service", "dns6", "--vip", "[fd00:199:100::1]:53/udp", "--backend", "[fd00:199:3::2]:5353")
		seen := map[string]int{}
		err := netnstest.Do(n.client, func() error {
			for range 60 {
				name, err := httpGet("[fd00:199:100::1]:80")
				if err != nil {
					return err
				}
				seen[name]++
			}
			c, err := net.Dial("udp", "[fd00:199:100::1]:53")
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(3 * time.Second))
			c.Write([]byte("q"))
			buf := make([]byte, 64)
			k, err := c.Read(buf)
			if err != nil || string(buf[:k]) != "b3" {
				return fmt.Errorf("udp6 answer %q: %v", buf[:k], err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(seen) != 3 {
			t.Fatalf("IPv6 connections reached %v", seen)
		}
	})

	t.Run("remote backend over IPIP answers the client directly", func(t *testing.T) {
		r := n.remote(t)
		d.mustQbo("add", "service", "far", "--vip", "10.199.100.3:80/tcp", "--backend", "10.199.9.2:80", "--mode", "dsr")
		err := netnstest.Do(n.client, func() error {
			for range 20 {
				name, err := httpGet("10.199.100.3:80")
				if err != nil {
					return err
				}
				if name != "remote" {
					return fmt.Errorf("answered by %q", name)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		_ = r
	})

	t.Run("a process on the node reaches the VIP through socket LB", func(t *testing.T) {
		// The node has no route to the VIP: only connect-time balancing
		// can get this process there.
		inCg := func(args ...string) string {
			return run(t, "sh", append([]string{"-c", `cg=$0 ns=$1; shift; echo $$ > "$cg"/cgroup.procs && exec nsenter --net=/run/netns/"$ns" "$@"`,
				cg, n.node}, args...)...)
		}
		seen := map[string]bool{}
		for range 20 {
			seen[strings.TrimSpace(inCg("curl", "-sS", "--max-time", "3", "http://10.199.100.1/"))] = true
		}
		for name := range seen {
			if name != "b1" && name != "b2" && name != "b3" {
				t.Fatalf("node got %q from the VIP", name)
			}
		}
		// UDP: the reply reads as coming from the VIP (recvmsg hook).
		out := inCg("python3", "-c", `import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.sendto(b"q", ("10.199.100.1", 53))
d, a = s.recvfrom(64)
print(d.decode(), a[0], a[1])`)
		if f := strings.Fields(out); len(f) != 3 || f[1] != "10.199.100.1" || f[2] != "53" {
			t.Fatalf("udp through socket LB: %q", out)
		}
		out = inCg("curl", "-sS", "--max-time", "3", "-g", "http://[fd00:199:100::1]/")
		if name := strings.TrimSpace(out); name != "b1" && name != "b2" && name != "b3" {
			t.Fatalf("node got %q from the IPv6 VIP", out)
		}
		// A connected socket's peer reads as the VIP, not the backend it was
		// balanced to (getpeername4/6 hooks), in both families.
		for _, vip := range []string{"10.199.100.1", "fd00:199:100::1"} {
			out = inCg("python3", "-c", `import socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=3)
print(*s.getpeername()[:2])`, vip)
			if f := strings.Fields(out); len(f) != 2 || f[0] != vip || f[1] != "80" {
				t.Fatalf("getpeername of a socket connected to %s: %q", vip, out)
			}
		}
	})

	t.Run("deleting a backend terminates node sockets connected to it", func(t *testing.T) {
		d.mustQbo("add", "service", "kill", "--vip", "10.199.100.2:80/tcp", "--backend", "10.199.1.2:8080")
		cmd := exec.Command("sh", "-c", `cg=$0 ns=$1; shift; echo $$ > "$cg"/cgroup.procs && exec nsenter --net=/run/netns/"$ns" "$@"`,
			cg, n.node, "python3", "-c", `import socket
s = socket.create_connection(("10.199.100.2", 80), timeout=3)
print("connected", flush=True)
s.settimeout(30)
try:
    print("recv", s.recv(10), flush=True)
except Exception as e:
    print(type(e).__name__, flush=True)`)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		lines := bufio.NewReader(out)
		if l, _ := lines.ReadString('\n'); l != "connected\n" {
			t.Fatalf("client: %q", l)
		}
		d.mustQbo("add", "backend", "kill", "10.199.2.2:8080")
		d.mustQbo("delete", "backend", "kill", "10.199.1.2:8080")
		if l, _ := lines.ReadString('\n'); l != "ConnectionAbortedError\n" {
			t.Fatalf("socket to the deleted backend: %q, want it aborted", l)
		}
	})

	t.Run("with --drain, node sockets to a deleted backend stay", func(t *testing.T) {
		d.mustQbo("add", "service", "keep", "--vip", "10.199.100.4:80/tcp", "--backend", "10.199.1.2:8080", "--drain")
		cmd := exec.Command("sh", "-c", `cg=$0 ns=$1; shift; echo $$ > "$cg"/cgroup.procs && exec nsenter --net=/run/netns/"$ns" "$@"`,
			cg, n.node, "python3", "-c", `import socket, sys
s = socket.create_connection(("10.199.100.4", 80), timeout=3)
print("connected", flush=True)
sys.stdin.readline()
s.settimeout(5)
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
resp = b""
while True:  # HTTP/1.0: the server closes after the body, which may come in its own segment
    chunk = s.recv(4096)
    if not chunk:
        break
    resp += chunk
print(resp.decode().split("\r\n\r\n", 1)[1].strip(), flush=True)`)
		in, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		lines := bufio.NewReader(out)
		if l, _ := lines.ReadString('\n'); l != "connected\n" {
			t.Fatalf("client: %q", l)
		}
		d.mustQbo("add", "backend", "keep", "10.199.2.2:8080")
		d.mustQbo("delete", "backend", "keep", "10.199.1.2:8080")
		io.WriteString(in, "go\n")
		if l, _ := lines.ReadString('\n'); l != "b1\n" {
			t.Fatalf("draining socket answered %q, want b1 over the kept connection", l)
		}
	})

	t.Run("state survives restarts under load with zero failures", func(t *testing.T) {
		var ok, failed atomic.Int64
		var firstErr atomic.Value
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			netnstest.Do(n.client, func() error {
				for {
					select {
					case <-stop:
						return nil
					default:
					}
					if _, err := httpGet("10.199.100.1:80"); err != nil {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
					} else {
						ok.Add(1)
					}
				}
			})
		}()
		for range 5 {
			before := ok.Load()
			d.stop(syscall.SIGTERM)
			d.startInNetns(n.node)
			// Requests were served across this restart: wait for progress.
			deadline := time.Now().Add(30 * time.Second)
			for ok.Load() < before+20 && time.Now().Before(deadline) {
				runtime.Gosched()
			}
		}
		close(stop)
		wg.Wait()
		if failed.Load() != 0 || ok.Load() == 0 {
			t.Fatalf("%d requests ok, %d failed (first: %v)", ok.Load(), failed.Load(), firstErr.Load())
		}
		t.Logf("%d requests served across 5 restarts, none failed", ok.Load())
		out := d.mustQbo("get", "services", "-o", "json")
		var list []svcView
		if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 7 {
			t.Fatalf("services after restarts: %v %s", err, out)
		}
	})

	t.Run("cli errors", func(t *testing.T) {
		if _, _, code := d.qbo("get", "services", "nope"); code != 5 {
			t.Errorf("get unknown service: exit %d, want 5", code)
		}
		if _, _, code := d.qbo("add", "service", "web", "--vip", "10.199.100.9:80/tcp"); code == 0 {
			t.Errorf("duplicate service accepted")
		}
		if _, _, code := d.qbo("delete", "backend", "web", "10.199.9.9:80"); code != 5 {
			t.Errorf("delete unknown backend: exit %d, want 5", code)
		}
	})
}
