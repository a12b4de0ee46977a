package image

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"debug/elf"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/moby/moby/client"

	"github.com/qbo/qbo/runtime/engine"
)

//go:embed init.sh
var initScript []byte

// version changes when the layout of the image changes without any input
// file changing.
const version = "qbo-instance-1"

// Repository is the name instance images are tagged with.
const Repository = "qbo/instance"

// entry is one file of the image: dst inside the image, src on the host
// (empty for data), or a symlink.
type entry struct {
	dst  string
	src  string
	link string
	data []byte
	mode int64
}

// required are the host binaries the image cannot work without; optional
// ones are added when the host has them.
var (
	required = []string{"dockerd", "containerd", "containerd-shim-runc-v2", "runc", "xtables-nft-multi"}
	optional = []string{"docker-proxy", "docker-init", "docker", "containerd-shim"}
	// iptables front ends the inner dockerd runs; all are the nft multi-call
	// binary, which picks its personality from argv[0].
	xtablesNames   = []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"}
	busyboxApplets = []string{"sh", "mount", "umount", "mkdir", "rm", "cat", "ls", "ps", "echo", "sleep", "grep", "ip", "kill", "ln", "env", "true", "false", "wget", "id", "hostname", "modprobe"}
	libDirs        = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}
	xtablesModules = []string{"/usr/lib/x86_64-linux-gnu/xtables", "/usr/lib/xtables"}
)

var searchPath = []string{"/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin"}

func lookPath(name string) (string, error) {
	for _, d := range searchPath {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("host binary %s: %w", name, engine.ErrNotFound)
}

// plan lists the files of the image, resolved on this host.
func plan() ([]entry, error) {
	var es []entry
	libs := map[string]bool{}
	addBin := func(name, dst string) error {
		p, err := lookPath(name)
		if err != nil {
			return err
		}
		es = append(es, entry{dst: dst, src: p, mode: 0o755})
		return elfDeps(p, libs)
	}
	for _, n := range required {
		if err := addBin(n, "/usr/bin/"+n); err != nil {
			return nil, err
		}
	}
	for _, n := range optional {
		if err := addBin(n, "/usr/bin/"+n); err != nil && !errors.Is(err, engine.ErrNotFound) {
			return nil, err
		}
	}
	for _, n := range xtablesNames {
		es = append(es, entry{dst: "/usr/sbin/" + n, link: "/usr/bin/xtables-nft-multi"})
	}
	// busybox must be static: it runs the init script before any library
	// path matters, and Debian's busybox-static is.
	bb, err := lookPath("busybox")
	if err != nil {
		return nil, fmt.Errorf("busybox (apt-get install busybox-static): %w", err)
	}
	if f, err := elf.Open(bb); err == nil {
		libsOf, _ := f.ImportedLibraries()
		f.Close()
		if len(libsOf) > 0 {
			return nil, fmt.Errorf("busybox at %s is not static: %w", bb, engine.ErrInvalid)
		}
	}
	es = append(es, entry{dst: "/bin/busybox", src: bb, mode: 0o755})
	for _, a := range busyboxApplets {
		es = append(es, entry{dst: "/bin/" + a, link: "busybox"})
	}
	for lib := range libs {
		es = append(es, entry{dst: lib, src: lib, mode: 0o644})
	}
	for _, dir := range xtablesModules {
		mods, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, m := range mods {
			p := filepath.Join(dir, m.Name())
			es = append(es, entry{dst: p, src: p, mode: 0o644})
			if err := elfDeps(p, libs); err != nil {
				return nil, err
			}
		}
		break
	}
	// Libraries the xtables modules pulled in after the first pass.
	have := map[string]bool{}
	for _, e := range es {
		have[e.dst] = true
	}
	for lib := range libs {
		if !have[lib] {
			es = append(es, entry{dst: lib, src: lib, mode: 0o644})
		}
	}
	es = append(es,
		entry{dst: "/sbin/qbo-init", data: initScript, mode: 0o755},
		entry{dst: "/etc/os-release", data: []byte("ID=qbo-instance\nNAME=\"qbo instance\"\n"), mode: 0o644},
		entry{dst: "/etc/passwd", data: []byte("root:x:0:0:root:/root:/bin/sh\n"), mode: 0o644},
		entry{dst: "/etc/group", data: []byte("root:x:0:\n"), mode: 0o644},
	)
	sort.Slice(es, func(i, j int) bool { return es[i].dst < es[j].dst })
	return es, nil
}

// elfDeps adds the shared libraries (and the interpreter) an ELF file needs,
// transitively, as host paths.
func elfDeps(path string, libs map[string]bool) error {
	f, err := elf.Open(path)
	if err != nil {
		if strings.HasSuffix(path, ".so") {
			return nil
		}
		return fmt.Errorf("reading ELF %s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err == nil {
				interp := strings.TrimRight(string(b), "\x00")
				libs[interp] = true
			}
		}
	}
	needed, err := f.ImportedLibraries()
	if err != nil {
		return nil // static
	}
	for _, n := range needed {
		found := ""
		for _, d := range libDirs {
			p := filepath.Join(d, n)
			if _, err := os.Stat(p); err == nil {
				found = p
				break
			}
		}
		if found == "" {
			return fmt.Errorf("library %s needed by %s: %w", n, path, engine.ErrNotFound)
		}
		if !libs[found] {
			libs[found] = true
			if err := elfDeps(found, libs); err != nil {
				return err
			}
		}
	}
	return nil
}

