package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestParseStat(t *testing.T) {
	// comm may contain spaces and parentheses.
	line := "1234 (a (weird) name) S 77 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 5555 1000 100\n"
	f, err := parseStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if f.comm != "a (weird) name" || f.ppid != 77 || f.threads != 3 || f.startTicks != 5555 {
		t.Errorf("parseStat: %+v", f)
	}
	for _, bad := range []string{"", "1 (x", "1 (x) S 2"} {
		if _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q) accepted malformed input", bad)
		}
	}
}

func TestProcNetTCP(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "net"), 0o755)
	os.WriteFile(filepath.Join(dir, "stat"), []byte("cpu 1 2 3\nbtime 1700000000\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "net/tcp"), []byte(
		"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"+
			"   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1\n"+
			"   1: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 2\n"+
			"   2: 0100007F:C351 0100007F:1F90 06 00000000:00000000 00:00000000 00000000     0        0 0\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "net/tcp6"), []byte(
		"  sl  local_address                         remote_address                        st\n"+
			"   0: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A\n"+
			"   1: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:C352 01\n"), 0o644)
	fs, err := newProcfs(dir)
	if err != nil {
		t.Fatal(err)
	}
	list, err := fs.connections()
	if err != nil {
		t.Fatal(err)
	}
	conns := map[string]*connection{}
	for _, c := range list {
		conns["tcp "+c.Src+"->"+c.Dst] = c
	}
	want := map[string]string{
		"tcp 127.0.0.1:8080->0.0.0.0:0":       "LISTEN",
		"tcp 127.0.0.1:50000->127.0.0.1:8080": "ESTABLISHED",
		"tcp [::1]:22->[::]:0":                "LISTEN",
		"tcp 127.0.0.1:8080->127.0.0.1:50002": "ESTABLISHED",
	}
	if len(conns) != len(want) {
		t.Errorf("got %d connections, want %d (TIME_WAIT left out): %v", len(conns), len(want), conns)
	}
	for k, st := range want {
		if c := conns[k]; c == nil || c.State != st {
			t.Errorf("%s: got %+v, want state %s", k, c, st)
		}
	}
}

func TestProcessesOfThisMachine(t *testing.T) {
	fs, err := newProcfs("/proc")
	if err != nil {
		t.Fatal(err)
	}
	procs, err := fs.processes()
	if err != nil {
		t.Fatal(err)
	}
	me := procs[uint32(os.Getpid())]
	if me == nil || me.PPID != uint32(os.Getppid()) || me.Threads < 1 || me.StartTime == nil {
		t.Fatalf("this process in the listing: %+v", me)
	}
	exe, _ := os.Executable()
	if me.Exe != exe {
		t.Errorf("exe %q, want %q", me.Exe, exe)
	}
}
