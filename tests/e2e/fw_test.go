//go:build e2e

package e2e

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qbo/qbo/internal/netnstest"
	"github.com/qbo/qbo/mirror"
)

// fwLink is one veth pair: Host is the root-namespace side (where qbod's
// firewall attaches, as it does on a container's host-side veth), NS the
// namespace holding the peer.
type fwLink struct {
	NS       string
	Host     string
	HostAddr string // 10.198.N.1
	PeerAddr string // 10.198.N.2
}

// newFwLinks creates n namespaces, each joined to the root namespace by a
// veth pair on its own 10.198.N.0/24, and removes them when the test ends.
func newFwLinks(t *testing.T, n int) []fwLink {
	t.Helper()
	b := make([]byte, 1)
	rand.Read(b)
	base := 10 + int(b[0])%200
	var out []fwLink
	for i := 0; i < n; i++ {
		ns := netnstest.New(t)
		sfx := randomSuffix()[:6]
		l := fwLink{NS: ns, Host: fmt.Sprintf("qbof%s%d", sfx, i),
			HostAddr: fmt.Sprintf("10.198.%d.1", base+i), PeerAddr: fmt.Sprintf("10.198.%d.2", base+i)}
		run(t, "ip", "link", "add", l.Host, "type", "veth", "peer", "name", "eth0", "netns", ns)
		t.Cleanup(func() { exec.Command("ip", "link", "del", l.Host).Run() })
		run(t, "ip", "addr", "add", l.HostAddr+"/24", "dev", l.Host)
		run(t, "ip", "link", "set", l.Host, "up")
		run(t, "ip", "-n", ns, "addr", "add", l.PeerAddr+"/24", "dev", "eth0")
		run(t, "ip", "-n", ns, "link", "set", "eth0", "up")
		run(t, "ip", "-n", ns, "route", "add", "default", "via", l.HostAddr)
		out = append(out, l)
	}
	return out
}

