//go:build integration

package cassandrastore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"

	"github.com/heraldpush/herald"
	schema "github.com/heraldpush/herald/deploy/cassandra"
	"github.com/heraldpush/herald/pkg/enginetest"
	"github.com/heraldpush/herald/pkg/ids"
	"github.com/heraldpush/herald/pkg/store"
	"github.com/heraldpush/herald/pkg/store/storetest"
)

// Every test of this binary shares one keyspace, migrated once (schema
// changes are the slow part of Cassandra) and dropped by TestMain. The
// contract suite and the tests below use fresh random ids, so they need
// no cleaning in between.
var shared struct {
	once     sync.Once
	hosts    []string
	keyspace string
	err      error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.keyspace != "" && shared.err == nil {
		if err := dropKeyspace(shared.hosts, shared.keyspace); err != nil {
			fmt.Fprintf(os.Stderr, "drop keyspace %s: %v\n", shared.keyspace, err)
		}
	}
	os.Exit(code)
}

func dropKeyspace(hosts []string, keyspace string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	session, err := createSession(ctx, newCluster(hosts, migrateTimeout, slog.New(slog.DiscardHandler)))
	if err != nil {
		return err
	}
	defer session.Close()
	return session.Query("DROP KEYSPACE IF EXISTS " + keyspace).ExecContext(ctx)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// keyspace returns the contact points and the migrated test keyspace.
func keyspace(tb testing.TB) ([]string, string) {
	tb.Helper()
	hosts := enginetest.Cassandra(tb)
	shared.once.Do(func() {
		shared.hosts = hosts
		shared.keyspace = "herald_test_" + randomHex(6)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		start := time.Now()
		shared.err = Migrate(ctx, MigrateConfig{Hosts: hosts, Keyspace: shared.keyspace, ReplicationFactor: 1})
		tb.Logf("migrated keyspace %s in %v", shared.keyspace, time.Since(start).Round(time.Millisecond))
	})
	if shared.err != nil {
		tb.Fatalf("migrate %s: %v", shared.keyspace, shared.err)
	}
	return shared.hosts, shared.keyspace
}

// clock is a settable test clock; the zero value reads time.Now.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.now.IsZero() {
		return time.Now()
	}
	return c.now
}

func openStore(tb testing.TB, now func() time.Time) *Store {
	tb.Helper()
	hosts, ks := keyspace(tb)
	s, err := Open(tb.Context(), Config{Hosts: hosts, Keyspace: ks, Consistency: "local_quorum", Timeout: 30 * time.Second, Now: now}, nil)
	if err != nil {
		tb.Fatalf("open store: %v", err)
	}
	return s
}

func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return openStore(t, nil) })
}

func uniq(prefix string) string { return prefix + "-" + randomHex(8) }

func TestMigrateTwiceIsNoop(t *testing.T) {
	hosts, ks := keyspace(t)
	s := openStore(t, nil)
	defer s.Close()
	a := store.App{ID: uniq("app"), Name: "kept", Key: uniq("key"), Secret: "s", CreatedAt: time.Now().Truncate(time.Millisecond)}
	if err := s.CreateApp(t.Context(), a); err != nil {
		t.Fatalf("CreateApp: %v", err)
	}
	appliedAt := func() map[int]time.Time {
		t.Helper()
		out := map[int]time.Time{}
		iter := s.session.Query(`SELECT version, applied_at FROM schema_migrations`).IterContext(t.Context())
		var (
			v  int
			at time.Time
		)
		for iter.Scan(&v, &at) {
			out[v] = at
		}
		if err := iter.Close(); err != nil {
			t.Fatalf("read schema_migrations: %v", err)
		}
		return out
	}
	before := appliedAt()
	ms, err := migrations(schema.FS)
	if err != nil {
		t.Fatal(err)
	}
	if len(before) != len(ms) {
		t.Fatalf("schema_migrations holds %d versions, want %d", len(before), len(ms))
	}
	if err := Migrate(t.Context(), MigrateConfig{Hosts: hosts, Keyspace: ks, ReplicationFactor: 1}); err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
	after := appliedAt()
	for v, at := range before {
		if !after[v].Equal(at) {
			t.Errorf("migration %d re-applied: applied_at %v -> %v", v, at, after[v])
		}
	}
	if got, err := s.AppByID(t.Context(), a.ID); err != nil || got.Name != "kept" {
		t.Errorf("app after second Migrate = %+v, %v", got, err)
	}
}

