// Package storetest is the contract suite every store.Store implementation
// must pass. An engine's test calls Run with a function opening a store;
// each subtest opens its own store and closes it when done.
//
// The suite uses fresh random app, device and message ids in every subtest,
// so a shared backend (a Cassandra keyspace) needs no cleaning between
// subtests. Times are whole milliseconds, the precision of every engine.
package storetest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/ids"
	"github.com/heraldpush/herald/pkg/store"
)

// Run runs the contract suite against the stores open returns.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	t.Helper()
	openStore := func(t *testing.T) store.Store {
		t.Helper()
		s := open(t)
		t.Cleanup(func() {
			if err := s.Close(); err != nil {
				t.Errorf("close store: %v", err)
			}
		})
		return s
	}
	suites := []struct {
		name string
		fn   func(*testing.T, func(*testing.T) store.Store)
	}{
		{"Registry", testRegistry},
		{"Inbox", testInbox},
		{"Collapse", testCollapse},
		{"DeleteDevice", testDeleteDevice},
		{"Status", testStatus},
		{"MarkConcurrent", testMarkConcurrent},
		{"Idempotency", testIdempotency},
		{"AppSettings", testAppSettings},
		{"DeviceTagsTopics", testDeviceTagsTopics},
		{"AliasIndex", testAliasIndex},
		{"SetAlias", testSetAlias},
		{"UpdateTags", testUpdateTags},
		{"UpdateTopics", testUpdateTopics},
		{"Badges", testBadges},
		{"Quotas", testQuotas},
		{"TopicLog", testTopicLog},
		{"Schedules", testSchedules},
		{"Stats", testStats},
		{"MessageFields", testMessageFields},
		{"MessageState", testMessageState},
		{"RecallPending", testRecallPending},
		{"GroupCounts", testGroupCounts},
	}
	for _, s := range suites {
		t.Run(s.name, func(t *testing.T) { s.fn(t, openStore) })
	}
}

// uniq returns prefix followed by random hex, unique across runs.
func uniq(prefix string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return prefix + "-" + hex.EncodeToString(b[:])
}

// now returns the current time at millisecond precision.
func now() time.Time { return time.Now().Truncate(time.Millisecond) }

// msgIDs returns n increasing, fresh message ids.
func msgIDs(n int) []string {
	g := ids.New(nil)
	out := make([]string, n)
	for i := range out {
		out[i] = g.Next()
	}
	return out
}

func mustNoErr(t testing.TB, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func wantErr(t testing.TB, err, target error, what string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: got error %v, want %v", what, err, target)
	}
}

func listIDs(t testing.TB, s store.Store, appID, deviceID, after string, limit int) []string {
	t.Helper()
	es, err := s.List(t.Context(), appID, deviceID, after, limit)
	mustNoErr(t, err, "List")
	out := make([]string, 0, len(es))
	for _, e := range es {
		out = append(out, e.MessageID)
	}
	return out
}

func counts(t testing.TB, s store.Store, msgID string) store.Counts {
	t.Helper()
	_, c, err := s.MessageStatus(t.Context(), msgID)
	mustNoErr(t, err, "MessageStatus")
	return c
}

func tr(msgID, deviceID string, st store.DeliveryState) store.Transition {
	return store.Transition{MessageID: msgID, DeviceID: deviceID, State: st}
}

func createMessage(t testing.TB, s store.Store, appID, msgID string, expires time.Time, targets ...string) {
	t.Helper()
	err := s.CreateMessage(t.Context(), store.Message{ID: msgID, AppID: appID, Targets: targets, CreatedAt: now(), ExpiresAt: expires})
	mustNoErr(t, err, "CreateMessage")
}

