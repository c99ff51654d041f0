package dispatcher

import (
	"sync"

	"github.com/heraldpush/herald/pkg/pushlog"
)

// tracker knows, per partition, which fetched records are settled, and
// yields the newest record below which everything is settled: the commit
// point. Batches settle out of order; commits never skip an unsettled record.
type tracker struct {
	mu    sync.Mutex
	parts map[int]*partState
}

type partState struct {
	pending []int64 // offsets in fetch order (ascending, except after a rebalance re-delivers)
	// done counts settled copies of offsets still in pending: after a
	// consumer-group rebalance the same offset can be fetched (and settle)
	// twice, and each copy must pop exactly one pending entry.
	done map[int64]int
	last pushlog.Record // newest settled record not yet committed
	has  bool
}

func newTracker() *tracker { return &tracker{parts: make(map[int]*partState)} }

func (t *tracker) part(p int) *partState {
	ps, ok := t.parts[p]
	if !ok {
		ps = &partState{done: make(map[int64]int)}
		t.parts[p] = ps
	}
	return ps
}

func (t *tracker) add(recs []pushlog.Record) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, r := range recs {
		ps := t.part(r.Partition)
		ps.pending = append(ps.pending, r.Offset)
	}
}

func (t *tracker) done(recs []pushlog.Record) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, r := range recs {
		ps := t.part(r.Partition)
		ps.done[r.Offset]++
		// Advance the settled prefix.
		for len(ps.pending) > 0 && ps.done[ps.pending[0]] > 0 {
			off := ps.pending[0]
			if ps.done[off]--; ps.done[off] == 0 {
				delete(ps.done, off)
			}
			ps.pending = ps.pending[1:]
			ps.last = pushlog.Record{Partition: r.Partition, Offset: off}
			ps.has = true
		}
	}
}

// committable returns, per partition, the newest record of the settled prefix.
func (t *tracker) committable() []pushlog.Record {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []pushlog.Record
	for _, ps := range t.parts {
		if ps.has {
			out = append(out, ps.last)
			ps.has = false
		}
	}
	return out
}

// uncommit puts records back after a failed commit so the next tick retries.
func (t *tracker) uncommit(recs []pushlog.Record) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, r := range recs {
		ps := t.part(r.Partition)
		if !ps.has || ps.last.Offset < r.Offset {
			ps.last, ps.has = r, true
		}
	}
}
