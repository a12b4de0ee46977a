package trace

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf/ringbuf"
)

// DefaultQueue is the capacity of a Reader's channel when NewReader is
// given 0.
const DefaultQueue = 65536

// idlePause is how long Run waits after it has drained the ring.
const idlePause = time.Millisecond

// Reader drains the telemetry ring buffer into a bounded channel of decoded
// events. It never blocks the ring on a slow consumer: when the channel is
// full an event is dropped and counted in ReaderStats.QueueDropped, while
// the ring itself keeps being drained (the kernel counts what the ring
// could not take in KernelStats.Lost). Events reach the channel at most
// about idlePause (1 ms) after the kernel wrote them.
type Reader struct {
	rd      *ringbuf.Reader
	events  chan Event
	started atomic.Bool

	received     atomic.Uint64
	decoded      atomic.Uint64
	decodeErrors atomic.Uint64
	queueDropped atomic.Uint64
}

// ReaderStats counts what a Reader did with the records it read.
type ReaderStats struct {
	// Received records were read from the ring.
	Received uint64
	// Decoded records became events (queued or dropped).
	Decoded uint64
	// DecodeErrors records could not be decoded (including kinds written
	// by other objects that this package does not know).
	DecodeErrors uint64
	// QueueDropped events were decoded but the channel was full.
	QueueDropped uint64
}

// NewReader opens the Tracer's ring buffer. queue is the capacity of the
// Events channel, DefaultQueue if 0. Only one Reader should run per ring:
// records are consumed, not copied to every reader.
func NewReader(t *Tracer, queue int) (*Reader, error) {
	if queue < 0 {
		return nil, fmt.Errorf("queue capacity %d is negative", queue)
	}
	if queue == 0 {
		queue = DefaultQueue
	}
	rd, err := ringbuf.NewReader(t.EventsMap())
	if err != nil {
		return nil, fmt.Errorf("opening ring buffer: %w", err)
	}
	return &Reader{rd: rd, events: make(chan Event, queue)}, nil
}

// Run reads and decodes records until ctx is cancelled, then returns nil.
// It closes the Events channel and the ring buffer reader on return, so it
// runs once per Reader.
func (r *Reader) Run(ctx context.Context) error {
	if !r.started.CompareAndSwap(false, true) {
		return errors.New("reader already ran")
	}
	defer close(r.events)
	defer r.rd.Close()
	// Closing the ringbuf.Reader is what interrupts a blocked read.
	stop := context.AfterFunc(ctx, func() { r.rd.Close() })
	defer stop()

	pause := time.NewTimer(idlePause)
	pause.Stop()
	var rec ringbuf.Record
	for {
		if err := r.rd.ReadInto(&rec); err != nil {
			if ctx.Err() != nil && errors.Is(err, ringbuf.ErrClosed) {
				return nil
			}
			return fmt.Errorf("reading ring buffer: %w", err)
		}
		r.deliver(rec.RawSample)

		// The kernel wakes the reader (an irq_work, costly on the
		// producing CPU) for a record written into an empty ring. Once
		// the ring is drained, waiting a moment lets records accumulate
		// and be read with a single wakeup: at high rates this halves
		// the cost per event, for at most idlePause of added latency.
		if rec.Remaining == 0 {
			pause.Reset(idlePause)
			select {
			case <-ctx.Done():
			case <-pause.C:
			}
		}
	}
}

// deliver decodes one record and queues it without blocking.
func (r *Reader) deliver(raw []byte) {
	r.received.Add(1)
	ev, err := Decode(raw)
	if err != nil {
		r.decodeErrors.Add(1)
		return
	}
	r.decoded.Add(1)
	select {
	case r.events <- ev:
	default:
		r.queueDropped.Add(1)
	}
}

// Events is the channel Run delivers to; it is closed when Run returns.
func (r *Reader) Events() <-chan Event { return r.events }

// Stats returns the Reader's counters.
func (r *Reader) Stats() ReaderStats {
	return ReaderStats{
		Received:     r.received.Load(),
		Decoded:      r.decoded.Load(),
		DecodeErrors: r.decodeErrors.Load(),
		QueueDropped: r.queueDropped.Load(),
	}
}