func testRegistry(t *testing.T, open func(*testing.T) store.Store) {
	t.Run("AppRoundTrip", func(t *testing.T) {
		s := open(t)
		a := store.App{ID: uniq("app"), Name: "Demo", Key: uniq("key"), Secret: "s3cret", CreatedAt: now()}
		mustNoErr(t, s.CreateApp(t.Context(), a), "CreateApp")
		for name, get := range map[string]func() (store.App, error){
			"AppByID":  func() (store.App, error) { return s.AppByID(t.Context(), a.ID) },
			"AppByKey": func() (store.App, error) { return s.AppByKey(t.Context(), a.Key) },
		} {
			got, err := get()
			mustNoErr(t, err, name)
			if got.ID != a.ID || got.Name != a.Name || got.Key != a.Key || got.Secret != a.Secret || !got.CreatedAt.Equal(a.CreatedAt) {
				t.Errorf("%s = %+v, want %+v", name, got, a)
			}
		}
	})
	t.Run("AppConflictAndNotFound", func(t *testing.T) {
		s := open(t)
		a := store.App{ID: uniq("app"), Name: "A", Key: uniq("key"), Secret: "x", CreatedAt: now()}
		mustNoErr(t, s.CreateApp(t.Context(), a), "CreateApp")
		tests := []struct {
			name string
			app  store.App
		}{
			{"same id", store.App{ID: a.ID, Name: "B", Key: uniq("key"), Secret: "y", CreatedAt: now()}},
			{"same key", store.App{ID: uniq("app"), Name: "C", Key: a.Key, Secret: "z", CreatedAt: now()}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				wantErr(t, s.CreateApp(t.Context(), tt.app), herald.ErrConflict, "CreateApp")
			})
		}
		got, err := s.AppByID(t.Context(), a.ID)
		mustNoErr(t, err, "AppByID")
		if got.Name != "A" {
			t.Errorf("app was overwritten by a conflicting create: %+v", got)
		}
		_, err = s.AppByID(t.Context(), uniq("missing"))
		wantErr(t, err, herald.ErrAppNotFound, "AppByID(missing)")
		_, err = s.AppByKey(t.Context(), uniq("missing"))
		wantErr(t, err, herald.ErrAppNotFound, "AppByKey(missing)")
	})
	t.Run("DeviceUpsert", func(t *testing.T) {
		s := open(t)
		appID := uniq("app")
		d := store.Device{AppID: appID, ID: uniq("dev"), Platform: "android", Alias: "first",
			TokenHash: []byte{1, 2, 3}, CreatedAt: now(), UpdatedAt: now()}
		mustNoErr(t, s.PutDevice(t.Context(), d), "PutDevice")
		d.Alias, d.Platform, d.TokenHash, d.UpdatedAt = "second", "ios", []byte{4, 5}, now().Add(time.Second)
		mustNoErr(t, s.PutDevice(t.Context(), d), "PutDevice again")
		got, err := s.Device(t.Context(), appID, d.ID)
		mustNoErr(t, err, "Device")
		if got.AppID != d.AppID || got.ID != d.ID || got.Alias != "second" || got.Platform != "ios" ||
			!bytes.Equal(got.TokenHash, d.TokenHash) || !got.CreatedAt.Equal(d.CreatedAt) || !got.UpdatedAt.Equal(d.UpdatedAt) {
			t.Errorf("Device = %+v, want %+v", got, d)
		}
		_, err = s.Device(t.Context(), appID, uniq("missing"))
		wantErr(t, err, herald.ErrDeviceNotFound, "Device(missing)")
		_, err = s.Device(t.Context(), uniq("otherapp"), d.ID)
		wantErr(t, err, herald.ErrDeviceNotFound, "Device(other app)")
	})
	t.Run("DevicesExist", func(t *testing.T) {
		s := open(t)
		appID := uniq("app")
		a, b, missing := uniq("dev"), uniq("dev"), uniq("dev")
		for _, id := range []string{a, b} {
			mustNoErr(t, s.PutDevice(t.Context(), store.Device{AppID: appID, ID: id, Platform: "web", CreatedAt: now()}), "PutDevice")
		}
		got, err := s.DevicesExist(t.Context(), appID, []string{a, missing, b})
		mustNoErr(t, err, "DevicesExist")
		want := map[string]bool{a: true, b: true, missing: false}
		for id, w := range want {
			if got[id] != w {
				t.Errorf("DevicesExist[%s] = %v, want %v", id, got[id], w)
			}
		}
		got, err = s.DevicesExist(t.Context(), uniq("otherapp"), []string{a})
		mustNoErr(t, err, "DevicesExist(other app)")
		if got[a] {
			t.Errorf("device of another app reported as existing")
		}
	})
}

