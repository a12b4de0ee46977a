//go:build bpftest

package datapath

import (
	"encoding/binary"
	"net"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/qbo/qbo/internal/netnstest"
	"github.com/qbo/qbo/lb"
)

// TestRevNATNonLinearReply forwards backends' replies whose transport
// header is not in the skb's linear part through lb_revnat on a real
// egress, which BPF_PROG_TEST_RUN cannot build (its skbs are linear).
//
// A tap device with IFF_NAPI_FRAGS (as a NIC driver that builds skbs from
// pages) takes each reply with only its Ethernet header in the linear part
// and the rest in a page fragment. With GRO and early demux off, the IP
// receive path pulls the network header alone, so the forwarded packet
// reaches the TCX egress of a veth with its TCP or UDP header still in the
// fragment. lb_revnat must pull and translate it as it does a linear one;
// the same reply sent linear is the control.
func TestRevNATNonLinearReply(t *testing.T) {
	e := newEnv(t)
	e.add(lb.Service{Name: "web", VIP: netip.AddrPortFrom(vip4, 80), Proto: lb.TCP, Backends: []lb.Backend{be("10.199.1.2:8080")}})
	e.add(lb.Service{Name: "dns6", VIP: netip.AddrPortFrom(vip6, 53), Proto: lb.UDP, Backends: []lb.Backend{be("[fd00:199:1::2]:5353")}})

	ns := netnstest.New(t)
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	netnstest.Enter(t, ns)

	// The tap's file descriptor is the wire the backends' replies come in on.
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	ifr, err := unix.NewIfreq("bk0")
	if err != nil {
		t.Fatal(err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_NAPI | unix.IFF_NAPI_FRAGS)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		t.Fatalf("TUNSETIFF: %v", err)
	}
	if err := netnstest.SetFeature("bk0", unix.ETHTOOL_SGRO, false); err != nil {
		t.Fatal(err) // GRO would pull the headers it reads into the linear part
	}
	ip("link", "add", "up0", "type", "veth", "peer", "name", "up1")
	ip("addr", "add", "10.199.1.1/24", "dev", "bk0")
	ip("addr", "add", "fd00:199:1::1/64", "dev", "bk0", "nodad")
	ip("addr", "add", "10.199.0.1/24", "dev", "up0")
	ip("addr", "add", "fd00:199::1/64", "dev", "up0", "nodad")
	for _, l := range []string{"bk0", "up0", "up1"} {
		ip("link", "set", l, "up")
	}
	ip("neigh", "add", client4.String(), "lladdr", "02:00:00:00:00:02", "dev", "up0", "nud", "permanent")
	ip("neigh", "add", client6.String(), "lladdr", "02:00:00:00:00:02", "dev", "up0", "nud", "permanent")
	// Early demux (on by default, for both families) looks a received
	// packet's socket up before routing and pulls its transport header to
	// do so; a router (and this test) turns it off.
	for k, v := range map[string]string{"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1", "net.ipv4.ip_early_demux": "0"} {
		if out, err := exec.Command("ip", "netns", "exec", ns, "sysctl", "-qw", k+"="+v).CombinedOutput(); err != nil {
			t.Fatalf("sysctl %s: %v\n%s", k, err, out)
		}
	}
	bk0, err := net.InterfaceByName("bk0")
	if err != nil {
		t.Fatal(err)
	}
	up0, err := net.InterfaceByName("up0")
	if err != nil {
		t.Fatal(err)
	}
	up1, err := net.InterfaceByName("up1")
	if err != nil {
		t.Fatal(err)
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: up0.Index, Program: e.obj.TC(), Attach: ebpf.AttachTCXEgress})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })

	// What leaves up0 arrives at up1: read it there.
	rx, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(rx) })
	if err := unix.Bind(rx, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: up1.Index}); err != nil {
		t.Fatal(err)
	}
	tv := unix.NsecToTimeval((5 * time.Second).Nanoseconds())
	if err := unix.SetsockoptTimeval(rx, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	// received returns the next frame from the backend's address that
	// leaves up0 (neighbour and router traffic is skipped).
	received := func(t *testing.T, from netip.Addr) []byte {
		t.Helper()
		buf := make([]byte, 2048)
		for {
			n, _, err := unix.Recvfrom(rx, buf, 0)
			if err != nil {
				t.Fatalf("no forwarded reply on up1: %v", err)
			}
			f := buf[:n]
			switch {
			case from.Is4() && n >= 34 && binary.BigEndian.Uint16(f[12:]) == 0x0800 && netip.AddrFrom4([4]byte(f[30:34])) == client4:
				return f
			case from.Is6() && n >= 54 && binary.BigEndian.Uint16(f[12:]) == 0x86dd && netip.AddrFrom16([16]byte(f[38:54])) == client6 && f[20] == 17:
				return f
			}
		}
	}

	for i, c := range []struct {
		name       string
		client     netip.AddrPort
		vip        netip.AddrPort
		backend    netip.AddrPort
		proto      uint8
		fragmented bool
	}{
		{"ipv4 tcp, linear", netip.AddrPortFrom(client4, 7001), netip.AddrPortFrom(vip4, 80), ap("10.199.1.2:8080"), 6, false},
		{"ipv4 tcp, header in a page fragment", netip.AddrPortFrom(client4, 7002), netip.AddrPortFrom(vip4, 80), ap("10.199.1.2:8080"), 6, true},
		{"ipv6 udp, linear", netip.AddrPortFrom(client6, 7003), netip.AddrPortFrom(vip6, 53), ap("[fd00:199:1::2]:5353"), 17, false},
		{"ipv6 udp, header in a page fragment", netip.AddrPortFrom(client6, 7004), netip.AddrPortFrom(vip6, 53), ap("[fd00:199:1::2]:5353"), 17, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			e.t = t
			e.run(pktSpec{src: c.client.Addr(), dst: c.vip.Addr(), sport: c.client.Port(), dport: c.vip.Port(), proto: c.proto}.bytes())
			frame := pktSpec{src: c.backend.Addr(), dst: c.client.Addr(), sport: c.backend.Port(), dport: c.client.Port(),
				proto: c.proto, payload: make([]byte, 64+i)}.bytes()
			copy(frame[0:6], bk0.HardwareAddr) // to the node, which forwards it to the client
			iov := [][]byte{frame}
			if c.fragmented {
				// The first segment is the skb's linear part, each further one a page fragment.
				iov = [][]byte{frame[:14], frame[14:]}
			}
			before, pulls := e.stat("revnat"), e.stat("revnat_pull")
			if _, err := unix.Writev(fd, iov); err != nil {
				t.Fatalf("writing the reply to the tap: %v", err)
			}
			out := received(t, c.backend.Addr())
			var src netip.AddrPort
			if c.client.Addr().Is4() {
				checkSums4(t, out, c.proto)
				src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(out[26:30])), binary.BigEndian.Uint16(out[34:]))
			} else {
				from := netip.AddrFrom16([16]byte(out[22:38]))
				if l4 := out[54 : 14+40+int(binary.BigEndian.Uint16(out[18:]))]; csum(l4, pseudo(from, c.client.Addr(), c.proto, len(l4))) != 0 {
					t.Errorf("bad UDP checksum")
				}
				src = netip.AddrPortFrom(from, binary.BigEndian.Uint16(out[54:]))
			}
			if src != c.vip {
				t.Fatalf("reply left up0 from %v, want the VIP %v", src, c.vip)
			}
			if n := e.stat("revnat") - before; n != 1 {
				t.Fatalf("revnat counted %d", n)
			}
			// The reply did reach lb_revnat with its header outside the
			// linear part (or, the control, inside it).
			if n, want := e.stat("revnat_pull")-pulls, c.fragmented; (n == 1) != want || n > 1 {
				t.Fatalf("revnat_pull counted %d, want the pull only for a fragmented reply", n)
			}
		})
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