func TestInboxRowsCarryTTL(t *testing.T) {
	s := openStore(t, nil)
	defer s.Close()
	app, dev := uniq("app"), uniq("dev")
	g := ids.New(nil)
	hour, forever, collapsing := g.Next(), g.Next(), g.Next()
	entries := []store.InboxEntry{
		{MessageID: hour, ExpiresAt: time.Now().Add(time.Hour), Body: []byte("x")},
		{MessageID: forever, Body: []byte("y")},
		{MessageID: collapsing, CollapseID: "c", ExpiresAt: time.Now().Add(10 * time.Minute), Body: []byte("z")},
	}
	for _, e := range entries {
		if _, err := s.Put(t.Context(), app, dev, e); err != nil {
			t.Fatalf("Put: %v", err)
		}
	}
	ttl := func(msgID string) int {
		t.Helper()
		var secs int
		q := s.session.Query(`SELECT TTL(body) FROM inbox WHERE app_id = ? AND device_id = ? AND message_id = ?`, app, dev, msgID)
		if err := q.ScanContext(t.Context(), &secs); err != nil {
			t.Fatalf("SELECT TTL(body): %v", err)
		}
		return secs
	}
	tests := []struct {
		name     string
		msgID    string
		min, max int
	}{
		{"one hour", hour, 3500, 3600},
		{"no expiry", forever, 0, 0},
		{"collapsing entry", collapsing, 500, 600},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ttl(tt.msgID); got < tt.min || got > tt.max {
				t.Errorf("TTL(body) = %d, want in [%d, %d]", got, tt.min, tt.max)
			}
		})
	}
	// The collapse index entry expires with its entry.
	var idxTTL []int
	q := s.session.Query(`SELECT TTL(collapse) FROM inbox WHERE app_id = ? AND device_id = ? LIMIT 1`, app, dev)
	if err := q.ScanContext(t.Context(), &idxTTL); err != nil {
		t.Fatalf("SELECT TTL(collapse): %v", err)
	}
	if len(idxTTL) != 1 || idxTTL[0] < 500 || idxTTL[0] > 600 {
		t.Errorf("TTL(collapse) = %v, want one element in [500, 600]", idxTTL)
	}
}

// TestRecreateMessageKeepsStates covers a CreateMessage retried after a
// crash that wrote the pending rows but not the message row: the rewrite
// of pending rows must not undo marks made meanwhile.
func TestRecreateMessageKeepsStates(t *testing.T) {
	s := openStore(t, nil)
	defer s.Close()
	id := ids.New(nil).Next()
	m := store.Message{ID: id, AppID: uniq("app"), Targets: []string{"d1", "d2"}, CreatedAt: time.Now()}
	if err := s.CreateMessage(t.Context(), m); err != nil {
		t.Fatal(err)
	}
	if err := s.Mark(t.Context(), store.Transition{MessageID: id, DeviceID: "d1", State: store.StateDelivered}); err != nil {
		t.Fatal(err)
	}
	if err := s.session.Query(`DELETE FROM messages WHERE id = ?`, id).ExecContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateMessage(t.Context(), m); err != nil {
		t.Fatal(err)
	}
	_, c, err := s.MessageStatus(t.Context(), id)
	if want := (store.Counts{Targeted: 2, Delivered: 1, Pending: 1}); err != nil || c != want {
		t.Errorf("counts after re-create = %+v, %v; want %+v", c, err, want)
	}
}

