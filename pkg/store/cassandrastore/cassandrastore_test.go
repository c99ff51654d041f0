package cassandrastore

import (
	"context"
	"errors"
	"slices"
	"testing"
	"testing/fstest"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"

	"github.com/heraldpush/herald"
	schema "github.com/heraldpush/herald/deploy/cassandra"
	"github.com/heraldpush/herald/pkg/ids"
)

// Tests that need no Cassandra; the engine tests are in
// integration_test.go (build tag integration).

func TestSplitStatements(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string
	}{
		{"two", "CREATE TABLE a (x int PRIMARY KEY);\nCREATE TABLE b (y int PRIMARY KEY);\n",
			[]string{"CREATE TABLE a (x int PRIMARY KEY)", "CREATE TABLE b (y int PRIMARY KEY)"}},
		{"no final semicolon", "SELECT 1", []string{"SELECT 1"}},
		{"comments", "-- a; comment\nA; // b; c\n/* d; e */B;", []string{"A", "B"}},
		{"block comment joins words", "A/*x*/B;", []string{"A B"}},
		{"quoted semicolons", `INSERT INTO t (s) VALUES ('a;b''c;'); UPDATE "we;ird" SET x = $$f;g$$;`,
			[]string{`INSERT INTO t (s) VALUES ('a;b''c;')`, `UPDATE "we;ird" SET x = $$f;g$$`}},
		{"blank", " ;\n; -- nothing\n", nil},
		{"comment at end without newline", "A; -- end", []string{"A"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := splitStatements(tt.src)
			if err != nil {
				t.Fatalf("splitStatements: %v", err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("splitStatements = %q, want %q", got, tt.want)
			}
		})
	}
	for _, bad := range []string{"A 'open", `A "open`, "A /* open", "A $$ open"} {
		if _, err := splitStatements(bad); err == nil {
			t.Errorf("splitStatements(%q) = nil error, want one", bad)
		}
	}
}

func TestMigrationsParse(t *testing.T) {
	ms, err := migrations(schema.FS)
	if err != nil {
		t.Fatalf("migrations: %v", err)
	}
	if len(ms) == 0 || ms[0].version != 1 {
		t.Fatalf("migrations = %+v, want 001 first", ms)
	}
	for _, m := range ms {
		if len(m.stmts) == 0 {
			t.Errorf("migration %d_%s has no statements", m.version, m.name)
		}
	}
	bad := []struct {
		name string
		fs   fstest.MapFS
	}{
		{"bad name", fstest.MapFS{"init.cql": {Data: []byte("A;")}}},
		{"duplicate version", fstest.MapFS{"001_a.cql": {Data: []byte("A;")}, "1_b.cql": {Data: []byte("B;")}}},
		{"bad cql", fstest.MapFS{"001_a.cql": {Data: []byte("A 'x")}}},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := migrations(tt.fs); err == nil {
				t.Errorf("migrations accepted %v", tt.fs)
			}
		})
	}
	ms, err = migrations(fstest.MapFS{"010_b.cql": {Data: []byte("B;")}, "002_a.cql": {Data: []byte("A;")}})
	if err != nil || len(ms) != 2 || ms[0].version != 2 || ms[1].version != 10 {
		t.Errorf("migrations not in version order: %+v, %v", ms, err)
	}
}

func TestTTLSeconds(t *testing.T) {
	now := time.Unix(1000, 0)
	tests := []struct {
		name    string
		expires time.Time
		want    int
	}{
		{"no expiry", time.Time{}, 0},
		{"past", now.Add(-time.Hour), 1},
		{"now", now, 1},
		{"rounds up", now.Add(1500 * time.Millisecond), 2},
		{"whole", now.Add(time.Hour), 3600},
		{"capped", now.Add(100 * 365 * 24 * time.Hour), maxTTL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ttlSeconds(tt.expires, now); got != tt.want {
				t.Errorf("ttlSeconds = %d, want %d", got, tt.want)
			}
		})
	}
	if got := ttlFor(time.Millisecond); got != 1 {
		t.Errorf("ttlFor(1ms) = %d, want 1", got)
	}
	if got := ttlFor(0); got != 0 {
		t.Errorf("ttlFor(0) = %d, want 0 (no expiry)", got)
	}
}

