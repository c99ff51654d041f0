package storetest

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/heraldpush/herald/pkg/store"
)

func testTopicLog(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	app := uniq("app")
	t0 := now()
	ids := msgIDs(5)
	// ids[0] expired already, ids[4] expires later than the rest.
	expires := []time.Time{t0.Add(-time.Second), t0.Add(time.Hour), t0.Add(time.Hour), t0.Add(time.Hour), t0.Add(2 * time.Hour)}
	for _, i := range []int{2, 0, 4, 1, 3} { // out of order
		b := store.Broadcast{MessageID: ids[i], ExpiresAt: expires[i], Body: []byte("body " + ids[i])}
		mustNoErr(t, s.PutBroadcast(t.Context(), app, b), "PutBroadcast")
	}
	// Storing an id again is a no-op: the first body stays.
	mustNoErr(t, s.PutBroadcast(t.Context(), app, store.Broadcast{MessageID: ids[1], ExpiresAt: expires[1], Body: []byte("again")}), "PutBroadcast again")
	mustNoErr(t, s.RecallBroadcast(t.Context(), app, ids[3]), "RecallBroadcast")
	mustNoErr(t, s.RecallBroadcast(t.Context(), app, ids[3]), "RecallBroadcast again")
	absent := msgIDs(1)[0]
	mustNoErr(t, s.RecallBroadcast(t.Context(), app, absent), "RecallBroadcast(absent)")
	// Storing a recalled id again keeps it recalled.
	mustNoErr(t, s.PutBroadcast(t.Context(), app, store.Broadcast{MessageID: ids[3], ExpiresAt: expires[3], Body: []byte("again")}), "PutBroadcast recalled again")

	list := func(t *testing.T, app, after string, at time.Time, limit int) []store.Broadcast {
		t.Helper()
		bs, err := s.ListBroadcasts(t.Context(), app, after, at, limit)
		mustNoErr(t, err, "ListBroadcasts")
		return bs
	}
	tests := []struct {
		name  string
		after string
		at    time.Time
		limit int
		want  []string
	}{
		{"all unexpired in id order", "", t0, 100, ids[1:]},
		{"limit", "", t0, 2, ids[1:3]},
		{"after", ids[1], t0, 100, ids[2:]},
		{"after and limit", ids[2], t0, 1, ids[3:4]},
		{"after an expired id", ids[0], t0, 100, ids[1:]},
		{"after the last", ids[4], t0, 100, nil},
		{"as of later, the earlier expiries are out", "", t0.Add(90 * time.Minute), 100, ids[4:]},
		{"as of the expiry instant, it is out", "", t0.Add(2 * time.Hour), 100, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bs := list(t, app, tt.after, tt.at, tt.limit)
			var got []string
			for _, b := range bs {
				got = append(got, b.MessageID)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("ListBroadcasts(after=%q, now=%v, limit=%d) = %v, want %v", tt.after, tt.at, tt.limit, got, tt.want)
			}
		})
	}
	t.Run("fields", func(t *testing.T) {
		for _, b := range list(t, app, "", t0, 100) {
			i := slices.Index(ids, b.MessageID)
			if string(b.Body) != "body "+ids[i] || !b.ExpiresAt.Equal(expires[i]) || b.Recalled != (i == 3) {
				t.Errorf("broadcast %d = {%s %v %q recalled=%v}, want {%s %v %q recalled=%v}",
					i, b.MessageID, b.ExpiresAt, b.Body, b.Recalled, ids[i], expires[i], "body "+ids[i], i == 3)
			}
		}
	})
	if bs := list(t, uniq("otherapp"), "", t0, 100); len(bs) != 0 {
		t.Errorf("ListBroadcasts of another app = %d broadcasts, want none", len(bs))
	}
	if bs := list(t, app, "", t0, 100); slices.ContainsFunc(bs, func(b store.Broadcast) bool { return b.MessageID == absent }) {
		t.Errorf("RecallBroadcast of an absent id stored it")
	}
}

