package dispatcher_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/pkg/envelope/internalv1"
	"github.com/heraldpush/herald/pkg/ids"
	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/pkg/pushlog/pebblelog"
	"github.com/heraldpush/herald/pkg/receipt"
	"github.com/heraldpush/herald/pkg/route"
	"github.com/heraldpush/herald/pkg/route/memroute"
	"github.com/heraldpush/herald/pkg/store"
	"github.com/heraldpush/herald/pkg/store/pebblestore"
	herald "github.com/heraldpush/herald/sdk/go"
	"github.com/heraldpush/herald/services/dispatcher"
	"github.com/heraldpush/herald/services/gateway"
	"github.com/heraldpush/herald/services/gateway/gatewaytest"
)

const (
	appID = "app"
	wait  = 10 * time.Second
)

// env is the real embedded platform minus the api: Pebble store and push
// log, the in-memory routing table, one gateway, the receipt emitter and
// (once started) a dispatcher.
type env struct {
	gwEnv    *gatewaytest.Env
	st       *pebblestore.Store
	log      *pebblelog.Log
	routes   *memroute.Table
	gw       *gateway.Gateway
	dir      *gateway.Directory
	receipts *receipt.Emitter
	ids      *ids.Generator
	app      store.App
}

func logger(tb testing.TB) *slog.Logger {
	return gatewaytest.Logger(tb, slog.LevelError)
}

func newEnv(tb testing.TB, gcfg gateway.Config) *env {
	tb.Helper()
	gcfg.IO = gateway.IOGoroutine
	g := gatewaytest.Start(tb, gatewaytest.Options{
		Config: gcfg, Partitions: 2, RunReceipts: true,
		App: store.App{ID: appID, Name: "test", Key: "key-" + appID, Secret: "secret"},
	})
	e := &env{gwEnv: g, st: g.Store, log: g.Log, routes: g.Routes, gw: g.Gateway, dir: gateway.NewDirectory(g.Gateway),
		receipts: g.Receipts, ids: ids.New(time.Now), app: g.RegisterApp(tb)}
	return e
}

// startDispatcher runs a dispatcher over gws (nil: the gateway directory).
func (e *env) startDispatcher(tb testing.TB, cfg dispatcher.Config, gws dispatcher.Gateways) {
	tb.Helper()
	if gws == nil {
		gws = e.dir
	}
	cfg.CommitInterval = 20 * time.Millisecond
	d, err := dispatcher.New(cfg, dispatcher.Deps{
		Log: e.log, Routes: e.routes, Gateways: gws, Store: e.st, Receipts: e.receipts,
	}, logger(tb))
	if err != nil {
		tb.Fatal(err)
	}
	gatewaytest.Run(tb, "dispatcher", d.Run)
}

// device is a registered device, connected with the SDK unless offline.
type device struct {
	id   string
	msgs chan herald.Message
}

func (e *env) register(tb testing.TB, id string, tags, topics []string) {
	tb.Helper()
	now := time.Now()
	e.gwEnv.RegisterDevice(tb, store.Device{ID: id, CreatedAt: now.Add(-time.Hour), UpdatedAt: now})
	if len(tags) > 0 {
		if _, err := e.st.UpdateTags(tb.Context(), appID, id, tags, nil); err != nil {
			tb.Fatal(err)
		}
	}
	if len(topics) > 0 {
		if _, err := e.st.UpdateTopics(tb.Context(), appID, id, topics, nil); err != nil {
			tb.Fatal(err)
		}
	}
}

// connect registers (unless already) and connects a device, and waits for
// its route. The device's session must last until the test ends.
func (e *env) connect(tb testing.TB, id string, tags, topics []string) *device {
	tb.Helper()
	if _, err := e.st.Device(tb.Context(), appID, id); err != nil {
		e.register(tb, id, tags, topics)
	}
	gd := e.gwEnv.Connect(tb, id, 100, nil)
	tb.Cleanup(func() {
		_ = gd.Client.Close()
		select {
		case err := <-gd.Done:
			gd.Done <- err // for gatewaytest's cleanup
			if err != nil && !errors.Is(err, herald.ErrClosed) && !errors.Is(err, context.Canceled) {
				tb.Errorf("device %s: %v", id, err)
			}
		case <-time.After(wait):
			tb.Errorf("device %s did not stop", id)
		}
	})
	return &device{id: id, msgs: gd.Msgs}
}

