package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/qbo/qbo/cmd/internal/buildinfo"
)

// collector reads qbod's counters at scrape time, so the hot paths keep
// plain atomic counters and know nothing of Prometheus.
type collector struct {
	d *daemon

	buildInfo, traceReceived, traceDecodeErr, traceQueueDrop, traceRingLost, traceEmitted *prometheus.Desc
	mirrorSeq, mirrorObjects, mirrorSubscribers                                           *prometheus.Desc
	clients, commands, commandErrors, lagged                                              *prometheus.Desc
}

func newCollector(d *daemon) *collector {
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("qbo_"+name, help, labels, nil)
	}
	return &collector{
		d:                 d,
		buildInfo:         desc("build_info", "qbod build, value 1.", "version"),
		traceReceived:     desc("trace_received_total", "Records read from the telemetry ring buffer."),
		traceDecodeErr:    desc("trace_decode_errors_total", "Ring buffer records that could not be decoded."),
		traceQueueDrop:    desc("trace_queue_dropped_total", "Decoded events lost because the reader queue was full."),
		traceRingLost:     desc("trace_ring_lost_total", "Events lost in the kernel because the ring buffer was full.", "kind"),
		traceEmitted:      desc("trace_emitted_total", "Events written to the ring buffer by the kernel.", "kind"),
		mirrorSeq:         desc("mirror_sequence", "Last sequence number of a mirror.", "mirror"),
		mirrorObjects:     desc("mirror_objects", "Objects held by a mirror.", "mirror"),
		mirrorSubscribers: desc("mirror_subscribers", "Clients watching a mirror.", "mirror"),
		clients:           desc("mirror_clients", "Connected websocket clients."),
		commands:          desc("mirror_commands_total", "Commands received."),
		commandErrors:     desc("mirror_command_errors_total", "Commands answered with an error."),
		lagged:            desc("mirror_lagged_disconnects_total", "Clients disconnected because they fell behind their send budget."),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(c.buildInfo, 1, buildinfo.Version)
	if c.d.tracer != nil {
		rs := c.d.reader.Stats()
		counter(c.traceReceived, rs.Received)
		counter(c.traceDecodeErr, rs.DecodeErrors)
		counter(c.traceQueueDrop, rs.QueueDropped)
		if ks, err := c.d.tracer.Stats(); err == nil {
			for kind, k := range ks.Kinds {
				counter(c.traceRingLost, k.Lost, kind)
				counter(c.traceEmitted, k.Emitted, kind)
			}
		}
	}
	for _, m := range c.d.hub.Mirrors() {
		gauge(c.mirrorSeq, float64(m.Seq), m.Name)
		gauge(c.mirrorObjects, float64(m.Objects), m.Name)
		gauge(c.mirrorSubscribers, float64(m.Subscribers), m.Name)
	}
	hs := c.d.hub.Stats()
	gauge(c.clients, float64(hs.Clients))
	counter(c.commands, hs.Commands)
	counter(c.commandErrors, hs.CommandErrors)
	counter(c.lagged, hs.LaggedDisconnects)
}
