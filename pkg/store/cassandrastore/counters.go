package cassandrastore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"golang.org/x/sync/errgroup"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/store"
)

const (
	cqlSelectBadge = `SELECT n, op FROM badges WHERE app_id = ? AND device_id = ?`
	cqlInsertBadge = `INSERT INTO badges (app_id, device_id, n, op) VALUES (?, ?, ?, ?) IF NOT EXISTS`
	cqlUpdateBadge = `UPDATE badges SET n = ?, op = ? WHERE app_id = ? AND device_id = ? IF op = ? AND n = ?`

	cqlSelectDaily = `SELECT n, op FROM daily_counts WHERE app_id = ? AND device_id = ? AND day = ?`
	cqlInsertDaily = `INSERT INTO daily_counts (app_id, device_id, day, n, op) VALUES (?, ?, ?, ?, ?)
		IF NOT EXISTS USING TTL ?`
	cqlUpdateDaily = `UPDATE daily_counts USING TTL ? SET n = ?, op = ?
		WHERE app_id = ? AND device_id = ? AND day = ? IF op = ? AND n = ?`

	cqlAddCounters = `UPDATE message_counters SET targeted = targeted + ?, delivered = delivered + ?,
		clicked = clicked + ? WHERE message_id = ?`
	cqlSelectCounters = `SELECT targeted, delivered, clicked FROM message_counters WHERE message_id = ?`

	cqlAddStats = `UPDATE stats SET sent = sent + ?, delivered = delivered + ?, clicked = clicked + ?
		WHERE app_id = ? AND day = ? AND hour = ?`
	cqlInsertStatsDay = `INSERT INTO stats_days (app_id, day) VALUES (?, ?)`
	cqlStatsDays      = `SELECT day FROM stats_days WHERE app_id = ? AND day >= ? AND day <= ?`
	cqlSelectStats    = `SELECT hour, sent, delivered, clicked FROM stats
		WHERE app_id = ? AND day = ? AND hour >= ? AND hour < ?`
)

// ---- compare-and-set integers (badges, daily quotas) ----

// maxCASRounds bounds how often a compare-and-set loop retries when
// concurrent writers of the same cell keep winning.
const maxCASRounds = 50

// casCell is one integer cell that only lightweight transactions write.
// Every write also stores a fresh random op id, and the condition is on
// the op id (and value) the writer read: so a write whose answer was lost
// and that retry() sends again recognises itself ("not applied", op =
// mine) instead of adding twice. A failed condition answers with the
// condition's columns, the current op and n, to try again with.
type casCell struct {
	read   func() *gocql.Query                                         // SELECT n, op
	insert func(n int64, op gocql.UUID) *gocql.Query                   // INSERT … IF NOT EXISTS
	update func(n int64, op, curOp gocql.UUID, cur int64) *gocql.Query // UPDATE … SET n, op IF op = curOp AND n = cur
}

// errContention reports a compare-and-set loop that kept losing.
var errContention = fmt.Errorf("too much contention: %w", herald.ErrUnavailable)

// change sets the cell to next(current value) and returns the new value;
// an absent cell's value is 0. It is linearizable: concurrent changes
// each see a distinct value.
func (s *Store) change(ctx context.Context, c casCell, next func(cur int64) int64) (int64, error) {
	var (
		cur   int64
		curOp gocql.UUID
	)
	found, err := s.scan(ctx, c.read().Idempotent(true), &cur, &curOp)
	if err != nil {
		return 0, err
	}
	for range maxCASRounds {
		v := next(cur)
		op, err := gocql.RandomUUID()
		if err != nil {
			return 0, err
		}
		q := c.insert(v, op)
		if found {
			q = c.update(v, op, curOp, cur)
		}
		prev := map[string]any{}
		applied, err := s.scanCAS(ctx, q, prev)
		if err != nil {
			return 0, err
		}
		if applied {
			return v, nil
		}
		pop, ok := prev["op"].(gocql.UUID)
		switch {
		case ok && pop == op:
			return v, nil // our own write, sent again after a lost answer
		case !ok || pop == (gocql.UUID{}):
			found, cur = false, 0 // deleted meanwhile
		default:
			found, curOp = true, pop
			if cur, ok = asInt64(prev["n"]); !ok {
				return 0, fmt.Errorf("unexpected value %T in a compare-and-set answer", prev["n"])
			}
		}
	}
	return 0, errContention
}

func asInt64(v any) (int64, bool) {
	switch n := v.(type) {
	case int:
		return int64(n), true
	case int32:
		return int64(n), true
	case int64:
		return n, true
	case nil:
		return 0, true
	}
	return 0, false
}

