package receipts

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/heraldpush/herald/pkg/receipt"
	"github.com/heraldpush/herald/pkg/store"
)

// StatsStore is the part of the store Stats writes.
type StatsStore interface {
	AddStats(ctx context.Context, appID string, at time.Time, d store.StatCounts) error
	AddCounters(ctx context.Context, messageID string, d store.Counters) error
}

// StatsConfig tunes Stats.
type StatsConfig struct {
	Group      string        // consumer group, default "stats"
	MaxBackoff time.Duration // longest wait between retries of a failed store write, default 5s
}

// StatsDeps are Stats' collaborators.
type StatsDeps struct {
	Log   Log
	Store StatsStore
	Meter metric.Meter // nil = no metrics
}

// Stats is the statistics consumer of the receipts log. Per fetched batch
// it adds, per app and hour of at_ms, sent / delivered / clicked to the
// app's statistics, and per message the group counters (Targeted from
// "sent" and Delivered from "delivered" of group messages; Clicked of every
// message), then commits. A store that fails is retried until it answers:
// statistics lag, nothing is lost.
type Stats struct {
	cfg     StatsConfig
	deps    StatsDeps
	log     *slog.Logger
	applied metric.Int64Counter
	bad     metric.Int64Counter
}

// NewStats returns the stats consumer; Run starts it.
func NewStats(cfg StatsConfig, deps StatsDeps, logger *slog.Logger) (*Stats, error) {
	if cfg.Group == "" {
		cfg.Group = "stats"
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 5 * time.Second
	}
	if deps.Log == nil || deps.Store == nil {
		return nil, errors.New("receipts: stats: log and store are required")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	meter := deps.Meter
	if meter == nil {
		meter = noop.NewMeterProvider().Meter("herald/receipts")
	}
	s := &Stats{cfg: cfg, deps: deps, log: logger.With("role", "receipts-stats")}
	var err1, err2 error
	s.applied, err1 = meter.Int64Counter("herald_receipts_counted", metric.WithDescription("Receipts added to statistics and message counters."))
	s.bad, err2 = meter.Int64Counter("herald_receipts_bad", metric.WithDescription("Receipts log values that do not decode, skipped."))
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("receipts: stats metrics: %w", err)
	}
	return s, nil
}

// Run consumes until ctx ends, then returns nil.
func (s *Stats) Run(ctx context.Context) error {
	return consume(ctx, s.deps.Log, s.cfg.Group, s.log, func() { s.bad.Add(ctx, 1) }, s.handle)
}

type statKey struct {
	app  string
	hour int64 // unix seconds of the UTC hour
}

// write is one pending store write.
type write struct {
	stat    *statKey
	counts  store.StatCounts
	message string
	ctrs    store.Counters
}

// aggregate sums a batch into the store writes it needs.
func aggregate(rs []receipt.Receipt) []write {
	stats := map[statKey]*store.StatCounts{}
	ctrs := map[string]*store.Counters{}
	var order []write // first-seen order, for stable writes
	for _, r := range rs {
		n := r.N()
		var sc store.StatCounts
		var mc store.Counters
		switch r.Event {
		case receipt.EventSent:
			sc.Sent = n
			if r.Group {
				mc.Targeted = n
			}
		case receipt.EventDelivered:
			sc.Delivered = n
			if r.Group {
				mc.Delivered = n
			}
		case receipt.EventClicked:
			sc.Clicked = n
			mc.Clicked = n
		default:
			continue
		}
		k := statKey{app: r.AppID, hour: time.UnixMilli(r.AtMS).UTC().Truncate(time.Hour).Unix()}
		if c := stats[k]; c != nil {
			c.Sent += sc.Sent
			c.Delivered += sc.Delivered
			c.Clicked += sc.Clicked
		} else {
			stats[k] = &sc
			order = append(order, write{stat: &k})
		}
		if mc == (store.Counters{}) {
			continue
		}
		if c := ctrs[r.MessageID]; c != nil {
			c.Targeted += mc.Targeted
			c.Delivered += mc.Delivered
			c.Clicked += mc.Clicked
		} else {
			ctrs[r.MessageID] = &mc
			order = append(order, write{message: r.MessageID})
		}
	}
	for i, w := range order {
		if w.stat != nil {
			order[i].counts = *stats[*w.stat]
		} else {
			order[i].ctrs = *ctrs[w.message]
		}
	}
	return order
}

func (s *Stats) handle(ctx context.Context, rs []receipt.Receipt) bool {
	pending := aggregate(rs)
	backoff := 100 * time.Millisecond
	for {
		// Writes that succeed are not repeated: a retry only redoes the
		// failed ones, so nothing counts twice while the store flaps.
		var failed []write
		var lastErr error
		for _, w := range pending {
			if err := s.apply(ctx, w); err != nil {
				failed = append(failed, w)
				lastErr = err
			}
		}
		if len(failed) == 0 {
			s.applied.Add(ctx, int64(len(rs)))
			return true
		}
		s.log.Warn("store statistics failed, retrying", "writes", len(failed), "err", lastErr, "backoff", backoff)
		if !sleep(ctx, backoff) {
			return false
		}
		backoff = min(2*backoff, s.cfg.MaxBackoff)
		pending = failed
	}
}

func (s *Stats) apply(ctx context.Context, w write) error {
	// A write in progress finishes even when ctx ends (the batch is then
	// not committed and is replayed).
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if w.stat != nil {
		return s.deps.Store.AddStats(wctx, w.stat.app, time.Unix(w.stat.hour, 0).UTC(), w.counts)
	}
	return s.deps.Store.AddCounters(wctx, w.message, w.ctrs)
}
