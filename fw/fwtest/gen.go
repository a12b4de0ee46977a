// Package fwtest generates random rule sets and packets drawn from small
// value pools, so that random packets actually hit random rules. The fw
// unit tests and bpf/fw's differential test share it. It imports only fw.
package fwtest

import (
	"fmt"
	"math/rand/v2"
	"net/netip"

	"github.com/qbo/qbo/fw"
)

var (
	v4Pool = []string{"10.198.0.0/16", "10.198.1.0/24", "10.198.1.7/32", "10.198.2.0/24", "10.0.0.0/8", "10.198.1.128/25"}
	v6Pool = []string{"fd00:198::/64", "fd00:198::7/128", "fd00::/16", "fd00:198:0:0:8000::/65"}
	a4Pool = []string{"10.198.1.7", "10.198.1.200", "10.198.2.9", "10.198.3.1", "10.1.1.1", "192.0.2.1"}
	a6Pool = []string{"fd00:198::7", "fd00:198::8000:0:0:1", "fd00:1::1", "2001:db8::1"}
	ports  = []uint16{22, 53, 80, 443, 1000, 8080}
)

func pick[T any](r *rand.Rand, s []T) T { return s[r.IntN(len(s))] }

// RuleSet returns n random rules over ifaces (node-wide when ifaces is
// empty) and random default policies.
func RuleSet(r *rand.Rand, n int, ifaces []string) fw.RuleSet {
	var s fw.RuleSet
	for i := 0; i < n; i++ {
		rule := fw.Rule{
			Name:      fmt.Sprintf("r%d", i),
			Priority:  r.IntN(20),
			Action:    pick(r, []fw.Action{fw.Allow, fw.Deny}),
			Log:       r.IntN(4) == 0,
			Direction: pick(r, fw.Directions),
			Target:    fw.Node,
		}
		if len(ifaces) > 0 && r.IntN(2) == 0 {
			rule.Target = fw.Target{Kind: fw.TargetIface, Name: pick(r, ifaces)}
		}
		v6 := r.IntN(3) == 0
		pool := v4Pool
		if v6 {
			pool = v6Pool
		}
		if r.IntN(2) == 0 {
			rule.Src = netip.MustParsePrefix(pick(r, pool))
		}
		if r.IntN(2) == 0 {
			rule.Dst = netip.MustParsePrefix(pick(r, pool))
		}
		rule.Proto = pick(r, []uint8{fw.ProtoAny, fw.ProtoTCP, fw.ProtoUDP, fw.ProtoICMP})
		if (rule.Proto == fw.ProtoTCP || rule.Proto == fw.ProtoUDP) && r.IntN(2) == 0 {
			lo := pick(r, ports)
			hi := lo
			if r.IntN(2) == 0 {
				hi = lo + uint16(r.IntN(100))
			}
			rule.Ports = fw.PortRange{Lo: lo, Hi: hi}
		}
		s.Rules = append(s.Rules, rule)
	}
	for _, d := range fw.Directions {
		if r.IntN(2) == 0 {
			s.Policies = append(s.Policies, fw.Policy{Target: fw.Node, Direction: d, Action: pick(r, []fw.Action{fw.Allow, fw.Deny})})
		}
		for _, ifc := range ifaces {
			if r.IntN(3) == 0 {
				s.Policies = append(s.Policies, fw.Policy{Target: fw.Target{Kind: fw.TargetIface, Name: ifc}, Direction: d,
					Action: pick(r, []fw.Action{fw.Allow, fw.Deny})})
			}
		}
	}
	return s
}

// Packet returns a random packet on one of ifaces.
func Packet(r *rand.Rand, ifaces []string) fw.Packet {
	p := fw.Packet{Iface: pick(r, ifaces), Hook: pick(r, fw.Directions)}
	if r.IntN(3) == 0 {
		p.Src, p.Dst = netip.MustParseAddr(pick(r, a6Pool)), netip.MustParseAddr(pick(r, a6Pool))
		p.Proto = pick(r, []uint8{fw.ProtoTCP, fw.ProtoUDP, fw.ProtoICMPv6, 47})
	} else {
		p.Src, p.Dst = netip.MustParseAddr(pick(r, a4Pool)), netip.MustParseAddr(pick(r, a4Pool))
		p.Proto = pick(r, []uint8{fw.ProtoTCP, fw.ProtoUDP, fw.ProtoICMP, 47})
	}
	if p.Proto == fw.ProtoTCP || p.Proto == fw.ProtoUDP {
		p.DPort = pick(r, ports) + uint16(r.IntN(3))*uint16(r.IntN(60))
	}
	return p
}