func TestMarkTimestamp(t *testing.T) {
	now := time.Now()
	a, b := markTimestamp(now), markTimestamp(now.Add(time.Microsecond))
	if a <= b {
		t.Errorf("markTimestamp does not decrease with time: %d then %d", a, b)
	}
	if a <= pendingTimestamp || a >= now.UnixMicro() {
		t.Errorf("markTimestamp(now) = %d, want between pending (%d) and the wall clock (%d)", a, pendingTimestamp, now.UnixMicro())
	}
	if got := markTimestamp(time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)); got <= pendingTimestamp {
		t.Errorf("markTimestamp far in the future = %d, want above pending", got)
	}
}

func TestOpenErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want error
	}{
		{"no hosts", Config{Keyspace: "herald"}, herald.ErrInvalidArgument},
		{"bad keyspace", Config{Hosts: []string{"127.0.0.1"}, Keyspace: "Herald; DROP"}, herald.ErrInvalidArgument},
		{"bad consistency", Config{Hosts: []string{"127.0.0.1"}, Keyspace: "herald", Consistency: "most"}, herald.ErrInvalidArgument},
		{"unreachable", Config{Hosts: []string{"127.0.0.1:1"}, Keyspace: "herald", Timeout: time.Second}, herald.ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Open(t.Context(), tt.cfg, nil)
			if err == nil {
				s.Close()
			}
			if !errors.Is(err, tt.want) {
				t.Errorf("Open = %v, want %v", err, tt.want)
			}
		})
	}
	err := Migrate(t.Context(), MigrateConfig{Hosts: []string{"127.0.0.1"}, Keyspace: "x-y"})
	if !errors.Is(err, herald.ErrInvalidArgument) {
		t.Errorf("Migrate(bad keyspace) = %v, want ErrInvalidArgument", err)
	}
}

func TestFail(t *testing.T) {
	tests := []struct {
		name      string
		err       error
		want      error
		unwrapped bool // err itself must stay reachable with errors.Is/As
	}{
		{"write timeout", &gocql.RequestErrWriteTimeout{WriteType: "CAS"}, herald.ErrUnavailable, false},
		{"unavailable", &gocql.RequestErrUnavailable{}, herald.ErrUnavailable, false},
		{"no connections", gocql.ErrNoConnections, herald.ErrUnavailable, true},
		{"client timeout", gocql.ErrTimeoutNoResponse, herald.ErrUnavailable, true},
		{"session closed", gocql.ErrSessionClosed, herald.ErrClosed, false},
		{"deadline", context.DeadlineExceeded, context.DeadlineExceeded, true},
		{"syntax", &gocql.RequestErrSyntax{}, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := fail("op", tt.err)
			if tt.want != nil && !errors.Is(got, tt.want) {
				t.Errorf("fail(%v) = %v, want %v", tt.err, got, tt.want)
			}
			if tt.want == nil && (errors.Is(got, herald.ErrUnavailable) || errors.Is(got, herald.ErrClosed)) {
				t.Errorf("fail(%v) = %v, want neither unavailable nor closed", tt.err, got)
			}
			if tt.unwrapped && !errors.Is(got, tt.err) {
				t.Errorf("fail(%v) = %v, lost the cause", tt.err, got)
			}
		})
	}
	if errors.Is(fail("op", context.DeadlineExceeded), herald.ErrUnavailable) {
		t.Errorf("a caller's deadline was reported as the cluster being unavailable")
	}
}

