package trace

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// Errors returned by Decode, for callers that count them separately.
var (
	// ErrTruncated: the record is shorter than its kind's struct.
	ErrTruncated = errors.New("truncated trace record")
	// ErrUnknownKind: the record's kind is not one this package decodes
	// (for example a kind written by another qbo object).
	ErrUnknownKind = errors.New("unknown trace record kind")
	// ErrUnknownVersion: the record's layout version is newer than this
	// decoder.
	ErrUnknownVersion = errors.New("unknown trace record version")
	// ErrMalformed: a field holds a value the kernel side never writes.
	ErrMalformed = errors.New("malformed trace record")
)

// Record sizes, from the bpf2go-generated mirrors of the C structs.
const (
	hdrSize  = int(unsafe.Sizeof(traceQboEventHdr{}))
	execSize = int(unsafe.Sizeof(traceExecEvent{}))
	forkSize = int(unsafe.Sizeof(traceForkEvent{}))
	exitSize = int(unsafe.Sizeof(traceExitEvent{}))
	tcpSize  = int(unsafe.Sizeof(traceTcpEvent{}))
	dropSize = int(unsafe.Sizeof(traceDropEvent{}))
)

// ForeignKindMin is the first record kind that belongs to another qbo
// object (16..31 the load balancer, 32..47 the firewall; events.h).
const ForeignKindMin = 16

// Decode decodes one ring buffer record. It does not retain raw. A record
// longer than its kind's struct is accepted (fields appended by a newer
// kernel side are ignored); a shorter one, an unknown kind or version, is
// an error.
func Decode(raw []byte) (Event, error) {
	if len(raw) < hdrSize {
		return nil, fmt.Errorf("%w: %d bytes, header needs %d", ErrTruncated, len(raw), hdrSize)
	}
	kind := traceQboEventKind(raw[0])
	if uint8(kind) >= ForeignKindMin {
		// Another object's record in the shared ring: its owner decodes
		// it (and checks its version). raw is the reader's buffer.
		return Foreign{KindID: uint8(kind), Raw: bytes.Clone(raw)}, nil
	}
	if v := traceQboEventVersion(raw[1]); v != traceQboEventVersionQBO_EVENT_V1 {
		return nil, fmt.Errorf("%w: kind %d version %d", ErrUnknownVersion, kind, v)
	}
	switch kind {
	case traceQboEventKindQBO_EV_EXEC:
		var e traceExecEvent
		if err := load(&e, raw); err != nil {
			return nil, err
		}
		return Exec{
			Header:   header(&e.Hdr, &e.Task),
			PPID:     e.Ppid,
			OldTID:   e.OldTid,
			Filename: cString(e.Filename[:]),
		}, nil
	case traceQboEventKindQBO_EV_FORK:
		var e traceForkEvent
		if err := load(&e, raw); err != nil {
			return nil, err
		}
		return Fork{
			Header:   header(&e.Hdr, &e.Task),
			ChildPID: e.ChildPid,
			ChildTID: e.ChildTid,
			Thread:   e.Thread != 0,
		}, nil
	case traceQboEventKindQBO_EV_EXIT:
		var e traceExitEvent
		if err := load(&e, raw); err != nil {
			return nil, err
		}
		return Exit{
			Header:    header(&e.Hdr, &e.Task),
			Code:      e.ExitCode,
			GroupDead: e.GroupDead != 0,
		}, nil
	case traceQboEventKindQBO_EV_TCP_STATE:
		var e traceTcpEvent
		if err := load(&e, raw); err != nil {
			return nil, err
		}
		src, ok1 := addr(e.Family, &e.Saddr)
		dst, ok2 := addr(e.Family, &e.Daddr)
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("%w: tcp_state family %d", ErrMalformed, e.Family)
		}
		return TCPState{
			Header:   header(&e.Hdr, &e.Task),
			Family:   e.Family,
			Src:      netip.AddrPortFrom(src, e.Sport),
			Dst:      netip.AddrPortFrom(dst, e.Dport),
			OldState: tcpStateName(e.Oldstate),
			NewState: tcpStateName(e.Newstate),
			Cookie:   e.Skaddr,
			NetNS:    e.Netns,
		}, nil
	case traceQboEventKindQBO_EV_DROP:
		var e traceDropEvent
		if err := load(&e, raw); err != nil {
			return nil, err
		}
		d := Drop{
			Header:     header(&e.Hdr, &e.Task),
			Reason:     e.Reason,
			ReasonName: DropReasonName(e.Reason),
			Location:   e.Location,
			Ifindex:    e.Ifindex,
			NetNS:      e.Netns,
			EtherProto: e.EthProto,
			L4Proto:    e.L4Proto,
		}
		// Family 0: the packet had no IP header the program could parse.
		if e.Family != 0 {
			src, ok1 := addr(e.Family, &e.Saddr)
			dst, ok2 := addr(e.Family, &e.Daddr)
			if !ok1 || !ok2 {
				return nil, fmt.Errorf("%w: drop family %d", ErrMalformed, e.Family)
			}
			d.Src = netip.AddrPortFrom(src, e.Sport)
			d.Dst = netip.AddrPortFrom(dst, e.Dport)
		}
		return d, nil
	default:
		return nil, fmt.Errorf("%w: %d", ErrUnknownKind, kind)
	}
}

