package bpf

import "path/filepath"

// DefaultPinDir is where every qbo map is pinned. Links live in its links/
// subdirectory so that removing the directory detaches everything.
const DefaultPinDir = "/sys/fs/bpf/qbo"

// LinksDir returns the directory under pinDir that holds pinned links.
func LinksDir(pinDir string) string { return filepath.Join(pinDir, "links") }
