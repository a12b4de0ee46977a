package main

import (
	"errors"
	"testing"

	"github.com/qbo/qbo/fw"
	"github.com/qbo/qbo/fw/datapath"
)

func datapathCounter(p, b uint64) datapath.Counter { return datapath.Counter{Packets: p, Bytes: b} }

func TestAddRuleArgs(t *testing.T) {
	prio := 5
	r, err := addRuleArgs{Name: "ssh", Action: "deny", Log: true, Src: "10.1.2.3", Dst: "fd00::/8", Proto: "tcp",
		Port: "22", Priority: &prio, Instance: "web"}.rule()
	if !errors.Is(err, fw.ErrInvalid) {
		t.Fatalf("mixed families: %v %+v", err, r)
	}
	r, err = addRuleArgs{Name: "ssh", Action: "deny", Log: true, Src: "10.1.2.3", Proto: "tcp", Port: "20-22",
		Priority: &prio, Instance: "web", Direction: "egress"}.rule()
	if err != nil {
		t.Fatal(err)
	}
	want := fw.Rule{Name: "ssh", Priority: 5, Action: fw.Deny, Log: true, Direction: fw.Egress,
		Src: r.Src, Proto: fw.ProtoTCP, Ports: fw.PortRange{Lo: 20, Hi: 22},
		Target: fw.Target{Kind: fw.TargetInstance, Name: "web"}}
	if r != want || r.Src.String() != "10.1.2.3/32" {
		t.Fatalf("got %+v", r)
	}
	r, err = addRuleArgs{Name: "any", Action: "allow"}.rule()
	if err != nil || r.Priority != fw.DefaultPriority || r.Target != fw.Node || r.Direction != fw.Ingress {
		t.Fatalf("defaults: %v %+v", err, r)
	}
	for _, a := range []addRuleArgs{
		{Name: "x", Action: "allow", Iface: "a", Instance: "b"},
		{Name: "x", Action: "allow", Src: "nope"},
		{Name: "x", Action: "allow", Proto: "sctp"},
		{Name: "x", Action: "allow", Proto: "tcp", Port: "70000"},
	} {
		if _, err := a.rule(); !errors.Is(err, fw.ErrInvalid) {
			t.Errorf("%+v: want ErrInvalid, got %v", a, err)
		}
	}
	v := viewRule(want, datapathCounter(3, 300))
	if v.Port != "20-22" || v.Target != "instance:web" || v.Src != "10.1.2.3/32" || v.Packets != 3 || v.Proto != "tcp" {
		t.Errorf("view: %+v", v)
	}
}