// expect waits for the device to receive exactly the ids, in any order,
// and nothing else before them.
func (d *device) expect(tb testing.TB, ids ...string) []herald.Message {
	tb.Helper()
	var got []herald.Message
	want := slices.Clone(ids)
	deadline := time.After(wait)
	for len(want) > 0 {
		select {
		case m := <-d.msgs:
			i := slices.Index(want, m.ID)
			if i < 0 {
				tb.Fatalf("device %s got unexpected message %s (waiting for %v)", d.id, m.ID, want)
			}
			want = slices.Delete(want, i, i+1)
			got = append(got, m)
		case <-deadline:
			tb.Fatalf("device %s: messages %v never arrived", d.id, want)
		}
	}
	return got
}

func poll(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// append writes envelopes to the push log as the api does.
func (e *env) append(tb testing.TB, envs ...*internalv1.Envelope) {
	tb.Helper()
	recs := make([]pushlog.Record, len(envs))
	for i, env := range envs {
		v, err := proto.Marshal(env)
		if err != nil {
			tb.Fatal(err)
		}
		key := appID
		if env.GetAudience() == nil {
			key = route.Key(appID, env.GetDeviceId())
		}
		recs[i] = pushlog.Record{Key: []byte(key), Value: v}
	}
	if err := e.log.Append(tb.Context(), pushlog.TopicPush, recs...); err != nil {
		tb.Fatal(err)
	}
}

// group creates the status row of a group message and returns its envelope.
func (e *env) group(tb testing.TB, a *internalv1.Audience, ttl time.Duration) *internalv1.Envelope {
	tb.Helper()
	id := e.ids.Next()
	now := time.Now()
	kind := "all"
	switch {
	case a.GetTagExpr() != "":
		kind = "tags"
	case a.GetTopic() != "":
		kind = "topic"
	}
	if err := e.st.CreateMessage(tb.Context(), store.Message{
		ID: id, AppID: appID, CreatedAt: now, ExpiresAt: now.Add(ttl), Audience: kind, Group: true,
	}); err != nil {
		tb.Fatal(err)
	}
	env := &internalv1.Envelope{AppId: appID, Audience: a, Push: push(id)}
	if ttl > 0 {
		env.ExpiresAtMs = now.Add(ttl).UnixMilli()
	} else {
		env.OnlineOnly = true
	}
	return env
}

// unicast creates the status row of a message to devices and returns one
// envelope per device.
func (e *env) unicast(tb testing.TB, ttl time.Duration, prio internalv1.Priority, devices ...string) []*internalv1.Envelope {
	tb.Helper()
	id := e.ids.Next()
	now := time.Now()
	if err := e.st.CreateMessage(tb.Context(), store.Message{
		ID: id, AppID: appID, Targets: devices, CreatedAt: now, ExpiresAt: now.Add(ttl), Audience: "devices",
	}); err != nil {
		tb.Fatal(err)
	}
	out := make([]*internalv1.Envelope, len(devices))
	for i, d := range devices {
		out[i] = &internalv1.Envelope{AppId: appID, DeviceId: d, Push: push(id), Priority: prio, ExpiresAtMs: now.Add(ttl).UnixMilli()}
	}
	return out
}

func push(id string) *devicev1.Push {
	return &devicev1.Push{MessageId: id, Kind: devicev1.Kind_KIND_DATA, Data: map[string]string{"id": id}}
}

// broadcasts lists the app's topic log.
func (e *env) broadcasts(tb testing.TB) map[string]store.Broadcast {
	tb.Helper()
	bs, err := e.st.ListBroadcasts(tb.Context(), appID, "", time.Now(), 1000)
	if err != nil {
		tb.Fatal(err)
	}
	out := make(map[string]store.Broadcast, len(bs))
	for _, b := range bs {
		out[b.MessageID] = b
	}
	return out
}

func (e *env) counts(tb testing.TB, id string) store.Counts {
	tb.Helper()
	_, c, err := e.st.MessageStatus(tb.Context(), id)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

func (e *env) inbox(tb testing.TB, device string) []string {
	tb.Helper()
	es, err := e.st.List(tb.Context(), appID, device, "", 100)
	if err != nil {
		tb.Fatal(err)
	}
	var out []string
	for _, x := range es {
		out = append(out, x.MessageID)
	}
	return out
}

func TestGroupMessages(t *testing.T) {
	e := newEnv(t, gateway.Config{})
	e.startDispatcher(t, dispatcher.Config{}, nil)
	vip := e.connect(t, "vip", []string{"vip", "cn"}, nil)
	news := e.connect(t, "news", nil, []string{"news"})
	plain := e.connect(t, "plain", nil, nil)
	offline := "offline"
	e.register(t, offline, []string{"vip"}, nil)

	tags := e.group(t, &internalv1.Audience{TagExpr: "vip && cn"}, time.Hour)
	topic := e.group(t, &internalv1.Audience{Topic: "news"}, time.Hour)
	all := e.group(t, &internalv1.Audience{All: true}, time.Hour)
	now := e.group(t, &internalv1.Audience{All: true}, 0) // online only
	expired := e.group(t, &internalv1.Audience{All: true}, time.Hour)
	expired.ExpiresAtMs = time.Now().Add(-time.Second).UnixMilli()
	e.append(t, expired, tags, topic, all, now)

	id := func(env *internalv1.Envelope) string { return env.GetPush().GetMessageId() }
	// Each device gets what matches it, once; the expired message reaches no one.
	for _, m := range vip.expect(t, id(tags), id(all), id(now)) {
		if !m.Group {
			t.Errorf("message %s not flagged group", m.ID)
		}
	}
	news.expect(t, id(topic), id(all), id(now))
	plain.expect(t, id(all), id(now))

	// The topic log keeps what a device connecting later replays: not the
	// online-only or the expired message.
	kept := e.broadcasts(t)
	for _, env := range []*internalv1.Envelope{tags, topic, all} {
		b, ok := kept[id(env)]
		if !ok {
			t.Errorf("message %s not in the topic log", id(env))
			continue
		}
		var got internalv1.Envelope
		if err := proto.Unmarshal(b.Body, &got); err != nil || !proto.Equal(&got, env) {
			t.Errorf("topic log body of %s = %v (%v), want the envelope", id(env), &got, err)
		}
		if b.ExpiresAt.UnixMilli() != env.GetExpiresAtMs() {
			t.Errorf("topic log expiry of %s = %v", id(env), b.ExpiresAt)
		}
	}
	for _, env := range []*internalv1.Envelope{now, expired} {
		if _, ok := kept[id(env)]; ok {
			t.Errorf("message %s kept in the topic log", id(env))
		}
	}
	// No per-device rows for group messages.
	if got := e.inbox(t, offline); len(got) != 0 {
		t.Errorf("offline device inbox %v, want empty (it replays from the topic log)", got)
	}

	// A device connecting later replays what it missed and matches now.
	// ("offline" has tag vip but not cn.)
	late := e.connect(t, offline, nil, nil)
	late.expect(t, id(all))
}

// A group message the app cancelled or recalled is neither kept nor sent.
func TestGroupMessageStopped(t *testing.T) {
	e := newEnv(t, gateway.Config{})
	e.startDispatcher(t, dispatcher.Config{}, nil)
	d := e.connect(t, "d1", nil, nil)

	cancelled := e.group(t, &internalv1.Audience{All: true}, time.Hour)
	cancelled.Scheduled = true
	recalled := e.group(t, &internalv1.Audience{All: true}, time.Hour)
	marker := e.group(t, &internalv1.Audience{All: true}, time.Hour)
	ctx := t.Context()
	if _, _, err := e.st.SetMessageState(ctx, cancelled.GetPush().GetMessageId(), []store.MessageState{store.MessageActive}, store.MessageCancelled); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.st.SetMessageState(ctx, recalled.GetPush().GetMessageId(), []store.MessageState{store.MessageActive}, store.MessageRecalled); err != nil {
		t.Fatal(err)
	}
	e.append(t, cancelled, recalled, marker)
	d.expect(t, marker.GetPush().GetMessageId())
	kept := e.broadcasts(t)
	if len(kept) != 1 {
		t.Errorf("topic log holds %d messages, want only the marker", len(kept))
	}
}

// A recall record reaches the gateways (which drop queued copies) and is
// never itself kept or pushed.
func TestGroupRecallRecord(t *testing.T) {
	const delay = 2 * time.Second
	e := newEnv(t, gateway.Config{NormalMaxDelay: delay})
	e.startDispatcher(t, dispatcher.Config{}, nil)
	slow := e.connect(t, "slow", nil, nil)
	// Priority normal: the push waits for the device's next frame (it
	// sends none) or the delay; the recall arrives while it is queued.
	paced := e.group(t, &internalv1.Audience{All: true}, time.Hour)
	paced.Priority = internalv1.Priority_PRIORITY_NORMAL
	sent := time.Now()
	e.append(t, paced)
	poll(t, "paced message kept", func() bool { _, ok := e.broadcasts(t)[paced.GetPush().GetMessageId()]; return ok })

	if _, _, err := e.st.SetMessageState(t.Context(), paced.GetPush().GetMessageId(), []store.MessageState{store.MessageActive}, store.MessageRecalled); err != nil {
		t.Fatal(err)
	}
	if err := e.st.RecallBroadcast(t.Context(), appID, paced.GetPush().GetMessageId()); err != nil {
		t.Fatal(err)
	}
	e.append(t, &internalv1.Envelope{AppId: appID, Audience: paced.GetAudience(), Recall: true, Push: &devicev1.Push{MessageId: paced.GetPush().GetMessageId()}})
	// Past the delay: the recalled copy never came.
	select {
	case m := <-slow.msgs:
		t.Errorf("got %s after its recall (%v after the send)", m.ID, time.Since(sent))
	case <-time.After(time.Until(sent.Add(delay + time.Second))):
	}
	if b := e.broadcasts(t)[paced.GetPush().GetMessageId()]; !b.Recalled {
		t.Errorf("topic log entry %+v not flagged recalled", b)
	}
	marker := e.group(t, &internalv1.Audience{All: true}, time.Hour)
	e.append(t, marker)
	slow.expect(t, marker.GetPush().GetMessageId())
}

// flakyGateways is the real directory plus nodes that fail every broadcast
// (a gateway that is down but still registered) or leave.
type flakyGateways struct {
	*gateway.Directory
	mu    sync.Mutex
	extra map[string]int // node -> broadcasts attempted
	gone  map[string]bool
}

func (f *flakyGateways) Nodes() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	nodes := f.Directory.Nodes()
	for n := range f.extra {
		if !f.gone[n] {
			nodes = append(nodes, n)
		}
	}
	return nodes
}

func (f *flakyGateways) Broadcast(ctx context.Context, node string, envs []*internalv1.Envelope) ([]int64, error) {
	f.mu.Lock()
	if _, ok := f.extra[node]; ok {
		f.extra[node]++
		f.mu.Unlock()
		return nil, errors.New("connection refused")
	}
	f.mu.Unlock()
	return f.Directory.Broadcast(ctx, node, envs)
}

func (f *flakyGateways) attempts(node string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.extra[node]
}

func (f *flakyGateways) leave(node string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gone[node] = true
}

// A dead gateway is retried for a bounded time, then skipped: the healthy
// gateways' devices get the message and the log moves on.
func TestGroupMessageSkipsDeadGateway(t *testing.T) {
	e := newEnv(t, gateway.Config{})
	gws := &flakyGateways{Directory: e.dir, extra: map[string]int{"dead": 0, "leaving": 0}, gone: map[string]bool{}}
	e.startDispatcher(t, dispatcher.Config{BroadcastRetry: 500 * time.Millisecond}, gws)
	d := e.connect(t, "d1", nil, nil)

	start := time.Now()
	first := e.group(t, &internalv1.Audience{All: true}, time.Hour)
	e.append(t, first)
	d.expect(t, first.GetPush().GetMessageId())
	poll(t, "the leaving node retried", func() bool { return gws.attempts("leaving") >= 2 })
	gws.leave("leaving")
	// The batch settles once the dead node's retry budget is spent, and
	// later messages flow (the dead node tried once more each).
	second := e.group(t, &internalv1.Audience{All: true}, time.Hour)
	e.append(t, second)
	d.expect(t, second.GetPush().GetMessageId())
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("two group messages took %v with a dead gateway", took)
	}
	if n := gws.attempts("dead"); n < 2 {
		t.Errorf("dead gateway tried %d times, want retries", n)
	}
	before := gws.attempts("leaving")
	third := e.group(t, &internalv1.Audience{All: true}, time.Hour)
	e.append(t, third)
	d.expect(t, third.GetPush().GetMessageId())
	if n := gws.attempts("leaving"); n != before {
		t.Errorf("a departed gateway was tried %d more times", n-before)
	}
}

