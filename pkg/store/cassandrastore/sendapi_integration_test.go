//go:build integration

package cassandrastore

import (
	"context"
	"fmt"
	"io/fs"
	"slices"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"

	schema "github.com/heraldpush/herald/deploy/cassandra"
	"github.com/heraldpush/herald/pkg/enginetest"
	"github.com/heraldpush/herald/pkg/ids"
	"github.com/heraldpush/herald/pkg/store"
)

// Cassandra-specific tests of the send-API tables (002_send_api.cql):
// what the engine-neutral contract suite cannot see.

// TestCompareAndSetValuesAreExact: concurrent AddBadge and CountDaily
// calls each return their own value, none twice (a counter table plus a
// read could not promise that).
func TestCompareAndSetValuesAreExact(t *testing.T) {
	s := openStore(t, nil)
	defer s.Close()
	const goroutines, each = 6, 8
	tests := []struct {
		name string
		add  func(ctx context.Context, app, dev string) (int64, error)
	}{
		{"AddBadge", func(ctx context.Context, app, dev string) (int64, error) {
			n, err := s.AddBadge(ctx, app, dev, 1)
			return int64(n), err
		}},
		{"CountDaily", func(ctx context.Context, app, dev string) (int64, error) {
			return s.CountDaily(ctx, app, dev, time.Now(), 1)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			app, dev := uniq("app"), uniq("dev")
			var (
				mu   sync.Mutex
				got  []int64
				errs = make([]error, goroutines)
				wg   sync.WaitGroup
			)
			for g := range goroutines {
				wg.Go(func() {
					for range each {
						n, err := tt.add(t.Context(), app, dev)
						if err != nil {
							errs[g] = err
							return
						}
						mu.Lock()
						got = append(got, n)
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			for _, err := range errs {
				if err != nil {
					t.Fatalf("concurrent %s: %v", tt.name, err)
				}
			}
			slices.Sort(got)
			want := make([]int64, goroutines*each)
			for i := range want {
				want[i] = int64(i + 1)
			}
			if !slices.Equal(got, want) {
				t.Errorf("values returned by %d concurrent +1 = %v, want each of 1..%d once", len(want), got, len(want))
			}
		})
	}
}

// TestCompareAndSetRecognisesItsOwnWrite replays the case retry() meets
// when a lightweight transaction's answer is lost: the same write is sent
// again, finds its own op id and must not apply the delta twice.
func TestCompareAndSetRecognisesItsOwnWrite(t *testing.T) {
	s := openStore(t, nil)
	defer s.Close()
	ctx := t.Context()
	app, dev := uniq("app"), uniq("dev")
	real := s.badgeCell(app, dev)
	lost := casCell{
		read: real.read,
		// Each write is applied once here (its answer "lost"), then
		// handed to change() to send again.
		insert: func(n int64, op gocql.UUID) *gocql.Query {
			if _, err := s.scanCAS(ctx, real.insert(n, op), map[string]any{}); err != nil {
				t.Fatal(err)
			}
			return real.insert(n, op)
		},
		update: func(n int64, op, curOp gocql.UUID, cur int64) *gocql.Query {
			if _, err := s.scanCAS(ctx, real.update(n, op, curOp, cur), map[string]any{}); err != nil {
				t.Fatal(err)
			}
			return real.update(n, op, curOp, cur)
		},
	}
	for i, want := range []int64{5, 10} { // the insert path, then the update path
		got, err := s.change(ctx, lost, func(cur int64) int64 { return cur + 5 })
		if err != nil || got != want {
			t.Fatalf("change #%d = %d, %v; want %d", i+1, got, err, want)
		}
		if n, err := s.Badge(ctx, app, dev); err != nil || int64(n) != want {
			t.Fatalf("Badge after change #%d = %d, %v; want %d (applied once)", i+1, n, err, want)
		}
	}
}

func TestDailyCountsCarryTTL(t *testing.T) {
	s := openStore(t, nil)
	defer s.Close()
	app, dev := uniq("app"), uniq("dev")
	now := time.Now()
	tests := []struct {
		name     string
		day      time.Time
		min, max time.Duration
	}{
		// Until 2 days after the day ends.
		{"today", now, time.Until(dayStart(unixDay(now) + 3)), time.Until(dayStart(unixDay(now)+3)) + time.Minute},
		// At least 2 days from now, however old the day.
		{"a week ago", now.AddDate(0, 0, -7), 2*24*time.Hour - time.Minute, 2*24*time.Hour + time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for range 2 { // the insert, then an update
				if _, err := s.CountDaily(t.Context(), app, dev, tt.day, 1); err != nil {
					t.Fatal(err)
				}
				var ttl int
				q := s.session.Query(`SELECT TTL(n) FROM daily_counts WHERE app_id = ? AND device_id = ? AND day = ?`,
					app, dev, unixDay(tt.day))
				if err := q.ScanContext(t.Context(), &ttl); err != nil {
					t.Fatal(err)
				}
				if got := time.Duration(ttl) * time.Second; got < tt.min-time.Minute || got > tt.max {
					t.Errorf("TTL(n) = %v, want in [%v, %v]", got, tt.min, tt.max)
				}
			}
		})
	}
}

// TestTopicLogDayPartitions: broadcasts land in the partition of their
// id's day and are listed in id order across days, from the cursor's day.
func TestTopicLogDayPartitions(t *testing.T) {
	s := openStore(t, nil)
	defer s.Close()
	ctx := t.Context()
	app := uniq("app")
	now := time.Now()
	expires := now.Add(time.Hour).Truncate(time.Millisecond)
	var all []string
	for _, ago := range []int{5, 3, 3, 1, 0} {
		id := ids.New(func() time.Time { return now.AddDate(0, 0, -ago) }).Next()
		all = append(all, id)
	}
	slices.Sort(all)
	for _, id := range slices.Backward(all) {
		if err := s.PutBroadcast(ctx, app, store.Broadcast{MessageID: id, ExpiresAt: expires, Body: []byte(id)}); err != nil {
			t.Fatal(err)
		}
	}
	var day int
	if err := s.session.Query(`SELECT day FROM broadcasts WHERE app_id = ? AND day = ? AND message_id = ?`,
		app, unixDay(now.AddDate(0, 0, -5)), all[0]).ScanContext(ctx, &day); err != nil {
		t.Fatalf("the 5-day-old broadcast is not in its day's partition: %v", err)
	}
	list := func(s *Store, after string, limit int) []string {
		t.Helper()
		bs, err := s.ListBroadcasts(ctx, app, after, time.Now(), limit)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, b := range bs {
			if string(b.Body) != b.MessageID {
				t.Errorf("broadcast %s has body %q", b.MessageID, b.Body)
			}
			out = append(out, b.MessageID)
		}
		return out
	}
	tests := []struct {
		name  string
		after string
		limit int
		want  []string
	}{
		{"everything", "", 0, all},
		{"limit spans days", "", 3, all[:3]},
		{"after a cursor days back", all[1], 0, all[2:]},
		{"cursor mid-day", all[2], 2, all[3:5]},
		{"cursor is a floor id", ids.Floor(now.AddDate(0, 0, -2)), 0, all[3:]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := list(s, tt.after, tt.limit); !slices.Equal(got, tt.want) {
				t.Errorf("ListBroadcasts(after %q, limit %d) = %v, want %v", tt.after, tt.limit, got, tt.want)
			}
		})
	}
	t.Run("MaxBroadcastAge bounds the walk", func(t *testing.T) {
		hosts, ks := keyspace(t)
		short, err := Open(ctx, Config{Hosts: hosts, Keyspace: ks, MaxBroadcastAge: 4 * 24 * time.Hour}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer short.Close()
		if got := list(short, "", 0); !slices.Equal(got, all[1:]) {
			t.Errorf("ListBroadcasts with a 4-day bound = %v, want %v", got, all[1:])
		}
	})
}

// TestBroadcastTTL: broadcast rows expire with the message, and a recall
// keeps that TTL (the flag must not outlive the row or make one up).
func TestBroadcastTTL(t *testing.T) {
	s := openStore(t, nil)
	defer s.Close()
	ctx := t.Context()
	app := uniq("app")
	id, absent := ids.New(nil).Next(), ids.New(nil).Next()
	if err := s.PutBroadcast(ctx, app, store.Broadcast{MessageID: id, ExpiresAt: time.Now().Add(time.Hour), Body: []byte("b")}); err != nil {
		t.Fatal(err)
	}
	for _, recallID := range []string{"", id, absent} {
		if recallID != "" {
			if err := s.RecallBroadcast(ctx, app, recallID); err != nil {
				t.Fatal(err)
			}
		}
		var body, flag *int
		q := s.session.Query(`SELECT TTL(body), TTL(recalled) FROM broadcasts WHERE app_id = ? AND day = ? AND message_id = ?`,
			app, broadcastDay(id), id)
		if err := q.ScanContext(ctx, &body, &flag); err != nil {
			t.Fatal(err)
		}
		if body == nil || *body < 3500 || *body > 3600 {
			t.Errorf("after recall of %q: TTL(body) = %v, want about 3600", recallID, deref(body))
		}
		if recallID == id && (flag == nil || *flag < 3500 || *flag > 3600) {
			t.Errorf("TTL(recalled) = %v, want about 3600", deref(flag))
		}
	}
	n := -1
	if err := s.session.Query(`SELECT COUNT(*) FROM broadcasts WHERE app_id = ? AND day = ? AND message_id = ?`,
		app, broadcastDay(absent), absent).ScanContext(ctx, &n); err != nil || n != 0 {
		t.Errorf("rows of the absent recalled id = %d, %v; want 0", n, err)
	}
}

func deref(p *int) any {
	if p == nil {
		return nil
	}
	return *p
}

// TestDueScheduledMergesShards: entries spread over every shard come back
// as one ordered list, and a limit takes the globally oldest.
func TestDueScheduledMergesShards(t *testing.T) {
	s := openStore(t, nil)
	defer s.Close()
	ctx := t.Context()
	app := uniq("app")
	// Dues in 2001: older than anything else in the shared table.
	base := time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)
	g := ids.New(nil)
	var entries []store.Scheduled
	shards := map[int]bool{}
	for i := range 40 {
		e := store.Scheduled{MessageID: g.Next(), AppID: app, Due: base.Add(time.Duration((i*7)%20) * time.Minute), Body: []byte{byte(i)}}
		shards[scheduleShard(e.MessageID)] = true
		entries = append(entries, e)
		if err := s.PutScheduled(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, e := range entries {
			_ = s.DeleteScheduled(context.Background(), e)
		}
	})
	if len(shards) < scheduleShards/2 {
		t.Fatalf("40 entries used only %d shards", len(shards))
	}
	want := slices.SortedFunc(slices.Values(entries), func(a, b store.Scheduled) int {
		if c := a.Due.Compare(b.Due); c != 0 {
			return c
		}
		return compareStrings(a.MessageID, b.MessageID)
	})
	until := base.Add(time.Hour)
	for _, limit := range []int{1, 10, 40, 0} {
		got, err := s.DueScheduled(ctx, until, limit)
		if err != nil {
			t.Fatal(err)
		}
		n := limit
		if n == 0 {
			n = len(want)
		}
		if !slices.EqualFunc(got, want[:n], func(a, b store.Scheduled) bool {
			return a.MessageID == b.MessageID && a.Due.Equal(b.Due) && string(a.Body) == string(b.Body)
		}) {
			t.Errorf("DueScheduled(limit %d) = %d entries, not the %d oldest in order", limit, len(got), n)
		}
	}
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// TestAliasIndex: a stale index row (left by racing alias changes) is
// skipped, and DevicesByAlias pages through more rows than one query.
func TestAliasIndex(t *testing.T) {
	s := openStore(t, nil)
	defer s.Close()
	ctx := t.Context()
	app := uniq("app")
	put := func(id, alias string) {
		t.Helper()
		if err := s.PutDevice(ctx, store.Device{AppID: app, ID: id, Platform: "ios", Alias: alias}); err != nil {
			t.Fatal(err)
		}
	}
	var many []string
	for i := range aliasPage + 30 {
		id := fmt.Sprintf("d%03d", i)
		put(id, "crowd")
		many = append(many, id)
	}
	// A stale row: d000 moved to "solo", but the "crowd" row survives.
	put("d000", "solo")
	if err := s.session.Query(cqlInsertAlias, app, "crowd", "d000").ExecContext(ctx); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		alias string
		limit int
		want  []string
	}{
		{"crowd", 0, many[1:]},
		{"crowd", aliasPage + 5, many[1 : aliasPage+6]},
		{"crowd", 3, many[1:4]},
		{"solo", 0, many[:1]},
		{"nobody", 0, nil},
	}
	for _, tt := range tests {
		got, err := s.DevicesByAlias(ctx, app, tt.alias, tt.limit)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("DevicesByAlias(%q, %d) = %d ids %v…, want %d", tt.alias, tt.limit, len(got), got[:min(len(got), 3)], len(tt.want))
		}
	}
}

// TestMigrateFrom001 upgrades a keyspace holding data written by the
// 001-only schema: old rows read with the new fields empty, and a message
// without a state is active and can change state.
func TestMigrateFrom001(t *testing.T) {
	hosts := enginetest.Cassandra(t)
	ks := "herald_test_" + randomHex(6)
	t.Cleanup(func() {
		if err := dropKeyspace(hosts, ks); err != nil {
			t.Logf("drop keyspace %s: %v", ks, err)
		}
	})
	ctx := t.Context()
	cfg := MigrateConfig{Hosts: hosts, Keyspace: ks, ReplicationFactor: 1}
	first, err := fs.ReadFile(schema.FS, "001_init.cql")
	if err != nil {
		t.Fatal(err)
	}
	if err := migrate(ctx, cfg, fstest.MapFS{"001_init.cql": {Data: first}}); err != nil {
		t.Fatalf("migrate to 001: %v", err)
	}
	old, err := Open(ctx, Config{Hosts: hosts, Keyspace: ks}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	msgID := ids.New(nil).Next()
	for _, q := range []*gocql.Query{
		old.session.Query(`INSERT INTO apps (id, name, app_key, secret) VALUES ('a', 'A', 'k', 's')`),
		old.session.Query(`INSERT INTO app_keys (app_key, app_id) VALUES ('k', 'a')`),
		old.session.Query(`INSERT INTO devices (app_id, device_id, platform, alias) VALUES ('a', 'd', 'ios', 'al')`),
		old.session.Query(`INSERT INTO messages (id, app_id) VALUES (?, 'a')`, msgID),
		old.session.Query(`INSERT INTO delivery (message_id, device_id, state) VALUES (?, 'd', 0)`, msgID),
	} {
		if err := q.ExecContext(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := Migrate(ctx, cfg); err != nil {
		t.Fatalf("migrate 001 -> latest: %v", err)
	}
	s, err := Open(ctx, Config{Hosts: hosts, Keyspace: ks}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if a, err := s.AppByKey(ctx, "k"); err != nil || a.WebhookURL != "" || a.RateLimit != 0 || a.DailyCap != 0 {
		t.Errorf("old app = %+v, %v; want empty settings", a, err)
	}
	if d, err := s.Device(ctx, "a", "d"); err != nil || d.Tags != nil || d.Topics != nil || d.Alias != "al" {
		t.Errorf("old device = %+v, %v; want alias kept, no tags or topics", d, err)
	}
	m, c, err := s.MessageStatus(ctx, msgID)
	if err != nil || m.State != store.MessageActive || m.Group || c.Pending != 1 {
		t.Errorf("old message = %+v %+v, %v; want active unicast, 1 pending", m, c, err)
	}
	if st, err := s.MessageStates(ctx, []string{msgID}); err != nil || st[msgID] != store.MessageActive {
		t.Errorf("MessageStates = %v, %v; want active", st, err)
	}
	got, moved, err := s.SetMessageState(ctx, msgID, []store.MessageState{store.MessageActive}, store.MessageRecalled)
	if err != nil || !moved || got != store.MessageRecalled {
		t.Errorf("SetMessageState(active -> recalled) on an old row = %v, %v, %v", got, moved, err)
	}
	if devs, err := s.RecallPending(ctx, msgID); err != nil || !slices.Equal(devs, []string{"d"}) {
		t.Errorf("RecallPending = %v, %v; want [d]", devs, err)
	}
	// The migration indexed the alias of the device stored before it.
	if ds, err := s.DevicesByAlias(ctx, "a", "al", 10); err != nil || !slices.Equal(ds, []string{"d"}) {
		t.Errorf("DevicesByAlias of a device stored before 002 = %v, %v; want [d]", ds, err)
	}
}
