package storetest

import (
	"slices"
	"testing"
	"time"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/store"
)

func testMessageFields(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	app := uniq("app")
	ids := msgIDs(3)
	tests := []struct {
		name string
		m    store.Message
	}{
		{"unicast", store.Message{ID: ids[0], AppID: app, Targets: []string{"d1"}, CreatedAt: now(),
			ExpiresAt: now().Add(time.Hour), Audience: "aliases"}},
		{"group", store.Message{ID: ids[1], AppID: app, CreatedAt: now(), ExpiresAt: now().Add(time.Hour),
			Audience: "tags", Group: true}},
		{"scheduled", store.Message{ID: ids[2], AppID: app, CreatedAt: now(), ExpiresAt: now().Add(3 * time.Hour),
			Audience: "all", Group: true, State: store.MessageScheduled, SendAt: now().Add(time.Hour)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mustNoErr(t, s.CreateMessage(t.Context(), tt.m), "CreateMessage")
			got, _, err := s.MessageStatus(t.Context(), tt.m.ID)
			mustNoErr(t, err, "MessageStatus")
			if got.ID != tt.m.ID || got.AppID != app || got.Audience != tt.m.Audience || got.Group != tt.m.Group ||
				got.State != tt.m.State || !got.SendAt.Equal(tt.m.SendAt) || !got.ExpiresAt.Equal(tt.m.ExpiresAt) ||
				!slices.Equal(got.Targets, tt.m.Targets) {
				t.Errorf("MessageStatus message = %+v, want %+v", got, tt.m)
			}
		})
	}
	states, err := s.MessageStates(t.Context(), append([]string{msgIDs(1)[0]}, ids...))
	mustNoErr(t, err, "MessageStates")
	want := map[string]store.MessageState{ids[0]: store.MessageActive, ids[1]: store.MessageActive, ids[2]: store.MessageScheduled}
	if len(states) != len(want) {
		t.Errorf("MessageStates = %v, want %v (absent ids missing)", states, want)
	}
	for id, st := range want {
		if got, ok := states[id]; !ok || got != st {
			t.Errorf("MessageStates[%s] = %v (present %v), want %v", id, got, ok, st)
		}
	}
}

