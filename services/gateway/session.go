package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"net"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	herald "github.com/heraldpush/herald"
	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
	"github.com/heraldpush/herald/pkg/delivery"
	"github.com/heraldpush/herald/pkg/envelope/internalv1"
	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/pkg/receipt"
	"github.com/heraldpush/herald/pkg/route"
	"github.com/heraldpush/herald/pkg/store"
	"github.com/heraldpush/herald/pkg/timewheel"
)

// storeTimeout bounds every store call a session makes. Session work uses a
// context detached from the gateway's run context so that acks arriving
// during shutdown are still recorded.
const storeTimeout = 5 * time.Second

// session is one device connection.
type session struct {
	g    *Gateway
	conn net.Conn

	// Set once at CONNECT, read-only after.
	id                 uint64
	appID, device, key string
	heartbeat          time.Duration
	appIdx             int32 // index in g.apps[appID]; g.mu guards it

	// wake holds wake* bits: work waiting for the device's next inbound
	// frame (or Config.NormalMaxDelay). Readers check it with one atomic load.
	wake atomic.Uint32

	authed    atomic.Bool
	lastSeen  atomic.Int64 // unix nanoseconds of the last frame read
	lastTouch time.Time    // when the route's TTL was last refreshed (wheel goroutine only)

	wmu sync.Mutex // serializes writes (goroutine I/O)
	ev  *evState   // event-loop I/O state; nil in the goroutine model

	mu       sync.Mutex
	inflight map[string]inflightRef // allocated at the first push
	// The device's audience profile (group matching): loaded at CONNECT,
	// reloaded by Refresh and after SUBSCRIBE. Slices are replaced, never
	// changed in place; nil when empty.
	platform     string
	tags, topics []string
	grp          *groupState // group pushes queued or unacked; nil when none
	replaying    bool        // CONNECT drain + replay running: live group pushes are held
	draining     bool
	drainAgain   bool
	// drainRetries counts drains in a row that ended without emptying the
	// inbox (no acks, store errors); the next one waits longer.
	drainRetries uint8
	closed       bool

	closeOnce sync.Once
	closedCh  chan struct{}
}

func (s *session) route() route.Route { return route.Route{Node: s.g.cfg.NodeID, ConnID: s.id} }

func (g *Gateway) newSession(c net.Conn) *session {
	return &session{g: g, conn: c, appIdx: -1, closedCh: make(chan struct{})}
}

// serve is the goroutine I/O model: this goroutine reads the connection
// until it ends.
func (g *Gateway) serve(ctx context.Context, c net.Conn) {
	s := g.newSession(c)
	if !g.track(s) {
		s.closeWith(frame.CodeShutdown, "gateway shutting down", 0)
		return
	}
	g.m.connections.Add(ctx, 1)
	defer g.m.connections.Add(context.WithoutCancel(ctx), -1)
	defer s.cleanup()

	hs := s.armHandshakeTimeout()
	r := frame.NewReader(c, g.cfg.MaxFrameBytes)
	f, err := r.Next()
	hs.Stop()
	if err != nil {
		s.closeOnReadError(err)
		return
	}
	g.m.framesIn.Add(ctx, 1)
	if !s.first(ctx, f) {
		return
	}
	for {
		f, err := r.Next()
		if err != nil {
			s.closeOnReadError(err)
			return
		}
		s.lastSeen.Store(time.Now().UnixNano())
		g.m.framesIn.Add(ctx, 1)
		if s.wake.Load() != 0 {
			s.awake()
		}
		if !s.handle(f) {
			return
		}
	}
}

// armHandshakeTimeout closes the session unless it authenticates in time.
func (s *session) armHandshakeTimeout() *timewheel.Timer {
	return s.g.wheel.Schedule(time.Now().Add(s.g.cfg.HandshakeTimeout), func() {
		if !s.authed.Load() {
			go s.closeWith(frame.CodeHandshakeTimeout, "no CONNECT within the handshake timeout", 0)
		}
	})
}

// first handles the session's first frame, which must be CONNECT.
func (s *session) first(ctx context.Context, f frame.Frame) bool {
	if f.Type != frame.TypeConnect {
		s.closeWith(frame.CodeExpectedConnect, "the first frame must be CONNECT", 0)
		return false
	}
	var req devicev1.Connect
	if err := proto.Unmarshal(f.Body, &req); err != nil {
		s.closeWith(frame.CodeBadFrame, "undecodable CONNECT", 0)
		return false
	}
	return s.connect(ctx, &req)
}