func (s *Store) badgeCell(appID, deviceID string) casCell {
	return casCell{
		read: func() *gocql.Query { return s.session.Query(cqlSelectBadge, appID, deviceID) },
		insert: func(n int64, op gocql.UUID) *gocql.Query {
			return s.session.Query(cqlInsertBadge, appID, deviceID, n, op)
		},
		update: func(n int64, op, curOp gocql.UUID, cur int64) *gocql.Query {
			return s.session.Query(cqlUpdateBadge, n, op, appID, deviceID, curOp, cur)
		},
	}
}

// AddBadge adds delta to the device's badge and returns the new value
// (saturating at the int32 limits), with a lightweight-transaction
// read-modify-write: concurrent adds each get their own exact value.
func (s *Store) AddBadge(ctx context.Context, appID, deviceID string, delta int32) (int32, error) {
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	n, err := s.change(ctx, s.badgeCell(appID, deviceID), func(cur int64) int64 {
		return max(min(cur+int64(delta), math.MaxInt32), math.MinInt32)
	})
	if err != nil {
		return 0, fail("add badge "+appID+"/"+deviceID, err)
	}
	return int32(n), nil
}

// SetBadge sets the device's badge, through the same compare-and-set as
// AddBadge so that the two are ordered.
func (s *Store) SetBadge(ctx context.Context, appID, deviceID string, n int32) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	if _, err := s.change(ctx, s.badgeCell(appID, deviceID), func(int64) int64 { return int64(n) }); err != nil {
		return fail("set badge "+appID+"/"+deviceID, err)
	}
	return nil
}

// Badge returns the device's badge, 0 when never set.
func (s *Store) Badge(ctx context.Context, appID, deviceID string) (int32, error) {
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	var (
		n  int64
		op gocql.UUID
	)
	if _, err := s.scan(ctx, s.session.Query(cqlSelectBadge, appID, deviceID).Idempotent(true), &n, &op); err != nil {
		return 0, fail("badge "+appID+"/"+deviceID, err)
	}
	return int32(n), nil
}

// quotaKeep is how long after its UTC day ends a daily count is kept at
// least (store.Quotas: "at least 2 days").
const quotaKeep = 2 * 24 * time.Hour

// quotaTTL is the TTL of a write, at now, of the count of day: until
// quotaKeep after the day ends, and at least quotaKeep from now.
func quotaTTL(day int, now time.Time) int {
	return max(ttlSeconds(dayStart(day+1).Add(quotaKeep), now), int(quotaKeep/time.Second))
}

// CountDaily adds n to the device's count of day's UTC date and returns
// the new count (compare-and-set, like AddBadge: exact under
// concurrency). Every write carries a TTL, so counts vanish on their own
// 2 days after their day.
func (s *Store) CountDaily(ctx context.Context, appID, deviceID string, day time.Time, n int64) (int64, error) {
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	op := "count daily " + appID + "/" + deviceID
	d := unixDay(day)
	read := func() *gocql.Query { return s.session.Query(cqlSelectDaily, appID, deviceID, d) }
	if n == 0 {
		var (
			cur int64
			id  gocql.UUID
		)
		if _, err := s.scan(ctx, read().Idempotent(true), &cur, &id); err != nil {
			return 0, fail(op, err)
		}
		return cur, nil
	}
	ttl := quotaTTL(d, s.now())
	total, err := s.change(ctx, casCell{
		read: read,
		insert: func(v int64, id gocql.UUID) *gocql.Query {
			return s.session.Query(cqlInsertDaily, appID, deviceID, d, v, id, ttl)
		},
		update: func(v int64, id, curID gocql.UUID, cur int64) *gocql.Query {
			return s.session.Query(cqlUpdateDaily, ttl, v, id, appID, deviceID, d, curID, cur)
		},
	}, func(cur int64) int64 { return cur + n })
	if err != nil {
		return 0, fail(op, err)
	}
	return total, nil
}

// ---- counter tables (message counters, statistics) ----

// retryCounter is retry for counter updates, which are not idempotent: it
// retries only errors that say the update was not applied (the
// coordinator refused it, or it never left the client). A timeout is
// returned, not retried: the update may have applied.
func retryCounter(ctx context.Context, fn func() error) error {
	err := retry(ctx, func() error {
		err := fn()
		if err != nil && !notApplied(err) {
			return errNoRetry{err}
		}
		return err
	})
	var nr errNoRetry
	if errors.As(err, &nr) {
		return nr.err
	}
	return err
}

