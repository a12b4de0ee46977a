package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"unsafe"

	bpffw "github.com/qbo/qbo/bpf/fw"
	"github.com/qbo/qbo/fw"
)

// Decode errors.
var (
	// ErrNotDeny: the record is not a firewall deny event (another kind).
	ErrNotDeny = errors.New("not a firewall deny record")
	// ErrTruncated: the record is shorter than struct fw_deny_event.
	ErrTruncated = errors.New("truncated firewall record")
	// ErrUnknownVersion: a layout version this decoder does not know.
	ErrUnknownVersion = errors.New("unknown firewall record version")
)

// Deny is a decoded log-marked deny.
type Deny struct {
	BootNS  uint64 // CLOCK_BOOTTIME of the drop
	Ifindex uint32
	Iface   string // as of the last Apply; "" if unknown
	Rule    string // "" if the rule was since removed
	Hook    fw.Direction
	Proto   uint8
	Src     netip.AddrPort
	Dst     netip.AddrPort
	Len     uint32
}

// IsDenyRecord reports whether a ring record is of the firewall's deny kind.
func IsDenyRecord(raw []byte) bool { return len(raw) > 0 && raw[0] == bpffw.EventKindDeny }

// Decode decodes one ring buffer record of kind QBO_EV_FW_DENY; it does not
// retain raw.
func (d *Datapath) Decode(raw []byte) (Deny, error) {
	var e bpffw.DenyEvent
	if !IsDenyRecord(raw) {
		return Deny{}, ErrNotDeny
	}
	if len(raw) > 1 && raw[1] != 1 {
		return Deny{}, fmt.Errorf("%w: %d", ErrUnknownVersion, raw[1])
	}
	n := int(unsafe.Sizeof(e))
	if len(raw) < n {
		return Deny{}, fmt.Errorf("%w: %d bytes, need %d", ErrTruncated, len(raw), n)
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&e)), n), raw)
	out := Deny{BootNS: e.Hdr.TsNs, Ifindex: e.Ifindex, Proto: e.Proto, Len: e.Len, Hook: fw.Ingress}
	if e.Hook == bpffw.HookEgress {
		out.Hook = fw.Egress
	}
	out.Src = netip.AddrPortFrom(addr(e.Family, e.Saddr), ntohs(e.Sport))
	out.Dst = netip.AddrPortFrom(addr(e.Family, e.Daddr), ntohs(e.Dport))
	d.mu.Lock()
	out.Rule = d.names[e.Slot]
	out.Iface = d.ifidx[int(e.Ifindex)]
	d.mu.Unlock()
	return out, nil
}

// addr turns the C's network-order words into an address.
func addr(family uint8, w [4]uint32) netip.Addr {
	b := (*[16]byte)(unsafe.Pointer(&w))
	if family == 4 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(*b)
}

// ntohs converts a network-order port read as a little-endian uint16.
func ntohs(p uint16) uint16 { return p>>8 | p<<8 }