// connect authenticates the device, takes over from an older session of
// the same device, binds the route and starts the inbox drain.
func (s *session) connect(ctx context.Context, req *devicev1.Connect) bool {
	g := s.g
	if req.GetProtocolVersion() != frame.ProtocolVersion {
		s.closeWith(frame.CodeUnsupportedVersion, "protocol version "+strconv.Itoa(int(req.GetProtocolVersion()))+" is not supported; this server speaks 1", 0)
		return false
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	defer cancel()
	dev, err := g.authenticate(sctx, req)
	if err != nil {
		if errors.Is(err, herald.ErrUnauthenticated) {
			s.closeWith(frame.CodeUnauthorized, "unauthorized", 0)
		} else {
			g.log.Error("authenticate device", "err", err)
			s.closeWith(frame.CodeServerError, "temporarily unavailable", 1000)
		}
		return false
	}
	s.id = g.nextID.Add(1)
	s.appID, s.device = dev.AppID, req.GetDeviceId()
	s.key = route.Key(s.appID, s.device)
	s.heartbeat = g.negotiateHeartbeat(req.GetHeartbeatSeconds())
	s.setProfile(dev)
	s.draining = true  // live pushes wait until the inbox is drained, to keep send order
	s.replaying = true // live group pushes wait for the replay (after the drain)
	old, ok := g.register(s)
	if !ok {
		s.closeWith(frame.CodeShutdown, "gateway shutting down", 0)
		return false
	}
	if old != nil {
		old.closeWith(frame.CodeReplaced, "replaced by a newer connection of this device", 0)
	}
	if err := g.deps.Routes.Bind(sctx, s.key, s.route()); err != nil {
		g.log.Error("bind route", "device", s.key, "err", err)
		s.closeWith(frame.CodeServerError, "temporarily unavailable", 1000)
		return false
	}
	s.authed.Store(true)
	now := time.Now()
	s.lastSeen.Store(now.UnixNano())
	ack, err := frame.AppendMessage(nil, frame.TypeConnAck, &devicev1.ConnAck{
		ProtocolVersion:  frame.ProtocolVersion,
		HeartbeatSeconds: uint32(s.heartbeat / time.Second),
		ServerTimeMs:     now.UnixMilli(),
		SessionId:        g.cfg.NodeID + "-" + strconv.FormatUint(s.id, 10),
		MaxFrameBytes:    uint32(g.cfg.MaxFrameBytes),
	})
	if err != nil || s.write(ack) != nil {
		s.closeWith(frame.CodeServerError, "write failed", 0)
		return false
	}
	s.scheduleHeartbeatCheck(now)
	cursor, created := req.GetBroadcastCursor(), dev.CreatedAt
	go func() {
		s.drainLoop()
		s.replay(cursor, created)
	}()
	return true
}

// authenticate checks the device's credentials and returns its
// registration (AppID set).
func (g *Gateway) authenticate(ctx context.Context, req *devicev1.Connect) (store.Device, error) {
	if req.GetAppKey() == "" || req.GetDeviceId() == "" || req.GetDeviceToken() == "" {
		return store.Device{}, herald.ErrUnauthenticated
	}
	app, err := g.appKeys.Get(ctx, g.deps.Registry, req.GetAppKey(), time.Now())
	if errors.Is(err, herald.ErrAppNotFound) {
		return store.Device{}, herald.ErrUnauthenticated
	} else if err != nil {
		return store.Device{}, err
	}
	dev, err := g.deps.Registry.Device(ctx, app.ID, req.GetDeviceId())
	if errors.Is(err, herald.ErrDeviceNotFound) {
		return store.Device{}, herald.ErrUnauthenticated
	} else if err != nil {
		return store.Device{}, err
	}
	sum := sha256.Sum256([]byte(req.GetDeviceToken()))
	if subtle.ConstantTimeCompare(sum[:], dev.TokenHash) != 1 {
		return store.Device{}, herald.ErrUnauthenticated
	}
	dev.AppID = app.ID
	dev.TokenHash = nil // not kept in the session
	return dev, nil
}

// scheduleHeartbeatCheck arms the session's one wheel timer. Frames never
// touch the wheel: when the timer fires, the session compares its last-seen
// time and re-arms itself if the device was active.
func (s *session) scheduleHeartbeatCheck(from time.Time) {
	limit := s.heartbeat + s.heartbeat/2
	s.g.wheel.Schedule(from.Add(limit), func() {
		select {
		case <-s.closedCh:
			return
		default:
		}
		last := time.Unix(0, s.lastSeen.Load())
		if time.Since(last) >= limit {
			go s.closeWith(frame.CodeHeartbeatTimeout, "no heartbeat within the negotiated interval", 0)
			return
		}
		s.maybeTouchRoute()
		s.scheduleHeartbeatCheck(last)
	})
}

// routeToucher is a routing table whose routes expire unless refreshed
// (Redis). Heartbeats never write to it: a live session refreshes its route
// at most once per TouchInterval, from its heartbeat check.
type routeToucher interface {
	Touch(ctx context.Context, device string, r route.Route) error
	TouchInterval() time.Duration
}

func (s *session) maybeTouchRoute() {
	t, ok := s.g.deps.Routes.(routeToucher)
	if !ok {
		return
	}
	now := time.Now()
	if s.lastTouch.IsZero() {
		s.lastTouch = now // bound at CONNECT with a fresh TTL
		return
	}
	if now.Sub(s.lastTouch) < t.TouchInterval() {
		return
	}
	s.lastTouch = now
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		defer cancel()
		if err := t.Touch(ctx, s.key, s.route()); err != nil {
			s.g.log.Warn("refresh route", "device", s.key, "err", err)
		}
	}()
}