// TestCollapseRecovery covers the two crash windows of collapsing: an
// index entry left pointing to a deleted entry, and a Put whose batch
// applied but whose status mark was lost.
func TestCollapseRecovery(t *testing.T) {
	s := openStore(t, nil)
	defer s.Close()
	ctx := t.Context()
	app, dev := uniq("app"), uniq("dev")
	g := ids.New(nil)
	older, newer := g.Next(), g.Next()
	for _, id := range []string{older, newer} {
		if err := s.CreateMessage(ctx, store.Message{ID: id, AppID: app, Targets: []string{dev}}); err != nil {
			t.Fatal(err)
		}
	}
	put := func(id string) string {
		t.Helper()
		got, err := s.Put(ctx, app, dev, store.InboxEntry{MessageID: id, CollapseID: "c", Body: []byte(id)})
		if err != nil {
			t.Fatalf("Put %s: %v", id, err)
		}
		return got
	}

	t.Run("StaleIndex", func(t *testing.T) {
		put(newer)
		// Delete the row only, as a crash between Delete's two steps would.
		if err := s.session.Query(cqlDeleteEntry, app, dev, newer).ExecContext(ctx); err != nil {
			t.Fatal(err)
		}
		if got := put(older); got != "" {
			t.Errorf("Put against a dead index holder = %q, want \"\" (stored)", got)
		}
		if got := listIDs(t, s, app, dev); !slices.Equal(got, []string{older}) {
			t.Errorf("List = %v, want [%s]", got, older)
		}
		if _, c, _ := s.MessageStatus(ctx, newer); c.Collapsed != 0 {
			t.Errorf("the deleted holder was marked collapsed: %+v", c)
		}
	})
	t.Run("RetriedPutFinishesMark", func(t *testing.T) {
		dev := uniq("dev")
		older, newest := g.Next(), g.Next()
		for _, id := range []string{older, newest} {
			if err := s.CreateMessage(ctx, store.Message{ID: id, AppID: app, Targets: []string{dev}}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.Put(ctx, app, dev, store.InboxEntry{MessageID: older, CollapseID: "c"}); err != nil {
			t.Fatal(err)
		}
		// Apply Put(newest)'s conditional batch, then "crash" before its
		// status mark.
		b := s.session.Batch(gocql.LoggedBatch)
		b.Query(cqlMoveCollapse, 0, "c", newest, app, dev, "c", older)
		b.Query(cqlInsertEntry, app, dev, newest, "c", gocql.UnsetValue, []byte("x"), older, 0)
		b.Query(cqlDeleteEntry, app, dev, older)
		if applied, err := s.execBatchCAS(ctx, b); err != nil || !applied {
			t.Fatalf("batch = %v, %v", applied, err)
		}
		if _, c, _ := s.MessageStatus(ctx, older); c.Pending != 1 {
			t.Fatalf("setup: counts = %+v, want pending", c)
		}
		got, err := s.Put(ctx, app, dev, store.InboxEntry{MessageID: newest, CollapseID: "c", Body: []byte("x")})
		if err != nil || got != "" {
			t.Errorf("retried Put = %q, %v; want \"\"", got, err)
		}
		if _, c, _ := s.MessageStatus(ctx, older); c.Collapsed != 1 {
			t.Errorf("counts after the retried Put = %+v, want 1 collapsed", c)
		}
		if got := listIDs(t, s, app, dev); !slices.Equal(got, []string{newest}) {
			t.Errorf("List = %v, want [%s]", got, newest)
		}
	})
}

func listIDs(tb testing.TB, s *Store, app, dev string) []string {
	tb.Helper()
	es, err := s.List(tb.Context(), app, dev, "", 0)
	if err != nil {
		tb.Fatalf("List: %v", err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.MessageID)
	}
	return out
}

func TestListFiltersOnExactExpiry(t *testing.T) {
	clk := &clock{}
	s := openStore(t, clk.Now)
	defer s.Close()
	app, dev := uniq("app"), uniq("dev")
	id := ids.New(nil).Next()
	expires := time.Now().Add(time.Hour).Truncate(time.Millisecond)
	if _, err := s.Put(t.Context(), app, dev, store.InboxEntry{MessageID: id, ExpiresAt: expires}); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		at   time.Time
		want int
	}{{expires.Add(-time.Millisecond), 1}, {expires, 0}} {
		clk.mu.Lock()
		clk.now = tt.at
		clk.mu.Unlock()
		if got := listIDs(t, s, app, dev); len(got) != tt.want {
			t.Errorf("List at expires%+v = %v, want %d entries", tt.at.Sub(expires), got, tt.want)
		}
	}
}

func TestClosed(t *testing.T) {
	s := openStore(t, nil)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	_, err := s.AppByID(t.Context(), "x")
	if !errors.Is(err, herald.ErrClosed) {
		t.Errorf("AppByID after Close = %v, want ErrClosed", err)
	}
}

func openBench(tb testing.TB) store.Store { return openStore(tb, nil) }

func BenchmarkMark(b *testing.B) { storetest.MarkBenchmark(b, openBench) }

func BenchmarkInboxPutListDelete(b *testing.B) { storetest.InboxBenchmark(b, openBench) }