// keyMemo remembers content keys by the plan's file metadata, so that each
// add instance does not re-hash ~200 MB of binaries; a changed size or
// mtime of any file means hashing again.
var keyMemo = struct {
	sync.Mutex
	m map[string]string
}{m: map[string]string{}}

// statSignature summarises the plan by path, size and mtime.
func statSignature(es []entry) (string, error) {
	h := sha256.New()
	for _, e := range es {
		fmt.Fprintf(h, "%s %s %o %d\n", e.dst, e.link, e.mode, len(e.data))
		h.Write(e.data)
		if e.src != "" {
			fi, err := os.Stat(e.src)
			if err != nil {
				return "", fmt.Errorf("stat %s: %w", e.src, err)
			}
			fmt.Fprintf(h, "%s %d %d\n", e.src, fi.Size(), fi.ModTime().UnixNano())
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// contentKey is key, memoised by statSignature.
func contentKey(es []entry) (string, error) {
	sig, err := statSignature(es)
	if err != nil {
		return "", err
	}
	keyMemo.Lock()
	k, ok := keyMemo.m[sig]
	keyMemo.Unlock()
	if ok {
		return k, nil
	}
	if k, err = key(es); err != nil {
		return "", err
	}
	keyMemo.Lock()
	keyMemo.m[sig] = k
	keyMemo.Unlock()
	return k, nil
}

// key hashes the plan: every destination, link and content.
func key(es []entry) (string, error) {
	h := sha256.New()
	io.WriteString(h, version+"\n")
	for _, e := range es {
		fmt.Fprintf(h, "%s %s %o\n", e.dst, e.link, e.mode)
		switch {
		case e.data != nil:
			h.Write(e.data)
		case e.src != "":
			f, err := os.Open(e.src)
			if err != nil {
				return "", fmt.Errorf("hashing %s: %w", e.src, err)
			}
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return "", fmt.Errorf("hashing %s: %w", e.src, err)
			}
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// writeTar writes the root filesystem.
func writeTar(w io.Writer, es []entry) error {
	tw := tar.NewWriter(w)
	dirs := map[string]bool{}
	mkdir := func(d string) error {
		var chain []string
		for d != "/" && d != "." && !dirs[d] {
			chain = append(chain, d)
			dirs[d] = true
			d = filepath.Dir(d)
		}
		for i := len(chain) - 1; i >= 0; i-- {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(chain[i], "/") + "/", Mode: 0o755}); err != nil {
				return err
			}
		}
		return nil
	}
	for _, d := range []string{"/tmp", "/run", "/var/lib/docker", "/proc", "/sys", "/dev", "/root", "/etc"} {
		if err := mkdir(d); err != nil {
			return err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "var/run", Linkname: "../run"}); err != nil {
		return err
	}
	for _, e := range es {
		if err := mkdir(filepath.Dir(e.dst)); err != nil {
			return err
		}
		name := strings.TrimPrefix(e.dst, "/")
		switch {
		case e.link != "":
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: e.link}); err != nil {
				return err
			}
		case e.data != nil:
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: e.mode, Size: int64(len(e.data))}); err != nil {
				return err
			}
			if _, err := tw.Write(e.data); err != nil {
				return err
			}
		default:
			if err := copyFile(tw, name, e); err != nil {
				return err
			}
		}
	}
	return tw.Close()
}

