// Package receipts consumes the receipts log (pushlog.TopicReceipts, JSON
// values of package receipt). Two roles read it, each in its own consumer
// group so neither can hold the other back:
//
//   - Stats (group "stats") turns receipts into per-app hourly statistics
//     (store.AddStats) and group-message counters (store.AddCounters).
//   - Webhooks (group "webhooks") POSTs each app's receipts to its webhook
//     URL, signed with the app secret.
//
// Both commit a batch only after handling it, so a crash replays it: stats
// may count a batch twice after a crash and webhooks are at-least-once
// (receivers de-duplicate by message_id, device_id and event).
package receipts

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/pkg/receipt"
)

// Log is the part of the push log both roles use.
type Log interface {
	Consume(ctx context.Context, topic, group string) (pushlog.Consumer, error)
}

// handler handles one fetched batch; it returns false when the batch must
// not be committed (ctx ended before it was handled).
type handler func(ctx context.Context, rs []receipt.Receipt) bool

// consume runs the fetch - handle - commit loop of one group until ctx ends.
func consume(ctx context.Context, lg Log, group string, logger *slog.Logger, bad func(), handle handler) error {
	cons, err := lg.Consume(ctx, pushlog.TopicReceipts, group)
	if err != nil {
		return fmt.Errorf("receipts: consume %s as %s: %w", pushlog.TopicReceipts, group, err)
	}
	defer cons.Close()
	for {
		recs, err := cons.Fetch(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("receipts: fetch (%s): %w", group, err)
		}
		if len(recs) == 0 {
			continue
		}
		rs := make([]receipt.Receipt, 0, len(recs))
		for _, rec := range recs {
			r, err := receipt.Decode(rec.Value)
			if err != nil {
				logger.Warn("skipping bad receipt", "partition", rec.Partition, "offset", rec.Offset, "err", err)
				bad()
				continue
			}
			rs = append(rs, r)
		}
		if !handle(ctx, rs) {
			return nil
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		err = cons.Commit(cctx, recs...)
		cancel()
		if err != nil {
			// The next commit covers these records too; a crash first
			// replays them.
			logger.Warn("commit receipts", "err", err)
		}
	}
}

// sleep waits d or until ctx ends; it reports whether the wait was complete.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