// handle processes one frame of an authenticated session; false ends it.
func (s *session) handle(f frame.Frame) bool {
	switch f.Type {
	case frame.TypePing:
		if s.write(frame.Pong) != nil {
			return false
		}
	case frame.TypePong:
	case frame.TypeAck:
		var ack devicev1.Ack
		if err := proto.Unmarshal(f.Body, &ack); err != nil {
			s.closeWith(frame.CodeBadFrame, "undecodable ACK", 0)
			return false
		}
		s.acked(ack.GetMessageIds())
	case frame.TypeUpstream:
		var up devicev1.Upstream
		if err := proto.Unmarshal(f.Body, &up); err != nil {
			s.closeWith(frame.CodeBadFrame, "undecodable UPSTREAM", 0)
			return false
		}
		return s.upstream(&up)
	case frame.TypeSubscribe:
		var sub devicev1.Subscribe
		if err := proto.Unmarshal(f.Body, &sub); err != nil {
			s.closeWith(frame.CodeBadFrame, "undecodable SUBSCRIBE", 0)
			return false
		}
		return s.subscribe(&sub)
	case frame.TypeReceipt:
		var r devicev1.Receipt
		if err := proto.Unmarshal(f.Body, &r); err != nil {
			s.closeWith(frame.CodeBadFrame, "undecodable RECEIPT", 0)
			return false
		}
		s.receipt(&r)
	case frame.TypeSetBadge:
		var b devicev1.SetBadge
		if err := proto.Unmarshal(f.Body, &b); err != nil {
			s.closeWith(frame.CodeBadFrame, "undecodable SETBADGE", 0)
			return false
		}
		s.setBadge(b.GetBadge())
	case frame.TypeDisconnect:
		s.closeQuietly()
		return false
	default:
		s.closeWith(frame.CodeBadFrame, "unexpected "+f.Type.String()+" frame from a device", 0)
		return false
	}
	return true
}

