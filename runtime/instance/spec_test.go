package instance

import (
	"errors"
	"strings"
	"testing"

	"github.com/qbo/qbo/runtime/engine"
)

func TestParseSize(t *testing.T) {
	good := map[string]int64{"512m": 512 << 20, "2g": 2 << 30, "2GiB": 2 << 30, "1.5g": 3 << 29, "65536k": 64 << 20, "100": 100, "1t": 1 << 40, "64MB": 64 << 20}
	for in, want := range good {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "lots", "-1g", "1x", "99999999999t"} {
		if _, err := ParseSize(in); !errors.Is(err, engine.ErrInvalid) {
			t.Errorf("ParseSize(%q): %v, want ErrInvalid", in, err)
		}
	}
}

func TestValidate(t *testing.T) {
	ok := []Spec{{Name: "a"}, {Name: "web-1", CPUs: 0.5, Memory: 64 << 20}, {Name: strings.Repeat("x", 32)}, {Name: "g", GPUs: -1}}
	for _, s := range ok {
		if err := s.Validate(); err != nil {
			t.Errorf("%+v: %v", s, err)
		}
	}
	bad := []Spec{{Name: ""}, {Name: "-a"}, {Name: "a-"}, {Name: "A"}, {Name: "a_b"}, {Name: "a.b"}, {Name: strings.Repeat("x", 33)},
		{Name: "a", CPUs: -1}, {Name: "a", CPUs: 100000}, {Name: "a", CPUs: 0.001}, {Name: "a", Memory: 1}, {Name: "a", Memory: -5},
		{Name: "a", Memory: 1 << 60}, {Name: "a", GPUs: -2}}
	for _, s := range bad {
		if err := s.Validate(); !errors.Is(err, engine.ErrInvalid) {
			t.Errorf("%+v: %v, want ErrInvalid", s, err)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{0: "0B", 512 << 20: "512MiB", 3 << 29: "1.5GiB"} {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
	}
}
