package receipt

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/heraldpush/herald/pkg/pushlog"
)

// Emitter defaults.
const (
	DefaultBuffer   = 65536
	DefaultInterval = 50 * time.Millisecond
	DefaultBatch    = 512
)

// appendBackoff are the waits between attempts to append one batch; after
// the last attempt fails the batch is dropped.
var appendBackoff = []time.Duration{100 * time.Millisecond, 300 * time.Millisecond, time.Second}

// appendTimeout bounds one attempt.
const appendTimeout = 5 * time.Second

// Option tunes an Emitter.
type Option func(*Emitter)

// WithMeter counts emitted and dropped receipts
// (herald_receipts_emitted, herald_receipts_dropped{reason}).
func WithMeter(m metric.Meter) Option { return func(e *Emitter) { e.meter = m } }

// WithBuffer sets how many receipts may wait to be appended (default
// DefaultBuffer); past it Emit drops.
func WithBuffer(n int) Option {
	return func(e *Emitter) {
		if n > 0 {
			e.bufSize = n
		}
	}
}

// Emitter appends receipts to the receipts log in batches. Emit never
// blocks: receipts wait in a bounded buffer, and when it is full (the log
// is down or slow) they are dropped with a metric and a warning. Receipts
// feed statistics and webhooks, never delivery. A nil *Emitter drops
// everything silently, so roles may run without one.
type Emitter struct {
	log     pushlog.Appender
	logger  *slog.Logger
	meter   metric.Meter
	bufSize int

	ch   chan Receipt
	kick chan struct{} // a batch is ready
	mu   sync.Mutex    // one flush at a time

	emitted  metric.Int64Counter
	dropped  metric.Int64Counter
	lastWarn atomic.Int64 // unix ns of the last "buffer full" warning
	now      func() time.Time
}

// NewEmitter returns an emitter appending to log; Run must run for
// receipts to reach it (Flush drains the buffer on shutdown).
func NewEmitter(log pushlog.Appender, logger *slog.Logger, opts ...Option) *Emitter {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	e := &Emitter{log: log, logger: logger.With("component", "receipts"), bufSize: DefaultBuffer, now: time.Now}
	for _, o := range opts {
		o(e)
	}
	if e.meter == nil {
		e.meter = noop.NewMeterProvider().Meter("herald/receipt")
	}
	var err error
	if e.emitted, err = e.meter.Int64Counter("herald_receipts_emitted", metric.WithDescription("Receipts appended to the receipts log.")); err != nil {
		e.logger.Warn("receipt metrics", "err", err)
		e.emitted, _ = noop.NewMeterProvider().Meter("").Int64Counter("")
	}
	if e.dropped, err = e.meter.Int64Counter("herald_receipts_dropped", metric.WithDescription("Receipts dropped: buffer full or log unavailable.")); err != nil {
		e.logger.Warn("receipt metrics", "err", err)
		e.dropped, _ = noop.NewMeterProvider().Meter("").Int64Counter("")
	}
	e.ch = make(chan Receipt, e.bufSize)
	e.kick = make(chan struct{}, 1)
	return e
}

var (
	reasonFull   = metric.WithAttributes(attribute.String("reason", "buffer_full"))
	reasonAppend = metric.WithAttributes(attribute.String("reason", "append_failed"))
)

// Emit queues r without blocking. A zero AtMS is set to now; a zero Count
// means 1, so emitters of aggregate events skip counts of zero.
func (e *Emitter) Emit(r Receipt) {
	if e == nil {
		return
	}
	if r.AtMS == 0 {
		r.AtMS = e.now().UnixMilli()
	}
	select {
	case e.ch <- r:
	default:
		e.dropped.Add(context.Background(), 1, reasonFull)
		if t, last := e.now().UnixNano(), e.lastWarn.Load(); t-last > int64(10*time.Second) && e.lastWarn.CompareAndSwap(last, t) {
			e.logger.Warn("receipt buffer full, dropping receipts", "buffer", e.bufSize)
		}
		return
	}
	if len(e.ch) >= DefaultBatch {
		select {
		case e.kick <- struct{}{}:
		default:
		}
	}
}

// Run appends queued receipts every DefaultInterval, or as soon as
// DefaultBatch are waiting, until ctx ends; then it flushes what is left
// (for at most 5 s) and returns nil. An append in progress when ctx ends
// is finished, not abandoned.
func (e *Emitter) Run(ctx context.Context) error {
	t := time.NewTicker(DefaultInterval)
	defer t.Stop()
	work := context.WithoutCancel(ctx)
	for {
		select {
		case <-t.C:
		case <-e.kick:
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(work, 5*time.Second)
			defer cancel()
			if err := e.Flush(fctx); err != nil {
				e.logger.Warn("flush receipts on shutdown", "err", err)
			}
			return nil
		}
		_ = e.flush(work)
	}
}

// Flush appends every receipt emitted before the call (or drops those the
// log keeps refusing). It returns an error only when ctx ends first; the
// batch being appended then is counted as dropped, though it may have
// reached the log.
func (e *Emitter) Flush(ctx context.Context) error {
	if e == nil {
		return nil
	}
	return e.flush(ctx)
}

func (e *Emitter) flush(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	// Only what is queued now: emitters that keep going do not hold us here.
	n := len(e.ch)
	batch := make([]pushlog.Record, 0, min(n, DefaultBatch))
	for n > 0 {
		batch = batch[:0]
		for len(batch) < DefaultBatch && n > 0 {
			r := <-e.ch
			n--
			batch = append(batch, pushlog.Record{Key: []byte(r.AppID), Value: Encode(r)})
		}
		if err := e.append(ctx, batch); err != nil {
			return err
		}
	}
	return nil
}

// append writes one batch, retrying with backoff; it drops the batch (with
// a warning) when every attempt fails, and returns an error only when ctx
// ends (the batch is then dropped too).
func (e *Emitter) append(ctx context.Context, batch []pushlog.Record) error {
	var err error
	for attempt := 0; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, appendTimeout)
		err = e.log.Append(actx, pushlog.TopicReceipts, batch...)
		cancel()
		if err == nil {
			e.emitted.Add(ctx, int64(len(batch)))
			return nil
		}
		if ctx.Err() != nil || attempt == len(appendBackoff) {
			break
		}
		tm := time.NewTimer(appendBackoff[attempt])
		select {
		case <-tm.C:
		case <-ctx.Done():
			tm.Stop()
		}
	}
	e.dropped.Add(context.WithoutCancel(ctx), int64(len(batch)), reasonAppend)
	e.logger.Warn("append receipts failed, dropping them", "receipts", len(batch), "err", err)
	if ctx.Err() != nil {
		return fmt.Errorf("receipt: flush: %w", ctx.Err())
	}
	return nil
}
