package runtime

import (
	"os"
	"slices"
	"strings"
	"testing"
)

func TestContainers(t *testing.T) {
	outer := strings.Repeat("a", 64)
	inner := strings.Repeat("b", 64)
	cases := map[string][]string{
		"/":                                     nil,
		"/process_api/e6663c1e7000eeb4507":      nil,
		"/docker/" + outer:                      {outer},
		"/docker/" + outer + "/docker/" + inner: {outer, inner},
		"/system.slice/docker-" + outer + ".scope": {outer},
		"/docker/" + strings.Repeat("A", 64):       nil,
	}
	for path, want := range cases {
		if got := Containers(path); !slices.Equal(got, want) {
			t.Errorf("Containers(%q) = %v, want %v", path, got, want)
		}
	}
}

func TestCgroupOf(t *testing.T) {
	outer, inner := strings.Repeat("c", 64), strings.Repeat("d", 64)
	// What a nested container's process shows on this host: the v1
	// controllers carry both IDs, the unified line only the instance's.
	text := "9:name=systemd:/docker/" + outer + "/docker/" + inner + "\n4:memory:/docker/" + outer + "/docker/" + inner + "\n0::/docker/" + outer + "\n"
	if got := CgroupOf([]byte(text)); got != "/docker/"+outer+"/docker/"+inner {
		t.Errorf("CgroupOf picked %q, want the nested path", got)
	}
	if got := CgroupOf([]byte("0::/docker/" + outer + "\n")); got != "/docker/"+outer {
		t.Errorf("pure v2: got %q", got)
	}
	if got := CgroupOf([]byte("4:memory:/user.slice\n0::/\n")); got != "" {
		t.Errorf("host process: got %q", got)
	}
}

// BenchmarkContainersOfCgroupText is the per-process cost of attribution
// once /proc/PID/cgroup is read: picking the line and parsing its IDs.
func BenchmarkContainersOfCgroupText(b *testing.B) {
	outer, inner := strings.Repeat("e", 64), strings.Repeat("f", 64)
	var text strings.Builder
	for i, c := range []string{"name=systemd", "pids", "blkio", "freezer", "devices", "memory", "cpuset", "cpuacct", "cpu"} {
		text.WriteString(string(rune('9'-i)) + ":" + c + ":/docker/" + outer + "/docker/" + inner + "\n")
	}
	text.WriteString("0::/docker/" + outer + "\n")
	data := []byte(text.String())
	b.ReportAllocs()
	for b.Loop() {
		if len(Containers(CgroupOf(data))) != 2 {
			b.Fatal("wrong parse")
		}
	}
}

// BenchmarkPIDContainers includes reading /proc/self/cgroup.
func BenchmarkPIDContainers(b *testing.B) {
	pid := os.Getpid()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := PIDContainers(pid); err != nil {
			b.Fatal(err)
		}
	}
}
