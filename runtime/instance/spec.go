package instance

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"regexp"
	goruntime "runtime"
	"strconv"
	"strings"

	"github.com/qbo/qbo/runtime/engine"
)

// Spec is what a user asks for.
type Spec struct {
	Name string `json:"name"`
	// CPUs is a fraction of host CPUs (0: no limit).
	CPUs float64 `json:"cpus,omitempty"`
	// Memory is a limit in bytes (0: no limit).
	Memory int64 `json:"memory,omitempty"`
	// Image is the image to run; empty means the instance image built from
	// the host's binaries (built on first use).
	Image string `json:"image,omitempty"`
	// GPUs asks the host dockerd for that many GPUs through a device request
	// with the "gpu" capability (0: none, -1: all). It needs a GPU device
	// driver (e.g. the NVIDIA container toolkit) on the host; without one
	// dockerd refuses to start the container and creation rolls back.
	GPUs int `json:"gpus,omitempty"`
}

// MinMemory is the smallest limit an instance's dockerd starts within.
const MinMemory = 64 << 20

// Names are DNS labels short enough that the socket path under the state
// dir stays within the 108 bytes of a unix socket address.
var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`)

// Validate checks a spec against this host, before anything is created.
func (s Spec) Validate() error {
	if !nameRE.MatchString(s.Name) {
		return fmt.Errorf("instance name %q: %w: use 1-32 lowercase letters, digits and '-', starting and ending with a letter or digit", s.Name, engine.ErrInvalid)
	}
	if n := float64(goruntime.NumCPU()); s.CPUs < 0 || s.CPUs > n {
		return fmt.Errorf("cpus %g: %w: must be between 0 (no limit) and the host's %g CPUs", s.CPUs, engine.ErrInvalid, n)
	}
	if s.CPUs > 0 && s.CPUs < 0.01 {
		return fmt.Errorf("cpus %g: %w: the smallest limit is 0.01", s.CPUs, engine.ErrInvalid)
	}
	if s.Memory < 0 || (s.Memory > 0 && s.Memory < MinMemory) {
		return fmt.Errorf("memory %d bytes: %w: an instance needs at least 64MiB", s.Memory, engine.ErrInvalid)
	}
	if total := hostMemory(); s.Memory > 0 && total > 0 && s.Memory > total {
		return fmt.Errorf("memory %s: %w: the host has %s", FormatSize(s.Memory), engine.ErrInvalid, FormatSize(total))
	}
	if s.GPUs < -1 {
		return fmt.Errorf("gpus %d: %w: must be -1 (all), 0 or a count", s.GPUs, engine.ErrInvalid)
	}
	return nil
}

func hostMemory() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == "MemTotal:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// ParseSize reads a memory size: a number of bytes with an optional suffix
// k, m, g, t (powers of 1024; "b", "ib" and "iB" endings accepted).
func ParseSize(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "b"), "i")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'k':
			mult = 1 << 10
		case 'm':
			mult = 1 << 20
		case 'g':
			mult = 1 << 30
		case 't':
			mult = 1 << 40
		}
		if mult != 1 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 || v*float64(mult) > float64(1<<62) {
		return 0, fmt.Errorf("size %q: %w: want e.g. 512m or 2g", s, engine.ErrInvalid)
	}
	return int64(v * float64(mult)), nil
}

// FormatSize prints bytes with the largest exact-enough binary unit.
func FormatSize(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	f := float64(n)
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	return strconv.FormatFloat(f, 'f', -1, 64) + units[i]
}
