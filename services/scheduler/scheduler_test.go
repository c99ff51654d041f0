package scheduler_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/pkg/envelope/internalv1"
	"github.com/heraldpush/herald/pkg/pebbledb"
	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/pkg/pushlog/pebblelog"
	"github.com/heraldpush/herald/pkg/store"
	"github.com/heraldpush/herald/pkg/store/pebblestore"
	"github.com/heraldpush/herald/services/scheduler"
)

// engines are the real embedded store and push log on one Pebble database.
type engines struct {
	db  *pebble.DB
	st  *pebblestore.Store
	log *pebblelog.Log
}

func openEngines(tb testing.TB, dir string) *engines {
	tb.Helper()
	db, err := pebbledb.Open(dir, nil)
	if err != nil {
		tb.Fatal(err)
	}
	l, err := pebblelog.New(db, pebblelog.Options{Partitions: 2}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	e := &engines{db: db, st: pebblestore.New(db, pebblestore.Options{}, nil), log: l}
	tb.Cleanup(e.close)
	return e
}

func (e *engines) close() {
	if e.db == nil {
		return
	}
	_ = e.log.Close()
	_ = e.st.Close()
	_ = e.db.Close()
	e.db = nil
}

// start runs a scheduler until the test ends (or the returned stop is called).
func start(tb testing.TB, e *engines) (stop func()) {
	tb.Helper()
	s, err := scheduler.New(scheduler.Config{}, scheduler.Deps{Store: e.st, Log: e.log}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(tb.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Run(ctx)
	}()
	stop = func() {
		cancel()
		<-done
	}
	tb.Cleanup(stop)
	return stop
}

// schedule stores a send_at message for devices, due at due, with its
// status row in state.
func schedule(tb testing.TB, st store.Store, id string, due time.Time, state store.MessageState, devices ...string) {
	tb.Helper()
	var send internalv1.ScheduledSend
	for _, d := range devices {
		env := &internalv1.Envelope{AppId: "app", DeviceId: d, Scheduled: true}
		env.Push = pushOf(id)
		v, err := proto.Marshal(env)
		if err != nil {
			tb.Fatal(err)
		}
		send.Records = append(send.Records, &internalv1.ScheduledRecord{Key: []byte("app/" + d), Value: v})
	}
	body, err := proto.Marshal(&send)
	if err != nil {
		tb.Fatal(err)
	}
	ctx := tb.Context()
	if err := st.CreateMessage(ctx, store.Message{
		ID: id, AppID: "app", Targets: devices, CreatedAt: time.Now(), ExpiresAt: due.Add(time.Hour),
		Audience: "devices", State: state, SendAt: due,
	}); err != nil {
		tb.Fatal(err)
	}
	if err := st.PutScheduled(ctx, store.Scheduled{MessageID: id, AppID: "app", Due: due, Body: body}); err != nil {
		tb.Fatal(err)
	}
}

// fetched is one record read back from the push log.
type fetched struct {
	message, device string
	at              time.Time
}

// readPush reads the push log as its own consumer group until want records
// arrived (or the deadline).
func readPush(tb testing.TB, l pushlog.Log, group string, want int, within time.Duration) []fetched {
	return readUntil(tb, l, group, func(got []fetched) bool { return len(got) >= want }, within)
}

// readUntil reads the push log until done says so (or the deadline).
func readUntil(tb testing.TB, l pushlog.Log, group string, done func([]fetched) bool, within time.Duration) []fetched {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), within)
	defer cancel()
	cons, err := l.Consume(ctx, pushlog.TopicPush, group)
	if err != nil {
		tb.Fatal(err)
	}
	defer cons.Close()
	var out []fetched
	for !done(out) {
		recs, err := cons.Fetch(ctx)
		if err != nil {
			tb.Fatalf("after %d records: %v", len(out), err)
		}
		for _, r := range recs {
			var env internalv1.Envelope
			if err := proto.Unmarshal(r.Value, &env); err != nil {
				tb.Fatal(err)
			}
			out = append(out, fetched{message: env.GetPush().GetMessageId(), device: env.GetDeviceId(), at: time.Now()})
		}
	}
	return out
}

func state(tb testing.TB, st store.Store, id string) store.MessageState {
	tb.Helper()
	m, err := st.MessageStates(tb.Context(), []string{id})
	if err != nil {
		tb.Fatal(err)
	}
	return m[id]
}