func testInbox(t *testing.T, open func(*testing.T) store.Store) {
	t.Run("OrderAfterLimit", func(t *testing.T) {
		s := open(t)
		app, dev := uniq("app"), uniq("dev")
		ids := msgIDs(5)
		for _, i := range []int{3, 0, 4, 1, 2} { // out of order
			got, err := s.Put(t.Context(), app, dev, store.InboxEntry{MessageID: ids[i], Body: []byte("body " + ids[i])})
			mustNoErr(t, err, "Put")
			if got != "" {
				t.Fatalf("Put without collapse id returned collapsed %q", got)
			}
		}
		tests := []struct {
			name  string
			after string
			limit int
			want  []string
		}{
			{"all", "", 100, ids},
			{"limit", "", 2, ids[:2]},
			{"after", ids[1], 100, ids[2:]},
			{"after and limit", ids[0], 3, ids[1:4]},
			{"after last", ids[4], 100, nil},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				if got := listIDs(t, s, app, dev, tt.after, tt.limit); !slices.Equal(got, tt.want) {
					t.Errorf("List(after=%q, limit=%d) = %v, want %v", tt.after, tt.limit, got, tt.want)
				}
			})
		}
		es, err := s.List(t.Context(), app, dev, "", 1)
		mustNoErr(t, err, "List")
		if len(es) != 1 || string(es[0].Body) != "body "+ids[0] {
			t.Errorf("List body = %+v, want body of %s", es, ids[0])
		}
		if got := listIDs(t, s, app, uniq("otherdev"), "", 100); len(got) != 0 {
			t.Errorf("another device's inbox = %v, want empty", got)
		}
	})
	t.Run("PutTwiceIsNoop", func(t *testing.T) {
		s := open(t)
		app, dev := uniq("app"), uniq("dev")
		id := msgIDs(1)[0]
		for range 2 {
			got, err := s.Put(t.Context(), app, dev, store.InboxEntry{MessageID: id, CollapseID: "c", Body: []byte("x")})
			mustNoErr(t, err, "Put")
			if got != "" {
				t.Fatalf("Put = %q, want \"\"", got)
			}
		}
		if got := listIDs(t, s, app, dev, "", 10); !slices.Equal(got, []string{id}) {
			t.Errorf("List = %v, want [%s]", got, id)
		}
	})
	t.Run("ExpiredSkipped", func(t *testing.T) {
		s := open(t)
		app, dev := uniq("app"), uniq("dev")
		ids := msgIDs(4)
		expires := []time.Time{{}, now().Add(-time.Second), now().Add(time.Hour), now().Add(-time.Hour)}
		for i, id := range ids {
			_, err := s.Put(t.Context(), app, dev, store.InboxEntry{MessageID: id, ExpiresAt: expires[i], Body: []byte("x")})
			mustNoErr(t, err, "Put")
		}
		want := []string{ids[0], ids[2]}
		if got := listIDs(t, s, app, dev, "", 10); !slices.Equal(got, want) {
			t.Errorf("List = %v, want unexpired %v", got, want)
		}
		if got := listIDs(t, s, app, dev, "", 1); !slices.Equal(got, want[:1]) {
			t.Errorf("List(limit 1) = %v, want %v", got, want[:1])
		}
		if got := listIDs(t, s, app, dev, ids[0], 1); !slices.Equal(got, want[1:]) {
			t.Errorf("List(after first, limit 1) = %v, want %v (expired entries do not use up the limit)", got, want[1:])
		}
		es, err := s.List(t.Context(), app, dev, ids[1], 1)
		mustNoErr(t, err, "List")
		if len(es) != 1 || !es[0].ExpiresAt.Equal(expires[2]) {
			t.Errorf("List entry = %+v, want ExpiresAt %v", es, expires[2])
		}
	})
	t.Run("Delete", func(t *testing.T) {
		s := open(t)
		app, dev := uniq("app"), uniq("dev")
		ids := msgIDs(4)
		for _, id := range ids {
			_, err := s.Put(t.Context(), app, dev, store.InboxEntry{MessageID: id, ExpiresAt: now().Add(time.Hour), Body: []byte("x")})
			mustNoErr(t, err, "Put")
		}
		mustNoErr(t, s.Delete(t.Context(), app, dev, ids[1], msgIDs(1)[0], ids[3]), "Delete with an absent id")
		mustNoErr(t, s.Delete(t.Context(), app, dev, ids[1]), "Delete again")
		mustNoErr(t, s.Delete(t.Context(), app, dev), "Delete nothing")
		if got, want := listIDs(t, s, app, dev, "", 10), []string{ids[0], ids[2]}; !slices.Equal(got, want) {
			t.Errorf("List = %v, want %v", got, want)
		}
	})
}

