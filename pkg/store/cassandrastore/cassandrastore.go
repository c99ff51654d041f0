// Package cassandrastore implements store.Store on Apache Cassandra (5.0,
// native protocol 4 or 5) through the Apache Cassandra GoCQL driver: the
// app and device registry (with tags, topics and the alias index), the
// offline inbox, per-message delivery status, states and counters,
// idempotency keys, badges, daily quotas, the topic log of group
// messages, scheduled sends and hourly statistics.
//
// The schema is the versioned CQL under deploy/cassandra, applied by
// Migrate; docs/cassandra.md explains the data model and why each
// operation uses the consistency mechanism it does. In short:
//
//   - CreateApp, UpdateApp, Claim/Release, collapsing inbox Puts,
//     UpdateTags/UpdateTopics (IF EXISTS), SetMessageState, AddBadge,
//     SetBadge and CountDaily use lightweight transactions (Paxos): they
//     are compare-and-set by nature, or must return an exact new value.
//   - Message counters and statistics are counter tables: increments
//     commute, and a timed-out increment is not retried (it may have
//     applied).
//   - Mark, the hot ack path, does not: a target's state only moves forward
//     because pending rows are written at write timestamp 1 and terminal
//     states at a timestamp that decreases with wall time, so of racing
//     terminal writes the first one wins on every replica, and a read
//     before the write skips targets that are unknown or already terminal.
//   - Inbox and topic-log rows carry USING TTL = the entry's remaining
//     lifetime, daily counts a TTL of 2 days past their day, so expired
//     data vanishes without a sweeper; List and ListBroadcasts also filter
//     on the stored expiry, which is exact to the millisecond.
//
// Unavailable replicas, timeouts and overload are retried a few times with
// backoff; after that they surface wrapped in herald.ErrUnavailable.
package cassandrastore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/store"
)

// Config configures a Store.
type Config struct {
	// Hosts are the contact points, "host" or "host:port" (port 9042 by default).
	Hosts []string
	// Keyspace holds the schema Migrate created.
	Keyspace string
	// Consistency of reads and writes: one, local_one, local_quorum, quorum
	// or all. Default local_quorum. Lightweight transactions use
	// local_serial with the local_* levels and serial otherwise.
	Consistency string
	// Timeout of one request on the client side. Default 12s: above
	// Cassandra's own request timeouts, so the server answers first.
	Timeout time.Duration
	// MaxBroadcastAge is how far back ListBroadcasts looks for group
	// messages when its cursor is older (or none): at least the longest
	// message TTL the api accepts (api.max_ttl). Default 31 days.
	MaxBroadcastAge time.Duration
	// Now is the clock; default time.Now. Tests set it.
	Now func() time.Time
}

// Store implements store.Store on a Cassandra session it owns.
type Store struct {
	session         *gocql.Session
	now             func() time.Time
	maxBroadcastAge time.Duration
	logger          *slog.Logger
	closed          atomic.Bool
}

var _ store.Store = (*Store)(nil)

const defaultTimeout = 12 * time.Second

// keyspaceName is a keyspace name Cassandra keeps as written when
// unquoted: lower case, so CQL and the driver agree on it.
var keyspaceName = regexp.MustCompile(`^[a-z][a-z0-9_]{0,47}$`)