// BenchRules returns the benchmarks' rule set: n deny rules on iface's
// egress, priority in order, and a node-wide default deny on egress.
// Even rules match a UDP destination port (any source), odd ones a
// source /32 (any port); a packet from 10.255.255.1 to port 9 matches
// none, so a linear evaluator walks all n.
func BenchRules(n int, iface string) fw.RuleSet {
	s := fw.RuleSet{Policies: []fw.Policy{{Target: fw.Node, Direction: fw.Ingress, Action: fw.Deny},
		{Target: fw.Node, Direction: fw.Egress, Action: fw.Deny}}}
	for i := 0; i < n; i++ {
		r := fw.Rule{Name: fmt.Sprintf("r%d", i), Priority: i, Action: fw.Deny, Proto: fw.ProtoUDP,
			Direction: fw.Egress, Target: fw.Target{Kind: fw.TargetIface, Name: iface}}
		if i%2 == 0 {
			r.Ports = fw.PortRange{Lo: uint16(10000 + i/2%50000), Hi: uint16(10000 + i/2%50000)}
		} else {
			r.Src = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32)
		}
		s.Rules = append(s.Rules, r)
	}
	return s
}

// LargeRuleSet returns n ingress rules of a busier kind than RuleSet's:
// sources of several prefix lengths in both families over a wide pool,
// TCP port ranges, UDP ports, ICMP, priorities with ties, a quarter of
// them on iface and the rest node-wide, and a node-wide default deny.
func LargeRuleSet(r *rand.Rand, n int, iface string) fw.RuleSet {
	s := fw.RuleSet{Policies: []fw.Policy{{Target: fw.Node, Direction: fw.Ingress, Action: fw.Deny}}}
	for i := 0; i < n; i++ {
		rule := fw.Rule{Name: fmt.Sprintf("m%d", i), Priority: r.IntN(1000), Action: fw.Allow, Direction: fw.Ingress, Target: fw.Node}
		if r.IntN(3) == 0 {
			rule.Action = fw.Deny
		}
		if r.IntN(4) == 0 {
			rule.Target = fw.Target{Kind: fw.TargetIface, Name: iface}
		}
		if r.IntN(5) == 0 {
			a := [16]byte{0xfd, 0, 0, byte(r.IntN(4)), 0, 0, 0, byte(r.IntN(256))}
			rule.Src = netip.PrefixFrom(netip.AddrFrom16(a), pick(r, []int{48, 64, 128})).Masked()
		} else {
			a := [4]byte{10, byte(r.IntN(4)), byte(r.IntN(256)), byte(r.IntN(256))}
			rule.Src = netip.PrefixFrom(netip.AddrFrom4(a), pick(r, []int{16, 24, 32})).Masked()
		}
		switch r.IntN(4) {
		case 0:
			rule.Proto = fw.ProtoTCP
			lo := uint16(1 + r.IntN(60000))
			rule.Ports = fw.PortRange{Lo: lo, Hi: lo + uint16(r.IntN(2000))}
		case 1:
			rule.Proto = fw.ProtoUDP
			p := pick(r, []uint16{53, 123, 443, 5353})
			rule.Ports = fw.PortRange{Lo: p, Hi: p}
		case 2:
			rule.Proto = fw.ProtoICMP
		}
		s.Rules = append(s.Rules, rule)
	}
	return s
}

// PacketFor returns a packet at (iface, hook) that matches rule's header
// fields: its source address, protocol and highest port, from the rule's
// family. Whether the rule decides depends on the rules before it.
func PacketFor(rule fw.Rule, iface string, hook fw.Direction) fw.Packet {
	p := fw.Packet{Iface: iface, Hook: hook, Src: netip.MustParseAddr("10.255.255.1"),
		Dst: netip.MustParseAddr("10.198.0.2"), Proto: fw.ProtoUDP, DPort: 9}
	if rule.Src.IsValid() {
		p.Src = rule.Src.Addr()
	}
	if rule.Dst.IsValid() {
		p.Dst = rule.Dst.Addr()
	}
	if p.Src.Is6() != p.Dst.Is6() {
		if p.Src.Is6() {
			p.Dst = netip.MustParseAddr("fd00:198::2")
		} else {
			p.Src = netip.MustParseAddr("10.255.255.1")
		}
	}
	if rule.Proto != fw.ProtoAny {
		p.Proto = rule.Proto
	}
	if p.Proto == fw.ProtoICMP && p.Src.Is6() {
		p.Proto = fw.ProtoICMPv6
	}
	p.DPort = 0
	if p.Proto == fw.ProtoTCP || p.Proto == fw.ProtoUDP {
		p.DPort = 9
		if !rule.Ports.Any() {
			p.DPort = rule.Ports.Hi
		}
	}
	return p
}