func testMessageState(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	app := uniq("app")
	id := msgIDs(1)[0]
	mustNoErr(t, s.CreateMessage(t.Context(), store.Message{ID: id, AppID: app, Group: true, Audience: "all",
		CreatedAt: now(), State: store.MessageScheduled, SendAt: now().Add(time.Hour)}), "CreateMessage")
	type ms = store.MessageState
	steps := []struct {
		name      string
		from      []ms
		to        ms
		wantState ms
		wantMoved bool
	}{
		{"not from active", []ms{store.MessageActive}, store.MessageRecalled, store.MessageScheduled, false},
		{"from nothing", nil, store.MessageCancelled, store.MessageScheduled, false},
		{"scheduled to active", []ms{store.MessageScheduled}, store.MessageActive, store.MessageActive, true},
		{"again: no longer scheduled", []ms{store.MessageScheduled}, store.MessageCancelled, store.MessageActive, false},
		{"one of several", []ms{store.MessageScheduled, store.MessageActive}, store.MessageRecalled, store.MessageRecalled, true},
		{"recalled stays", []ms{store.MessageActive}, store.MessageRecalled, store.MessageRecalled, false},
	}
	for _, st := range steps {
		got, moved, err := s.SetMessageState(t.Context(), id, st.from, st.to)
		mustNoErr(t, err, "SetMessageState "+st.name)
		if got != st.wantState || moved != st.wantMoved {
			t.Fatalf("%s: SetMessageState = %v, %v; want %v, %v", st.name, got, moved, st.wantState, st.wantMoved)
		}
		m, _, err := s.MessageStatus(t.Context(), id)
		mustNoErr(t, err, "MessageStatus")
		if m.State != st.wantState {
			t.Fatalf("%s: MessageStatus state = %v, want %v", st.name, m.State, st.wantState)
		}
	}
	_, _, err := s.SetMessageState(t.Context(), msgIDs(1)[0], []ms{store.MessageActive}, store.MessageRecalled)
	wantErr(t, err, herald.ErrMessageNotFound, "SetMessageState(unknown)")

	t.Run("CompareAndSetRace", func(t *testing.T) {
		// The scheduler (scheduled -> active) races cancels (scheduled ->
		// cancelled): exactly one wins and everyone sees the winner's state.
		id := msgIDs(1)[0]
		mustNoErr(t, s.CreateMessage(t.Context(), store.Message{ID: id, AppID: app, Group: true, Audience: "all",
			CreatedAt: now(), State: store.MessageScheduled, SendAt: now().Add(time.Hour)}), "CreateMessage")
		const n = 10
		states := make([]ms, n)
		moved := make([]bool, n)
		concurrently(t, n, func(i int) error {
			to := store.MessageActive
			if i%2 == 1 {
				to = store.MessageCancelled
			}
			var err error
			states[i], moved[i], err = s.SetMessageState(t.Context(), id, []ms{store.MessageScheduled}, to)
			return err
		})
		winner := slices.Index(moved, true)
		if winner < 0 || slices.Index(moved[winner+1:], true) >= 0 {
			t.Fatalf("moved = %v, want exactly one winner", moved)
		}
		for i, st := range states {
			if st != states[winner] {
				t.Errorf("caller %d sees %v, the winner moved to %v", i, st, states[winner])
			}
		}
		got, err := s.MessageStates(t.Context(), []string{id})
		mustNoErr(t, err, "MessageStates")
		if got[id] != states[winner] {
			t.Errorf("MessageStates = %v, want %v", got[id], states[winner])
		}
	})
}

func testRecallPending(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	app := uniq("app")
	id := msgIDs(1)[0]
	createMessage(t, s, app, id, now().Add(time.Hour), "d1", "d2", "d3", "d4", "d5")
	mustNoErr(t, s.Mark(t.Context(), tr(id, "d1", store.StateDelivered), tr(id, "d2", store.StateFailed)), "Mark")
	mustNoErr(t, s.AddCounters(t.Context(), id, store.Counters{Clicked: 1}), "AddCounters")
	steps := []struct {
		name   string
		recall bool
		marks  []store.Transition
		want   []string // devices RecallPending returns
		counts store.Counts
	}{
		{"recall the pending ones", true, nil, []string{"d3", "d4", "d5"},
			store.Counts{Targeted: 5, Delivered: 1, Failed: 1, Recalled: 3, Clicked: 1}},
		{"again: nothing left", true, nil, nil,
			store.Counts{Targeted: 5, Delivered: 1, Failed: 1, Recalled: 3, Clicked: 1}},
		{"a late ack of a recalled target is ignored", false, []store.Transition{tr(id, "d3", store.StateDelivered)}, nil,
			store.Counts{Targeted: 5, Delivered: 1, Failed: 1, Recalled: 3, Clicked: 1}},
	}
	for _, st := range steps {
		if st.recall {
			got, err := s.RecallPending(t.Context(), id)
			mustNoErr(t, err, "RecallPending "+st.name)
			if !slices.Equal(sorted(got), st.want) {
				t.Fatalf("%s: RecallPending = %v, want %v", st.name, got, st.want)
			}
		}
		if len(st.marks) > 0 {
			mustNoErr(t, s.Mark(t.Context(), st.marks...), "Mark "+st.name)
		}
		if got := counts(t, s, id); got != st.counts {
			t.Fatalf("%s: counts = %+v, want %+v", st.name, got, st.counts)
		}
	}
	t.Run("MarkRecalled", func(t *testing.T) {
		// The dispatcher marks a recalled message's target recalled instead
		// of storing it in the inbox.
		id := msgIDs(1)[0]
		createMessage(t, s, app, id, now().Add(time.Hour), "d1", "d2")
		mustNoErr(t, s.Mark(t.Context(), tr(id, "d1", store.StateRecalled), tr(id, "d2", store.StateDelivered)), "Mark")
		mustNoErr(t, s.Mark(t.Context(), tr(id, "d2", store.StateRecalled)), "Mark a delivered target recalled")
		if got, want := counts(t, s, id), (store.Counts{Targeted: 2, Delivered: 1, Recalled: 1}); got != want {
			t.Errorf("counts = %+v, want %+v", got, want)
		}
	})
}