func testCollapse(t *testing.T, open func(*testing.T) store.Store) {
	put := func(t *testing.T, s store.Store, app, dev, id, collapse string) string {
		t.Helper()
		got, err := s.Put(t.Context(), app, dev, store.InboxEntry{MessageID: id, CollapseID: collapse, Body: []byte(id)})
		mustNoErr(t, err, "Put")
		return got
	}
	t.Run("NewerReplacesOlder", func(t *testing.T) {
		s := open(t)
		app, dev := uniq("app"), uniq("dev")
		ids := msgIDs(3)
		for _, id := range ids {
			createMessage(t, s, app, id, time.Time{}, dev)
		}
		if got := put(t, s, app, dev, ids[0], "score"); got != "" {
			t.Fatalf("first Put collapsed %q", got)
		}
		if got := put(t, s, app, dev, ids[1], "other"); got != "" {
			t.Fatalf("Put with another collapse id collapsed %q", got)
		}
		if got := put(t, s, app, dev, ids[2], "score"); got != ids[0] {
			t.Fatalf("newer Put collapsed %q, want %s", got, ids[0])
		}
		if got, want := listIDs(t, s, app, dev, "", 10), []string{ids[1], ids[2]}; !slices.Equal(got, want) {
			t.Errorf("List = %v, want %v", got, want)
		}
		if c := counts(t, s, ids[0]); c.Collapsed != 1 || c.Pending != 0 {
			t.Errorf("counts of the collapsed message = %+v, want 1 collapsed", c)
		}
		if c := counts(t, s, ids[2]); c.Pending != 1 || c.Collapsed != 0 {
			t.Errorf("counts of the newer message = %+v, want 1 pending", c)
		}
	})
	t.Run("OlderArrivingLateIsNotStored", func(t *testing.T) {
		s := open(t)
		app, dev := uniq("app"), uniq("dev")
		ids := msgIDs(2)
		for _, id := range ids {
			createMessage(t, s, app, id, time.Time{}, dev)
		}
		put(t, s, app, dev, ids[1], "score")
		if got := put(t, s, app, dev, ids[0], "score"); got != ids[0] {
			t.Fatalf("older Put returned %q, want its own id %s", got, ids[0])
		}
		if got, want := listIDs(t, s, app, dev, "", 10), []string{ids[1]}; !slices.Equal(got, want) {
			t.Errorf("List = %v, want %v", got, want)
		}
		if c := counts(t, s, ids[0]); c.Collapsed != 1 {
			t.Errorf("counts of the late older message = %+v, want 1 collapsed", c)
		}
	})
	t.Run("PerDevice", func(t *testing.T) {
		s := open(t)
		app, dev1, dev2 := uniq("app"), uniq("dev"), uniq("dev")
		ids := msgIDs(2)
		put(t, s, app, dev1, ids[0], "score")
		if got := put(t, s, app, dev2, ids[1], "score"); got != "" {
			t.Errorf("collapse crossed devices: %q", got)
		}
		if got := listIDs(t, s, app, dev1, "", 10); !slices.Equal(got, ids[:1]) {
			t.Errorf("dev1 List = %v, want %v", got, ids[:1])
		}
	})
	t.Run("DeleteKeepsIndexConsistent", func(t *testing.T) {
		s := open(t)
		app, dev := uniq("app"), uniq("dev")
		ids := msgIDs(3)
		put(t, s, app, dev, ids[0], "score")
		mustNoErr(t, s.Delete(t.Context(), app, dev, ids[0]), "Delete")
		if got := put(t, s, app, dev, ids[1], "score"); got != "" {
			t.Errorf("Put after the collapse holder was deleted collapsed %q", got)
		}
		if got := put(t, s, app, dev, ids[2], "score"); got != ids[1] {
			t.Errorf("Put collapsed %q, want %s", got, ids[1])
		}
		if got := listIDs(t, s, app, dev, "", 10); !slices.Equal(got, ids[2:]) {
			t.Errorf("List = %v, want %v", got, ids[2:])
		}
	})
}

