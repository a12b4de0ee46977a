package datapath

import (
	"testing"

	"github.com/qbo/qbo/fw"
)

// fw.DefaultLimits (used where no datapath is at hand) are the maps'.
func TestDefaultLimitsAreTheMaps(t *testing.T) {
	if Limits != fw.DefaultLimits {
		t.Fatalf("fw.DefaultLimits %+v, bpf/fw's maps %+v", fw.DefaultLimits, Limits)
	}
}
