package gateway

import (
	"context"
	"crypto/sha256"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	herr "github.com/heraldpush/herald"
	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
	"github.com/heraldpush/herald/pkg/envelope/internalv1"
	"github.com/heraldpush/herald/pkg/ids"
	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/pkg/receipt"
	"github.com/heraldpush/herald/pkg/route"
	"github.com/heraldpush/herald/pkg/store"
)

// profile is a test device's registration.
type profile struct {
	platform     string
	tags, topics []string
	registered   time.Time // zero: now
}

// registerProfile creates the test app (once) and the device with the
// given platform, tags and topics; its token is "token-<id>".
func (e *rpcEnv) registerProfile(tb testing.TB, deviceID string, p profile) {
	tb.Helper()
	e.registerDevice(tb, deviceID)
	ctx := tb.Context()
	if p.registered.IsZero() {
		p.registered = time.Now()
	}
	if p.platform == "" {
		p.platform = "android"
	}
	sum := sha256.Sum256([]byte("token-" + deviceID))
	if err := e.store.PutDevice(ctx, store.Device{AppID: "app-rpc", ID: deviceID, Platform: p.platform, TokenHash: sum[:], CreatedAt: p.registered, UpdatedAt: p.registered}); err != nil {
		tb.Fatal(err)
	}
	if len(p.tags) > 0 {
		if _, err := e.store.UpdateTags(ctx, "app-rpc", deviceID, p.tags, nil); err != nil {
			tb.Fatal(err)
		}
	}
	if len(p.topics) > 0 {
		if _, err := e.store.UpdateTopics(ctx, "app-rpc", deviceID, p.topics, nil); err != nil {
			tb.Fatal(err)
		}
	}
}

// rawConnect connects a registered device by hand with the given broadcast
// cursor and waits for its CONNACK and for its session to be bound.
func (e *rpcEnv) rawConnect(tb testing.TB, deviceID, cursor string) *rawDevice {
	tb.Helper()
	b, err := frame.AppendMessage(nil, frame.TypeConnect, &devicev1.Connect{
		ProtocolVersion: frame.ProtocolVersion, AppKey: "key-rpc", DeviceId: deviceID, DeviceToken: "token-" + deviceID,
		BroadcastCursor: cursor,
	})
	if err != nil {
		tb.Fatal(err)
	}
	d := dialRaw(tb, e.gw.Addr())
	d.send(tb, b)
	if f := d.next(tb); f.Type != frame.TypeConnAck {
		tb.Fatalf("got %s, want CONNACK", f.Type)
	}
	return d
}

// push reads frames until a PUSH (skipping PONGs) and decodes it.
func (d *rawDevice) push(tb testing.TB) *devicev1.Push {
	tb.Helper()
	for {
		f := d.next(tb)
		switch f.Type {
		case frame.TypePong:
			continue
		case frame.TypePush:
			var p devicev1.Push
			if err := proto.Unmarshal(f.Body, &p); err != nil {
				tb.Fatal(err)
			}
			return &p
		}
		tb.Fatalf("got %s, want PUSH", f.Type)
	}
}

// quiet asserts that no PUSH arrives for d (PONGs are skipped).
func (d *rawDevice) quiet(tb testing.TB, within time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(within)
	for {
		_ = d.c.SetReadDeadline(deadline)
		f, err := d.r.Next()
		if err != nil {
			return // the deadline passed
		}
		if f.Type == frame.TypePush {
			var p devicev1.Push
			_ = proto.Unmarshal(f.Body, &p)
			tb.Fatalf("unexpected PUSH %s", p.GetMessageId())
		}
	}
}

func (d *rawDevice) sendMsg(tb testing.TB, t frame.Type, m proto.Message) {
	tb.Helper()
	b, err := frame.AppendMessage(nil, t, m)
	if err != nil {
		tb.Fatal(err)
	}
	d.send(tb, b)
}

func (d *rawDevice) ack(tb testing.TB, ids ...string) {
	tb.Helper()
	d.sendMsg(tb, frame.TypeAck, &devicev1.Ack{MessageIds: ids})
}

// group is a group-message envelope of the test app.
func group(id string, a *internalv1.Audience) *internalv1.Envelope {
	return &internalv1.Envelope{
		AppId: "app-rpc", Audience: a, ExpiresAtMs: time.Now().Add(time.Hour).UnixMilli(),
		Push: &devicev1.Push{MessageId: id, Kind: devicev1.Kind_KIND_NOTIFICATION, Notification: &devicev1.Notification{Title: "t-" + id}},
	}
}