// Priority normal: stored without a delivery attempt, then drained when the
// session wakes or after gateway.normal_max_delay.
func TestPriorityNormal(t *testing.T) {
	const delay = 1500 * time.Millisecond
	e := newEnv(t, gateway.Config{NormalMaxDelay: delay})
	e.startDispatcher(t, dispatcher.Config{}, nil)
	on := e.connect(t, "on", nil, nil)
	e.register(t, "off", nil, nil)

	normal := e.unicast(t, time.Hour, internalv1.Priority_PRIORITY_NORMAL, "on", "off")
	id := normal[0].GetPush().GetMessageId()
	sent := time.Now()
	e.append(t, normal...)
	// Stored for both, the online device included.
	poll(t, "stored for the offline device", func() bool { return slices.Contains(e.inbox(t, "off"), id) })
	on.expect(t, id)
	if waited := time.Since(sent); waited < delay/2 {
		t.Errorf("normal-priority message arrived after %v; want it held for the device's next frame (up to %v)", waited, delay)
	}
	poll(t, "acked and removed from the inbox", func() bool { return len(e.inbox(t, "on")) == 0 && e.counts(t, id).Delivered == 1 })

	// High priority still goes out at once.
	high := e.unicast(t, time.Hour, internalv1.Priority_PRIORITY_HIGH, "on")
	sent = time.Now()
	e.append(t, high...)
	on.expect(t, high[0].GetPush().GetMessageId())
	if took := time.Since(sent); took > delay/2 {
		t.Errorf("high-priority message took %v", took)
	}

	// The offline device gets it from its inbox on connect.
	off := e.connect(t, "off", nil, nil)
	off.expect(t, id)
	poll(t, "both delivered", func() bool { return e.counts(t, id).Delivered == 2 })
}

