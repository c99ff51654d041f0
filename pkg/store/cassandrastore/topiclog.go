package cassandrastore

import (
	"context"
	"fmt"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/ids"
	"github.com/heraldpush/herald/pkg/store"
)

const (
	cqlInsertBroadcast = `INSERT INTO broadcasts (app_id, day, message_id, expires_at, body, recalled)
		VALUES (?, ?, ?, ?, ?, ?) USING TTL ?`
	cqlListBroadcasts = `SELECT message_id, expires_at, body, recalled FROM broadcasts
		WHERE app_id = ? AND day = ? AND message_id > ? LIMIT ?`
	cqlBroadcastExists = `SELECT expires_at FROM broadcasts WHERE app_id = ? AND day = ? AND message_id = ?`
	cqlSelectBroadcast = `SELECT expires_at, body, recalled FROM broadcasts WHERE app_id = ? AND day = ? AND message_id = ?`
)

// defaultMaxBroadcastAge is Config.MaxBroadcastAge's default.
const defaultMaxBroadcastAge = 31 * 24 * time.Hour

// broadcastPage is how many rows ListBroadcasts reads per query.
const broadcastPage = 500

// broadcastDay is the topic-log partition (UTC day) of a message id: the
// day of the time in the id, or day 0 for an id that is not a Herald id.
func broadcastDay(messageID string) int {
	t := ids.Time(messageID)
	if t.IsZero() {
		return 0
	}
	return unixDay(t)
}

// PutBroadcast stores b in the app's topic log, in the partition of its
// id's day, USING TTL = its remaining lifetime, unless the id is stored
// already (a read first: the same id always carries the same message, so
// racing Puts of one id write the same row and need no transaction).
func (s *Store) PutBroadcast(ctx context.Context, appID string, b store.Broadcast) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	op := "put broadcast " + appID + "/" + b.MessageID
	if b.MessageID == "" {
		return fmt.Errorf("cassandrastore: %s: message id is required: %w", op, herald.ErrInvalidArgument)
	}
	day := broadcastDay(b.MessageID)
	var expires time.Time
	found, err := s.scan(ctx, s.session.Query(cqlBroadcastExists, appID, day, b.MessageID).Idempotent(true), &expires)
	if err != nil {
		return fail(op, err)
	}
	if found {
		return nil
	}
	recalled := any(gocql.UnsetValue) // a racing recall's flag stays
	if b.Recalled {
		recalled = true
	}
	q := s.session.Query(cqlInsertBroadcast, appID, day, b.MessageID,
		timestampOrUnset(b.ExpiresAt), b.Body, recalled, ttlSeconds(b.ExpiresAt, s.now())).Idempotent(true)
	if err := s.exec(ctx, q); err != nil {
		return fail(op, err)
	}
	return nil
}

// ListBroadcasts returns up to limit broadcasts unexpired at now with id >
// after, in id order (recalled ones flagged); a limit <= 0 means no limit.
// It walks the app's day partitions from the day of after (or from
// MaxBroadcastAge ago, whichever is later) to today, one slice query per
// day, and stops as soon as it has limit entries.
func (s *Store) ListBroadcasts(ctx context.Context, appID, after string, now time.Time, limit int) ([]store.Broadcast, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	op := "list broadcasts " + appID
	clock := s.now()
	last, first := unixDay(clock), unixDay(clock.Add(-s.maxBroadcastAge))
	if now.After(clock) {
		last = unixDay(now)
	} else {
		first = unixDay(now.Add(-s.maxBroadcastAge))
	}
	if t := ids.Time(after); !t.IsZero() {
		first = max(first, unixDay(t))
	}
	var out []store.Broadcast
	// Ids that are not Herald ids live in day 0, listed first (only
	// without a Herald id as cursor: a gateway always has one).
	days := make([]int, 0, max(last-first+2, 1))
	if after == "" || ids.Time(after).IsZero() {
		days = append(days, 0)
	}
	for d := first; d <= last; d++ {
		days = append(days, d)
	}
	for _, day := range days {
		cursor := after
		for {
			page := broadcastPage
			if limit > 0 {
				page = min(page, limit-len(out))
			}
			got, n, err := s.listBroadcastDay(ctx, appID, day, cursor, page, now)
			if err != nil {
				return nil, fail(op, err)
			}
			out = append(out, got...)
			if limit > 0 && len(out) >= limit {
				return out, nil
			}
			if n.count < page {
				break
			}
			cursor = n.last
		}
	}
	return out, nil
}

// pageEnd is what one page query read: rows, and the id of the last one
// (expired rows included, so paging moves past them).
type pageEnd struct {
	count int
	last  string
}

func (s *Store) listBroadcastDay(ctx context.Context, appID string, day int, after string, page int, now time.Time) ([]store.Broadcast, pageEnd, error) {
	var (
		out []store.Broadcast
		end pageEnd
	)
	err := retry(ctx, func() error {
		out, end = out[:0], pageEnd{}
		iter := s.session.Query(cqlListBroadcasts, appID, day, after, page).Idempotent(true).IterContext(ctx)
		var (
			b    store.Broadcast
			body []byte
		)
		for iter.Scan(&b.MessageID, &b.ExpiresAt, &body, &b.Recalled) {
			end.count++
			end.last = b.MessageID
			if !b.ExpiresAt.IsZero() && !now.Before(b.ExpiresAt) {
				continue
			}
			b.Body = body
			out = append(out, b)
			body = nil // each entry keeps its own slice
		}
		return iter.Close()
	})
	return out, end, err
}

// RecallBroadcast flags the broadcast recalled; absent, it does nothing.
// It reads the row and writes it again whole with the flag set and the
// TTL of its expiry: an update of the flag alone would create a row of
// its own for an absent broadcast, or outlive an expiring one.
func (s *Store) RecallBroadcast(ctx context.Context, appID, messageID string) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	op := "recall broadcast " + appID + "/" + messageID
	day := broadcastDay(messageID)
	var (
		expires  time.Time
		body     []byte
		recalled bool
	)
	found, err := s.scan(ctx, s.session.Query(cqlSelectBroadcast, appID, day, messageID).Idempotent(true),
		&expires, &body, &recalled)
	if err != nil {
		return fail(op, err)
	}
	if !found || recalled {
		return nil
	}
	q := s.session.Query(cqlInsertBroadcast, appID, day, messageID, timestampOrUnset(expires), body, true,
		ttlSeconds(expires, s.now())).Idempotent(true)
	if err := s.exec(ctx, q); err != nil {
		return fail(op, err)
	}
	return nil
}
