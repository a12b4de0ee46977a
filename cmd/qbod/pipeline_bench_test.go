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

// BenchmarkRingToMirror measures the whole telemetry pipeline as qbod runs
// it: the kernel writes one drop event per UDP datagram sent to a closed
// loopback port, the reader decodes it, and the telemetry loop publishes it
// into the events mirror. It reports the offered and the delivered event
// rates and where events were lost (ring full in the kernel, reader queue
// full); loss is expected once the sender outruns the pipeline.
func BenchmarkRingToMirror(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Fatal("BenchmarkRingToMirror loads BPF programs: run as root")
	}
	buf := make([]byte, 4)
	rand.Read(buf)
	pinDir := "/sys/fs/bpf/qbo-test-bench-" + hex.EncodeToString(buf)
	tracer, err := trace.Load(trace.Options{PinDir: pinDir})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tracer.Close(); os.RemoveAll(pinDir) })
	reader, err := trace.NewReader(tracer, 0)
	if err != nil {
		b.Fatal(err)
	}
	hub := mirror.NewHub()
	events := hub.NewStream("events", "bench", 256)
	tel := newTelemetry(hub.NewState("processes", "bench"), hub.NewState("connections", "bench"), events)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go reader.Run(ctx)

	// A closed port: bind one, note it, close it.
	probe, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	dst := probe.LocalAddr().(*net.UDPAddr)
	probe.Close()
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()

	type result struct {
		n    int
		last time.Time
	}
	delivered := make(chan result, 1)
	start := make(chan struct{})
	port := dst.AddrPort().Port()
	go func() {
		<-start
		var r result
		// Done once the pipeline has been idle for a second: whatever was
		// not delivered by then was lost and counted.
		idle := time.NewTimer(time.Second)
		for {
			select {
			case ev := <-reader.Events():
				tel.handle(ev)
				if d, ok := ev.(trace.Drop); ok && d.Dst.Port() == port {
					r.n++
					r.last = time.Now()
				}
				idle.Reset(time.Second)
			case <-idle.C:
				delivered <- r
				return
			}
		}
	}()

	ks0, _ := tracer.Stats()
	rs0 := reader.Stats()
	payload := []byte("qbo")
	b.ResetTimer()
	t0 := time.Now()
	close(start)
	for i := 0; i < b.N; i++ {
		conn.WriteTo(payload, dst)
	}
	offered := time.Since(t0)
	r := <-delivered
	b.StopTimer()
	n := r.n
	ks1, _ := tracer.Stats()
	rs1 := reader.Stats()
	b.ReportMetric(float64(b.N)/offered.Seconds(), "offered-events/s")
	if n > 0 {
		b.ReportMetric(float64(n)/r.last.Sub(t0).Seconds(), "delivered-events/s")
	}
	b.ReportMetric(float64(ks1.Kinds[trace.KindDrop].Lost-ks0.Kinds[trace.KindDrop].Lost), "ring-lost")
	b.ReportMetric(float64(rs1.QueueDropped-rs0.QueueDropped), "queue-lost")
	b.ReportMetric(float64(b.N-n), "missing")
}
