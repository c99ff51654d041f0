// Package scheduler fires send_at messages. The api keeps a scheduled
// message in the store (store.Scheduled: the push-log records it would have
// appended, encoded as internalv1.ScheduledSend); the scheduler polls for
// due entries and, for each, appends its records to the push log, moves the
// message from scheduled to active, and deletes the entry. Cancelled
// messages are deleted unsent.
//
// A crash between the append and the delete appends the records again on
// the next poll: duplicates are harmless (status transitions are
// idempotent, the topic log ignores a stored id, devices de-duplicate), and
// a message already active is not appended twice.
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"

	herald "github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/envelope/internalv1"
	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/pkg/store"
)

// Store is the part of the store the scheduler uses.
type Store interface {
	DueScheduled(ctx context.Context, until time.Time, limit int) ([]store.Scheduled, error)
	DeleteScheduled(ctx context.Context, s store.Scheduled) error
	MessageStates(ctx context.Context, messageIDs []string) (map[string]store.MessageState, error)
	SetMessageState(ctx context.Context, messageID string, from []store.MessageState, to store.MessageState) (store.MessageState, bool, error)
}

// Leadership lets one scheduler of a cluster fire messages at a time (two
// would append every message twice).
type Leadership interface {
	// Lead blocks until this process leads, or ctx ends, and returns a
	// context that ends when the leadership is lost.
	Lead(ctx context.Context) (context.Context, error)
}

// Config tunes the scheduler.
type Config struct {
	// Interval between polls for due messages; default 200ms. A message
	// fires within about one interval of its send_at.
	Interval time.Duration
	// Batch is how many due entries one poll takes; default 100. A full
	// batch is followed by the next one at once.
	Batch int
	// Parallel bounds the messages fired at once; default 16.
	Parallel int
}

func (c *Config) setDefaults() {
	if c.Interval <= 0 {
		c.Interval = 200 * time.Millisecond
	}
	if c.Batch <= 0 {
		c.Batch = 100
	}
	if c.Parallel <= 0 {
		c.Parallel = 16
	}
}

// Deps are the scheduler's collaborators.
type Deps struct {
	Store Store
	Log   pushlog.Appender
	// Leadership is nil in one process (this scheduler always leads).
	Leadership Leadership
	Meter      metric.Meter
}

// Scheduler is the send_at scheduler; it runs in the dispatcher role.
type Scheduler struct {
	cfg  Config
	deps Deps
	log  *slog.Logger
	now  func() time.Time

	fired     metric.Int64Counter
	cancelled metric.Int64Counter
	lag       metric.Float64Histogram
}

// New returns a scheduler; Run starts it.
func New(cfg Config, deps Deps, logger *slog.Logger) (*Scheduler, error) {
	cfg.setDefaults()
	if deps.Store == nil || deps.Log == nil {
		return nil, errors.New("scheduler: store and log are required")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	meter := deps.Meter
	if meter == nil {
		meter = noop.NewMeterProvider().Meter("herald/scheduler")
	}
	s := &Scheduler{cfg: cfg, deps: deps, log: logger.With("role", "scheduler"), now: time.Now}
	var errs [3]error
	s.fired, errs[0] = meter.Int64Counter("herald_scheduler_fired", metric.WithDescription("Scheduled messages appended to the push log."))
	s.cancelled, errs[1] = meter.Int64Counter("herald_scheduler_cancelled", metric.WithDescription("Scheduled messages dropped because they were cancelled."))
	s.lag, errs[2] = meter.Float64Histogram("herald_scheduler_lag", metric.WithUnit("s"),
		metric.WithDescription("Time from a message's send_at to its append to the push log."),
		metric.WithExplicitBucketBoundaries(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600))
	if err := errors.Join(errs[:]...); err != nil {
		return nil, fmt.Errorf("scheduler: metrics: %w", err)
	}
	return s, nil
}

// Run fires due messages until ctx ends. The first poll is at once, so a
// restart fires what became due while the process was down.
func (s *Scheduler) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		lctx := ctx
		if s.deps.Leadership != nil {
			var err error
			if lctx, err = s.deps.Leadership.Lead(ctx); err != nil {
				if ctx.Err() != nil {
					break
				}
				s.log.Warn("scheduler leadership", "err", err)
				sleep(ctx, time.Second)
				continue
			}
			s.log.Info("scheduler leads")
		}
		s.poll(lctx)
		if s.deps.Leadership != nil && ctx.Err() == nil {
			s.log.Info("scheduler leadership lost")
		}
	}
	return nil
}

