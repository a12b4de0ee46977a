package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/qbo/qbo/bpf/trace"
	"github.com/qbo/qbo/mirror"
)

// loadTelemetry loads (or re-attaches to) the pinned trace object and
// creates its reader; runTelemetry starts them. The two are apart so that
// the other subsystems can share the trace object's ring buffer and are
// running before the telemetry asks them anything (placePID).
func (d *daemon) loadTelemetry() error {
	tracer, err := trace.Load(trace.Options{PinDir: d.cfg.PinDir})
	if err != nil {
		return err
	}
	reader, err := trace.NewReader(tracer, d.cfg.Trace.Queue)
	if err != nil {
		tracer.Close()
		return err
	}
	d.tracer, d.reader = tracer, reader
	return nil
}

func (d *daemon) runTelemetry(ctx context.Context, wg *sync.WaitGroup) error {
	fs, err := newProcfs("/proc")
	if err != nil {
		return err
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := d.reader.Run(ctx); err != nil {
			d.log.Error("trace reader stopped", "err", err)
		}
	}()
	go func() {
		defer wg.Done()
		d.feedMirrors(ctx, fs)
	}()
	return nil
}

func (d *daemon) closeTelemetry() {
	if d.tracer != nil {
		d.tracer.Close()
	}
}

// feedMirrors is the single goroutine that owns the telemetry tables. The
// reader already runs, so events that happen while /proc is being read
// queue up and are applied after the listing.
func (d *daemon) feedMirrors(ctx context.Context, fs *procfs) {
	hostNS, err := netnsInode("/proc")
	if err != nil {
		d.log.Warn("connections of other namespaces cannot be told apart", "err", err)
	}
	tel := newTelemetry(hostNS, d.procM, d.connM, d.events)
	tel.place = placePID
	d.resync(tel, fs, "scan")
	lossTick := time.NewTicker(time.Second)
	defer lossTick.Stop()
	resync := d.cfg.Trace.Resync
	if resync <= 0 {
		resync = 5 * time.Minute
	}
	resyncTick := time.NewTicker(resync)
	defer resyncTick.Stop()
	var seen lossCounters
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-d.reader.Events():
			if !ok {
				return
			}
			if f, foreign := ev.(trace.Foreign); foreign {
				d.dispatchRecord(f.Raw)
				continue
			}
			tel.handle(ev)
		case <-lossTick.C:
			if d.announceLoss(&seen) {
				d.resync(tel, fs, "loss")
			}
		case <-resyncTick.C:
			d.resync(tel, fs, "resync")
		}
	}
}

// resync makes the process and connection mirrors equal to full listings;
// the mirror publishes only what differs.
func (d *daemon) resync(tel *telemetry, fs *procfs, cause string) {
	if procs, err := fs.processes(); err != nil {
		d.log.Warn("listing processes", "err", err)
	} else {
		d.procM.Reconcile(tel.resyncProcesses(procs), cause)
	}
	if conns, err := fs.connections(); err != nil {
		d.log.Warn("listing connections", "err", err)
	} else {
		d.connM.Reconcile(tel.resyncConnections(conns), cause)
	}
}

type lossCounters struct{ ring, queue uint64 }

// announceLoss publishes a loss notice into every telemetry mirror when the
// kernel ring or the reader queue lost events since the last check.
func (d *daemon) announceLoss(seen *lossCounters) bool {
	now := lossCounters{queue: d.reader.Stats().QueueDropped}
	if ks, err := d.tracer.Stats(); err == nil {
		now.ring = ks.Lost
	}
	lost := false
	for _, c := range []struct {
		source    string
		now, prev uint64
	}{{"ring", now.ring, seen.ring}, {"queue", now.queue, seen.queue}} {
		if c.now <= c.prev {
			continue
		}
		n := mirror.LossNotice{Source: c.source, Count: c.now - c.prev, Total: c.now}
		d.procM.Loss(n)
		d.connM.Loss(n)
		d.events.Loss(n)
		d.log.Warn("telemetry events lost", "source", c.source, "count", n.Count, "total", n.Total)
		lost = true
	}
	*seen = now
	return lost
}

// traceStatus is the telemetry part of the status command.
type traceStatus struct {
	Enabled      bool              `json:"enabled"`
	Error        string            `json:"error,omitempty"`
	Received     uint64            `json:"received"`
	DecodeErrors uint64            `json:"decode_errors"`
	QueueDropped uint64            `json:"queue_dropped"`
	RingLost     uint64            `json:"ring_lost"`
	Emitted      map[string]uint64 `json:"emitted,omitempty"`
}

func (d *daemon) traceStatus() traceStatus {
	st := traceStatus{Enabled: d.tracer != nil}
	if d.traceErr != nil {
		st.Error = d.traceErr.Error()
	}
	if d.tracer == nil {
		return st
	}
	rs := d.reader.Stats()
	st.Received, st.DecodeErrors, st.QueueDropped = rs.Received, rs.DecodeErrors, rs.QueueDropped
	if ks, err := d.tracer.Stats(); err == nil {
		st.RingLost = ks.Lost
		st.Emitted = make(map[string]uint64, len(ks.Kinds))
		for kind, k := range ks.Kinds {
			st.Emitted[kind] = k.Emitted
		}
	} else {
		st.Error = fmt.Sprintf("reading kernel counters: %v", err)
	}
	return st
}
