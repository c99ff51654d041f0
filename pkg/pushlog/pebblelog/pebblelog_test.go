package pebblelog_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/pebbledb"
	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/pkg/pushlog/logtest"
	"github.com/heraldpush/herald/pkg/pushlog/pebblelog"
)

// harness opens logs on databases in temporary directories; Reopen closes
// the previous log's database and opens it again, as a restart would.
type harness struct {
	opts pebblelog.Options
	mu   sync.Mutex
	open map[pushlog.Log]*instance
}

type instance struct {
	dir  string
	db   *pebble.DB
	once sync.Once
}

func (i *instance) closeDB(tb testing.TB) {
	i.once.Do(func() {
		if err := i.db.Close(); err != nil {
			tb.Errorf("close db: %v", err)
		}
	})
}

func newHarness(opts pebblelog.Options) *harness {
	return &harness{opts: opts, open: make(map[pushlog.Log]*instance)}
}

func (h *harness) openAt(tb testing.TB, dir string) *pebblelog.Log {
	tb.Helper()
	db, err := pebbledb.Open(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatalf("open db: %v", err)
	}
	l, err := pebblelog.New(db, h.opts, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	inst := &instance{dir: dir, db: db}
	// Cleanups run last-in first-out: the log closes before its database.
	tb.Cleanup(func() { inst.closeDB(tb) })
	tb.Cleanup(func() { _ = l.Close() })
	h.mu.Lock()
	h.open[l] = inst
	h.mu.Unlock()
	return l
}

func (h *harness) Open(tb testing.TB) pushlog.Log { return h.openAt(tb, tb.TempDir()) }

func (h *harness) Reopen(tb testing.TB, prev pushlog.Log) pushlog.Log {
	h.mu.Lock()
	inst := h.open[prev]
	delete(h.open, prev)
	h.mu.Unlock()
	if inst == nil {
		tb.Fatalf("Reopen of a log the harness did not open")
	}
	inst.closeDB(tb)
	return h.openAt(tb, inst.dir)
}

func TestContract(t *testing.T) {
	h := newHarness(pebblelog.Options{})
	logtest.Run(t, logtest.Harness{Open: h.Open, Reopen: h.Reopen})
}

func TestContractSmallBatches(t *testing.T) {
	h := newHarness(pebblelog.Options{Partitions: 3, MaxBatch: 7})
	logtest.Run(t, logtest.Harness{Open: h.Open, Reopen: h.Reopen})
}

func openLog(tb testing.TB, opts pebblelog.Options) (*pebblelog.Log, *pebble.DB) {
	tb.Helper()
	h := newHarness(opts)
	l := h.openAt(tb, tb.TempDir())
	return l, h.open[l].db
}

func TestOneConsumerPerGroup(t *testing.T) {
	l, _ := openLog(t, pebblelog.Options{})
	ctx := t.Context()
	c, err := l.Consume(ctx, "push", "dispatch")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Consume(ctx, "push", "dispatch"); !errors.Is(err, herald.ErrConflict) {
		t.Fatalf("second Consume = %v, want ErrConflict", err)
	}
	other, err := l.Consume(ctx, "push", "audit")
	if err != nil {
		t.Fatalf("Consume of another group: %v", err)
	}
	defer other.Close()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Fetch(ctx); !errors.Is(err, herald.ErrClosed) {
		t.Errorf("Fetch after Close = %v, want ErrClosed", err)
	}
	c2, err := l.Consume(ctx, "push", "dispatch")
	if err != nil {
		t.Fatalf("Consume after Close: %v", err)
	}
	defer c2.Close()
}

func TestInvalidNames(t *testing.T) {
	l, _ := openLog(t, pebblelog.Options{})
	long := string(make([]byte, 256))
	tests := []struct {
		name string
		err  error
	}{
		{"empty topic", l.Append(t.Context(), "", pushlog.Record{Value: []byte("x")})},
		{"long topic", l.Append(t.Context(), long, pushlog.Record{Value: []byte("x")})},
		{"consume empty group", func() error { _, err := l.Consume(t.Context(), "push", ""); return err }()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !errors.Is(tt.err, herald.ErrInvalidArgument) {
				t.Errorf("got %v, want ErrInvalidArgument", tt.err)
			}
		})
	}
}