// Open connects to the cluster and returns a store on cfg.Keyspace, which
// must already hold the schema (see Migrate). An unreachable cluster is
// herald.ErrUnavailable.
func Open(ctx context.Context, cfg Config, logger *slog.Logger) (*Store, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if len(cfg.Hosts) == 0 {
		return nil, fmt.Errorf("cassandrastore: open: no hosts: %w", herald.ErrInvalidArgument)
	}
	if !keyspaceName.MatchString(cfg.Keyspace) {
		return nil, fmt.Errorf("cassandrastore: open: bad keyspace name %q: %w", cfg.Keyspace, herald.ErrInvalidArgument)
	}
	cons, serial, err := parseConsistency(cfg.Consistency)
	if err != nil {
		return nil, fmt.Errorf("cassandrastore: open: %w", err)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cluster := newCluster(cfg.Hosts, cfg.Timeout, logger)
	cluster.Keyspace = cfg.Keyspace
	cluster.Consistency = cons
	cluster.SerialConsistency = serial
	session, err := createSession(ctx, cluster)
	if err != nil {
		return nil, fmt.Errorf("cassandrastore: open %s: %w", strings.Join(cfg.Hosts, ","), err)
	}
	if cfg.MaxBroadcastAge <= 0 {
		cfg.MaxBroadcastAge = defaultMaxBroadcastAge
	}
	return &Store{session: session, now: cfg.Now, maxBroadcastAge: cfg.MaxBroadcastAge, logger: logger}, nil
}

// newCluster returns the driver configuration shared by Open and Migrate.
func newCluster(hosts []string, timeout time.Duration, logger *slog.Logger) *gocql.ClusterConfig {
	if timeout <= 0 {
		timeout = defaultTimeout
	}
	cluster := gocql.NewCluster(hosts...)
	cluster.Timeout = timeout
	cluster.ConnectTimeout = timeout
	// Protocol v4: with v5 the driver sends the session keyspace in every
	// PREPARE, which Cassandra 5 logs as dangerous. Herald needs nothing
	// from v5.
	cluster.ProtoVersion = 4
	cluster.PoolConfig.HostSelectionPolicy = gocql.TokenAwareHostPolicy(gocql.RoundRobinHostPolicy())
	cluster.Logger = slogLogger{logger}
	// Coordinator-assigned write timestamps, the clock lightweight
	// transactions use too: a plain write and a Paxos write to the same
	// partition (inbox Put and DeleteDevice) are then ordered by one kind
	// of clock. Status writes set their timestamps explicitly.
	cluster.DefaultTimestamp = false
	// Retries are ours (Store.retry): they honour the context.
	cluster.RetryPolicy = nil
	return cluster
}

// createSession connects, giving up when ctx ends.
func createSession(ctx context.Context, cluster *gocql.ClusterConfig) (*gocql.Session, error) {
	type result struct {
		s   *gocql.Session
		err error
	}
	done := make(chan result, 1)
	go func() {
		s, err := cluster.CreateSession()
		done <- result{s, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("connect: %w (%w)", herald.ErrUnavailable, r.err)
		}
		return r.s, nil
	case <-ctx.Done():
		go func() { // close the session if it still comes up
			if r := <-done; r.s != nil {
				r.s.Close()
			}
		}()
		return nil, fmt.Errorf("connect: %w", ctx.Err())
	}
}

func parseConsistency(s string) (cons, serial gocql.Consistency, err error) {
	switch strings.ToLower(s) {
	case "", "local_quorum":
		return gocql.LocalQuorum, gocql.LocalSerial, nil
	case "local_one":
		return gocql.LocalOne, gocql.LocalSerial, nil
	case "one":
		return gocql.One, gocql.Serial, nil
	case "quorum":
		return gocql.Quorum, gocql.Serial, nil
	case "all":
		return gocql.All, gocql.Serial, nil
	}
	return 0, 0, fmt.Errorf("consistency %q is not one of one, local_one, local_quorum, quorum, all: %w", s, herald.ErrInvalidArgument)
}

// Close closes the session; later calls fail with herald.ErrClosed.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	s.session.Close()
	return nil
}

// enter fails fast once the store is closed or ctx has ended.
func (s *Store) enter(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("cassandrastore: %w", err)
	}
	if s.closed.Load() {
		return fmt.Errorf("cassandrastore: %w", herald.ErrClosed)
	}
	return nil
}

// ---- errors and retries ----

// fail wraps err from operation op: a closed session is herald.ErrClosed,
// an overloaded or unreachable cluster herald.ErrUnavailable.
func fail(op string, err error) error {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, herald.ErrClosed), errors.Is(err, herald.ErrUnavailable):
		return fmt.Errorf("cassandrastore: %s: %w", op, err)
	case errors.Is(err, gocql.ErrSessionClosed):
		return fmt.Errorf("cassandrastore: %s: %w", op, herald.ErrClosed)
	case retryable(err):
		return fmt.Errorf("cassandrastore: %s: %w (%w)", op, herald.ErrUnavailable, err)
	}
	return fmt.Errorf("cassandrastore: %s: %w", op, err)
}

// retryable reports whether err says the cluster could not answer now
// (rather than that the request is wrong).
func retryable(err error) bool {
	var (
		unavailable *gocql.RequestErrUnavailable
		writeTO     *gocql.RequestErrWriteTimeout
		readTO      *gocql.RequestErrReadTimeout
		overloaded  *gocql.RequestErrOverloaded
		booting     *gocql.RequestErrBootstrapping
		casUnknown  *gocql.RequestErrCASWriteUnknown
		readFail    *gocql.RequestErrReadFailure
		writeFail   *gocql.RequestErrWriteFailure
		netErr      net.Error
	)
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return false // the caller gave up; context.DeadlineExceeded is also a net.Error
	case errors.As(err, &unavailable), errors.As(err, &writeTO), errors.As(err, &readTO),
		errors.As(err, &overloaded), errors.As(err, &booting), errors.As(err, &casUnknown),
		errors.As(err, &readFail), errors.As(err, &writeFail), errors.As(err, &netErr):
		return true
	}
	for _, e := range []error{gocql.ErrNoConnections, gocql.ErrTimeoutNoResponse, gocql.ErrConnectionClosed,
		gocql.ErrNoStreams, gocql.ErrTooManyTimeouts, gocql.ErrUnavailable} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

