package main

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// procfs reads the full process and TCP socket listings that seed the
// mirrors and repair them after event loss. root is "/proc" outside tests.
type procfs struct {
	root     string
	bootTime time.Time
	ticks    float64 // USER_HZ; 100 on every Linux architecture qbo runs on
}

func newProcfs(root string) (*procfs, error) {
	p := &procfs{root: root, ticks: 100}
	data, err := os.ReadFile(filepath.Join(root, "stat"))
	if err != nil {
		return nil, fmt.Errorf("reading boot time: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			sec, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("parsing btime: %w", err)
			}
			p.bootTime = time.Unix(sec, 0)
		}
	}
	if p.bootTime.IsZero() {
		return nil, errors.New("no btime in /proc/stat")
	}
	return p, nil
}

// processes lists every process. Processes that exit while being read are
// skipped: the next event or resync settles them.
func (p *procfs) processes() (map[uint32]*process, error) {
	ents, err := os.ReadDir(p.root)
	if err != nil {
		return nil, fmt.Errorf("listing processes: %w", err)
	}
	out := make(map[uint32]*process, len(ents))
	for _, e := range ents {
		pid, err := strconv.ParseUint(e.Name(), 10, 32)
		if err != nil {
			continue
		}
		if proc, err := p.process(uint32(pid)); err == nil {
			out[uint32(pid)] = proc
		}
	}
	return out, nil
}

func (p *procfs) process(pid uint32) (*process, error) {
	dir := filepath.Join(p.root, strconv.FormatUint(uint64(pid), 10))
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return nil, err
	}
	proc, err := parseStat(stat)
	if err != nil {
		return nil, fmt.Errorf("pid %d: %w", pid, err)
	}
	start := p.bootTime.Add(time.Duration(float64(proc.startTicks) / p.ticks * float64(time.Second)))
	out := &process{PID: pid, PPID: proc.ppid, Comm: proc.comm, Threads: proc.threads, StartTime: &start}
	out.Exe, _ = os.Readlink(filepath.Join(dir, "exe")) // kernel threads have none
	if status, err := os.ReadFile(filepath.Join(dir, "status")); err == nil {
		out.UID = parseUID(status)
	}
	return out, nil
}

type statFields struct {
	comm       string
	ppid       uint32
	threads    int
	startTicks uint64
}

// parseStat reads /proc/PID/stat. comm is in parentheses and may itself
// contain spaces and ')', so fields are counted from the last ')'.
func parseStat(b []byte) (statFields, error) {
	open, closing := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || closing < open {
		return statFields{}, errors.New("malformed stat")
	}
	f := strings.Fields(string(b[closing+1:]))
	// After comm: state(0) ppid(1) ... num_threads(17) ... starttime(19).
	if len(f) < 20 {
		return statFields{}, errors.New("short stat")
	}
	ppid, err1 := strconv.ParseUint(f[1], 10, 32)
	threads, err2 := strconv.Atoi(f[17])
	start, err3 := strconv.ParseUint(f[19], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return statFields{}, fmt.Errorf("malformed stat: %w", err)
	}
	return statFields{comm: string(b[open+1 : closing]), ppid: uint32(ppid), threads: threads, startTicks: start}, nil
}

func parseUID(status []byte) uint32 {
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "Uid:"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				uid, _ := strconv.ParseUint(f[0], 10, 32)
				return uint32(uid)
			}
		}
	}
	return 0
}

// tcpStates names the kernel's TCP states as /proc/net/tcp numbers them;
// the names match the ones the trace object reports.
var tcpStates = map[uint64]string{
	1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
	6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING",
	12: "NEW_SYN_RECV",
}

// connections lists the TCP sockets of qbod's network namespace. TIME_WAIT
// and request sockets are left out: the event stream drops a connection when
// its full socket closes, and the listing must agree with it.
func (p *procfs) connections() ([]*connection, error) {
	var out []*connection
	for _, name := range []string{"net/tcp", "net/tcp6"} {
		f, err := os.Open(filepath.Join(p.root, name))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", name, err)
		}
		err = parseProcNetTCP(f, &out)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("parsing %s: %w", name, err)
		}
	}
	return out, nil
}

func parseProcNetTCP(r *os.File, out *[]*connection) error {
	sc := bufio.NewScanner(r)
	sc.Scan() // header
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 {
			continue
		}
		src, err1 := parseHexAddrPort(f[1])
		dst, err2 := parseHexAddrPort(f[2])
		st, err3 := strconv.ParseUint(f[3], 16, 8)
		if err := errors.Join(err1, err2, err3); err != nil {
			return err
		}
		state := tcpStates[st]
		if state == "" || state == "TIME_WAIT" || state == "NEW_SYN_RECV" || state == "CLOSE" {
			continue
		}
		*out = append(*out, &connection{Family: familyName(src.Addr()), Src: unmap(src).String(),
			Dst: unmap(dst).String(), State: state})
	}
	return sc.Err()
}

// parseHexAddrPort decodes "0100007F:1F90": the address is a sequence of
// 32-bit words in host (little-endian) order, the port is big-endian hex.
func parseHexAddrPort(s string) (netip.AddrPort, error) {
	a, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("address %q", s)
	}
	raw, err := hex.DecodeString(a)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, fmt.Errorf("address %q", s)
	}
	for i := 0; i < len(raw); i += 4 {
		raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port %q", s)
	}
	addr, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(addr, uint16(port)), nil
}

// netnsInode is the inode number of qbod's network namespace, the number the
// kernel events carry.
func netnsInode(root string) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(root, "self/ns/net"), &st); err != nil {
		return 0, fmt.Errorf("reading network namespace: %w", err)
	}
	return uint32(st.Ino), nil
}
