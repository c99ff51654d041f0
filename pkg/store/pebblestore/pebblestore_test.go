package pebblestore_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/pebbledb"
	"github.com/heraldpush/herald/pkg/store"
	"github.com/heraldpush/herald/pkg/store/pebblestore"
	"github.com/heraldpush/herald/pkg/store/storetest"
)

func openDB(tb testing.TB, dir string) *pebble.DB {
	tb.Helper()
	db, err := pebbledb.Open(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatalf("open db: %v", err)
	}
	return db
}

func openStore(tb testing.TB, opts pebblestore.Options) (*pebblestore.Store, *pebble.DB) {
	tb.Helper()
	db := openDB(tb, tb.TempDir())
	tb.Cleanup(func() {
		if err := db.Close(); err != nil {
			tb.Errorf("close db: %v", err)
		}
	})
	return pebblestore.New(db, opts, slog.New(slog.DiscardHandler)), db
}

func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, _ := openStore(t, pebblestore.Options{})
		return s
	})
}

// clock is a settable test clock.
type clock struct{ now time.Time }

func (c *clock) Now() time.Time { return c.now }

func TestSweep(t *testing.T) {
	clk := &clock{now: time.Now()}
	s, _ := openStore(t, pebblestore.Options{Now: clk.Now})
	ctx := t.Context()
	const app, dev = "app", "dev"
	ids := []string{"01A", "01B", "01C", "01D"}
	expires := []time.Time{clk.now.Add(time.Minute), {}, clk.now.Add(2 * time.Minute), clk.now.Add(time.Minute)}
	for i, id := range ids {
		if err := s.CreateMessage(ctx, store.Message{ID: id, AppID: app, Targets: []string{dev}}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Put(ctx, app, dev, store.InboxEntry{MessageID: id, CollapseID: "c" + id, ExpiresAt: expires[i]}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete(ctx, app, dev, "01D"); err != nil { // acked before it expired
		t.Fatal(err)
	}
	tests := []struct {
		name        string
		at          time.Time
		wantDeleted int
		wantLeft    []string
	}{
		{"nothing due", clk.now, 0, []string{"01A", "01B", "01C"}},
		{"first expiry", clk.now.Add(time.Minute), 1, []string{"01B", "01C"}},
		{"again", clk.now.Add(time.Minute), 0, []string{"01B", "01C"}},
		{"all due", clk.now.Add(time.Hour), 1, []string{"01B"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk.now = tt.at
			n, err := s.Sweep(ctx, tt.at)
			if err != nil || n != tt.wantDeleted {
				t.Fatalf("Sweep = %d, %v; want %d", n, err, tt.wantDeleted)
			}
			clk.now = time.Time{}.Add(time.Nanosecond) // List would skip expired entries anyway: look at what is stored
			es, err := s.List(ctx, app, dev, "", 0)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range es {
				got = append(got, e.MessageID)
			}
			if !slices.Equal(got, tt.wantLeft) {
				t.Errorf("stored after sweep = %v, want %v", got, tt.wantLeft)
			}
		})
	}
	for id, want := range map[string]store.Counts{
		"01A": {Targeted: 1, Expired: 1},
		"01B": {Targeted: 1, Pending: 1},
		"01D": {Targeted: 1, Pending: 1}, // deleted, not swept: the ack path marks it
	} {
		if _, c, err := s.MessageStatus(ctx, id); err != nil || c != want {
			t.Errorf("MessageStatus(%s) = %+v, %v; want %+v", id, c, err, want)
		}
	}
	// The swept entry's collapse id is free again.
	clk.now = time.Now()
	if got, err := s.Put(ctx, app, dev, store.InboxEntry{MessageID: "01E", CollapseID: "c01A"}); err != nil || got != "" {
		t.Errorf("Put with a swept entry's collapse id = %q, %v; want \"\"", got, err)
	}
}

func TestSweepClaims(t *testing.T) {
	clk := &clock{now: time.Now()}
	s, _ := openStore(t, pebblestore.Options{Now: clk.Now})
	ctx := t.Context()
	if got, err := s.Claim(ctx, "app", "k", "m1", time.Minute); err != nil || got != "" {
		t.Fatalf("Claim = %q, %v", got, err)
	}
	if _, err := s.Sweep(ctx, clk.now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	// Even with the clock back before the expiry, the swept claim is gone.
	if got, err := s.Claim(ctx, "app", "k", "m2", time.Minute); err != nil || got != "" {
		t.Errorf("Claim after sweep = %q, %v; want a fresh claim", got, err)
	}
	// A claim replaced after expiry is not removed by the old expiry's index.
	clk.now = clk.now.Add(2 * time.Minute)
	if got, err := s.Claim(ctx, "app", "k", "m3", time.Hour); err != nil || got != "" {
		t.Fatalf("Claim after expiry = %q, %v", got, err)
	}
	if _, err := s.Sweep(ctx, clk.now); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Claim(ctx, "app", "k", "m4", time.Hour); err != nil || got != "m3" {
		t.Errorf("Claim = %q, %v; want m3 still claimed", got, err)
	}
}

func TestRunSweepsPeriodically(t *testing.T) {
	s, _ := openStore(t, pebblestore.Options{SweepInterval: 5 * time.Millisecond})
	ctx := t.Context()
	if _, err := s.Put(ctx, "app", "dev", store.InboxEntry{MessageID: "01A", CollapseID: "c", ExpiresAt: time.Now().Add(-time.Second)}); err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(runCtx) }()
	// Once swept, the collapse id is free: a Put with an older id is stored.
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := s.Put(ctx, "app", "dev", store.InboxEntry{MessageID: "009", CollapseID: "c"})
		if err != nil {
			t.Fatal(err)
		}
		if got == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run did not sweep the expired entry within 10s")
		}
		time.Sleep(time.Millisecond) // poll interval
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v, want nil after cancel", err)
	}
}

func TestPersistsAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	db := openDB(t, dir)
	s := pebblestore.New(db, pebblestore.Options{}, nil)
	if err := s.CreateApp(ctx, store.App{ID: "a1", Key: "k1", Name: "n"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "a1", "d1", store.InboxEntry{MessageID: "01A", Body: []byte("hello")}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AppByID(ctx, "a1"); !errors.Is(err, herald.ErrClosed) {
		t.Errorf("AppByID after Close = %v, want ErrClosed", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	db = openDB(t, dir)
	defer db.Close()
	s = pebblestore.New(db, pebblestore.Options{}, nil)
	if a, err := s.AppByKey(ctx, "k1"); err != nil || a.ID != "a1" {
		t.Errorf("AppByKey after reopen = %+v, %v", a, err)
	}
	if es, err := s.List(ctx, "a1", "d1", "", 10); err != nil || len(es) != 1 || string(es[0].Body) != "hello" {
		t.Errorf("List after reopen = %+v, %v", es, err)
	}
}

func openBench(tb testing.TB) store.Store {
	s, _ := openStore(tb, pebblestore.Options{})
	return s
}

func BenchmarkMark(b *testing.B) { storetest.MarkBenchmark(b, openBench) }

func BenchmarkInboxPutListDelete(b *testing.B) { storetest.InboxBenchmark(b, openBench) }
