package pebblestore

import (
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/heraldpush/herald/pkg/pebbledb"
	"github.com/heraldpush/herald/pkg/store"
)

// TestDecodesRecordsWrittenBeforeIssue4 stores app, device and message
// records exactly as the previous release wrote them and reads them back
// through the new API.
func TestDecodesRecordsWrittenBeforeIssue4(t *testing.T) {
	db, err := pebbledb.Open(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	old := map[string]string{
		string(appKey("a1")):             `{"id":"a1","name":"n","key":"k1","secret":"s","created_at":"2025-01-02T03:04:05Z"}`,
		string(appKeyIndex("k1")):        `a1`,
		string(deviceKey("a1", "d1")):    `{"platform":"ios","alias":"al","token_hash":"AQI=","created_at":"2025-01-02T03:04:05Z","updated_at":"2025-01-02T03:04:05Z"}`,
		string(messageKey("01OLD")):      `{"app_id":"a1","targets":["d1","d2"],"created_at":"2025-01-02T03:04:05Z","expires_at":"0001-01-01T00:00:00Z"}`,
		string(targetKey("01OLD", "d1")): string([]byte{byte(store.StateDelivered)}),
		string(targetKey("01OLD", "d2")): string([]byte{byte(store.StatePending)}),
	}
	for k, v := range old {
		if err := db.Set([]byte(k), []byte(v), pebble.Sync); err != nil {
			t.Fatal(err)
		}
	}
	s := New(db, Options{}, nil)
	ctx := t.Context()

	a, err := s.AppByKey(ctx, "k1")
	if err != nil || a.ID != "a1" || a.Name != "n" || a.WebhookURL != "" || a.RateLimit != 0 || a.DailyCap != 0 {
		t.Errorf("AppByKey = %+v, %v", a, err)
	}
	if err := s.UpdateApp(ctx, store.App{ID: "a1", DailyCap: 5}); err != nil {
		t.Fatal(err)
	}
	if a, err := s.AppByID(ctx, "a1"); err != nil || a.DailyCap != 5 || a.Secret != "s" {
		t.Errorf("AppByID after UpdateApp = %+v, %v", a, err)
	}

	d, err := s.Device(ctx, "a1", "d1")
	if err != nil || d.Alias != "al" || d.Platform != "ios" || len(d.Tags) != 0 || len(d.Topics) != 0 {
		t.Errorf("Device = %+v, %v", d, err)
	}
	// An old device has no alias index entry; its next update writes one.
	if d, err := s.UpdateTags(ctx, "a1", "d1", []string{"vip"}, nil); err != nil || !slices.Equal(d.Tags, []string{"vip"}) {
		t.Errorf("UpdateTags = %+v, %v", d, err)
	}
	if ids, err := s.DevicesByAlias(ctx, "a1", "al", 10); err != nil || !slices.Equal(ids, []string{"d1"}) {
		t.Errorf("DevicesByAlias after an update = %v, %v", ids, err)
	}

	m, c, err := s.MessageStatus(ctx, "01OLD")
	if err != nil || m.State != store.MessageActive || m.Group || m.Audience != "" || !m.SendAt.IsZero() {
		t.Errorf("MessageStatus = %+v, %v", m, err)
	}
	if want := (store.Counts{Targeted: 2, Delivered: 1, Pending: 1}); c != want {
		t.Errorf("counts = %+v, want %+v", c, want)
	}
	if st, err := s.MessageStates(ctx, []string{"01OLD", "01NONE"}); err != nil || len(st) != 1 || st["01OLD"] != store.MessageActive {
		t.Errorf("MessageStates = %v, %v", st, err)
	}
	if st, moved, err := s.SetMessageState(ctx, "01OLD", []store.MessageState{store.MessageActive}, store.MessageRecalled); err != nil || !moved || st != store.MessageRecalled {
		t.Errorf("SetMessageState = %v, %v, %v", st, moved, err)
	}
	if got, err := s.RecallPending(ctx, "01OLD"); err != nil || !slices.Equal(got, []string{"d2"}) {
		t.Errorf("RecallPending = %v, %v", got, err)
	}
}

// TestSweepBroadcastsAndQuotas: Sweep drops expired broadcasts and quota
// dates older than two days, and nothing else.
func TestSweepBroadcastsAndQuotas(t *testing.T) {
	db, err := pebbledb.Open(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	s := New(db, Options{}, nil)
	ctx := t.Context()
	now := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	for i, exp := range []time.Time{now.Add(-time.Minute), now.Add(time.Minute), now} {
		id := []string{"01A", "01B", "01C"}[i]
		if err := s.PutBroadcast(ctx, "app", store.Broadcast{MessageID: id, ExpiresAt: exp, Body: []byte(id)}); err != nil {
			t.Fatal(err)
		}
	}
	days := []time.Time{now.AddDate(0, 0, -3), now.AddDate(0, 0, -2), now.AddDate(0, 0, -1), now}
	for _, d := range days {
		if _, err := s.CountDaily(ctx, "app", "dev", d, 4); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Sweep(ctx, now); err != nil {
		t.Fatal(err)
	}
	// Listing as of long ago shows what is stored.
	bs, err := s.ListBroadcasts(ctx, "app", "", time.Unix(1, 0), 0)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, b := range bs {
		ids = append(ids, b.MessageID)
	}
	if !slices.Equal(ids, []string{"01B"}) {
		t.Errorf("broadcasts stored after sweep = %v, want [01B]", ids)
	}
	if ok, err := s.exists(broadcastIndexKey(nanos(now.Add(-time.Minute)), "app", "01A")); err != nil || ok {
		t.Errorf("swept broadcast's index key still stored: %v, %v", ok, err)
	}
	for i, d := range days {
		got, err := s.CountDaily(ctx, "app", "dev", d, 0)
		if err != nil {
			t.Fatal(err)
		}
		want := int64(4)
		if i == 0 {
			want = 0 // three days ago: swept
		}
		if got != want {
			t.Errorf("count of %s after sweep = %d, want %d", d.Format(time.DateOnly), got, want)
		}
	}
}
