package runtime

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Containers lists the container IDs a cgroup path names, outermost first.
// A process of a nested container in an instance sits in
// /docker/OUTER/docker/INNER (cgroupfs driver; on this host in the v1
// hierarchies only, see CgroupOf), so the result is [OUTER, INNER]; the
// systemd driver names scopes docker-ID.scope, which are recognised too. A
// path that names no container gives nil.
func Containers(cgroupPath string) []string {
	var ids []string
	eachID(cgroupPath, func(id string) { ids = append(ids, id) })
	return ids
}

// eachID calls fn for each path segment that names a container, without
// allocating.
func eachID(path string, fn func(string)) {
	for path != "" {
		part := path
		if i := strings.IndexByte(path, '/'); i >= 0 {
			part, path = path[:i], path[i+1:]
		} else {
			path = ""
		}
		if s, ok := strings.CutPrefix(part, "docker-"); ok {
			part = strings.TrimSuffix(s, ".scope")
		}
		if isContainerID(part) {
			fn(part)
		}
	}
}

func countIDs(path string) int {
	n := 0
	eachID(path, func(string) { n++ })
	return n
}

// CgroupOf picks the path of one /proc/PID/cgroup text to attribute by:
// the one naming the most nested containers. On this host (cgroup v1 with
// v2 mounted at /sys/fs/cgroup/unified) the v1 controllers of a process in
// a nested container read /docker/OUTER/docker/INNER, but its unified ("0::")
// line stops at /docker/OUTER, because the inner dockerd, seeing a v1 host,
// creates cgroups in the v1 hierarchies only. On a pure v2 host the unified
// line is the only one and carries the full path. Ties go to the earliest
// line.
func CgroupOf(procCgroup []byte) string {
	var best []byte
	n := 0
	for len(procCgroup) > 0 {
		line := procCgroup
		if i := bytes.IndexByte(procCgroup, '\n'); i >= 0 {
			line, procCgroup = procCgroup[:i], procCgroup[i+1:]
		} else {
			procCgroup = nil
		}
		// HIERARCHY-ID:CONTROLLERS:PATH; the path may itself contain ':'.
		i := bytes.IndexByte(line, ':')
		if i < 0 {
			continue
		}
		j := bytes.IndexByte(line[i+1:], ':')
		if j < 0 {
			continue
		}
		path := line[i+1+j+1:]
		if k := countIDs(string(path)); k > n {
			best, n = path, k
		}
	}
	return string(best)
}

// PIDContainers reads /proc/PID/cgroup and returns the container IDs the
// process runs in, outermost first (nil for a host process).
func PIDContainers(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return nil, fmt.Errorf("reading cgroup of pid %d: %w", pid, err)
	}
	return Containers(CgroupOf(b)), nil
}

func isContainerID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
