//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qbo/qbo/mirror"
)

// commandCase is one command sent over the websocket and the error it must
// get.
type commandCase struct {
	command string
	args    any
	code    string
	msg     string // the error message contains it
}

func checkErrors(t *testing.T, ctx context.Context, c *mirror.Client, cases []commandCase) {
	t.Helper()
	for _, tc := range cases {
		var res json.RawMessage
		err := c.Do(ctx, tc.command, tc.args, &res)
		var me *mirror.Error
		if !errors.As(err, &me) || me.Code != tc.code || !strings.Contains(me.Message, tc.msg) {
			a, _ := json.Marshal(tc.args)
			t.Errorf("%s %s: got %v (result %s), want %s mentioning %q", tc.command, a, err, res, tc.code, tc.msg)
		}
	}
}

// TestCommandArgumentErrors: with every subsystem running, the firewall's,
// load balancer's and runtime's commands decode their arguments strictly
// (an unknown field is bad_request naming it, not ignored), a command on
// one named object without the name is bad_request (not the not_found a
// lookup of "" would give), and set policy --reevaluate refuses the
// direction and target it cannot scope to.
func TestCommandArgumentErrors(t *testing.T) {
	d := runtimeDaemon(t)
	d.start()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := d.client(ctx)
	bogus := map[string]any{"bogus": 1}
	checkErrors(t, ctx, c, []commandCase{
		{"get rules", bogus, mirror.CodeBadRequest, `unknown field "bogus"`},
		{"get policies", bogus, mirror.CodeBadRequest, `unknown field "bogus"`},
		{"get prefilter", bogus, mirror.CodeBadRequest, `unknown field "bogus"`},
		{"get services", bogus, mirror.CodeBadRequest, `unknown field "bogus"`},
		{"get services", map[string]any{"name": "web", "vip": "10.0.0.1:80/tcp"}, mirror.CodeBadRequest, `unknown field "vip"`},
		{"get policies", map[string]any{"name": "eth0"}, mirror.CodeBadRequest, "target"},
		{"get policies", map[string]any{"name": "iface:qbo-e2e-none"}, mirror.CodeNotFound, "iface:qbo-e2e-none"},

		{"delete rule", nil, mirror.CodeBadRequest, "delete rule: name is required"},
		{"delete rule", map[string]any{"name": ""}, mirror.CodeBadRequest, "delete rule: name is required"},
		{"delete service", nil, mirror.CodeBadRequest, "delete service: name is required"},
		{"delete service", map[string]any{"name": ""}, mirror.CodeBadRequest, "delete service: name is required"},
		{"delete backend", map[string]any{"backend": "10.0.0.1:80"}, mirror.CodeBadRequest, "delete backend: service is required"},
		{"delete backend", map[string]any{"service": "web"}, mirror.CodeBadRequest, "delete backend: backend is required"},
		{"add backend", map[string]any{"backend": "10.0.0.1:80"}, mirror.CodeBadRequest, "add backend: service is required"},
		{"delete instance", nil, mirror.CodeBadRequest, "delete instance: name is required"},
		{"exec", map[string]any{"argv": []string{"true"}}, mirror.CodeBadRequest, "exec: name is required"},
		{"load image", map[string]any{"path": "/etc/hostname"}, mirror.CodeBadRequest, "load image: name is required"},
		// A real name still gets not_found.
		{"delete rule", map[string]any{"name": "no-such-rule"}, mirror.CodeNotFound, "no-such-rule"},
		{"delete service", map[string]any{"name": "no-such-service"}, mirror.CodeNotFound, "no-such-service"},

		{"set policy", map[string]any{"reevaluate": true, "direction": "egress"}, mirror.CodeBadRequest, "takes no direction"},
		{"set policy", map[string]any{"reevaluate": true, "iface": "lo"}, mirror.CodeBadRequest, "takes no iface"},
		{"set policy", map[string]any{"reevaluate": false, "instance": "web"}, mirror.CodeBadRequest, "takes no instance"},
	})

	// None of the refused set policy commands changed the setting.
	state := func() map[string]any {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(d.stateDir, "fw.json"))
		if errors.Is(err, os.ErrNotExist) {
			return map[string]any{}
		}
		var m map[string]any
		if err != nil || json.Unmarshal(b, &m) != nil {
			t.Fatalf("fw.json: %v %q", err, b)
		}
		return m
	}
	if re, _ := state()["reevaluate"].(bool); re {
		t.Errorf("a refused set policy --reevaluate=true turned re-evaluation on")
	}

	// The CLI sends only what it was given: --reevaluate alone works, with
	// a target or direction it is refused (exit 2, bad_request).
	if out, errOut, code := d.qbo("set", "policy", "--reevaluate=true"); code != 0 || !strings.Contains(out, `"reevaluate":true`) {
		t.Errorf("set policy --reevaluate=true: exit %d %q %q", code, out, errOut)
	}
	if re, _ := state()["reevaluate"].(bool); !re {
		t.Errorf("set policy --reevaluate=true did not persist: %v", state())
	}
	link := newFwLinks(t, 1)[0]
	for _, args := range [][]string{
		{"set", "policy", "--reevaluate=false", "--direction", "egress"},
		{"set", "policy", "--reevaluate=false", "--iface", link.Host},
	} {
		if _, errOut, code := d.qbo(args...); code != 2 || !strings.Contains(errOut, "node-wide") {
			t.Errorf("qbo %s: exit %d %q, want 2 saying re-evaluation is node-wide", strings.Join(args, " "), code, errOut)
		}
	}
	// With an action the target and direction are the policy's, and
	// reevaluate is still set node-wide.
	d.fwQbo("set", "policy", "--action", "allow", "--direction", "egress", "--iface", link.Host, "--reevaluate=false")
	if re, _ := state()["reevaluate"].(bool); re {
		t.Errorf("set policy --action allow --reevaluate=false left re-evaluation on")
	}
	var pols []struct{ Target, Direction, Action string }
	out := d.fwQbo("get", "policies", "iface:"+link.Host, "-o", "json")
	if err := json.Unmarshal([]byte(out), &pols); err != nil || len(pols) != 1 ||
		pols[0].Target != "iface:"+link.Host || pols[0].Direction != "egress" || pols[0].Action != "allow" {
		t.Errorf("get policies iface:%s: %v %s", link.Host, err, out)
	}
	if _, errOut, code := d.qbo("get", "policies", "node"); code != 5 {
		t.Errorf("get policies node (none set): exit %d %q, want 5", code, errOut)
	}
}

