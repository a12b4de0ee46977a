//go:build bpftest

package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"testing"
	"time"

	"github.com/qbo/qbo/bpf/trace"
	"github.com/qbo/qbo/mirror"
)

// pipeline is qbod's telemetry path as qbod runs it: the trace object's
// ring buffer, the reader, and the telemetry loop publishing into mirrors.
type pipeline struct {
	tracer *trace.Tracer
	reader *trace.Reader
	tel    *telemetry
	conn   net.PacketConn
	dst    *net.UDPAddr
}

func newPipeline(b *testing.B) *pipeline {
	if os.Geteuid() != 0 {
		b.Fatal("the pipeline benchmark loads BPF programs: run as root")
	}
	buf := make([]byte, 4)
	rand.Read(buf)
	pinDir := "/sys/fs/bpf/qbo-test-bench-" + hex.EncodeToString(buf)
	tracer, err := trace.Load(trace.Options{PinDir: pinDir})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tracer.Close(); os.RemoveAll(pinDir) })
	hub := mirror.NewHub()
	p := &pipeline{tracer: tracer,
		tel: newTelemetry(0, hub.NewState("processes", ""), hub.NewState("connections", ""), hub.NewStream("events", "", 256))}
	// The load: UDP datagrams to a closed loopback port, one drop each.
	probe, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	p.dst = probe.LocalAddr().(*net.UDPAddr)
	probe.Close()
	if p.conn, err = net.ListenPacket("udp4", "127.0.0.1:0"); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.conn.Close() })
	return p
}

func (p *pipeline) send(n int) {
	for i := 0; i < n; i++ {
		p.conn.WriteTo([]byte("qbo"), p.dst)
	}
}

// run starts a reader and the telemetry loop; the returned function waits
// until want drops to the closed port were published, or the pipeline was
// idle for a second (the rest was lost and counted), and stops both.
func (p *pipeline) run(b *testing.B, want int) func() (int, time.Time) {
	r, err := trace.NewReader(p.tracer, 0)
	if err != nil {
		b.Fatal(err)
	}
	p.reader = r
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { r.Run(ctx); close(stopped) }()
	type result struct {
		n    int
		last time.Time
	}
	done := make(chan result, 1)
	port := uint16(p.dst.Port)
	go func() {
		var res result
		idle := time.NewTimer(time.Second)
		defer func() { done <- res }()
		for res.n < want {
			select {
			case ev := <-r.Events():
				p.tel.handle(ev)
				if d, ok := ev.(trace.Drop); ok && d.Dst.Port() == port {
					res.n++
					res.last = time.Now()
				}
				idle.Reset(time.Second)
			case <-idle.C:
				return
			}
		}
	}()
	return func() (int, time.Time) {
		res := <-done
		cancel()
		<-stopped // a reader still running would take the next batch's events
		return res.n, res.last
	}
}

// BenchmarkRingToMirror measures kernel ring buffer -> reader -> decoder ->
// telemetry -> mirror publish (JSON encoding, retention), with loss counts.
//
// live: the benchmark sends while the pipeline runs; one core producing
// drops bounds the rate, and the loss counters show whether it keeps up.
// drain: a batch is queued in the ring with no reader, then drained; the
// rate is the pipeline's own throughput.
func BenchmarkRingToMirror(b *testing.B) {
	report := func(b *testing.B, p *pipeline, delivered int, elapsed time.Duration, k0 trace.KernelStats) {
		k1, _ := p.tracer.Stats()
		b.ReportMetric(float64(delivered)/elapsed.Seconds(), "events/s")
		b.ReportMetric(float64(b.N-delivered), "missing")
		b.ReportMetric(float64(k1.Kinds[trace.KindDrop].Lost-k0.Kinds[trace.KindDrop].Lost), "ring-lost")
		b.ReportMetric(float64(p.reader.Stats().QueueDropped), "queue-lost")
	}
	b.Run("live", func(b *testing.B) {
		p := newPipeline(b)
		k0, _ := p.tracer.Stats()
		wait := p.run(b, b.N)
		b.ResetTimer()
		start := time.Now()
		p.send(b.N)
		n, last := wait()
		b.StopTimer()
		report(b, p, n, last.Sub(start), k0)
	})
	b.Run("drain", func(b *testing.B) {
		p := newPipeline(b)
		k0, _ := p.tracer.Stats()
		// A batch fits the 4 MiB ring (128 bytes a drop record) with room
		// for the host's own events.
		const batch = 16384
		var delivered int
		var elapsed time.Duration
		b.ResetTimer()
		for left := b.N; left > 0; left -= batch {
			b.StopTimer()
			p.send(min(left, batch))
			b.StartTimer()
			start := time.Now()
			wait := p.run(b, min(left, batch))
			n, last := wait()
			delivered += n
			if n > 0 {
				elapsed += last.Sub(start)
			}
		}
		b.StopTimer()
		report(b, p, delivered, elapsed, k0)
	})
}