// receipts returns the receipts emitted so far that satisfy keep.
func (e *rpcEnv) receiptsWhere(tb testing.TB, keep func(receipt.Receipt) bool) []receipt.Receipt {
	tb.Helper()
	ctx := tb.Context()
	if err := e.receipts.Flush(ctx); err != nil {
		tb.Fatal(err)
	}
	cons, err := e.log.Consume(ctx, pushlog.TopicReceipts, "test-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	if err != nil {
		tb.Fatal(err)
	}
	defer cons.Close()
	var out []receipt.Receipt
	for {
		fctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		recs, err := cons.Fetch(fctx)
		cancel()
		if len(recs) == 0 || err != nil {
			return out
		}
		for _, rec := range recs {
			r, err := receipt.Decode(rec.Value)
			if err != nil {
				tb.Fatal(err)
			}
			if keep(r) {
				out = append(out, r)
			}
		}
	}
}

// eventually polls cond until it holds, failing after rpcWait.
func eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(rpcWait)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestBroadcastMatchesEachSessionOnce(t *testing.T) {
	e := startRPCEnv(t)
	devs := map[string]profile{
		"a": {platform: "android", tags: []string{"cn", "vip"}},
		"b": {platform: "ios", tags: []string{"vip"}},
		"c": {platform: "android", topics: []string{"news"}},
		"d": {platform: "web"},
	}
	raw := map[string]*rawDevice{}
	for id, p := range devs {
		e.registerProfile(t, id, p)
		raw[id] = e.rawConnect(t, id, "")
	}
	tests := []struct {
		name string
		aud  *internalv1.Audience
		want []string
	}{
		{"all", &internalv1.Audience{All: true}, []string{"a", "b", "c", "d"}},
		{"all android", &internalv1.Audience{All: true, Platform: "android"}, []string{"a", "c"}},
		{"tag expression", &internalv1.Audience{TagExpr: "vip && cn"}, []string{"a"}},
		{"tag on a platform", &internalv1.Audience{TagExpr: "vip", Platform: "ios"}, []string{"b"}},
		{"negation", &internalv1.Audience{TagExpr: "!vip"}, []string{"c", "d"}},
		{"topic", &internalv1.Audience{Topic: "news"}, []string{"c"}},
		{"topic nobody has", &internalv1.Audience{Topic: "sports"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := ulidAt(time.Now())
			n, err := e.gw.Broadcast(t.Context(), group(id, tt.aud))
			if err != nil {
				t.Fatal(err)
			}
			if n != int64(len(tt.want)) {
				t.Errorf("matched %d, want %d", n, len(tt.want))
			}
			for _, dev := range tt.want {
				p := raw[dev].push(t)
				if p.GetMessageId() != id || !p.GetGroup() {
					t.Fatalf("device %s got %s (group %v), want %s as a group push", dev, p.GetMessageId(), p.GetGroup(), id)
				}
			}
			for dev, d := range raw {
				if !slices.Contains(tt.want, dev) {
					d.quiet(t, 50*time.Millisecond)
				}
			}
			for _, dev := range tt.want {
				raw[dev].quiet(t, 50*time.Millisecond) // exactly once
			}
			if len(tt.want) > 0 {
				sent := e.receiptsWhere(t, func(r receipt.Receipt) bool { return r.MessageID == id && r.Event == receipt.EventSent })
				if len(sent) != 1 || sent[0].Count != int64(len(tt.want)) || !sent[0].Group {
					t.Errorf("sent receipts %+v, want one with count %d", sent, len(tt.want))
				}
			}
		})
	}
}

