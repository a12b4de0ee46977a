package main

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ensureBPFFS mounts a bpf filesystem at the parent of pinDir's bpffs root
// (normally /sys/fs/bpf) when none is mounted there, so pins survive qbod.
func ensureBPFFS(pinDir string) error {
	root := filepath.Dir(pinDir)
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", root, err)
	}
	if err := unix.Mount("bpf", root, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mounting bpffs at %s: %w", root, err)
	}
	return nil
}