func testDeleteDevice(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	app, dev, other := uniq("app"), uniq("dev"), uniq("dev")
	for _, id := range []string{dev, other} {
		mustNoErr(t, s.PutDevice(t.Context(), store.Device{AppID: app, ID: id, Platform: "android", CreatedAt: now()}), "PutDevice")
	}
	ids := msgIDs(3)
	for i, id := range ids {
		createMessage(t, s, app, id, time.Time{}, dev, other)
		_, err := s.Put(t.Context(), app, dev, store.InboxEntry{MessageID: id, CollapseID: fmt.Sprint("c", i), ExpiresAt: now().Add(time.Hour), Body: []byte("x")})
		mustNoErr(t, err, "Put")
		_, err = s.Put(t.Context(), app, other, store.InboxEntry{MessageID: id, Body: []byte("x")})
		mustNoErr(t, err, "Put other")
	}
	mustNoErr(t, s.Mark(t.Context(), store.Transition{MessageID: ids[0], DeviceID: dev, State: store.StateDelivered}), "Mark")

	mustNoErr(t, s.DeleteDevice(t.Context(), app, dev), "DeleteDevice")

	_, err := s.Device(t.Context(), app, dev)
	wantErr(t, err, herald.ErrDeviceNotFound, "Device after delete")
	wantErr(t, s.DeleteDevice(t.Context(), app, dev), herald.ErrDeviceNotFound, "DeleteDevice again")
	wantErr(t, s.DeleteDevice(t.Context(), app, uniq("never")), herald.ErrDeviceNotFound, "DeleteDevice(never registered)")
	if got := listIDs(t, s, app, dev, "", 10); len(got) != 0 {
		t.Errorf("inbox after DeleteDevice = %v, want empty", got)
	}
	if got := listIDs(t, s, app, other, "", 10); !slices.Equal(got, ids) {
		t.Errorf("other device's inbox = %v, want %v", got, ids)
	}
	tests := []struct {
		msg  string
		want store.Counts
	}{
		{ids[0], store.Counts{Targeted: 2, Delivered: 1, Pending: 1}}, // already delivered: stays delivered
		{ids[1], store.Counts{Targeted: 2, Failed: 1, Pending: 1}},
		{ids[2], store.Counts{Targeted: 2, Failed: 1, Pending: 1}},
	}
	for _, tt := range tests {
		if got := counts(t, s, tt.msg); got != tt.want {
			t.Errorf("counts(%s) = %+v, want %+v", tt.msg, got, tt.want)
		}
	}
	// The device can come back, with an empty inbox and fresh collapse ids.
	mustNoErr(t, s.PutDevice(t.Context(), store.Device{AppID: app, ID: dev, Platform: "android", CreatedAt: now()}), "PutDevice again")
	late := msgIDs(1)[0]
	got, err := s.Put(t.Context(), app, dev, store.InboxEntry{MessageID: late, CollapseID: "c1", Body: []byte("x")})
	mustNoErr(t, err, "Put after re-register")
	if got != "" {
		t.Errorf("Put after re-register collapsed %q (stale collapse index)", got)
	}
}