const (
	maxAttempts  = 5
	firstBackoff = 20 * time.Millisecond
)

// retry runs fn until it succeeds, fails for a reason retrying cannot
// fix, maxAttempts have failed or ctx ends. Every fn passed here must be
// safe to repeat (docs/cassandra.md says why each one is).
func retry(ctx context.Context, fn func() error) error {
	backoff := firstBackoff
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil || attempt == maxAttempts || !retryable(err) || ctx.Err() != nil {
			return err
		}
		t := time.NewTimer(backoff/2 + rand.N(backoff))
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		backoff *= 2
	}
}

func (s *Store) exec(ctx context.Context, q *gocql.Query) error {
	return retry(ctx, func() error { return q.ExecContext(ctx) })
}

// scan reads one row into dest and reports whether there was one.
func (s *Store) scan(ctx context.Context, q *gocql.Query, dest ...any) (bool, error) {
	err := retry(ctx, func() error { return q.ScanContext(ctx, dest...) })
	if errors.Is(err, gocql.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// scanCAS runs a lightweight transaction; when it is not applied, dest
// holds the row that made the condition fail.
func (s *Store) scanCAS(ctx context.Context, q *gocql.Query, dest map[string]any) (bool, error) {
	var applied bool
	err := retry(ctx, func() error {
		clear(dest)
		var err error
		applied, err = q.MapScanCASContext(ctx, dest)
		return err
	})
	return applied, err
}

// ---- time ----

// maxTTL is the longest TTL Cassandra accepts (20 years).
const maxTTL = 20 * 365 * 24 * 60 * 60

// ttlSeconds is the TTL of a row that must outlive expires: the remaining
// time rounded up to whole seconds, at least 1; 0 (no TTL) for no expiry.
func ttlSeconds(expires, now time.Time) int {
	if expires.IsZero() {
		return 0
	}
	d := expires.Sub(now)
	if d <= 0 {
		return 1
	}
	secs := math.Ceil(d.Seconds())
	if secs > maxTTL {
		return maxTTL
	}
	return int(secs)
}

// ttlFor is ttlSeconds for an idempotency claim's duration (0 = forever).
func ttlFor(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	return ttlSeconds(time.Unix(0, 0).Add(d), time.Unix(0, 0))
}

// timestampOrNil stores the zero time as null.
func timestampOrNil(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t
}

// unsetIfZero leaves a column untouched (no tombstone) for 0.
func unsetIfZero(n int) any {
	if n == 0 {
		return gocql.UnsetValue
	}
	return n
}

// unixDay is the number of days from 1970-01-01 to t's UTC date.
func unixDay(t time.Time) int {
	secs := t.Unix()
	day := secs / 86400
	if secs%86400 < 0 {
		day--
	}
	return int(day)
}

// dayStart is the first instant of unixDay day.
func dayStart(day int) time.Time { return time.Unix(int64(day)*86400, 0).UTC() }

// ---- logging ----

// slogLogger routes the driver's logs to slog.
type slogLogger struct{ l *slog.Logger }

func (g slogLogger) log(level slog.Level, msg string, fields []gocql.LogField) {
	ctx := context.Background() // the driver logs outside any call's context
	if !g.l.Enabled(ctx, level) {
		return
	}
	attrs := make([]slog.Attr, 0, len(fields))
	for _, f := range fields {
		attrs = append(attrs, slog.Any(f.Name, f.Value.Any()))
	}
	g.l.LogAttrs(ctx, level, "gocql: "+msg, attrs...)
}

func (g slogLogger) Error(msg string, fields ...gocql.LogField) { g.log(slog.LevelError, msg, fields) }
func (g slogLogger) Warning(msg string, fields ...gocql.LogField) {
	g.log(slog.LevelWarn, msg, fields)
}
func (g slogLogger) Info(msg string, fields ...gocql.LogField)  { g.log(slog.LevelInfo, msg, fields) }
func (g slogLogger) Debug(msg string, fields ...gocql.LogField) { g.log(slog.LevelDebug, msg, fields) }