// acked records the device's acks, then resolves the waiters, so the
// dispatcher only hears "acked" once it is on record. A unicast ack marks
// the target delivered and deletes the inbox copy; a group ack (the session
// pushed that id as a group message) has no per-device rows to touch. Each
// emits a "delivered" receipt.
func (s *session) acked(ids []string) {
	if len(ids) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	unicast := ids
	var (
		refs  []inflightRef
		group []string // acked group pushes that count (not replayed duplicates)
	)
	s.mu.Lock()
	if s.grp != nil || s.replaying {
		unicast = nil
		for _, id := range ids {
			if ref, ok := s.inflight[id]; ok && ref.kind != kindUnicast && ref.kind != kindLive {
				delete(s.inflight, id)
				refs = append(refs, ref)
				if ref.kind == kindGroup {
					group = append(group, id)
				}
			} else if !ok && s.takeSent(id) {
				group = append(group, id)
			} else {
				unicast = append(unicast, id)
			}
		}
		s.tidyGroup()
	}
	s.mu.Unlock()
	for _, ref := range refs {
		ref.w.resolve(int(ref.i), delivery.Acked)
	}
	now := time.Now().UnixMilli()
	for _, id := range group {
		s.g.emit(receipt.Receipt{AppID: s.appID, MessageID: id, DeviceID: s.device, Event: receipt.EventDelivered, Count: 1, Group: true, AtMS: now})
	}
	s.g.m.acked.Add(ctx, int64(len(ids)-len(unicast)))
	if len(unicast) == 0 {
		return
	}
	ts := make([]store.Transition, len(unicast))
	for i, id := range unicast {
		ts[i] = store.Transition{MessageID: id, DeviceID: s.device, State: store.StateDelivered}
	}
	if err := s.g.deps.Status.Mark(ctx, ts...); err != nil {
		s.g.log.Error("record acks", "device", s.key, "err", err)
		return // unresolved: the dispatcher stores them and they are redelivered
	}
	if stored := s.storedOf(unicast); len(stored) > 0 {
		if err := s.g.deps.Inbox.Delete(ctx, s.appID, s.device, stored...); err != nil {
			s.g.log.Error("delete acked inbox entries", "device", s.key, "err", err)
			return
		}
	}
	s.g.m.acked.Add(ctx, int64(len(unicast)))
	refs = refs[:0]
	s.mu.Lock()
	for _, id := range unicast {
		if ref, ok := s.inflight[id]; ok {
			refs = append(refs, ref)
			delete(s.inflight, id)
		}
	}
	s.mu.Unlock()
	for _, ref := range refs {
		ref.w.resolve(int(ref.i), delivery.Acked)
	}
	for _, id := range unicast {
		s.g.emit(receipt.Receipt{AppID: s.appID, MessageID: id, DeviceID: s.device, Event: receipt.EventDelivered, Count: 1, AtMS: now})
	}
}

// storedOf returns the acked unicast ids that may have an inbox copy: all
// but those still in flight as live pushes (see kindLive).
func (s *session) storedOf(ids []string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, id := range ids {
		if ref, ok := s.inflight[id]; !ok || ref.kind != kindLive {
			out = append(out, id)
		}
	}
	return out
}

var channelRE = regexp.MustCompile(`^[a-z0-9._-]{1,64}$`)

// UpstreamRecord is the JSON value of an upstream log record.
type UpstreamRecord struct {
	AppID        string `json:"app_id"`
	DeviceID     string `json:"device_id"`
	RequestID    string `json:"request_id"`
	Channel      string `json:"channel"`
	Payload      []byte `json:"payload"`
	ReceivedAtMS int64  `json:"received_at_ms"`
}

func (s *session) upstream(up *devicev1.Upstream) bool {
	reply := func(errName string) bool {
		b, err := frame.AppendMessage(nil, frame.TypeUpAck, &devicev1.UpAck{RequestId: up.GetRequestId(), Error: errName})
		return err == nil && s.write(b) == nil
	}
	if !channelRE.MatchString(up.GetChannel()) {
		return reply("invalid_channel")
	}
	val, err := json.Marshal(UpstreamRecord{
		AppID: s.appID, DeviceID: s.device, RequestID: up.GetRequestId(),
		Channel: up.GetChannel(), Payload: up.GetPayload(), ReceivedAtMS: time.Now().UnixMilli(),
	})
	if err != nil {
		return reply("too_large")
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	if err := s.g.deps.Log.Append(ctx, pushlog.UpstreamTopic(up.GetChannel()), pushlog.Record{Key: []byte(s.key), Value: val}); err != nil {
		s.g.log.Warn("append upstream", "device", s.key, "err", err)
		return reply("unavailable")
	}
	s.g.m.upstream.Add(ctx, 1)
	return reply("")
}

// pushLive writes live deliveries (indexes into ds) to the session. Those that
// cannot be taken now resolve NotHere at once.
// All of them go out in one write; frames holds the PUSH frames already
// encoded for other sessions (nil: encode here).
func (s *session) pushLive(ds []delivery.Delivery, idx []int, w *waiter, frames pushFrames) {
	var buf []byte
	s.mu.Lock()
	for _, i := range idx {
		if s.closed || s.draining || len(s.inflight) >= s.g.cfg.Window {
			w.resolve(i, delivery.NotHere)
			continue
		}
		b, err := frames.append(buf, ds[i].Envelope.GetPush())
		if err != nil {
			s.g.log.Error("encode push", "err", err)
			w.resolve(i, delivery.NotHere)
			continue
		}
		buf = b
		s.addInflight(ds[i].Envelope.GetPush().GetMessageId(), inflightRef{w: w, i: int32(i), kind: kindLive})
	}
	s.mu.Unlock()
	if len(buf) > 0 {
		_ = s.write(buf) // a failed write closes the session, which resolves the waiters NotHere
	}
}

// addInflight records an in-flight push (s.mu held).
func (s *session) addInflight(id string, ref inflightRef) {
	if s.inflight == nil {
		s.inflight = make(map[string]inflightRef)
	}
	s.inflight[id] = ref
}

// pushFrames holds each distinct Push of one Deliver call encoded once, so
// a message going to many sessions is marshalled once and copied to each.
type pushFrames map[*devicev1.Push][]byte

func (p pushFrames) append(dst []byte, push *devicev1.Push) ([]byte, error) {
	if p == nil {
		return frame.AppendMessage(dst, frame.TypePush, push)
	}
	b, ok := p[push]
	if !ok {
		var err error
		if b, err = frame.AppendMessage(nil, frame.TypePush, push); err != nil {
			return dst, err
		}
		p[push] = b
	}
	return append(dst, b...), nil
}

// forgetTimedOut drops the in-flight records of deliveries that timed out,
// so a silent device does not hold its window forever. A late ack is still
// recorded as delivered.
func (s *session) forgetTimedOut(ds []delivery.Delivery, idx []int, out []delivery.Outcome) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, i := range idx {
		if out[i] != delivery.TimedOut {
			continue
		}
		id := ds[i].Envelope.GetPush().GetMessageId()
		if ref, ok := s.inflight[id]; ok && int(ref.i) == i {
			delete(s.inflight, id)
		}
	}
}