func testStatus(t *testing.T, open func(*testing.T) store.Store) {
	t.Run("CreateAndRead", func(t *testing.T) {
		s := open(t)
		app := uniq("app")
		id := msgIDs(1)[0]
		m := store.Message{ID: id, AppID: app, Targets: []string{"d1", "d2", "d3"}, CreatedAt: now(), ExpiresAt: now().Add(time.Hour)}
		mustNoErr(t, s.CreateMessage(t.Context(), m), "CreateMessage")
		got, c, err := s.MessageStatus(t.Context(), id)
		mustNoErr(t, err, "MessageStatus")
		gotTargets := slices.Sorted(slices.Values(got.Targets))
		if got.ID != id || got.AppID != app || !slices.Equal(gotTargets, m.Targets) ||
			!got.CreatedAt.Equal(m.CreatedAt) || !got.ExpiresAt.Equal(m.ExpiresAt) {
			t.Errorf("MessageStatus message = %+v, want %+v", got, m)
		}
		if want := (store.Counts{Targeted: 3, Pending: 3}); c != want {
			t.Errorf("counts = %+v, want %+v", c, want)
		}
		_, _, err = s.MessageStatus(t.Context(), msgIDs(1)[0])
		wantErr(t, err, herald.ErrMessageNotFound, "MessageStatus(unknown)")
	})
	t.Run("MarkOnlyFromPending", func(t *testing.T) {
		s := open(t)
		id := msgIDs(1)[0]
		createMessage(t, s, uniq("app"), id, time.Time{}, "d1", "d2", "d3", "d4", "d5")
		steps := []struct {
			name string
			ts   []store.Transition
			want store.Counts
		}{
			{"deliver d1", []store.Transition{tr(id, "d1", store.StateDelivered)},
				store.Counts{Targeted: 5, Delivered: 1, Pending: 4}},
			{"d1 again as failed is ignored", []store.Transition{tr(id, "d1", store.StateFailed)},
				store.Counts{Targeted: 5, Delivered: 1, Pending: 4}},
			{"one call, same target twice: first wins", []store.Transition{tr(id, "d2", store.StateExpired), tr(id, "d2", store.StateDelivered)},
				store.Counts{Targeted: 5, Delivered: 1, Expired: 1, Pending: 3}},
			{"failed, collapsed, and unknown target and message ignored", []store.Transition{
				tr(id, "d3", store.StateFailed), tr(id, "d4", store.StateCollapsed),
				tr(id, "nobody", store.StateDelivered), tr(msgIDs(1)[0], "d5", store.StateDelivered)},
				store.Counts{Targeted: 5, Delivered: 1, Expired: 1, Failed: 1, Collapsed: 1, Pending: 1}},
			{"redelivery counts once", []store.Transition{tr(id, "d1", store.StateDelivered), tr(id, "d5", store.StateDelivered), tr(id, "d5", store.StateDelivered)},
				store.Counts{Targeted: 5, Delivered: 2, Expired: 1, Failed: 1, Collapsed: 1}},
		}
		for _, st := range steps {
			mustNoErr(t, s.Mark(t.Context(), st.ts...), "Mark "+st.name)
			if got := counts(t, s, id); got != st.want {
				t.Fatalf("after %s: counts = %+v, want %+v", st.name, got, st.want)
			}
		}
	})
	t.Run("PendingPastExpiryCountsExpired", func(t *testing.T) {
		s := open(t)
		id := msgIDs(1)[0]
		createMessage(t, s, uniq("app"), id, now().Add(-time.Second), "d1", "d2", "d3")
		mustNoErr(t, s.Mark(t.Context(), store.Transition{MessageID: id, DeviceID: "d1", State: store.StateDelivered}), "Mark")
		if got, want := counts(t, s, id), (store.Counts{Targeted: 3, Delivered: 1, Expired: 2}); got != want {
			t.Errorf("counts = %+v, want %+v", got, want)
		}
	})
	t.Run("DuplicateTargetsCountOnce", func(t *testing.T) {
		s := open(t)
		id := msgIDs(1)[0]
		createMessage(t, s, uniq("app"), id, time.Time{}, "d1", "d2", "d1")
		if got, want := counts(t, s, id), (store.Counts{Targeted: 2, Pending: 2}); got != want {
			t.Errorf("counts = %+v, want %+v", got, want)
		}
	})
}