// TestStoppedSubsystemsAnswerUnavailable: when the firewall and the load
// balancer fail to start (here: their state files are corrupt), every one
// of their commands, reads included, answers unavailable with the reason,
// never an empty list, and before looking at the arguments.
func TestStoppedSubsystemsAnswerUnavailable(t *testing.T) {
	d := newDaemon(t)
	if err := os.MkdirAll(d.stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"fw.json", "lb.json"} {
		if err := os.WriteFile(filepath.Join(d.stateDir, f), []byte("{corrupt"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	d.start()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := d.client(ctx)
	const fwDown, lbDown = "firewall is not running: decoding fw.json", "load balancer is not running: loading lb state"
	checkErrors(t, ctx, c, []commandCase{
		{"get rules", nil, mirror.CodeUnavailable, fwDown},
		{"get rules", map[string]any{"name": "x"}, mirror.CodeUnavailable, fwDown},
		{"get rules", map[string]any{"bogus": 1}, mirror.CodeUnavailable, fwDown},
		{"get policies", nil, mirror.CodeUnavailable, fwDown},
		{"get policies", map[string]any{"bogus": 1}, mirror.CodeUnavailable, fwDown},
		{"get prefilter", nil, mirror.CodeUnavailable, fwDown},
		{"add prefilter", map[string]any{"cidrs": []string{"192.0.2.0/24"}}, mirror.CodeUnavailable, fwDown},
		{"add rule", map[string]any{"name": "x", "action": "deny"}, mirror.CodeUnavailable, fwDown},
		{"delete rule", map[string]any{"name": "x"}, mirror.CodeUnavailable, fwDown},
		{"set policy", map[string]any{"action": "deny"}, mirror.CodeUnavailable, fwDown},
		{"get services", nil, mirror.CodeUnavailable, lbDown},
		{"get services", map[string]any{"name": "web"}, mirror.CodeUnavailable, lbDown},
		{"get services", map[string]any{"bogus": 1}, mirror.CodeUnavailable, lbDown},
		{"add service", map[string]any{"name": "web", "vip": "10.0.0.1:80/tcp"}, mirror.CodeUnavailable, lbDown},
		{"delete service", map[string]any{"name": "web"}, mirror.CodeUnavailable, lbDown},
		{"add backend", map[string]any{"service": "web", "backend": "10.0.0.2:80"}, mirror.CodeUnavailable, lbDown},
		{"delete backend", map[string]any{"service": "web", "backend": "10.0.0.2:80"}, mirror.CodeUnavailable, lbDown},
	})
	// The CLI exits 1 and says why, instead of printing an empty table.
	for _, args := range [][]string{{"get", "services"}, {"get", "policies", "-o", "json"}, {"get", "rules"}} {
		if out, errOut, code := d.qbo(args...); code != 1 || !strings.Contains(errOut, "not running") || out != "" {
			t.Errorf("qbo %s: exit %d, stdout %q, stderr %q; want exit 1 saying it is not running", strings.Join(args, " "), code, out, errOut)
		}
	}
}
