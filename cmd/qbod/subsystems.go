package main

import (
	"context"
	"sort"
	"sync"
)

// subsystem is one part of qbod beyond the telemetry: the load balancer,
// the firewall, the runtime. Each lives in its own file and registers
// itself from init, so the parts stay independent of each other.
type subsystem struct {
	name string
	// early subsystems start before the others: the runtime, which
	// resolves instance targets for the firewall and load balancer.
	early bool
	// start creates the subsystem's mirrors and commands on d.hub (before
	// qbod starts serving) and starts its goroutines under wg; they end
	// when ctx is cancelled. An error is reported in status, and qbod keeps
	// serving the rest.
	start func(ctx context.Context, d *daemon, wg *sync.WaitGroup) error
	// status, if set, is the subsystem's part of the status command.
	status func() any
	// stop, if set, runs after ctx is cancelled and every goroutine ended.
	stop func()
	// record, if set, gets every record of the shared telemetry ring buffer
	// that the trace object does not own (trace.Foreign: the load
	// balancer's and the firewall's kinds); it keeps those of its own
	// kinds. It is called from the telemetry goroutine and must not block.
	record func(raw []byte)
}

var subsystems []subsystem

func register(s subsystem) {
	subsystems = append(subsystems, s)
	// Early ones first, otherwise in registration order.
	sort.SliceStable(subsystems, func(i, j int) bool { return subsystems[i].early && !subsystems[j].early })
}

// dispatchRecord hands another object's ring buffer record to the running
// subsystems.
func (d *daemon) dispatchRecord(raw []byte) {
	for _, s := range subsystems {
		if s.record != nil && d.subsysErr[s.name] == "" {
			s.record(raw)
		}
	}
}