func (s *session) requestDrain() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	if s.draining {
		s.drainAgain = true
		s.mu.Unlock()
		return
	}
	s.draining = true
	s.mu.Unlock()
	go s.drainLoop()
}

// retryDrain asks for another drain after a backoff (the ack timeout,
// doubling up to 32 times it): an online device must not keep stored
// messages because one page timed out or the store failed once.
func (s *session) retryDrain() {
	s.mu.Lock()
	n := s.drainRetries
	if n < 5 {
		s.drainRetries++
	}
	s.mu.Unlock()
	delay := s.g.cfg.AckTimeout << n
	s.g.wheel.Schedule(time.Now().Add(delay), func() { go s.requestDrain() })
}

// drainLoop pushes the inbox in message-id order, a window at a time, each
// page acked before the next. It ends when the inbox is empty (and no drain
// was requested meanwhile), the device stops acking, or the session closes.
func (s *session) drainLoop() {
	g := s.g
	defer func() {
		s.mu.Lock()
		s.draining = false
		s.drainAgain = false
		s.mu.Unlock()
	}()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		entries, err := g.deps.Inbox.List(ctx, s.appID, s.device, "", g.cfg.Window)
		cancel()
		if err != nil {
			g.log.Error("list inbox", "device", s.key, "err", err)
			s.retryDrain()
			return
		}
		if len(entries) == 0 {
			s.mu.Lock()
			again := s.drainAgain
			s.drainAgain = false
			if !again {
				s.draining = false
				s.drainRetries = 0
			}
			s.mu.Unlock()
			if again {
				continue
			}
			return
		}
		w := newWaiter(len(entries))
		var buf []byte
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return
		}
		for i, e := range entries {
			var env internalv1.Envelope
			if err := proto.Unmarshal(e.Body, &env); err != nil {
				g.log.Error("undecodable inbox entry", "device", s.key, "message_id", e.MessageID, "err", err)
				w.resolve(i, delivery.NotHere)
				continue
			}
			b, err := frame.AppendMessage(buf, frame.TypePush, env.GetPush())
			if err != nil {
				w.resolve(i, delivery.NotHere)
				continue
			}
			buf = b
			s.addInflight(e.MessageID, inflightRef{w: w, i: int32(i)})
		}
		s.mu.Unlock()
		if len(buf) > 0 && s.write(buf) != nil {
			return
		}
		g.m.drained.Add(context.Background(), int64(len(entries)))
		switch s.awaitPage(w, func(yield func(string)) {
			for _, e := range entries {
				yield(e.MessageID)
			}
		}) {
		case pageTimedOut:
			g.log.Debug("device stopped acking its inbox", "device", s.key)
			s.retryDrain()
			return
		case pageClosed:
			return
		}
		out := w.finish()
		for _, o := range out {
			if o != delivery.Acked {
				return // undecodable entries: leave them, do not spin
			}
		}
	}
}

