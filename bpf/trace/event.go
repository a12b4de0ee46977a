package trace

import (
	"net/netip"
	"strconv"
	"time"
)

// Kind names returned by Event.Kind.
const (
	KindExec     = "exec"
	KindFork     = "fork"
	KindExit     = "exit"
	KindTCPState = "tcp_state"
	KindDrop     = "drop"
	// KindForeign is a record of another object (Foreign).
	KindForeign = "foreign"
)

// Event is one decoded telemetry record: an Exec, Fork, Exit, TCPState or
// Drop value (never a pointer).
type Event interface{ Kind() string }

// Header is what every trace event carries about when it happened and which
// task it is about.
type Header struct {
	// Time is the wall-clock time of the event, converted from the
	// kernel's CLOCK_BOOTTIME stamp with an offset taken once per process.
	Time time.Time
	// PID is the thread group id, TID the kernel task id.
	PID, TID uint32
	UID      uint32
	// CgroupID is the task's cgroup v2 id.
	CgroupID uint64
	Comm     string
}

// Exec is a successful execve. PID is the thread group, TID equals PID (the
// execing thread has taken over the leader's id), and OldTID is the thread
// that called execve: it differs from PID when a non-leader thread execs.
type Exec struct {
	Header
	PPID     uint32
	OldTID   uint32
	Filename string
}

// Fork is a new task. The header is the parent (the calling thread); Thread
// is true when the child joined the parent's thread group (CLONE_THREAD),
// in which case ChildPID equals the parent's PID.
type Fork struct {
	Header
	ChildPID, ChildTID uint32
	Thread             bool
}

// Exit is a task (thread) exiting. Code is task->exit_code in wait(2) status
// form: exit status << 8, or the terminating signal in the low 7 bits.
// GroupDead is true for the last thread of its group, i.e. the process exit.
type Exit struct {
	Header
	Code      int32
	GroupDead bool
}

// TCPState is a TCP socket changing state. The header is the socket's owner:
// the task that called connect or listen, or for an accepted socket the
// owner of its listener; it is zero when the socket predates the tracer.
// Src is the local end, Dst the remote end, as the socket has them at the
// transition: on CLOSE -> SYN_SENT the local port is usually still 0
// (connect picks it right after). Cookie identifies the socket for its
// lifetime (its kernel address, so it may be reused after CLOSE).
type TCPState struct {
	Header
	Family             uint8 // 4 or 6
	Src, Dst           netip.AddrPort
	OldState, NewState TCPStateName
	Cookie             uint64
	// NetNS is the inode number of the socket's network namespace, as in
	// /proc/PID/ns/net.
	NetNS uint32
}

// Drop is a packet freed with kfree_skb, i.e. dropped. The header is
// whatever task was running, often unrelated (softirq). Src and Dst are
// valid only when the packet's IP header parsed (L4Proto != 0); their ports
// only for TCP and UDP.
type Drop struct {
	Header
	// Reason is the kernel's enum skb_drop_reason value, ReasonName its
	// name without the SKB_DROP_REASON_ prefix (e.g. "NO_SOCKET").
	Reason     uint32
	ReasonName string
	// Location is the kernel text address that dropped the packet.
	Location uint64
	// Ifindex is the packet's device, 0 if none; NetNS the inode number of
	// the device's (or else the socket's) network namespace, as in
	// /proc/PID/ns/net.
	Ifindex    uint32
	NetNS      uint32
	EtherProto uint16
	L4Proto    uint8
	Src, Dst   netip.AddrPort
}

// Foreign is a record another qbo object (the load balancer, the firewall)
// wrote into the shared ring buffer, passed through undecoded for its owner:
// KindID is its kind byte (>= ForeignKindMin), Raw the whole record.
type Foreign struct {
	KindID uint8
	Raw    []byte
}

func (Foreign) Kind() string { return KindForeign }

func (Exec) Kind() string     { return KindExec }
func (Fork) Kind() string     { return KindFork }
func (Exit) Kind() string     { return KindExit }
func (TCPState) Kind() string { return KindTCPState }
func (Drop) Kind() string     { return KindDrop }

// TCPStateName is a TCP state as the kernel names it (include/net/tcp_states.h).
type TCPStateName string

const (
	TCPEstablished   TCPStateName = "ESTABLISHED"
	TCPSynSent       TCPStateName = "SYN_SENT"
	TCPSynRecv       TCPStateName = "SYN_RECV"
	TCPFinWait1      TCPStateName = "FIN_WAIT1"
	TCPFinWait2      TCPStateName = "FIN_WAIT2"
	TCPTimeWait      TCPStateName = "TIME_WAIT"
	TCPClose         TCPStateName = "CLOSE"
	TCPCloseWait     TCPStateName = "CLOSE_WAIT"
	TCPLastAck       TCPStateName = "LAST_ACK"
	TCPListen        TCPStateName = "LISTEN"
	TCPClosing       TCPStateName = "CLOSING"
	TCPNewSynRecv    TCPStateName = "NEW_SYN_RECV"
	TCPBoundInactive TCPStateName = "BOUND_INACTIVE"
)

// tcpStates is indexed by the kernel's state number.
var tcpStates = [...]TCPStateName{
	1:  TCPEstablished,
	2:  TCPSynSent,
	3:  TCPSynRecv,
	4:  TCPFinWait1,
	5:  TCPFinWait2,
	6:  TCPTimeWait,
	7:  TCPClose,
	8:  TCPCloseWait,
	9:  TCPLastAck,
	10: TCPListen,
	11: TCPClosing,
	12: TCPNewSynRecv,
	13: TCPBoundInactive,
}

func tcpStateName(s uint8) TCPStateName {
	if int(s) < len(tcpStates) && tcpStates[s] != "" {
		return tcpStates[s]
	}
	return TCPStateName("STATE_" + strconv.Itoa(int(s)))
}