// Recalled and cancelled unicast messages are not stored; their targets
// count as recalled.
func TestUnicastRecalledAndCancelled(t *testing.T) {
	e := newEnv(t, gateway.Config{})
	e.startDispatcher(t, dispatcher.Config{}, nil)
	e.register(t, "off", nil, nil)
	ctx := t.Context()

	recalled := e.unicast(t, time.Hour, internalv1.Priority_PRIORITY_HIGH, "off")
	cancelled := e.unicast(t, time.Hour, internalv1.Priority_PRIORITY_HIGH, "off")
	cancelled[0].Scheduled = true
	kept := e.unicast(t, time.Hour, internalv1.Priority_PRIORITY_HIGH, "off")
	rid, cid, kid := recalled[0].GetPush().GetMessageId(), cancelled[0].GetPush().GetMessageId(), kept[0].GetPush().GetMessageId()
	if _, _, err := e.st.SetMessageState(ctx, rid, []store.MessageState{store.MessageActive}, store.MessageRecalled); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.st.SetMessageState(ctx, cid, []store.MessageState{store.MessageActive}, store.MessageCancelled); err != nil {
		t.Fatal(err)
	}
	e.append(t, recalled[0], cancelled[0], kept[0])
	poll(t, "the live message stored", func() bool { return slices.Contains(e.inbox(t, "off"), kid) })
	if got := e.inbox(t, "off"); !slices.Equal(got, []string{kid}) {
		t.Errorf("inbox %v, want only %s", got, kid)
	}
	for _, id := range []string{rid, cid} {
		poll(t, "target of "+id+" recalled", func() bool {
			c := e.counts(t, id)
			return c.Recalled == 1 && c.Pending == 0 && c.Failed == 0
		})
	}
}