func TestRetryStopsOnPermanentErrors(t *testing.T) {
	calls := 0
	err := retry(t.Context(), func() error { calls++; return &gocql.RequestErrSyntax{} })
	if err == nil || calls != 1 {
		t.Errorf("retry of a syntax error: %d calls, %v; want 1 call", calls, err)
	}
	calls = 0
	err = retry(t.Context(), func() error {
		calls++
		if calls < 3 {
			return gocql.ErrNoConnections
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Errorf("retry of a transient error: %d calls, %v; want success on the 3rd", calls, err)
	}
}

func TestUnixDay(t *testing.T) {
	tests := []struct {
		name string
		t    time.Time
		want int
	}{
		{"epoch", time.Unix(0, 0), 0},
		{"last second of day 0", time.Unix(86399, 999_999_999), 0},
		{"day 1", time.Unix(86400, 0), 1},
		{"before the epoch", time.Unix(-1, 0), -1},
		{"a day before the epoch", time.Unix(-86400, 0), -1},
		{"zone does not matter", time.Date(2025, 3, 1, 23, 30, 0, 0, time.FixedZone("UTC-5", -5*3600)), unixDay(time.Date(2025, 3, 2, 4, 30, 0, 0, time.UTC))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := unixDay(tt.t); got != tt.want {
				t.Errorf("unixDay(%v) = %d, want %d", tt.t, got, tt.want)
			}
			if s := dayStart(tt.want); unixDay(s) != tt.want || unixDay(s.Add(-time.Nanosecond)) != tt.want-1 {
				t.Errorf("dayStart(%d) = %v is not the first instant of the day", tt.want, s)
			}
		})
	}
}

func TestQuotaTTL(t *testing.T) {
	now := time.Date(2025, 6, 10, 18, 0, 0, 0, time.UTC)
	const day = 24 * 60 * 60
	tests := []struct {
		name string
		day  time.Time
		want int
	}{
		{"today: until 2 days after its end", now, 6*60*60 + 2*day},
		{"yesterday: still 2 days from now", now.AddDate(0, 0, -1), 2 * day},
		{"long ago: 2 days from now", now.AddDate(-1, 0, 0), 2 * day},
		{"tomorrow", now.AddDate(0, 0, 1), 6*60*60 + 3*day},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := quotaTTL(unixDay(tt.day), now); got != tt.want {
				t.Errorf("quotaTTL = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestBroadcastDay(t *testing.T) {
	at := time.Date(2025, 6, 10, 23, 59, 59, 0, time.UTC)
	id := ids.New(func() time.Time { return at }).Next()
	if got, want := broadcastDay(id), unixDay(at); got != want {
		t.Errorf("broadcastDay(id of %v) = %d, want %d", at, got, want)
	}
	for _, bad := range []string{"", "not-an-id", "m1"} {
		if got := broadcastDay(bad); got != 0 {
			t.Errorf("broadcastDay(%q) = %d, want 0", bad, got)
		}
	}
}

func TestScheduleShard(t *testing.T) {
	g := ids.New(nil)
	seen := map[int]bool{}
	for range 200 {
		id := g.Next()
		sh := scheduleShard(id)
		if sh < 0 || sh >= scheduleShards {
			t.Fatalf("scheduleShard(%s) = %d, out of [0, %d)", id, sh, scheduleShards)
		}
		if scheduleShard(id) != sh {
			t.Fatalf("scheduleShard(%s) is not stable", id)
		}
		seen[sh] = true
	}
	if len(seen) != scheduleShards {
		t.Errorf("200 ids used %d of %d shards", len(seen), scheduleShards)
	}
}

func TestSortedSet(t *testing.T) {
	tests := []struct {
		in, want []string
	}{
		{nil, nil},
		{[]string{}, nil},
		{[]string{"b", "a", "b", "c", "a"}, []string{"a", "b", "c"}},
	}
	for _, tt := range tests {
		if got := sortedSet(tt.in); !slices.Equal(got, tt.want) || (tt.want == nil) != (got == nil) {
			t.Errorf("sortedSet(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestRetryCounterRetriesOnlyUnappliedErrors(t *testing.T) {
	tests := []struct {
		name      string
		err       error
		wantCalls int
	}{
		{"refused by the coordinator: retried", &gocql.RequestErrUnavailable{}, maxAttempts},
		{"never sent: retried", gocql.ErrNoConnections, maxAttempts},
		{"timed out, may have applied: not retried", &gocql.RequestErrWriteTimeout{WriteType: "COUNTER"}, 1},
		{"client timeout: not retried", gocql.ErrTimeoutNoResponse, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			err := retryCounter(t.Context(), func() error { calls++; return tt.err })
			if calls != tt.wantCalls {
				t.Errorf("calls = %d, want %d", calls, tt.wantCalls)
			}
			if !errors.Is(err, tt.err) {
				t.Errorf("retryCounter = %v, lost the cause %v", err, tt.err)
			}
			if !errors.Is(fail("op", err), herald.ErrUnavailable) {
				t.Errorf("fail(retryCounter) = %v, want ErrUnavailable", fail("op", err))
			}
		})
	}
}