func TestBroadcastOverGRPC(t *testing.T) {
	e := startRPCEnv(t)
	e.registerProfile(t, "g1", profile{})
	d := e.rawConnect(t, "g1", "")
	resp, err := e.client.Broadcast(t.Context(), &internalv1.BroadcastRequest{Node: "gw-rpc", Envelope: group("01GRPC", &internalv1.Audience{All: true})})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetMatched() != 1 {
		t.Fatalf("matched %d, want 1", resp.GetMatched())
	}
	if p := d.push(t); p.GetMessageId() != "01GRPC" {
		t.Fatalf("got %s", p.GetMessageId())
	}
	resp, err = e.client.Broadcast(t.Context(), &internalv1.BroadcastRequest{Node: "gw-other", Envelope: group("01OTHER", &internalv1.Audience{All: true})})
	if err != nil || resp.GetMatched() != 0 {
		t.Fatalf("broadcast for another node: %v %v, want 0 matched", resp, err)
	}
	d.quiet(t, 100*time.Millisecond)
	if _, err := e.client.Broadcast(t.Context(), &internalv1.BroadcastRequest{Node: "gw-rpc", Envelope: &internalv1.Envelope{AppId: "app-rpc"}}); err == nil {
		t.Fatal("a broadcast without an audience was accepted")
	}
	dir := NewDirectory(e.gw)
	if got := dir.Nodes(); !slices.Equal(got, []string{"gw-rpc"}) {
		t.Fatalf("Nodes() = %v", got)
	}
	if n, err := dir.Broadcast(t.Context(), "gw-rpc", []*internalv1.Envelope{group("01DIR", &internalv1.Audience{All: true})}); err != nil || !slices.Equal(n, []int64{1}) {
		t.Fatalf("Directory.Broadcast: %v %v", n, err)
	}
	if p := d.push(t); p.GetMessageId() != "01DIR" {
		t.Fatalf("got %s", p.GetMessageId())
	}
	// The dispatcher hands the same record over again (a retry, a redelivery).
	if n, err := dir.Broadcast(t.Context(), "gw-rpc", []*internalv1.Envelope{group("01DIR", &internalv1.Audience{All: true})}); err != nil || !slices.Equal(n, []int64{1}) {
		t.Fatalf("repeated Broadcast: %v %v, want the first answer", n, err)
	}
	d.quiet(t, 100*time.Millisecond)
}

func TestBroadcastSpreadsOverTheWindow(t *testing.T) {
	e := startRPCEnv(t)
	const n = 8
	const spread = 800 * time.Millisecond
	var (
		mu  sync.Mutex
		got []time.Time
	)
	for i := range n {
		id := "sp-" + strconv.Itoa(i)
		e.registerProfile(t, id, profile{})
		d := e.rawConnect(t, id, "")
		go func() {
			_ = d.c.SetReadDeadline(time.Now().Add(rpcWait))
			for {
				f, err := d.r.Next()
				if err != nil {
					return
				}
				if f.Type == frame.TypePush {
					mu.Lock()
					got = append(got, time.Now())
					mu.Unlock()
				}
			}
		}()
	}
	env := group("01SPREAD", &internalv1.Audience{All: true})
	env.SpreadOverMs = spread.Milliseconds()
	start := time.Now()
	m, err := e.gw.Broadcast(t.Context(), env)
	if err != nil || m != n {
		t.Fatalf("Broadcast: %d %v, want %d", m, err, n)
	}
	if d := time.Since(start); d > spread/2 {
		t.Errorf("Broadcast took %v: it must return once the fan-out is queued", d)
	}
	eventually(t, "every device got the push", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) >= n
	})
	mu.Lock()
	defer mu.Unlock()
	if len(got) != n {
		t.Fatalf("%d pushes, want %d", len(got), n)
	}
	slices.SortFunc(got, func(a, b time.Time) int { return a.Compare(b) })
	// n pushes evenly over the window, one every spread/n: the last goes
	// out (n-1)/n of the way in, and no short stretch sees a burst (a
	// little slack for a loaded machine).
	if span := got[n-1].Sub(got[0]); span < spread/2 {
		t.Errorf("pushes spanned %v, want about %v", span, spread*(n-1)/n)
	}
	for i := range got {
		in := 0
		for _, at := range got[i:] {
			if at.Sub(got[i]) < spread/n {
				in++
			}
		}
		if in > 3 {
			t.Errorf("%d pushes within %v of each other: bursty", in, spread/n)
		}
	}
}