// The dispatcher's receipts: "expired" for a TTL that ran out, "failed" for
// a deleted device.
func TestReceipts(t *testing.T) {
	e := newEnv(t, gateway.Config{})
	e.startDispatcher(t, dispatcher.Config{}, nil)
	e.register(t, "gone", nil, nil)
	if err := e.st.DeleteDevice(t.Context(), appID, "gone"); err != nil {
		t.Fatal(err)
	}
	e.register(t, "late", nil, nil)
	expired := e.unicast(t, time.Hour, internalv1.Priority_PRIORITY_HIGH, "late")
	expired[0].ExpiresAtMs = time.Now().Add(-time.Second).UnixMilli()
	failed := e.unicast(t, time.Hour, internalv1.Priority_PRIORITY_HIGH, "gone")
	e.append(t, expired[0], failed[0])

	want := map[string]receipt.Receipt{
		expired[0].GetPush().GetMessageId(): {AppID: appID, MessageID: expired[0].GetPush().GetMessageId(), DeviceID: "late", Event: receipt.EventExpired, Count: 1},
		failed[0].GetPush().GetMessageId():  {AppID: appID, MessageID: failed[0].GetPush().GetMessageId(), DeviceID: "gone", Event: receipt.EventFailed, Count: 1},
	}
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	cons, err := e.log.Consume(ctx, pushlog.TopicReceipts, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	for len(want) > 0 {
		recs, err := cons.Fetch(ctx)
		if err != nil {
			t.Fatalf("receipts %v never came: %v", want, err)
		}
		for _, r := range recs {
			got, err := receipt.Decode(r.Value)
			if err != nil {
				t.Fatal(err)
			}
			w, ok := want[got.MessageID]
			if !ok {
				continue
			}
			got.AtMS = 0
			if got != w {
				t.Errorf("receipt %+v, want %+v", got, w)
			}
			delete(want, got.MessageID)
		}
	}
	if c := e.counts(t, failed[0].GetPush().GetMessageId()); c.Failed != 1 {
		t.Errorf("failed count %d", c.Failed)
	}
}

// recordingGateways records the messages of each Broadcast call.
type recordingGateways struct {
	*gateway.Directory
	mu    sync.Mutex
	calls [][]string
}

func (r *recordingGateways) Broadcast(ctx context.Context, node string, envs []*internalv1.Envelope) ([]int64, error) {
	ids := make([]string, len(envs))
	for i, env := range envs {
		ids[i] = env.GetPush().GetMessageId()
	}
	r.mu.Lock()
	r.calls = append(r.calls, ids)
	r.mu.Unlock()
	return r.Directory.Broadcast(ctx, node, envs)
}

// The group records of a fetched batch reach each gateway in a few calls
// (of at most 64 messages), in log order, and devices get them in order.
func TestGroupMessagesBatchedPerNode(t *testing.T) {
	e := newEnv(t, gateway.Config{})
	d := e.connect(t, "d1", nil, nil)
	const n = 70
	envs := make([]*internalv1.Envelope, n)
	want := make([]string, n)
	for i := range envs {
		envs[i] = e.group(t, &internalv1.Audience{All: true}, time.Hour)
		want[i] = envs[i].GetPush().GetMessageId()
	}
	e.append(t, envs...)
	gws := &recordingGateways{Directory: e.dir}
	e.startDispatcher(t, dispatcher.Config{}, gws)

	var got []string
	for _, m := range d.expect(t, want...) {
		got = append(got, m.ID)
	}
	if !slices.Equal(got, want) {
		t.Errorf("device got %v, want %v in log order", got, want)
	}
	gws.mu.Lock()
	defer gws.mu.Unlock()
	var sent []string
	for _, c := range gws.calls {
		t.Logf("a call with %d messages", len(c))
		if len(c) > 64 {
			t.Errorf("a call with %d messages, want at most 64", len(c))
		}
		sent = append(sent, c...)
	}
	if !slices.Equal(sent, want) {
		t.Errorf("handed over %v, want %v in log order", gws.calls, want)
	}
	if len(gws.calls) >= n/2 {
		t.Errorf("%d calls for %d messages: not batched", len(gws.calls), n)
	}
}
