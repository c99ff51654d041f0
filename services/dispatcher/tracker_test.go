package dispatcher

import (
	"testing"

	"github.com/heraldpush/herald/pkg/pushlog"
)

func recs(part int, offs ...int64) []pushlog.Record {
	out := make([]pushlog.Record, len(offs))
	for i, o := range offs {
		out[i] = pushlog.Record{Partition: part, Offset: o}
	}
	return out
}

// The commit point never passes an unsettled record, whatever order
// batches settle in.
func TestTrackerCommitsOnlySettledPrefix(t *testing.T) {
	type step struct {
		done []pushlog.Record
		want map[int]int64 // partition -> committable offset (absent: none)
	}
	cases := []struct {
		name    string
		fetched [][]pushlog.Record
		steps   []step
	}{
		{
			name:    "in order",
			fetched: [][]pushlog.Record{recs(0, 0, 1, 2)},
			steps:   []step{{done: recs(0, 0, 1, 2), want: map[int]int64{0: 2}}},
		},
		{
			name:    "later batch settles first",
			fetched: [][]pushlog.Record{recs(0, 0, 1), recs(0, 2, 3)},
			steps: []step{
				{done: recs(0, 2, 3), want: map[int]int64{}},
				{done: recs(0, 0, 1), want: map[int]int64{0: 3}},
			},
		},
		{
			name:    "partitions are independent",
			fetched: [][]pushlog.Record{append(recs(0, 5, 6), recs(1, 9)...), recs(1, 10)},
			steps: []step{
				{done: recs(1, 10), want: map[int]int64{}},
				{done: append(recs(0, 5, 6), recs(1, 9)...), want: map[int]int64{0: 6, 1: 10}},
			},
		},
		{
			// A rebalance hands the partition back and its records are
			// fetched again while the first copies are still in flight.
			name:    "the same offsets fetched twice",
			fetched: [][]pushlog.Record{recs(0, 6), recs(0, 5), recs(0, 5)},
			steps: []step{
				{done: recs(0, 5), want: map[int]int64{}},
				{done: recs(0, 5), want: map[int]int64{}},
				{done: recs(0, 6), want: map[int]int64{0: 5}},
			},
		},
		{
			name:    "gap in the middle holds the rest",
			fetched: [][]pushlog.Record{recs(0, 0), recs(0, 1), recs(0, 2)},
			steps: []step{
				{done: recs(0, 0), want: map[int]int64{0: 0}},
				{done: recs(0, 2), want: map[int]int64{}},
				{done: recs(0, 1), want: map[int]int64{0: 2}},
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTracker()
			for _, b := range tc.fetched {
				tr.add(b)
			}
			for i, st := range tc.steps {
				tr.done(st.done)
				got := map[int]int64{}
				for _, r := range tr.committable() {
					got[r.Partition] = r.Offset
				}
				if len(got) != len(st.want) {
					t.Fatalf("step %d: committable %v, want %v", i, got, st.want)
				}
				for p, o := range st.want {
					if got[p] != o {
						t.Fatalf("step %d: committable %v, want %v", i, got, st.want)
					}
				}
			}
		})
	}
}

func TestTrackerUncommitRetries(t *testing.T) {
	tr := newTracker()
	tr.add(recs(0, 0, 1))
	tr.done(recs(0, 0, 1))
	first := tr.committable()
	tr.uncommit(first)
	again := tr.committable()
	if len(again) != 1 || again[0].Offset != 1 {
		t.Fatalf("after a failed commit: %v, want offset 1 again", again)
	}
}
