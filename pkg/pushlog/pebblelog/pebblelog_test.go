package pebblelog_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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

// harness opens logs on databases in temporary directories and reopens
// them by closing and reopening the database, as a restart would.
type harness struct {
	mu   sync.Mutex
	dirs map[pushlog.Log]string
	opts pebblelog.Options
}

func openDB(tb testing.TB, dir string) *pebble.DB {
	tb.Helper()
	db, err := pebbledb.Open(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatalf("open db: %v", err)
	}
	return db
}

func (h *harness) openAt(tb testing.TB, dir string) *pebblelog.Log {
	tb.Helper()
	db := openDB(tb, dir)
	l, err := pebblelog.New(db, h.opts, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	// Cleanups run last-in first-out: the log closes before its database.
	tb.Cleanup(func() {
		if err := db.Close(); err != nil {
			tb.Errorf("close db: %v", err)
		}
	})
	tb.Cleanup(func() { _ = l.Close() })
	h.mu.Lock()
	h.dirs[l] = dir
	h.mu.Unlock()
	return l
}

func newHarness(opts pebblelog.Options) *harness {
	return &harness{dirs: make(map[pushlog.Log]string), opts: opts}
}

func (h *harness) open(tb testing.TB) pushlog.Log { return h.openAt(tb, tb.TempDir()) }

func TestContract(t *testing.T) {
	h := newHarness(pebblelog.Options{})
	logtest.Run(t, logtest.Harness{
		Open: h.open,
		Reopen: func(tb testing.TB, prev pushlog.Log) pushlog.Log {
			h.mu.Lock()
			dir := h.dirs[prev]
			h.mu.Unlock()
			return h.openAt(tb, dir) // prev's database is closed by its cleanup first? no: see below
		},
	})
}