func testSchedules(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	// DueScheduled is not per app: other entries may exist in a shared
	// backend, so the assertions look at this test's entries and at the
	// order of whatever is returned.
	app := uniq("app")
	t0 := now()
	ids := msgIDs(5)
	entries := []store.Scheduled{
		{MessageID: ids[0], AppID: app, Due: t0.Add(-2 * time.Minute), Body: []byte("b0")},
		{MessageID: ids[1], AppID: app, Due: t0.Add(-3 * time.Minute), Body: []byte("b1")}, // due first
		{MessageID: ids[2], AppID: app, Due: t0.Add(-2 * time.Minute), Body: []byte("b2")}, // same due as ids[0]: id order
		{MessageID: ids[3], AppID: app, Due: t0, Body: []byte("b3")},                       // due exactly at until
		{MessageID: ids[4], AppID: app, Due: t0.Add(time.Hour), Body: []byte("b4")},        // not due yet
	}
	for _, i := range []int{3, 0, 4, 2, 1} {
		mustNoErr(t, s.PutScheduled(t.Context(), entries[i]), "PutScheduled")
	}
	t.Cleanup(func() {
		for _, e := range entries {
			_ = s.DeleteScheduled(context.Background(), e) // t.Context() is done by now
		}
	})
	due := func(t *testing.T, until time.Time, limit int) []store.Scheduled {
		t.Helper()
		got, err := s.DueScheduled(t.Context(), until, limit)
		mustNoErr(t, err, "DueScheduled")
		if len(got) > limit {
			t.Fatalf("DueScheduled(limit %d) returned %d entries", limit, len(got))
		}
		ordered := slices.IsSortedFunc(got, func(a, b store.Scheduled) int {
			if c := a.Due.Compare(b.Due); c != 0 {
				return c
			}
			return strings.Compare(a.MessageID, b.MessageID)
		})
		if !ordered {
			t.Fatalf("DueScheduled is not ordered by due time then id: %+v", got)
		}
		for _, e := range got {
			if e.Due.After(until) {
				t.Fatalf("DueScheduled(until %v) returned %s due %v", until, e.MessageID, e.Due)
			}
		}
		return got
	}
	mine := func(es []store.Scheduled) []store.Scheduled {
		return slices.DeleteFunc(slices.Clone(es), func(e store.Scheduled) bool { return e.AppID != app })
	}
	byIDs := func(is ...int) []store.Scheduled {
		out := make([]store.Scheduled, len(is))
		for k, i := range is {
			out[k] = entries[i]
		}
		return out
	}
	tests := []struct {
		name  string
		until time.Time
		want  []store.Scheduled
	}{
		{"due now, oldest first, ties by id", t0, byIDs(1, 0, 2, 3)},
		{"before the ties", t0.Add(-150 * time.Second), byIDs(1)},
		{"later, everything", t0.Add(2 * time.Hour), byIDs(1, 0, 2, 3, 4)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mine(due(t, tt.until, 1000)); !equalScheduled(got, tt.want) {
				t.Errorf("DueScheduled(%v) = %+v, want %+v", tt.until, got, tt.want)
			}
		})
	}
	t.Run("limit returns a prefix", func(t *testing.T) {
		all := due(t, t0, 1000)
		for _, limit := range []int{1, 2, 3} {
			got := due(t, t0, limit)
			if !equalScheduled(got, all[:min(limit, len(all))]) {
				t.Errorf("DueScheduled(limit %d) = %+v, want the first %d of %+v", limit, got, limit, all)
			}
		}
	})
	t.Run("delete", func(t *testing.T) {
		mustNoErr(t, s.DeleteScheduled(t.Context(), entries[0]), "DeleteScheduled")
		mustNoErr(t, s.DeleteScheduled(t.Context(), entries[0]), "DeleteScheduled again")
		mustNoErr(t, s.DeleteScheduled(t.Context(), store.Scheduled{MessageID: msgIDs(1)[0], AppID: app, Due: t0}), "DeleteScheduled(absent)")
		if got := mine(due(t, t0.Add(2*time.Hour), 1000)); !equalScheduled(got, byIDs(1, 2, 3, 4)) {
			t.Errorf("DueScheduled after delete = %+v, want %+v", got, byIDs(1, 2, 3, 4))
		}
	})
}

func equalScheduled(a, b []store.Scheduled) bool {
	return slices.EqualFunc(a, b, func(x, y store.Scheduled) bool {
		return x.MessageID == y.MessageID && x.AppID == y.AppID && x.Due.Equal(y.Due) && string(x.Body) == string(y.Body)
	})
}