func testGroupCounts(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	app := uniq("app")
	id := msgIDs(1)[0]
	mustNoErr(t, s.CreateMessage(t.Context(), store.Message{ID: id, AppID: app, Group: true, Audience: "topic",
		CreatedAt: now(), ExpiresAt: now().Add(time.Hour)}), "CreateMessage")
	if got, want := counts(t, s, id), (store.Counts{}); got != want {
		t.Fatalf("fresh group message counts = %+v, want zero", got)
	}
	steps := []struct {
		name string
		add  store.Counters
		want store.Counts
	}{
		{"sent to 10", store.Counters{Targeted: 10}, store.Counts{Targeted: 10, Pending: 10}},
		{"3 delivered, 1 clicked", store.Counters{Delivered: 3, Clicked: 1}, store.Counts{Targeted: 10, Delivered: 3, Pending: 7, Clicked: 1}},
		{"replayed to 2 more, both delivered", store.Counters{Targeted: 2, Delivered: 2}, store.Counts{Targeted: 12, Delivered: 5, Pending: 7, Clicked: 1}},
		{"nothing", store.Counters{}, store.Counts{Targeted: 12, Delivered: 5, Pending: 7, Clicked: 1}},
		{"deliveries counted before their sends: pending never negative", store.Counters{Delivered: 10},
			store.Counts{Targeted: 12, Delivered: 15, Pending: 0, Clicked: 1}},
	}
	for _, st := range steps {
		mustNoErr(t, s.AddCounters(t.Context(), id, st.add), "AddCounters "+st.name)
		if got := counts(t, s, id); got != st.want {
			t.Fatalf("%s: counts = %+v, want %+v", st.name, got, st.want)
		}
	}
	mustNoErr(t, s.AddCounters(t.Context(), msgIDs(1)[0], store.Counters{Targeted: 1}), "AddCounters(unknown)")
	t.Run("ConcurrentAdds", func(t *testing.T) {
		id := msgIDs(1)[0]
		mustNoErr(t, s.CreateMessage(t.Context(), store.Message{ID: id, AppID: app, Group: true, Audience: "all", CreatedAt: now()}), "CreateMessage")
		const goroutines, adds = 8, 25
		concurrently(t, goroutines, func(int) error {
			for range adds {
				if err := s.AddCounters(t.Context(), id, store.Counters{Targeted: 2, Delivered: 1}); err != nil {
					return err
				}
			}
			return nil
		})
		want := store.Counts{Targeted: 2 * goroutines * adds, Delivered: goroutines * adds, Pending: goroutines * adds}
		if got := counts(t, s, id); got != want {
			t.Errorf("counts = %+v, want %+v", got, want)
		}
	})
	t.Run("UnicastClicked", func(t *testing.T) {
		id := msgIDs(1)[0]
		createMessage(t, s, app, id, now().Add(time.Hour), "d1", "d2")
		mustNoErr(t, s.Mark(t.Context(), tr(id, "d1", store.StateDelivered)), "Mark")
		// Targeted and Delivered of a unicast message come from its rows.
		mustNoErr(t, s.AddCounters(t.Context(), id, store.Counters{Targeted: 5, Delivered: 5, Clicked: 2}), "AddCounters")
		if got, want := counts(t, s, id), (store.Counts{Targeted: 2, Delivered: 1, Pending: 1, Clicked: 2}); got != want {
			t.Errorf("counts = %+v, want %+v", got, want)
		}
	})
}