func copyFile(tw *tar.Writer, name string, e entry) error {
	f, err := os.Open(e.src)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	mode := int64(fi.Mode().Perm())
	if e.mode&0o111 != 0 {
		mode |= 0o755
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: fi.Size()}); err != nil {
		return err
	}
	_, err = io.Copy(tw, f)
	return err
}

// Result says what Build did.
type Result struct {
	Ref    string `json:"ref"`
	Key    string `json:"key"`
	Cached bool   `json:"cached"`
}

// Ref returns the reference the instance image built from this host's
// binaries would have, without building it.
func Ref() (string, error) {
	es, err := plan()
	if err != nil {
		return "", err
	}
	k, err := contentKey(es)
	if err != nil {
		return "", err
	}
	return Repository + ":" + k, nil
}

// Build makes sure the instance image for this host's binaries exists in the
// dockerd behind c, importing it when it does not.
func Build(ctx context.Context, c *client.Client) (Result, error) {
	es, err := plan()
	if err != nil {
		return Result{}, fmt.Errorf("planning the instance image: %w", err)
	}
	k, err := contentKey(es)
	if err != nil {
		return Result{}, err
	}
	ref := Repository + ":" + k
	if _, err := c.ImageInspect(ctx, ref); err == nil {
		return Result{Ref: ref, Key: k, Cached: true}, nil
	} else if !engine.IsNotFound(err) {
		return Result{}, fmt.Errorf("inspecting %s: %w", ref, err)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeTar(pw, es)) }()
	defer pr.Close()
	body, err := c.ImageImport(ctx, client.ImageImportSource{Source: pr, SourceName: "-"}, ref, client.ImageImportOptions{
		Message: "qbo build image instance",
		Changes: []string{
			`ENTRYPOINT ["/sbin/qbo-init"]`,
			`ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin`,
			fmt.Sprintf(`LABEL %s=true %s=%s %s=%s`, engine.LabelManaged, engine.LabelRole, engine.RoleImage, engine.LabelContent, k),
		},
	})
	if err != nil {
		return Result{}, fmt.Errorf("importing %s: %w", ref, err)
	}
	defer body.Close()
	if _, err := engine.DrainMessages(body); err != nil {
		return Result{}, fmt.Errorf("importing %s: %w", ref, err)
	}
	pruneOld(ctx, c, k)
	return Result{Ref: ref, Key: k}, nil
}

// pruneOld removes instance images of other keys (built from binaries the
// host no longer has) that no container uses; dockerd refuses to remove
// one in use, and that refusal is fine.
func pruneOld(ctx context.Context, c *client.Client, keep string) {
	list, err := c.ImageList(ctx, client.ImageListOptions{Filters: engine.Managed(engine.LabelRole + "=" + engine.RoleImage)})
	if err != nil {
		return
	}
	for _, img := range list.Items {
		if img.Labels[engine.LabelContent] != keep {
			c.ImageRemove(ctx, img.ID, client.ImageRemoveOptions{PruneChildren: true})
		}
	}
}

// WriteRootfs writes the image's root filesystem as a tar to w (for users who
// want to inspect it or import it elsewhere).
func WriteRootfs(w io.Writer) error {
	es, err := plan()
	if err != nil {
		return err
	}
	return writeTar(w, es)
}