// load copies raw into the C-layout struct *v after a length check. The
// copy (rather than a cast of raw) keeps v aligned and independent of raw.
func load[T any](v *T, raw []byte) error {
	n := int(unsafe.Sizeof(*v))
	if len(raw) < n {
		return fmt.Errorf("%w: %d bytes, kind %d needs %d", ErrTruncated, len(raw), raw[0], n)
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(v)), n), raw)
	return nil
}

func header(h *traceQboEventHdr, t *traceTaskCtx) Header {
	return Header{
		Time:     bootTime(h.TsNs),
		PID:      t.Pid,
		TID:      t.Tid,
		UID:      t.Uid,
		CgroupID: t.CgroupId,
		Comm:     cString(t.Comm[:]),
	}
}

// addr turns an address in network order (as the kernel keeps it) into a
// netip.Addr: the first 4 bytes for family 4, all 16 for family 6.
func addr(family uint8, b *[16]uint8) (netip.Addr, bool) {
	switch family {
	case 4:
		return netip.AddrFrom4([4]byte(b[:4])), true
	case 6:
		return netip.AddrFrom16(*b), true
	}
	return netip.Addr{}, false
}

// cString returns the NUL-terminated string in a C char array.
func cString(s []int8) string {
	if len(s) == 0 {
		return ""
	}
	b := unsafe.Slice((*byte)(unsafe.Pointer(&s[0])), len(s))
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// bootOffset is wall-clock time minus CLOCK_BOOTTIME, the clock of
// bpf_ktime_get_boot_ns. It is taken once: a later step of the wall clock
// (NTP, settimeofday) shifts event times by that step.
var bootOffset = sync.OnceValue(func() int64 {
	var ts unix.Timespec
	before := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	after := time.Now()
	wall := before.UnixNano() + after.Sub(before).Nanoseconds()/2
	return wall - ts.Nano()
})

func bootTime(ns uint64) time.Time {
	return time.Unix(0, bootOffset()+int64(ns))
}

// dropReasons holds the names of enum skb_drop_reason from the running
// kernel's BTF, indexed by value; nil when the kernel has no BTF.
var dropReasons = sync.OnceValue(func() []string {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return nil
	}
	var e *btf.Enum
	if err := spec.TypeByName("skb_drop_reason", &e); err != nil {
		return nil
	}
	return dropReasonTable(e)
})

const dropReasonPrefix = "SKB_DROP_REASON_"

// dropReasonTable indexes an skb_drop_reason enum's value names by value.
// Values far outside the dense range (subsystem-shifted reasons) are left
// to the numeric fallback rather than growing the table.
func dropReasonTable(e *btf.Enum) []string {
	const maxDense = 1 << 12
	var names []string
	for _, v := range e.Values {
		if v.Value >= maxDense || !strings.HasPrefix(v.Name, dropReasonPrefix) {
			continue
		}
		for uint64(len(names)) <= v.Value {
			names = append(names, "")
		}
		names[v.Value] = strings.TrimPrefix(v.Name, dropReasonPrefix)
	}
	return names
}

// DropReasonName names an skb_drop_reason value as the running kernel's BTF
// does, without the SKB_DROP_REASON_ prefix ("NO_SOCKET"); a value the
// kernel does not name (or a kernel without BTF) gives the decimal number.
func DropReasonName(reason uint32) string {
	if names := dropReasons(); int64(reason) < int64(len(names)) && names[reason] != "" {
		return names[reason]
	}
	return strconv.FormatUint(uint64(reason), 10)
}