// waitNoneDue polls until no scheduled entry is left.
func waitNoneDue(tb testing.TB, st store.Store) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		due, err := st.DueScheduled(tb.Context(), time.Now().Add(365*24*time.Hour), 10)
		if err != nil {
			tb.Fatal(err)
		}
		if len(due) == 0 {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("scheduled entries left: %d", len(due))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestFiresAtSendAt(t *testing.T) {
	e := openEngines(t, t.TempDir())
	start(t, e)
	due := time.Now().Add(400 * time.Millisecond)
	schedule(t, e.st, "m1", due, store.MessageScheduled, "d1", "d2", "d3")

	got := readPush(t, e.log, "test", 3, 5*time.Second)
	var devices []string
	for _, f := range got {
		if f.message != "m1" {
			t.Errorf("record of message %q, want m1", f.message)
		}
		if f.at.Before(due) {
			t.Errorf("fired %v before its send_at", due.Sub(f.at))
		}
		if late := f.at.Sub(due); late > time.Second {
			t.Errorf("fired %v after its send_at, want within 1s", late)
		}
		devices = append(devices, f.device)
	}
	slices.Sort(devices)
	if !slices.Equal(devices, []string{"d1", "d2", "d3"}) {
		t.Errorf("records for %v, want d1 d2 d3", devices)
	}
	waitNoneDue(t, e.st)
	if s := state(t, e.st, "m1"); s != store.MessageActive {
		t.Errorf("message state %v, want active", s)
	}
}

// Messages that must not be sent (again) are deleted unsent; the rest fire
// once each.
func TestSendsEachLiveMessageOnce(t *testing.T) {
	e := openEngines(t, t.TempDir())
	past := time.Now().Add(-time.Minute)
	cases := []struct {
		id    string
		state store.MessageState
		sent  bool
	}{
		{"cancelled", store.MessageCancelled, false},
		// appended before a crash that came before the delete
		{"already-active", store.MessageActive, false},
		{"live-1", store.MessageScheduled, true},
		{"live-2", store.MessageScheduled, true},
	}
	var want []string
	for i, c := range cases {
		schedule(t, e.st, c.id, past.Add(time.Duration(i)*time.Millisecond), c.state, "d")
		if c.sent {
			want = append(want, c.id)
		}
	}
	start(t, e)
	waitNoneDue(t, e.st)
	// One more message, fired after the others were settled: once it is
	// read, everything the scheduler appended before it is read too.
	schedule(t, e.st, "marker", time.Now(), store.MessageScheduled, "d")
	want = append(want, "marker")
	got := readUntil(t, e.log, "test", func(got []fetched) bool {
		return slices.ContainsFunc(got, func(f fetched) bool { return f.message == "marker" })
	}, 5*time.Second)
	var ids []string
	for _, f := range got {
		ids = append(ids, f.message)
	}
	slices.Sort(ids)
	slices.Sort(want)
	if !slices.Equal(ids, want) {
		t.Errorf("appended %v, want %v", ids, want)
	}
	for _, c := range cases {
		wantState := c.state
		if c.sent {
			wantState = store.MessageActive
		}
		if s := state(t, e.st, c.id); s != wantState {
			t.Errorf("%s: state %v, want %v", c.id, s, wantState)
		}
	}
}

// A message that became due while herald was down fires as soon as it
// starts again.
func TestRestartFiresOverdueAtOnce(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pebble")
	e := openEngines(t, dir)
	stop := start(t, e)
	due := time.Now().Add(300 * time.Millisecond)
	schedule(t, e.st, "overdue", due, store.MessageScheduled, "d1")
	stop()
	e.close()
	for time.Now().Before(due.Add(200 * time.Millisecond)) {
		time.Sleep(50 * time.Millisecond) // herald is down while the message falls due
	}

	e = openEngines(t, dir)
	started := time.Now()
	start(t, e)
	got := readPush(t, e.log, "test", 1, 5*time.Second)
	if got[0].message != "overdue" || got[0].device != "d1" {
		t.Fatalf("fired %+v, want overdue to d1", got[0])
	}
	if took := got[0].at.Sub(started); took > time.Second {
		t.Errorf("overdue message fired %v after the restart, want at once", took)
	}
	waitNoneDue(t, e.st)
}

// A backlog larger than one poll's batch is fired in one go, not one batch
// per interval.
func TestBacklogDrains(t *testing.T) {
	e := openEngines(t, t.TempDir())
	const n = 250
	past := time.Now().Add(-time.Second)
	for i := range n {
		schedule(t, e.st, fmt.Sprintf("m%03d", i), past, store.MessageScheduled, "d")
	}
	started := time.Now()
	start(t, e)
	got := readPush(t, e.log, "test", n, 10*time.Second)
	seen := map[string]bool{}
	for _, f := range got {
		seen[f.message] = true
	}
	if len(seen) != n {
		t.Errorf("%d distinct messages fired, want %d", len(seen), n)
	}
	if took := time.Since(started); took > 3*time.Second {
		t.Errorf("backlog of %d took %v", n, took)
	}
}

func pushOf(id string) *devicev1.Push { return &devicev1.Push{MessageId: id} }