// testMarkConcurrent has 50 goroutines mark the same targets with
// conflicting states: each target ends in exactly one terminal state.
func testMarkConcurrent(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	const goroutines, targets = 50, 200
	msgs := msgIDs(2)
	devs := make([]string, targets)
	for i := range devs {
		devs[i] = fmt.Sprintf("d%03d", i)
	}
	for _, m := range msgs {
		createMessage(t, s, uniq("app"), m, time.Time{}, devs...)
	}
	states := []store.DeliveryState{store.StateDelivered, store.StateExpired, store.StateFailed, store.StateCollapsed}
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			st := states[g%len(states)]
			// Alternate batches and single marks, in different orders.
			for i := range targets {
				d := devs[(i+g*7)%targets]
				var err error
				if g%2 == 0 {
					err = s.Mark(t.Context(), store.Transition{MessageID: msgs[0], DeviceID: d, State: st},
						store.Transition{MessageID: msgs[1], DeviceID: d, State: st})
				} else {
					err = s.Mark(t.Context(), store.Transition{MessageID: msgs[1], DeviceID: d, State: st})
					if err == nil {
						err = s.Mark(t.Context(), store.Transition{MessageID: msgs[0], DeviceID: d, State: st})
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Mark: %v", err)
	}
	for _, m := range msgs {
		c := counts(t, s, m)
		if c.Targeted != targets || c.Pending != 0 || c.Delivered+c.Expired+c.Failed+c.Collapsed != targets {
			t.Errorf("counts(%s) = %+v, want %d targets each in exactly one terminal state", m, c, targets)
		}
	}
}

func testIdempotency(t *testing.T, open func(*testing.T) store.Store) {
	t.Run("ClaimAndRelease", func(t *testing.T) {
		s := open(t)
		app, key := uniq("app"), uniq("key")
		ids := msgIDs(3)
		claim := func(id string) string {
			t.Helper()
			got, err := s.Claim(t.Context(), app, key, id, time.Hour)
			mustNoErr(t, err, "Claim")
			return got
		}
		if got := claim(ids[0]); got != "" {
			t.Fatalf("fresh Claim = %q, want \"\"", got)
		}
		if got := claim(ids[1]); got != ids[0] {
			t.Fatalf("second Claim = %q, want %s", got, ids[0])
		}
		other, err := s.Claim(t.Context(), uniq("otherapp"), key, ids[1], time.Hour)
		mustNoErr(t, err, "Claim other app")
		if other != "" {
			t.Errorf("the same key of another app was already claimed by %q", other)
		}
		mustNoErr(t, s.Release(t.Context(), app, key, ids[1]), "Release by a non-owner")
		if got := claim(ids[1]); got != ids[0] {
			t.Fatalf("Claim after a non-owner Release = %q, want %s", got, ids[0])
		}
		mustNoErr(t, s.Release(t.Context(), app, key, ids[0]), "Release")
		if got := claim(ids[2]); got != "" {
			t.Fatalf("Claim after Release = %q, want \"\"", got)
		}
		mustNoErr(t, s.Release(t.Context(), app, uniq("never"), ids[0]), "Release of an unclaimed key")
	})
	t.Run("ExpiredClaimIsReplaced", func(t *testing.T) {
		s := open(t)
		app, key := uniq("app"), uniq("key")
		ids := msgIDs(2)
		got, err := s.Claim(t.Context(), app, key, ids[0], time.Millisecond)
		mustNoErr(t, err, "Claim")
		if got != "" {
			t.Fatalf("fresh Claim = %q", got)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			got, err := s.Claim(t.Context(), app, key, ids[1], time.Hour)
			mustNoErr(t, err, "Claim")
			if got == "" {
				break
			}
			if got != ids[0] {
				t.Fatalf("Claim = %q, want %s or a fresh claim", got, ids[0])
			}
			if time.Now().After(deadline) {
				t.Fatalf("claim with a 1ms ttl still held after 10s")
			}
		}
	})
	t.Run("ClaimRace", func(t *testing.T) {
		s := open(t)
		app, key := uniq("app"), uniq("key")
		const n = 50
		ids := msgIDs(n)
		results := make([]string, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() { results[i], errs[i] = s.Claim(t.Context(), app, key, ids[i], time.Hour) })
		}
		wg.Wait()
		winner := -1
		for i := range n {
			mustNoErr(t, errs[i], "Claim")
			if results[i] == "" {
				if winner >= 0 {
					t.Fatalf("both %s and %s won the claim", ids[winner], ids[i])
				}
				winner = i
			}
		}
		if winner < 0 {
			t.Fatalf("nobody won the claim: %v", results)
		}
		for i, r := range results {
			if i != winner && r != ids[winner] {
				t.Errorf("loser %d got %q, want the winner %s", i, r, ids[winner])
			}
		}
	})
}