// poll fires due messages every interval until ctx ends.
func (s *Scheduler) poll(ctx context.Context) {
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		for s.fireDue(ctx) == s.cfg.Batch && ctx.Err() == nil {
			// a full batch settled: more may be due
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// fireDue fires one batch of due messages and returns how many it settled
// (fired or dropped; the others stay for the next poll).
func (s *Scheduler) fireDue(ctx context.Context) int {
	now := s.now()
	due, err := s.deps.Store.DueScheduled(ctx, now, s.cfg.Batch)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("list due scheduled messages", "err", err)
		}
		return 0
	}
	if len(due) == 0 {
		return 0
	}
	ids := make([]string, len(due))
	for i, e := range due {
		ids[i] = e.MessageID
	}
	states, err := s.deps.Store.MessageStates(ctx, ids)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("look up scheduled message states", "err", err)
		}
		return 0
	}
	var settled atomic.Int64
	var g errgroup.Group
	g.SetLimit(s.cfg.Parallel)
	for _, e := range due {
		st, known := states[e.MessageID]
		g.Go(func() error {
			if s.fire(ctx, e, st, known) {
				settled.Add(1)
			}
			return nil
		})
	}
	_ = g.Wait()
	return int(settled.Load())
}

// fire handles one due entry and reports whether it is settled; on any
// error the entry stays and the next poll tries again.
func (s *Scheduler) fire(ctx context.Context, e store.Scheduled, st store.MessageState, known bool) bool {
	log := s.log.With("message", e.MessageID, "app", e.AppID)
	switch {
	case known && st == store.MessageCancelled:
		ok := s.delete(ctx, e, log)
		if ok {
			s.cancelled.Add(ctx, 1)
		}
		return ok
	case known && st != store.MessageScheduled:
		// Active (or recalled since): appended before a crash that came
		// before the delete. Do not send it twice.
		return s.delete(ctx, e, log)
	case !known:
		log.Warn("scheduled message has no status row; sending it anyway")
	}
	var send internalv1.ScheduledSend
	if err := proto.Unmarshal(e.Body, &send); err != nil {
		log.Error("dropping undecodable scheduled message", "err", err)
		return s.delete(ctx, e, log)
	}
	recs := make([]pushlog.Record, len(send.GetRecords()))
	for i, r := range send.GetRecords() {
		recs[i] = pushlog.Record{Key: r.GetKey(), Value: r.GetValue()}
	}
	if len(recs) > 0 {
		if err := s.deps.Log.Append(ctx, pushlog.TopicPush, recs...); err != nil {
			if ctx.Err() == nil {
				log.Warn("append scheduled message; retrying at the next poll", "err", err)
			}
			return false
		}
	}
	s.fired.Add(ctx, 1)
	s.lag.Record(ctx, max(0, s.now().Sub(e.Due).Seconds()))
	// A cancel that raced with the append leaves the message cancelled: the
	// dispatcher drops scheduled records of cancelled messages.
	if _, _, err := s.deps.Store.SetMessageState(ctx, e.MessageID,
		[]store.MessageState{store.MessageScheduled}, store.MessageActive); err != nil && !errors.Is(err, herald.ErrMessageNotFound) {
		if ctx.Err() == nil {
			log.Warn("mark scheduled message active; retrying at the next poll", "err", err)
		}
		return false
	}
	return s.delete(ctx, e, log)
}

func (s *Scheduler) delete(ctx context.Context, e store.Scheduled, log *slog.Logger) bool {
	if err := s.deps.Store.DeleteScheduled(ctx, e); err != nil {
		if ctx.Err() == nil {
			log.Warn("delete scheduled message; retrying at the next poll", "err", err)
		}
		return false
	}
	return true
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