// errNoRetry stops retry().
type errNoRetry struct{ err error }

func (e errNoRetry) Error() string { return e.err.Error() }

// notApplied reports whether err says the request surely did not apply.
func notApplied(err error) bool {
	var (
		unavailable *gocql.RequestErrUnavailable
		overloaded  *gocql.RequestErrOverloaded
		booting     *gocql.RequestErrBootstrapping
	)
	return errors.As(err, &unavailable) || errors.As(err, &overloaded) || errors.As(err, &booting) ||
		errors.Is(err, gocql.ErrNoConnections) || errors.Is(err, gocql.ErrNoStreams) || errors.Is(err, gocql.ErrUnavailable)
}

// AddCounters adds d to the message's counters (a counter table); an
// unknown message is ignored. Counter updates are not idempotent: one
// whose answer timed out is reported as an error and not retried, so a
// caller that retries may count it twice (receipts are at-least-once
// anyway).
func (s *Store) AddCounters(ctx context.Context, messageID string, d store.Counters) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	op := "add counters " + messageID
	if d == (store.Counters{}) {
		return nil
	}
	var id string
	found, err := s.scan(ctx, s.session.Query(cqlMessageExists, messageID).Idempotent(true), &id)
	if err != nil {
		return fail(op, err)
	}
	if !found {
		return nil
	}
	q := s.session.Query(cqlAddCounters, d.Targeted, d.Delivered, d.Clicked, messageID)
	if err := retryCounter(ctx, func() error { return q.ExecContext(ctx) }); err != nil {
		return fail(op, err)
	}
	return nil
}

// counters reads the message's counters (zero if none).
func (s *Store) counters(ctx context.Context, messageID string) (store.Counters, error) {
	var c store.Counters
	_, err := s.scan(ctx, s.session.Query(cqlSelectCounters, messageID).Idempotent(true),
		&c.Targeted, &c.Delivered, &c.Clicked)
	return c, err
}

// AddStats adds d to the app's counters of the hour containing at: a
// counter row in the app's partition of that UTC day, after recording the
// day in stats_days. Like AddCounters, a timed-out update is not retried.
func (s *Store) AddStats(ctx context.Context, appID string, at time.Time, d store.StatCounts) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	if d == (store.StatCounts{}) {
		return nil
	}
	op := "add stats " + appID
	day := unixDay(at)
	if err := s.exec(ctx, s.session.Query(cqlInsertStatsDay, appID, day).Idempotent(true)); err != nil {
		return fail(op, err)
	}
	q := s.session.Query(cqlAddStats, d.Sent, d.Delivered, d.Clicked, appID, day, at.UTC().Truncate(time.Hour))
	if err := retryCounter(ctx, func() error { return q.ExecContext(ctx) }); err != nil {
		return fail(op, err)
	}
	return nil
}

// Stats returns the app's non-empty hours h with from <= h < to, in
// order: it lists the days with statistics in range (stats_days), then
// reads those days' partitions in parallel.
func (s *Store) Stats(ctx context.Context, appID string, from, to time.Time) ([]store.StatBucket, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	op := "stats " + appID
	if !from.Before(to) {
		return nil, nil
	}
	var days []int
	err := retry(ctx, func() error {
		days = days[:0]
		iter := s.session.Query(cqlStatsDays, appID, unixDay(from), unixDay(to.Add(-time.Millisecond))).
			Idempotent(true).IterContext(ctx)
		var d int
		for iter.Scan(&d) {
			days = append(days, d)
		}
		return iter.Close()
	})
	if err != nil {
		return nil, fail(op, err)
	}
	perDay := make([][]store.StatBucket, len(days))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(readParallelism)
	for i, day := range days {
		g.Go(func() error {
			return retry(gctx, func() error {
				perDay[i] = perDay[i][:0]
				iter := s.session.Query(cqlSelectStats, appID, day, from, to).Idempotent(true).IterContext(gctx)
				var b store.StatBucket
				for iter.Scan(&b.Hour, &b.Sent, &b.Delivered, &b.Clicked) {
					if b.StatCounts != (store.StatCounts{}) {
						b.Hour = b.Hour.UTC()
						perDay[i] = append(perDay[i], b)
					}
				}
				return iter.Close()
			})
		})
	}
	if err := g.Wait(); err != nil {
		return nil, fail(op, err)
	}
	var out []store.StatBucket
	for _, bs := range perDay {
		out = append(out, bs...)
	}
	return out, nil
}
