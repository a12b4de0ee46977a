//go:build bpftest

package fw

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
)

// The bpftest tier loads fw.c into the running kernel and drives it with
// BPF_PROG_TEST_RUN. It needs root:
//
//	go test -tags bpftest ./bpf/fw/

func testPinDir(tb testing.TB) string {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Fatal("the bpftest tier loads BPF programs and needs root (euid 0)")
	}
	b := make([]byte, 6)
	rand.Read(b)
	dir := filepath.Join("/sys/fs/bpf", "qbo-test-"+hex.EncodeToString(b))
	tb.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			tb.Errorf("removing %s: %v", dir, err)
		}
	})
	return dir
}

func loadTest(tb testing.TB) *Firewall {
	tb.Helper()
	f, err := Load(Options{PinDir: testPinDir(tb)})
	if err != nil {
		tb.Fatalf("%+v", err)
	}
	tb.Cleanup(func() { f.Close() })
	return f
}

func TestLoad(t *testing.T) {
	loadTest(t)
}
