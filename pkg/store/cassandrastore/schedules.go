package cassandrastore

import (
	"cmp"
	"context"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/store"
)

const (
	cqlInsertScheduled = `INSERT INTO scheduled (shard, due, message_id, app_id, body) VALUES (?, ?, ?, ?, ?)`
	cqlDueScheduled    = `SELECT due, message_id, app_id, body FROM scheduled WHERE shard = ? AND due <= ? LIMIT ?`
	cqlDeleteScheduled = `DELETE FROM scheduled WHERE shard = ? AND due = ? AND message_id = ?`
)

// scheduleShards is the number of partitions of the scheduled table. A
// few spread the entries over the cluster's nodes; DueScheduled reads the
// head of each one.
const scheduleShards = 8

// scheduleShard is the partition of a message's entry.
func scheduleShard(messageID string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(messageID))
	return int(h.Sum32() % scheduleShards)
}

// PutScheduled stores the entry under (shard of its id, due, id). Due is
// kept to the millisecond, Cassandra's timestamp precision; storing the
// same entry again rewrites the same row.
func (s *Store) PutScheduled(ctx context.Context, sc store.Scheduled) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	op := "put scheduled " + sc.MessageID
	if sc.MessageID == "" {
		return fmt.Errorf("cassandrastore: %s: message id is required: %w", op, herald.ErrInvalidArgument)
	}
	q := s.session.Query(cqlInsertScheduled, scheduleShard(sc.MessageID), sc.Due, sc.MessageID, sc.AppID, sc.Body).Idempotent(true)
	if err := s.exec(ctx, q); err != nil {
		return fail(op, err)
	}
	return nil
}

// DueScheduled returns up to limit entries due at or before until, by due
// time then message id; a limit <= 0 means no limit. It reads the first
// limit due entries of every shard in parallel and merges them.
func (s *Store) DueScheduled(ctx context.Context, until time.Time, limit int) ([]store.Scheduled, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	rows := limit // per shard
	if rows <= 0 {
		rows = math.MaxInt32
	}
	perShard := make([][]store.Scheduled, scheduleShards)
	g, gctx := errgroup.WithContext(ctx)
	for shard := range scheduleShards {
		g.Go(func() error {
			return retry(gctx, func() error {
				perShard[shard] = perShard[shard][:0]
				iter := s.session.Query(cqlDueScheduled, shard, until, rows).Idempotent(true).IterContext(gctx)
				var (
					e    store.Scheduled
					body []byte
				)
				for iter.Scan(&e.Due, &e.MessageID, &e.AppID, &body) {
					e.Body = body
					perShard[shard] = append(perShard[shard], e)
					body = nil
				}
				return iter.Close()
			})
		})
	}
	if err := g.Wait(); err != nil {
		return nil, fail("due scheduled", err)
	}
	var out []store.Scheduled
	for _, es := range perShard {
		out = append(out, es...)
	}
	slices.SortFunc(out, func(a, b store.Scheduled) int {
		if c := a.Due.Compare(b.Due); c != 0 {
			return c
		}
		return cmp.Compare(a.MessageID, b.MessageID)
	})
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// DeleteScheduled removes the entry (sc.MessageID, sc.Due to the
// millisecond); absent, it does nothing.
func (s *Store) DeleteScheduled(ctx context.Context, sc store.Scheduled) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	q := s.session.Query(cqlDeleteScheduled, scheduleShard(sc.MessageID), sc.Due, sc.MessageID).Idempotent(true)
	if err := s.exec(ctx, q); err != nil {
		return fail("delete scheduled "+sc.MessageID, err)
	}
	return nil
}