func TestCloseUnblocksAndRejects(t *testing.T) {
	l, _ := openLog(t, pebblelog.Options{})
	c, err := l.Consume(t.Context(), "push", "g")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := c.Fetch(t.Context())
		done <- err
	}()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, herald.ErrClosed) {
			t.Errorf("blocked Fetch after log Close = %v, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Fetch still blocked after log Close")
	}
	err = l.Append(t.Context(), "push", pushlog.Record{Value: []byte("x")})
	if !errors.Is(err, herald.ErrClosed) || !errors.Is(err, herald.ErrUnavailable) {
		t.Errorf("Append after Close = %v, want ErrClosed and ErrUnavailable", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

func TestPartitionCountIsFixed(t *testing.T) {
	dir := t.TempDir()
	h := newHarness(pebblelog.Options{Partitions: 2})
	l := h.openAt(t, dir)
	keys := make([]pushlog.Record, 50)
	for i := range keys {
		keys[i] = pushlog.Record{Key: fmt.Appendf(nil, "k%d", i), Value: fmt.Appendf(nil, "v%d", i)}
	}
	if err := l.Append(t.Context(), "push", keys...); err != nil {
		t.Fatal(err)
	}
	_ = l.Close()
	h.opts.Partitions = 5
	l2 := h.Reopen(t, l)
	c, err := l2.Consume(t.Context(), "push", "g")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	recs, err := c.Fetch(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.Partition >= 2 {
			t.Fatalf("record in partition %d after reopening with more partitions", r.Partition)
		}
	}
	if len(recs) != len(keys) {
		t.Errorf("fetched %d records, want %d", len(recs), len(keys))
	}
}

// fetchAll returns every record available to a new group.
func fetchAll(tb testing.TB, l pushlog.Log, topic string) []pushlog.Record {
	tb.Helper()
	c, err := l.Consume(tb.Context(), topic, fmt.Sprintf("reader-%d", time.Now().UnixNano()))
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	var all []pushlog.Record
	for {
		ctx, cancel := context.WithTimeout(tb.Context(), 50*time.Millisecond)
		recs, err := c.Fetch(ctx)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			return all
		}
		if err != nil {
			tb.Fatal(err)
		}
		all = append(all, recs...)
	}
}

func TestRetention(t *testing.T) {
	now := time.Now()
	clock := func() time.Time { return now }
	l, _ := openLog(t, pebblelog.Options{Partitions: 1, Retention: time.Hour, Now: clock, CleanupInterval: time.Hour})
	ctx := t.Context()
	appendN := func(topic string, n int) {
		t.Helper()
		for i := range n {
			if err := l.Append(ctx, topic, pushlog.Record{Value: fmt.Appendf(nil, "%d", i)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	appendN("a", 10) // appended at now
	appendN("b", 10)

	// Topic a: two groups commit; records below the smaller commit go.
	commit := func(topic, group string, upTo int64) {
		t.Helper()
		c, err := l.Consume(ctx, topic, group)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Commit(ctx, pushlog.Record{Partition: 0, Offset: upTo - 1}); err != nil {
			t.Fatal(err)
		}
	}
	commit("a", "g1", 6)
	commit("a", "g2", 4)
	if err := l.Cleanup(ctx, now); err != nil {
		t.Fatal(err)
	}
	if got := fetchAll(t, l, "a"); len(got) != 6 || got[0].Offset != 4 {
		t.Errorf("topic a after cleanup: %d records from offset %d, want 6 from 4", len(got), got[0].Offset)
	}
	// Topic b has no committing group: nothing goes until it is too old.
	if got := fetchAll(t, l, "b"); len(got) != 10 {
		t.Errorf("topic b after cleanup: %d records, want 10", len(got))
	}
	now = now.Add(30 * time.Minute)
	appendN("b", 5) // offsets 10..14, appended 30 minutes later
	now = now.Add(45 * time.Minute)
	if err := l.Cleanup(ctx, now); err != nil {
		t.Fatal(err)
	}
	got := fetchAll(t, l, "b")
	if len(got) != 5 || got[0].Offset != 10 {
		t.Errorf("topic b after retention: %d records from offset %d, want 5 from 10", len(got), got[0].Offset)
	}
	// Offsets continue after deletion.
	appendN("b", 1)
	if got := fetchAll(t, l, "b"); got[len(got)-1].Offset != 15 {
		t.Errorf("offset after retention = %d, want 15", got[len(got)-1].Offset)
	}
}

func TestOffsetsSurviveFullDeletion(t *testing.T) {
	now := time.Now()
	h := newHarness(pebblelog.Options{Partitions: 1, Retention: time.Minute, Now: func() time.Time { return now }})
	l := h.openAt(t, t.TempDir())
	if err := l.Append(t.Context(), "t", pushlog.Record{Value: []byte("a")}, pushlog.Record{Value: []byte("b")}); err != nil {
		t.Fatal(err)
	}
	if err := l.Cleanup(t.Context(), now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	_ = l.Close()
	l2 := h.Reopen(t, l)
	if err := l2.Append(t.Context(), "t", pushlog.Record{Value: []byte("c")}); err != nil {
		t.Fatal(err)
	}
	got := fetchAll(t, l2, "t")
	if len(got) != 1 || got[0].Offset != 2 || string(got[0].Value) != "c" {
		t.Errorf("after deleting everything and reopening: %+v, want only c at offset 2", got)
	}
}

func TestAppendHonoursCancelledContext(t *testing.T) {
	l, _ := openLog(t, pebblelog.Options{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err := l.Append(ctx, "push", pushlog.Record{Value: []byte("x")})
	// Either it was written before the cancel was seen, or it says why not.
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("Append with a cancelled context = %v", err)
	}
}

func benchOpen(tb testing.TB) pushlog.Log {
	l, _ := openLog(tb, pebblelog.Options{})
	return l
}

func BenchmarkAppend(b *testing.B) { logtest.AppendBenchmark(b, benchOpen, false) }

func BenchmarkAppendParallel(b *testing.B) { logtest.AppendBenchmark(b, benchOpen, true) }

// TestCloseStopsGoroutines checks that a closed log leaves no goroutine
// behind, even with a consumer blocked in Fetch.
func TestCloseStopsGoroutines(t *testing.T) {
	db, err := pebbledb.Open(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	before := runtime.NumGoroutine()
	l, err := pebblelog.New(db, pebblelog.Options{CleanupInterval: time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := l.Consume(t.Context(), "push", "g")
	if err != nil {
		t.Fatal(err)
	}
	fetched := make(chan error, 1)
	go func() {
		_, err := c.Fetch(context.Background())
		fetched <- err
	}()
	if err := l.Append(t.Context(), "other", pushlog.Record{Value: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-fetched; !errors.Is(err, herald.ErrClosed) {
		t.Errorf("Fetch = %v, want ErrClosed", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after Close, %d before New", runtime.NumGoroutine(), before)
		}
		time.Sleep(time.Millisecond) // poll interval
	}
}