func TestNormalPriorityWaitsForTheDevice(t *testing.T) {
	for _, model := range ioModels {
		t.Run(model, func(t *testing.T) {
			e := startEnvWith(t, Config{IO: model, NormalMaxDelay: time.Minute})
			e.registerProfile(t, "n1", profile{})
			d := e.rawConnect(t, "n1", "")
			for _, id := range []string{"01NORMAL1", "01NORMAL2"} {
				env := group(id, &internalv1.Audience{All: true})
				env.Priority = internalv1.Priority_PRIORITY_NORMAL
				if m, err := e.gw.Broadcast(t.Context(), env); err != nil || m != 1 {
					t.Fatalf("Broadcast: %d %v", m, err)
				}
			}
			d.quiet(t, 300*time.Millisecond)
			d.send(t, frame.Ping)
			for _, id := range []string{"01NORMAL1", "01NORMAL2"} {
				if p := d.push(t); p.GetMessageId() != id {
					t.Fatalf("got %s, want %s", p.GetMessageId(), id)
				}
			}

			t.Run("lazy inbox drain", func(t *testing.T) {
				body, err := proto.Marshal(envelope("n1", "01LAZY"))
				if err != nil {
					t.Fatal(err)
				}
				if _, err := e.store.Put(t.Context(), "app-rpc", "n1", store.InboxEntry{MessageID: "01LAZY", ExpiresAt: time.Now().Add(time.Hour), Body: body}); err != nil {
					t.Fatal(err)
				}
				key := route.Key("app-rpc", "n1")
				r, err := e.routes.Lookup(t.Context(), []string{key})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := e.client.Drain(t.Context(), &internalv1.DrainRequest{Node: "gw-rpc", Device: key, ConnId: r[key].ConnID, Lazy: true}); err != nil {
					t.Fatal(err)
				}
				d.quiet(t, 300*time.Millisecond)
				d.send(t, frame.Ping)
				p := d.push(t)
				if p.GetMessageId() != "01LAZY" || p.GetGroup() {
					t.Fatalf("got %s (group %v), want the stored unicast 01LAZY", p.GetMessageId(), p.GetGroup())
				}
				d.ack(t, "01LAZY")
				eventually(t, "the inbox is empty", func() bool {
					got, err := e.store.List(t.Context(), "app-rpc", "n1", "", 10)
					return err == nil && len(got) == 0
				})
			})
		})
	}
}

func TestNormalPriorityMaxDelay(t *testing.T) {
	e := startEnvWith(t, Config{NormalMaxDelay: 300 * time.Millisecond})
	e.registerProfile(t, "m1", profile{})
	d := e.rawConnect(t, "m1", "")
	env := group("01DELAYED", &internalv1.Audience{All: true})
	env.Priority = internalv1.Priority_PRIORITY_NORMAL
	start := time.Now()
	if _, err := e.gw.Broadcast(t.Context(), env); err != nil {
		t.Fatal(err)
	}
	if p := d.push(t); p.GetMessageId() != "01DELAYED" {
		t.Fatalf("got %s", p.GetMessageId())
	}
	if waited := time.Since(start); waited < 250*time.Millisecond {
		t.Fatalf("a silent device got the normal-priority push after %v, before the max delay", waited)
	}
}

