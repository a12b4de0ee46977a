package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestConfigLayers(t *testing.T) {
	c, err := loadConfig("/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:7070" || c.PinDir != "/sys/fs/bpf/qbo" || !c.Trace.Enabled || c.Trace.Queue != 65536 {
		t.Errorf("embedded defaults: %+v", c)
	}
	path := filepath.Join(t.TempDir(), "qbod.yaml")
	os.WriteFile(path, []byte("listen: 127.0.0.1:9999\ntrace:\n  queue: 10\n"), 0o644)
	c, err = loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:9999" || c.Trace.Queue != 10 || !c.Trace.Enabled || c.Socket != "/run/qbo/qbod.sock" {
		t.Errorf("file over defaults: %+v", c)
	}
	for _, bad := range []string{"lisen: x\n", "tokens: [{name: a, token: short}]\n", "trace: {queue: -1}\n", "listen: [\n"} {
		os.WriteFile(path, []byte(bad), 0o644)
		if _, err := loadConfig(path); err == nil {
			t.Errorf("config %q accepted", bad)
		}
	}
	if _, err := loadConfig(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Error("an explicit config path that does not exist was accepted")
	}
}

func TestLockRefusesSecondHolder(t *testing.T) {
	dir := t.TempDir()
	l, err := acquireLock(dir)
	if err != nil {
		t.Fatal(err)
	}
	// flock locks belong to open file descriptions: a second open conflicts.
	if _, err := acquireLock(dir); err == nil {
		t.Fatal("second lock acquired while the first is held")
	}
	l.release()
	l2, err := acquireLock(dir)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	l2.release()
}
