package main

import (
	"context"
	"sync"
)

// subsystem is one part of qbod beyond the telemetry: the load balancer,
// the firewall, the runtime. Each lives in its own file and registers
// itself from init, so the parts stay independent of each other.
type subsystem struct {
	name string
	// start creates the subsystem's mirrors and commands on d.hub (before
	// qbod starts serving) and starts its goroutines under wg; they end
	// when ctx is cancelled. An error is reported in status, and qbod keeps
	// serving the rest.
	start func(ctx context.Context, d *daemon, wg *sync.WaitGroup) error
	// status, if set, is the subsystem's part of the status command.
	status func() any
	// stop, if set, runs after ctx is cancelled and every goroutine ended.
	stop func()
}

var subsystems []subsystem

//lint:ignore U1000 subsystem files call it from init as they are added
func register(s subsystem) { subsystems = append(subsystems, s) }