func TestRecallDropsQueuedCopies(t *testing.T) {
	e := startEnvWith(t, Config{NormalMaxDelay: time.Minute})
	e.registerProfile(t, "r1", profile{})
	d := e.rawConnect(t, "r1", "")
	env := group("01RECALLED", &internalv1.Audience{All: true})
	env.Priority = internalv1.Priority_PRIORITY_NORMAL
	if _, err := e.gw.Broadcast(t.Context(), env); err != nil {
		t.Fatal(err)
	}
	rec := &internalv1.Envelope{AppId: "app-rpc", Audience: env.GetAudience(), Recall: true, Push: &devicev1.Push{MessageId: "01RECALLED"}}
	if n, err := e.gw.Broadcast(t.Context(), rec); err != nil || n != 0 {
		t.Fatalf("recall: %d %v", n, err)
	}
	d.send(t, frame.Ping)
	d.quiet(t, 300*time.Millisecond)

	t.Run("paced", func(t *testing.T) {
		const n = 4
		devs := make([]*rawDevice, n)
		for i := range devs {
			id := "rp-" + strconv.Itoa(i)
			e.registerProfile(t, id, profile{tags: []string{"paced"}})
			devs[i] = e.rawConnect(t, id, "")
		}
		env := group("01PACEDRECALL", &internalv1.Audience{TagExpr: "paced"})
		env.SpreadOverMs = 4000
		if m, err := e.gw.Broadcast(t.Context(), env); err != nil || m != n {
			t.Fatalf("Broadcast: %d %v", m, err)
		}
		rec := &internalv1.Envelope{AppId: "app-rpc", Audience: env.GetAudience(), Recall: true, Push: &devicev1.Push{MessageId: "01PACEDRECALL"}}
		if _, err := e.gw.Broadcast(t.Context(), rec); err != nil {
			t.Fatal(err)
		}
		got := 0
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, d := range devs {
			wg.Go(func() {
				_ = d.c.SetReadDeadline(time.Now().Add(1500 * time.Millisecond))
				if f, err := d.r.Next(); err == nil && f.Type == frame.TypePush {
					mu.Lock()
					got++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if got > 1 {
			t.Fatalf("%d devices got a push recalled at the start of its 4s spread", got)
		}
	})
}

// ulidAt returns an id of time t (generated by a clock stuck at t).
func ulidAt(t time.Time) string { return ids.New(func() time.Time { return t }).Next() }

func TestReplayOnConnect(t *testing.T) {
	e := startEnvWith(t, Config{ReplayLookback: 10 * time.Minute})
	ctx := t.Context()
	now := time.Now()
	e.registerProfile(t, "late", profile{tags: []string{"vip"}, registered: now.Add(-3 * time.Hour)})
	cursor := ulidAt(now.Add(-30 * time.Minute))
	put := func(id string, a *internalv1.Audience, expires time.Time, recalled bool) {
		t.Helper()
		env := group(id, a)
		env.ExpiresAtMs = expires.UnixMilli()
		body, err := proto.Marshal(env)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.store.PutBroadcast(ctx, "app-rpc", store.Broadcast{MessageID: id, ExpiresAt: expires, Body: body}); err != nil {
			t.Fatal(err)
		}
		if recalled {
			if err := e.store.RecallBroadcast(ctx, "app-rpc", id); err != nil {
				t.Fatal(err)
			}
		}
	}
	all := &internalv1.Audience{All: true}
	later := now.Add(time.Hour)
	var (
		tooOld      = ulidAt(now.Add(-45 * time.Minute)) // before cursor - look-back
		inLookback  = ulidAt(now.Add(-35 * time.Minute)) // older than the cursor, within the look-back
		fresh       = ulidAt(now.Add(-20 * time.Minute))
		expiredID   = ulidAt(now.Add(-19 * time.Minute))
		recalledID  = ulidAt(now.Add(-18 * time.Minute))
		vipNow      = ulidAt(now.Add(-17 * time.Minute)) // the device has the tag now
		otherTag    = ulidAt(now.Add(-16 * time.Minute))
		iosOnly     = ulidAt(now.Add(-15 * time.Minute))
		beforeOwner = ulidAt(now.Add(-4 * time.Hour)) // before the device registered
	)
	put(tooOld, all, later, false)
	put(inLookback, all, later, false)
	put(fresh, all, later, false)
	put(expiredID, all, now.Add(-time.Minute), false)
	put(recalledID, all, later, true)
	put(vipNow, &internalv1.Audience{TagExpr: "vip"}, later, false)
	put(otherTag, &internalv1.Audience{TagExpr: "nope"}, later, false)
	put(iosOnly, &internalv1.Audience{All: true, Platform: "ios"}, later, false)
	put(beforeOwner, all, later, false)

	t.Run("cursor", func(t *testing.T) {
		d := e.rawConnect(t, "late", cursor)
		want := []string{inLookback, fresh, vipNow}
		for _, id := range want {
			p := d.push(t)
			if p.GetMessageId() != id || !p.GetGroup() {
				t.Fatalf("replay pushed %s (group %v), want %s", p.GetMessageId(), p.GetGroup(), id)
			}
		}
		d.ack(t, want...)
		d.quiet(t, 200*time.Millisecond)
		eventually(t, "sent receipts for the pushes newer than the cursor", func() bool {
			sent := e.receiptsWhere(t, func(r receipt.Receipt) bool { return r.Event == receipt.EventSent })
			var got []string
			for _, r := range sent {
				got = append(got, r.MessageID)
			}
			slices.Sort(got)
			return slices.Equal(got, []string{fresh, vipNow})
		})
		eventually(t, "delivered receipts for the acked new pushes", func() bool {
			got := e.receiptsWhere(t, func(r receipt.Receipt) bool {
				return r.Event == receipt.EventDelivered && r.Group && r.DeviceID == "late"
			})
			return len(got) == 2
		})
		_ = d.c.Close()
	})
	t.Run("no cursor: everything since registration", func(t *testing.T) {
		d := e.rawConnect(t, "late", "")
		for _, id := range []string{tooOld, inLookback, fresh, vipNow} {
			if p := d.push(t); p.GetMessageId() != id {
				t.Fatalf("replay pushed %s, want %s", p.GetMessageId(), id)
			}
		}
		d.quiet(t, 200*time.Millisecond)
		_ = d.c.Close()
	})
}

func TestReplayHoldsLivePushes(t *testing.T) {
	e := startRPCEnv(t)
	ctx := t.Context()
	e.registerProfile(t, "h1", profile{registered: time.Now().Add(-time.Hour)})
	stored := group(ulidAt(time.Now().Add(-time.Minute)), &internalv1.Audience{All: true})
	body, err := proto.Marshal(stored)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.store.PutBroadcast(ctx, "app-rpc", store.Broadcast{MessageID: stored.GetPush().GetMessageId(), ExpiresAt: time.Now().Add(time.Hour), Body: body}); err != nil {
		t.Fatal(err)
	}
	d := e.rawConnect(t, "h1", "")
	if p := d.push(t); p.GetMessageId() != stored.GetPush().GetMessageId() {
		t.Fatalf("replay pushed %s", p.GetMessageId())
	}
	// The replay waits for the ack: live pushes now are held, the one it
	// already pushed is not sent again.
	live := group(ulidAt(time.Now()), &internalv1.Audience{All: true})
	for _, env := range []*internalv1.Envelope{stored, live} {
		if n, err := e.gw.Broadcast(ctx, env); err != nil || n != 1 {
			t.Fatalf("Broadcast: %d %v", n, err)
		}
	}
	d.quiet(t, 200*time.Millisecond)
	d.ack(t, stored.GetPush().GetMessageId())
	if p := d.push(t); p.GetMessageId() != live.GetPush().GetMessageId() {
		t.Fatalf("after the replay got %s, want the held live push %s", p.GetMessageId(), live.GetPush().GetMessageId())
	}
	d.quiet(t, 200*time.Millisecond)
}

func TestDeviceFrames(t *testing.T) {
	e := startRPCEnv(t)
	ctx := t.Context()
	e.registerProfile(t, "f1", profile{})
	d := e.rawConnect(t, "f1", "")
	subscribe := func(t *testing.T, req string, unsub bool, topics ...string) string {
		t.Helper()
		d.sendMsg(t, frame.TypeSubscribe, &devicev1.Subscribe{RequestId: req, Topics: topics, Unsubscribe: unsub})
		f := d.next(t)
		if f.Type != frame.TypeSubAck {
			t.Fatalf("got %s, want SUBACK", f.Type)
		}
		var a devicev1.SubAck
		if err := proto.Unmarshal(f.Body, &a); err != nil {
			t.Fatal(err)
		}
		if a.GetRequestId() != req {
			t.Fatalf("SUBACK for %q, want %q", a.GetRequestId(), req)
		}
		return a.GetError()
	}
	t.Run("subscribe", func(t *testing.T) {
		if got := subscribe(t, "s1", false, "news", "sports"); got != "" {
			t.Fatalf("SUBACK error %q", got)
		}
		dev, err := e.store.Device(ctx, "app-rpc", "f1")
		if err != nil || !slices.Equal(dev.Topics, []string{"news", "sports"}) {
			t.Fatalf("stored topics %v %v", dev.Topics, err)
		}
		if n, err := e.gw.Broadcast(ctx, group("01NEWS", &internalv1.Audience{Topic: "news"})); err != nil || n != 1 {
			t.Fatalf("Broadcast to the new topic: %d %v", n, err)
		}
		if p := d.push(t); p.GetMessageId() != "01NEWS" {
			t.Fatalf("got %s", p.GetMessageId())
		}
		if got := subscribe(t, "s2", true, "news"); got != "" {
			t.Fatalf("unsubscribe: SUBACK error %q", got)
		}
		if n, _ := e.gw.Broadcast(ctx, group("01NEWS2", &internalv1.Audience{Topic: "news"})); n != 0 {
			t.Fatalf("an unsubscribed device matched")
		}
	})
	t.Run("invalid topics", func(t *testing.T) {
		many := make([]string, maxTopicsPerDevice)
		for i := range many {
			many[i] = "t" + strconv.Itoa(i)
		}
		for name, topics := range map[string][]string{
			"bad name":   {"bad topic!"},
			"too long":   {strings.Repeat("x", 65)},
			"over limit": many, // plus "sports" already subscribed
		} {
			if got := subscribe(t, name, false, topics...); got != "invalid_topic" {
				t.Errorf("%s: SUBACK error %q, want invalid_topic", name, got)
			}
		}
	})
	t.Run("set badge, then badge +1", func(t *testing.T) {
		d.sendMsg(t, frame.TypeSetBadge, &devicev1.SetBadge{Badge: 7})
		eventually(t, "the badge is 7", func() bool {
			n, err := e.store.Badge(ctx, "app-rpc", "f1")
			return err == nil && n == 7
		})
		env := group("01BADGE", &internalv1.Audience{All: true})
		env.BadgeAdd = 1
		if _, err := e.gw.Broadcast(ctx, env); err != nil {
			t.Fatal(err)
		}
		if p := d.push(t); p.GetNotification().GetBadge() != 8 {
			t.Fatalf("badge %d, want 8", p.GetNotification().GetBadge())
		}
	})
	t.Run("receipt", func(t *testing.T) {
		d.sendMsg(t, frame.TypeReceipt, &devicev1.Receipt{MessageIds: []string{"01CLICKED"}, Event: devicev1.ReceiptEvent_RECEIPT_EVENT_CLICKED})
		eventually(t, "a clicked receipt", func() bool {
			got := e.receiptsWhere(t, func(r receipt.Receipt) bool { return r.MessageID == "01CLICKED" })
			return len(got) == 1 && got[0].Event == receipt.EventClicked && got[0].DeviceID == "f1"
		})
	})
	t.Run("group and unicast acks are delivered receipts", func(t *testing.T) {
		if _, err := e.gw.Broadcast(ctx, group("01GACK", &internalv1.Audience{All: true})); err != nil {
			t.Fatal(err)
		}
		d.push(t)
		d.ack(t, "01GACK", "01UACK")
		eventually(t, "delivered receipts", func() bool {
			got := e.receiptsWhere(t, func(r receipt.Receipt) bool { return r.Event == receipt.EventDelivered })
			groups := map[string]bool{}
			for _, r := range got {
				groups[r.MessageID] = r.Group
			}
			return len(got) == 2 && groups["01GACK"] && !groups["01UACK"]
		})
	})
}

func TestRefreshAndDailyCap(t *testing.T) {
	e := startRPCEnv(t)
	ctx := t.Context()
	e.registerProfile(t, "t1", profile{})
	d := e.rawConnect(t, "t1", "")
	vip := &internalv1.Audience{TagExpr: "vip"}
	if n, _ := e.gw.Broadcast(ctx, group("01VIP1", vip)); n != 0 {
		t.Fatal("a device without the tag matched")
	}
	if _, err := e.store.UpdateTags(ctx, "app-rpc", "t1", []string{"vip"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Refresh(ctx, &internalv1.RefreshRequest{Node: "gw-rpc", AppId: "app-rpc", DeviceId: "t1"}); err != nil {
		t.Fatal(err)
	}
	if n, _ := e.gw.Broadcast(ctx, group("01VIP2", vip)); n != 1 {
		t.Fatal("the refreshed device did not match its new tag")
	}
	if p := d.push(t); p.GetMessageId() != "01VIP2" {
		t.Fatalf("got %s", p.GetMessageId())
	}
	if err := NewDirectory(e.gw).Refresh(ctx, "app-rpc", "nobody"); err != nil {
		t.Fatalf("Refresh of a device without a session: %v", err)
	}

	t.Run("daily cap", func(t *testing.T) {
		if err := e.store.UpdateApp(ctx, store.App{ID: "app-rpc", DailyCap: 1}); err != nil {
			t.Fatal(err)
		}
		e.gw.groups.mu.Lock()
		clear(e.gw.groups.caps)
		e.gw.groups.mu.Unlock()
		if n, _ := e.gw.Broadcast(ctx, group("01CAP1", vip)); n != 1 {
			t.Fatal("the first notification of the day was capped")
		}
		if p := d.push(t); p.GetMessageId() != "01CAP1" {
			t.Fatalf("got %s", p.GetMessageId())
		}
		if n, _ := e.gw.Broadcast(ctx, group("01CAP2", vip)); n != 0 {
			t.Fatal("a notification over the daily cap matched")
		}
		data := group("01CAPDATA", vip)
		data.GetPush().Notification = nil
		data.GetPush().Kind = devicev1.Kind_KIND_DATA
		if n, _ := e.gw.Broadcast(ctx, data); n != 1 {
			t.Fatal("a data message was capped")
		}
		if p := d.push(t); p.GetMessageId() != "01CAPDATA" {
			t.Fatalf("got %s", p.GetMessageId())
		}
	})
}

func TestBroadcastRejectsIncompleteEnvelopes(t *testing.T) {
	e := startRPCEnv(t)
	for name, env := range map[string]*internalv1.Envelope{
		"no audience": {AppId: "app-rpc", Push: &devicev1.Push{MessageId: "01X"}},
		"no id":       {AppId: "app-rpc", Audience: &internalv1.Audience{All: true}, Push: &devicev1.Push{}},
		"no app":      {Audience: &internalv1.Audience{All: true}, Push: &devicev1.Push{MessageId: "01X"}},
	} {
		if _, err := e.gw.Broadcast(t.Context(), env); err == nil {
			t.Errorf("%s: accepted", name)
		} else if !errors.Is(err, herr.ErrInvalidArgument) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestBroadcastFollowsReconnects(t *testing.T) {
	e := startRPCEnv(t)
	ctx := t.Context()
	for _, id := range []string{"x1", "x2", "x3"} {
		e.registerProfile(t, id, profile{})
	}
	old := e.rawConnect(t, "x1", "")
	others := []*rawDevice{e.rawConnect(t, "x2", ""), e.rawConnect(t, "x3", "")}
	cur := e.rawConnect(t, "x1", "") // replaces old
	if got := old.closedWith(t); got != frame.CodeReplaced {
		t.Fatalf("old session closed with %d", got)
	}
	if n, err := e.gw.Broadcast(ctx, group(ulidAt(time.Now()), &internalv1.Audience{All: true})); err != nil || n != 3 {
		t.Fatalf("Broadcast: %d %v, want 3 sessions", n, err)
	}
	for _, d := range append(others, cur) {
		d.push(t)
	}
	for _, d := range others {
		_ = d.c.Close()
	}
	eventually(t, "closed sessions are gone", func() bool { return e.gw.Sessions() == 1 })
	if n, err := e.gw.Broadcast(ctx, group(ulidAt(time.Now()), &internalv1.Audience{All: true})); err != nil || n != 1 {
		t.Fatalf("Broadcast after closes: %d %v, want 1", n, err)
	}
	cur.push(t)
}

// storeBroadcasts puts n "all" broadcasts of the test app in the topic log,
// sent a minute ago in id order, and returns their ids.
func (e *rpcEnv) storeBroadcasts(tb testing.TB, n int) []string {
	tb.Helper()
	gen := ids.New(func() time.Time { return time.Now().Add(-time.Minute) })
	out := make([]string, n)
	for i := range out {
		env := group(gen.Next(), &internalv1.Audience{All: true})
		body, err := proto.Marshal(env)
		if err != nil {
			tb.Fatal(err)
		}
		out[i] = env.GetPush().GetMessageId()
		if err := e.store.PutBroadcast(tb.Context(), "app-rpc", store.Broadcast{MessageID: out[i], ExpiresAt: time.Now().Add(time.Hour), Body: body}); err != nil {
			tb.Fatal(err)
		}
	}
	return out
}

// A device that acks its replay slowly, or stops acking for a while, still
// gets every group message it missed while it stays connected.
func TestReplayOutlastsSlowAndStallingDevices(t *testing.T) {
	const window = 8
	for _, tc := range []struct {
		name string
		// ackDelay is how long the device takes per push; stallFirst
		// makes it ignore the first page entirely.
		ackDelay   time.Duration
		stallFirst bool
	}{
		{name: "acks slower than a page per ack timeout", ackDelay: 60 * time.Millisecond},
		{name: "ignores a whole page, then acks", stallFirst: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A page of 8 at 60 ms per ack takes 480 ms, past the 300 ms ack timeout.
			e := startEnvWith(t, Config{IO: testIO(), AckTimeout: 300 * time.Millisecond, Window: window})
			e.registerProfile(t, "slow", profile{registered: time.Now().Add(-time.Hour)})
			want := e.storeBroadcasts(t, 3*window+3)
			d := e.rawConnect(t, "slow", "")
			got := make(map[string]int)
			ignored := 0
			for len(got) < len(want) {
				p := d.push(t)
				if tc.stallFirst && ignored < window {
					ignored++ // read, never acked: the page times out
					continue
				}
				got[p.GetMessageId()]++
				time.Sleep(tc.ackDelay)
				d.ack(t, p.GetMessageId())
			}
			for _, id := range want {
				if got[id] != 1 {
					t.Fatalf("message %s acked %d times, want once; got %d of %d messages", id, got[id], len(got), len(want))
				}
			}
			d.quiet(t, 500*time.Millisecond)
		})
	}
}