type pageOutcome uint8

const (
	pageAcked pageOutcome = iota
	pageTimedOut
	pageClosed
)

// awaitPage waits for the device to ack a page of pushes registered in
// s.inflight with waiter w (ids lists them). A device that keeps acking
// gets as long as it needs: the page times out only after a whole ack
// timeout without a single ack. Then the page's in-flight records are
// dropped so a silent device does not hold its window; a late ack is
// still recorded.
func (s *session) awaitPage(w *waiter, ids func(yield func(string))) pageOutcome {
	timer := time.NewTimer(s.g.cfg.AckTimeout)
	defer timer.Stop()
	left := w.unresolved()
	for waiting := true; waiting; {
		select {
		case <-w.done:
			return pageAcked
		case <-s.closedCh:
			return pageClosed
		case <-timer.C:
			if n := w.unresolved(); n < left {
				left = n // slow, but acking: wait on
				timer.Reset(s.g.cfg.AckTimeout)
				continue
			}
			waiting = false
		}
	}
	w.finish()
	s.mu.Lock()
	ids(func(id string) {
		if ref, ok := s.inflight[id]; ok && ref.w == w {
			delete(s.inflight, id)
		}
	})
	s.mu.Unlock()
	return pageTimedOut
}

// write sends b in one write, under the session's write lock. On an event
// loop the write never blocks: what the socket cannot take now is queued
// and flushed by the loop (too much queued closes the connection).
func (s *session) write(b []byte) error {
	if s.ev != nil {
		if _, err := s.conn.Write(b); err != nil {
			go s.closeQuietly()
			return err
		}
		s.g.m.framesOut.Add(context.Background(), 1)
		return nil
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_ = s.conn.SetWriteDeadline(time.Now().Add(s.g.cfg.WriteTimeout))
	_, err := s.conn.Write(b)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			go s.closeWith(frame.CodeSlowConsumer, "write timed out", 0)
		} else {
			go s.closeQuietly()
		}
		return err
	}
	s.g.m.framesOut.Add(context.Background(), 1)
	return nil
}

// closeWith sends DISCONNECT (best effort) and closes the connection.
func (s *session) closeWith(code frame.Code, reason string, retryAfter time.Duration) {
	s.closeOnce.Do(func() {
		b, err := frame.AppendMessage(nil, frame.TypeDisconnect, &devicev1.Disconnect{
			Code: uint32(code), Reason: reason, RetryAfterMs: uint32(retryAfter / time.Millisecond),
		})
		switch {
		case err != nil:
		case s.ev != nil:
			_, _ = s.conn.Write(b)
		default:
			s.wmu.Lock()
			_ = s.conn.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = s.conn.Write(b)
			s.wmu.Unlock()
		}
		_ = s.conn.Close()
		s.g.m.closes.Add(context.Background(), 1, closeCodeAttr(code))
	})
}

func (s *session) closeQuietly() {
	s.closeOnce.Do(func() { _ = s.conn.Close() })
}

func (s *session) closeOnReadError(err error) {
	switch {
	case errors.Is(err, frame.ErrTooLarge):
		s.closeWith(frame.CodeFrameTooLarge, "frame larger than "+strconv.Itoa(s.g.cfg.MaxFrameBytes)+" bytes", 0)
	case errors.Is(err, frame.ErrMalformed), errors.Is(err, frame.ErrUnknownType):
		s.closeWith(frame.CodeBadFrame, err.Error(), 0)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		s.closeQuietly()
	default:
		s.closeQuietly()
	}
}

// cleanup runs once when the reader ends: waiters learn the session is gone,
// and the route is removed if it still points here.
func (s *session) cleanup() {
	s.closeQuietly()
	s.mu.Lock()
	s.closed = true
	refs := make([]inflightRef, 0, len(s.inflight))
	for id, ref := range s.inflight {
		refs = append(refs, ref)
		delete(s.inflight, id)
	}
	s.mu.Unlock()
	close(s.closedCh)
	for _, ref := range refs {
		ref.w.resolve(int(ref.i), delivery.NotHere)
	}
	s.g.forget(s)
	if s.authed.Load() {
		ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		defer cancel()
		if _, err := s.g.deps.Routes.Unbind(ctx, s.key, s.route()); err != nil {
			s.g.log.Warn("unbind route", "device", s.key, "err", err)
		}
	}
}