// serveHTTP answers "ok" on addr (in the root namespace) until the test ends.
func serveHTTP(t *testing.T, addr string) {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok") })}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

// curlFrom fetches url from inside ns (optionally from source address src)
// and reports whether it answered. A refused SYN is dropped silently, so
// the attempt is bounded by --connect-timeout; the tests confirm every
// expected drop through the firewall's counters, not through the timeout.
func curlFrom(t *testing.T, ns, src, url string) bool {
	t.Helper()
	args := []string{"netns", "exec", ns, "curl", "-s", "--connect-timeout", "2", "-o", "/dev/null", "-w", "%{http_code}"}
	if src != "" {
		args = append(args, "--interface", src)
	}
	out, _ := exec.Command("ip", append(args, url)...).Output()
	return string(out) == "200"
}

// fwRule is a rule as "get rules -o json" prints it.
type fwRule struct {
	Name    string `json:"name"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
	Target  string `json:"target"`
}

// fwQbo runs the CLI and fails the test unless it exits 0.
func (d *daemon) fwQbo(args ...string) string {
	d.t.Helper()
	out, errOut, code := d.qbo(args...)
	if code != 0 {
		d.t.Fatalf("qbo %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

func (d *daemon) rules() map[string]fwRule {
	d.t.Helper()
	var list []fwRule
	if err := json.Unmarshal([]byte(d.fwQbo("get", "rules", "-o", "json")), &list); err != nil {
		d.t.Fatal(err)
	}
	out := map[string]fwRule{}
	for _, r := range list {
		out[r.Name] = r
	}
	return out
}

// noTelemetry makes qbod run without the trace object, so that the
// firewall reads deny records from the event ring itself.
func noTelemetry(t *testing.T, d *daemon) {
	cfg := filepath.Join(t.TempDir(), "qbod.yaml")
	if err := os.WriteFile(cfg, []byte("trace:\n  enabled: false\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d.extra = append(d.extra, "--config", cfg)
}

// The deny events travel through the telemetry ring buffer and the trace
// reader (the default), as in production.
func TestFirewallDeniesSSHFromOneCIDRAndAllowsAnother(t *testing.T) {
	d := newDaemon(t)
	d.start()
	links := newFwLinks(t, 1)
	l := links[0]
	// A second source address in the client namespace.
	other := strings.TrimSuffix(l.PeerAddr, ".2") + ".3"
	run(t, "ip", "-n", l.NS, "addr", "add", other+"/24", "dev", "eth0")
	ssh := net.JoinHostPort(l.HostAddr, "2222")
	serveHTTP(t, ssh)
	url := "http://" + ssh + "/"
	if !curlFrom(t, l.NS, l.PeerAddr, url) || !curlFrom(t, l.NS, other, url) {
		t.Fatal("no connectivity before any rule")
	}
	w := d.watch("firewall")
	d.fwQbo("add", "rule", "allow-admin-ssh", "--action", "allow", "--src", l.PeerAddr+"/32", "--proto", "tcp",
		"--port", "2222", "--priority", "10", "--iface", l.Host)
	d.fwQbo("add", "rule", "deny-ssh", "--action", "deny", "--log", "--src", strings.TrimSuffix(l.PeerAddr, ".2")+".0/24",
		"--proto", "tcp", "--port", "2000-2999", "--priority", "20", "--iface", l.Host)

	if !curlFrom(t, l.NS, l.PeerAddr, url) {
		t.Error("the allowed source cannot connect")
	}
	if curlFrom(t, l.NS, other, url) {
		t.Error("the denied source connected")
	}
	rules := d.rules()
	if rules["allow-admin-ssh"].Packets == 0 || rules["deny-ssh"].Packets == 0 {
		t.Errorf("counters: %+v", rules)
	}
	// The logged deny reaches the firewall mirror with its 5-tuple.
	w.waitFor("deny event", 20*time.Second, func(m mirror.Message) bool {
		if m.Type != mirror.TypeDelta || !strings.HasPrefix(m.Key, "deny/") {
			return false
		}
		var e struct{ Rule, Iface, Src, Dst, Proto string }
		json.Unmarshal(m.Object, &e)
		return e.Rule == "deny-ssh" && e.Iface == l.Host && strings.HasPrefix(e.Src, other+":") && e.Dst == ssh && e.Proto == "tcp"
	})

	// The prefilter's deny list (enforced on uplinks by the XDP entry
	// point, see TestPrefilterDropsDeniedSourcesOnTheUplink; here its
	// persistence across a restart that reuses the pinned maps).
	d.fwQbo("add", "prefilter", "192.0.2.0/24", "2001:db8::/32")

	// Rules persist: a restarted qbod restores them.
	d.stop(syscall.SIGTERM)
	d.start()
	if curlFrom(t, l.NS, other, url) {
		t.Error("the denied source connected after a restart")
	}
	if _, ok := d.rules()["deny-ssh"]; !ok {
		t.Error("rules were not restored")
	}
	if out := d.fwQbo("get", "prefilter", "-o", "json"); !strings.Contains(out, "192.0.2.0/24") || !strings.Contains(out, "2001:db8::/32") {
		t.Errorf("prefilter not restored: %s", out)
	}
	if out := run(t, "bpftool", "map", "dump", "pinned", filepath.Join(d.pinDir, "qbo_pf_v4")); !strings.Contains(out, "0xc0 0x00 0x02") && !strings.Contains(out, "192") {
		t.Errorf("prefilter map does not hold 192.0.2.0/24:\n%s", out)
	}
	// 192.0.2.0/24 is /24 number 0xc00002: bit 2 of word 0x30000.
	if out := run(t, "bpftool", "-j", "map", "lookup", "pinned", filepath.Join(d.pinDir, "qbo_pf_v4_full"), "key", "0x00", "0x00", "0x03", "0x00"); !strings.Contains(out, `"value":4`) {
		t.Errorf("the /24 bitmap does not deny 192.0.2.0/24: %s", out)
	}

	// Deleting the deny rule opens the port again.
	d.fwQbo("delete", "rule", "deny-ssh")
	if !curlFrom(t, l.NS, other, url) {
		t.Error("still denied after delete rule")
	}
	if _, _, code := d.qbo("delete", "rule", "deny-ssh"); code != 5 {
		t.Errorf("deleting a missing rule: exit %d, want 5", code)
	}
	if _, errOut, code := d.qbo("add", "rule", "bad", "--action", "deny", "--proto", "icmp", "--port", "22"); code != 2 || !strings.Contains(errOut, "port") {
		t.Errorf("invalid rule: exit %d (%s), want 2 (a bad request)", code, errOut)
	}
}

func TestFirewallDefaultDenyIngressRepliesStillWork(t *testing.T) {
	d := newDaemon(t)
	d.start()
	links := newFwLinks(t, 2)
	a, b := links[0], links[1]
	// A web server inside namespace a.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "index.html"), []byte("hi"), 0o644)
	srv := exec.Command("ip", "netns", "exec", a.NS, "busybox", "httpd", "-f", "-p", "8000", "-h", dir)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	serveHTTP(t, net.JoinHostPort(a.HostAddr, "9000"))
	serveHTTP(t, net.JoinHostPort(b.HostAddr, "9000"))

	d.fwQbo("set", "policy", "--action", "deny", "--direction", "ingress", "--iface", a.Host)
	// Egress allowed (the default): the host's request leaves, the reply
	// comes back in through the default-deny ingress as a reply.
	waitHTTP(t, "http://"+net.JoinHostPort(a.PeerAddr, "8000")+"/")
	// A connection the namespace starts is new ingress: denied.
	if curlFrom(t, a.NS, "", "http://"+net.JoinHostPort(a.HostAddr, "9000")+"/") {
		t.Error("new inbound connection through default-deny ingress")
	}
	// The policy of one interface leaves the other untouched.
	if !curlFrom(t, b.NS, "", "http://"+net.JoinHostPort(b.HostAddr, "9000")+"/") {
		t.Error("the second interface is affected")
	}
	var st struct {
		Systems map[string]struct {
			Counters map[string]uint64 `json:"counters"`
		} `json:"systems"`
	}
	json.Unmarshal([]byte(d.fwQbo("status", "-o", "json")), &st)
	c := st.Systems["firewall"].Counters
	if c["ct_reply"] == 0 || c["default_deny"] == 0 {
		t.Errorf("firewall counters: %v", c)
	}
}

// waitHTTP fetches url from the root namespace, retrying until it answers
// or a deadline passes (the datapath is ready when the command returned,
// so one attempt normally suffices).
func waitHTTP(t *testing.T, url string) {
	t.Helper()
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
}

// With telemetry disabled the firewall reads its deny records from the
// event ring itself; this test runs that way.
func TestFirewallRuleOnOneInterfaceLeavesTheOther(t *testing.T) {
	d := newDaemon(t)
	noTelemetry(t, d)
	d.start()
	links := newFwLinks(t, 2)
	for _, l := range links {
		serveHTTP(t, net.JoinHostPort(l.HostAddr, "8080"))
	}
	w := d.watch("firewall")
	d.fwQbo("add", "rule", "no-web", "--action", "deny", "--log", "--proto", "tcp", "--port", "8080", "--iface", links[0].Host)
	if curlFrom(t, links[0].NS, "", "http://"+net.JoinHostPort(links[0].HostAddr, "8080")+"/") {
		t.Error("denied on the first interface, but it connected")
	}
	w.waitFor("deny event without telemetry", 20*time.Second, func(m mirror.Message) bool {
		var e struct{ Rule, Iface string }
		return m.Type == mirror.TypeDelta && strings.HasPrefix(m.Key, "deny/") &&
			json.Unmarshal(m.Object, &e) == nil && e.Rule == "no-web" && e.Iface == links[0].Host
	})
	if !curlFrom(t, links[1].NS, "", "http://"+net.JoinHostPort(links[1].HostAddr, "8080")+"/") {
		t.Error("the second interface was affected")
	}
	if r := d.rules()["no-web"]; r.Packets == 0 || r.Target != "iface:"+links[0].Host {
		t.Errorf("rule: %+v", r)
	}
}

func TestFirewallNmapSeesExactlyTheAllowedPorts(t *testing.T) {
	if _, err := exec.LookPath("nmap"); err != nil {
		t.Fatal("nmap is not installed (scripts/setup.sh installs it)")
	}
	d := newDaemon(t)
	d.start()
	l := newFwLinks(t, 1)[0]
	ports := []int{2201, 2202, 2203, 2204, 8080, 8443}
	for _, p := range ports {
		serveHTTP(t, net.JoinHostPort(l.HostAddr, strconv.Itoa(p)))
	}
	d.fwQbo("set", "policy", "--action", "deny", "--iface", l.Host)
	d.fwQbo("add", "rule", "web", "--action", "allow", "--proto", "tcp", "--port", "8080", "--iface", l.Host)
	d.fwQbo("add", "rule", "ssh-range", "--action", "allow", "--proto", "tcp", "--port", "2202-2203", "--iface", l.Host)
	out := run(t, "ip", "netns", "exec", l.NS, "nmap", "-Pn", "-n", "-sS", "--max-retries", "1", "-T4",
		"-p", "2200-2210,8080,8443", "-oG", "-", l.HostAddr)
	var open []int
	for _, line := range strings.Split(out, "\n") {
		_, rest, ok := strings.Cut(line, "Ports: ")
		if !ok {
			continue
		}
		for _, f := range strings.Split(rest, ",") {
			parts := strings.Split(strings.TrimSpace(f), "/")
			if len(parts) > 1 && parts[1] == "open" {
				p, _ := strconv.Atoi(parts[0])
				open = append(open, p)
			}
		}
	}
	slices.Sort(open)
	if want := []int{2202, 2203, 8080}; !slices.Equal(open, want) {
		t.Errorf("nmap open ports %v, want %v\n%s", open, want, out)
	}
}

func TestFirewallReplacingRulesUnderTrafficDropsNothingAllowed(t *testing.T) {
	d := newDaemon(t)
	d.start()
	l := newFwLinks(t, 1)[0]
	d.fwQbo("set", "policy", "--action", "deny", "--iface", l.Host)
	d.fwQbo("add", "rule", "icmp", "--action", "allow", "--proto", "icmp", "--priority", "50", "--iface", l.Host)
	// Re-evaluation on: every packet of the ping flow is judged again by
	// each new rule set, so a half-applied set would show as loss.
	d.fwQbo("set", "policy", "--reevaluate=true")

	const count = 1500
	// One request every 4 ms: about six seconds of traffic.
	ping := exec.Command("ip", "netns", "exec", l.NS, "busybox", "ping", "-q", "-i", "0.004", "-c", strconv.Itoa(count), "-W", "2", l.HostAddr)
	var out strings.Builder
	ping.Stdout = &out
	if err := ping.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ping.Process.Kill() })
	done := make(chan error, 1)
	go func() { done <- ping.Wait() }()
	replaced := 0
loop:
	for i := 0; ; i++ {
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("ping: %v\n%s", err, out.String())
			}
			break loop
		default:
		}
		name := fmt.Sprintf("churn%d", i%4)
		d.fwQbo("add", "rule", name, "--action", "deny", "--proto", "tcp", "--port", strconv.Itoa(1000+i),
			"--priority", strconv.Itoa(10+i%80), "--iface", l.Host)
		if i%3 == 2 {
			d.fwQbo("delete", "rule", name)
		}
		replaced++
	}
	if !strings.Contains(out.String(), fmt.Sprintf("%d packets transmitted, %d packets received", count, count)) {
		t.Errorf("allowed packets were lost while the rule set was replaced %d times:\n%s", replaced, out.String())
	}
	if replaced < 10 {
		t.Errorf("only %d replacements happened during the traffic", replaced)
	}
	t.Logf("%d rule-set replacements under %d pings", replaced, count)
}

// TestFirewallRuleOnOneInstanceLeavesTheOther: a rule targeted at an
// instance (resolved through the runtime to the host side of its veth)
// filters that instance's traffic only.
func TestFirewallRuleOnOneInstanceLeavesTheOther(t *testing.T) {
	d := runtimeDaemon(t)
	d.start()
	var insts [2]instanceObj
	for i := range insts {
		name := fmt.Sprintf("fw%d-%s", i, randomSuffix()[:6])
		forgetInstance(t, d, name)
		out, errOut, code := d.qbo("add", "instance", name, "-o", "json")
		if code != 0 || json.Unmarshal([]byte(out), &insts[i]) != nil {
			t.Fatalf("add instance %s: exit %d\n%s", name, code, errOut)
		}
		t.Cleanup(func() { d.qbo("delete", "instance", name) })
		d.fwQbo("exec", name, "--", "busybox", "sh", "-c",
			"mkdir -p /tmp/www && echo ok > /tmp/www/index.html && busybox httpd -p 8080 -h /tmp/www")
	}
	get := func(inst instanceObj) bool {
		out, _ := exec.Command("curl", "-s", "--connect-timeout", "2", "-o", "/dev/null", "-w", "%{http_code}",
			"http://"+net.JoinHostPort(inst.Address, "8080")+"/").Output()
		return string(out) == "200"
	}
	if !get(insts[0]) || !get(insts[1]) {
		t.Fatal("the instances' web servers do not answer before any rule")
	}
	d.fwQbo("add", "rule", "no-web", "--action", "deny", "--proto", "tcp", "--port", "8080", "--instance", insts[0].Name)
	if get(insts[0]) {
		t.Error("denied for the first instance, but it answered")
	}
	if !get(insts[1]) {
		t.Error("the second instance was affected")
	}
	if r := d.rules()["no-web"]; r.Packets == 0 || r.Target != "instance:"+insts[0].Name {
		t.Errorf("rule: %+v", r)
	}
	if _, errOut, code := d.qbo("add", "rule", "ghost", "--action", "deny", "--instance", "no-such-instance"); code != 5 {
		t.Errorf("rule for an unknown instance: exit %d (%s), want 5", code, errOut)
	}

	// The rule follows its instance: recreated, the instance gets a new
	// veth, and the firewall moves there when the runtime reports it.
	d.fwQbo("delete", "instance", insts[0].Name)
	// An instance that a rule names has gone: unrelated changes still apply.
	d.fwQbo("add", "rule", "unrelated", "--action", "allow", "--proto", "udp", "--port", "53", "--priority", "50")
	out, errOut, code := d.qbo("add", "instance", insts[0].Name, "-o", "json")
	if code != 0 || json.Unmarshal([]byte(out), &insts[0]) != nil {
		t.Fatalf("re-add instance: exit %d\n%s", code, errOut)
	}
	d.fwQbo("exec", insts[0].Name, "--", "busybox", "sh", "-c",
		"mkdir -p /tmp/www && echo ok > /tmp/www/index.html && busybox httpd -p 8080 -h /tmp/www")
	deadline := time.Now().Add(30 * time.Second)
	for !d.firewallAttached(insts[0].HostVeth) {
		if time.Now().After(deadline) {
			t.Fatalf("the firewall did not attach to the recreated instance's veth %s", insts[0].HostVeth)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if get(insts[0]) {
		t.Error("the recreated instance answered despite its rule")
	}
	if !get(insts[1]) {
		t.Error("the second instance was affected after the first was recreated")
	}
}

// firewallAttached reports whether qbod's firewall is attached to iface.
func (d *daemon) firewallAttached(iface string) bool {
	var st struct {
		Systems struct {
			Firewall struct {
				Interfaces []string `json:"interfaces"`
			} `json:"firewall"`
		} `json:"systems"`
	}
	out, _, code := d.qbo("status", "-o", "json")
	return code == 0 && json.Unmarshal([]byte(out), &st) == nil && slices.Contains(st.Systems.Firewall.Interfaces, iface)
}

// prefilterCount runs "qbo VERB prefilter CIDR..." and returns the count
// its reply gives ("added" or "deleted").
func (d *daemon) prefilterCount(verb string, cidrs ...string) int {
	d.t.Helper()
	out := d.fwQbo(append([]string{verb, "prefilter", "-o", "json"}, cidrs...)...)
	var res map[string]int
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		d.t.Fatalf("%s prefilter: %v: %s", verb, err, out)
	}
	key := map[string]string{"add": "added", "delete": "deleted"}[verb]
	n, ok := res[key]
	if !ok {
		d.t.Fatalf("%s prefilter: no %q in %s", verb, key, out)
	}
	return n
}

// The prefilter drops what it denies on the uplink, in lb_xdp before any
// balancing, for IPv4 (/24 bitmap and host maps) and IPv6, and a delete
// keeps what another prefix still covers.
func TestPrefilterDropsDeniedSourcesOnTheUplink(t *testing.T) {
	n := newLBNet(t)
	d, _ := n.startNode(t)
	d.mustQbo("add", "service", "web", "--vip", "10.199.100.1:80/tcp", "--backend", "10.199.1.2:8080")
	d.mustQbo("add", "service", "web6", "--vip", "[fd00:199:100::1]:80/tcp", "--backend", "[fd00:199:1::2]:8080")
	const v4, v6 = "10.199.100.1:80", "[fd00:199:100::1]:80"
	reach := func(addr string) bool {
		return netnstest.Do(n.client, func() error { _, err := httpGet(addr); return err }) == nil
	}
	expect := func(stage string, want4, want6 bool) {
		t.Helper()
		if got := reach(v4); got != want4 {
			t.Errorf("%s: IPv4 client reaches the service: %v, want %v", stage, got, want4)
		}
		if got := reach(v6); got != want6 {
			t.Errorf("%s: IPv6 client reaches the service: %v, want %v", stage, got, want6)
		}
	}
	expect("no prefilter", true, true)

	// The client is 10.199.0.2: a /31 (a host map) and an overlapping /16.
	if got := d.prefilterCount("add", "10.199.0.2/31", "10.199.0.0/16", "10.199.0.2/31"); got != 2 {
		t.Errorf("add: %d added, want 2", got)
	}
	expect("client denied", false, true)
	if got := d.prefilterCount("add", "10.199.0.0/16"); got != 0 {
		t.Errorf("adding a listed prefix again: %d added, want 0", got)
	}
	if got := d.prefilterCount("delete", "10.199.0.0/16", "10.199.0.0/16"); got != 1 {
		t.Errorf("delete: %d deleted, want 1", got)
	}
	expect("the /31 still covers the client", false, true)
	d.prefilterCount("delete", "10.199.0.2/31")
	expect("prefilter empty again", true, true)

	d.prefilterCount("add", "fd00:199::2/128")
	expect("IPv6 client denied", true, false)
	d.prefilterCount("delete", "fd00:199::2/128")
	expect("IPv6 prefix deleted", true, true)

	var st struct {
		Systems struct {
			Firewall struct {
				Prefilter map[string]uint64 `json:"prefilter"`
			} `json:"firewall"`
		} `json:"systems"`
	}
	if err := json.Unmarshal([]byte(d.mustQbo("status", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	if st.Systems.Firewall.Prefilter["drop"] == 0 || st.Systems.Firewall.Prefilter["pass"] == 0 {
		t.Errorf("prefilter counters: %v", st.Systems.Firewall.Prefilter)
	}
}
