package image

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestTarAndKey(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "tool")
	if err := os.WriteFile(src, []byte("binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	es := []entry{
		{dst: "/usr/bin/tool", src: src, mode: 0o755},
		{dst: "/usr/sbin/alias", link: "/usr/bin/tool"},
		{dst: "/sbin/qbo-init", data: initScript, mode: 0o755},
	}
	var buf bytes.Buffer
	if err := writeTar(&buf, es); err != nil {
		t.Fatal(err)
	}
	got := map[string]*tar.Header{}
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = h
	}
	for name, typ := range map[string]byte{"usr/": tar.TypeDir, "usr/bin/": tar.TypeDir, "usr/bin/tool": tar.TypeReg,
		"usr/sbin/alias": tar.TypeSymlink, "sbin/qbo-init": tar.TypeReg, "var/run": tar.TypeSymlink, "var/lib/docker/": tar.TypeDir, "tmp/": tar.TypeDir} {
		if h := got[name]; h == nil || h.Typeflag != typ {
			t.Errorf("%s: %+v, want type %c", name, h, typ)
		}
	}
	if h := got["usr/bin/tool"]; h != nil && h.Mode&0o111 == 0 {
		t.Errorf("tool lost its exec bits: %o", h.Mode)
	}

	k1, err := key(es)
	if err != nil {
		t.Fatal(err)
	}
	if k2, _ := key(es); k2 != k1 {
		t.Errorf("key not deterministic: %s %s", k1, k2)
	}
	m1, err := contentKey(es)
	if err != nil || m1 != k1 {
		t.Fatalf("contentKey = %s, %v; want %s", m1, err, k1)
	}
	os.WriteFile(src, []byte("binary v2"), 0o755)
	if k3, _ := key(es); k3 == k1 {
		t.Errorf("key did not change with a file's content")
	}
	if m2, _ := contentKey(es); m2 == m1 {
		t.Errorf("the memoised key did not notice the changed file")
	}
}
