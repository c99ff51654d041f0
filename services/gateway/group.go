package gateway

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	herald "github.com/heraldpush/herald"
	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
	"github.com/heraldpush/herald/pkg/audience"
	"github.com/heraldpush/herald/pkg/delivery"
	"github.com/heraldpush/herald/pkg/envelope/internalv1"
	"github.com/heraldpush/herald/pkg/ids"
	"github.com/heraldpush/herald/pkg/receipt"
	"github.com/heraldpush/herald/pkg/route"
	"github.com/heraldpush/herald/pkg/store"
)

// Group messages (tags, topic, "all") reach a gateway once, through
// Broadcast, and the gateway fans them out to its matching sessions. A
// device matches on its platform, tags and topics as the session knows
// them at the time of the push: loaded at CONNECT, reloaded by Refresh
// (the api changed them) and after the device's SUBSCRIBE. Devices that
// connect later get the message from the app's topic log (replay).

const (
	// maxTopicsPerDevice bounds a device's topic subscriptions.
	maxTopicsPerDevice = 64
	// maxReceiptIDs bounds the ids of one RECEIPT frame that are reported.
	maxReceiptIDs = 256
	// appCacheTTL is how long an app's daily cap is cached.
	appCacheTTL = 30 * time.Second
	// maxCached bounds each cache keyed by message or app id.
	maxCached = 4096
	// paceSlack: a paced fan-out sleeps only when its next push is due
	// further ahead than this.
	paceSlack = 2 * time.Millisecond
)

// wake bits: work a session does at the device's next inbound frame.
const (
	wakeDrain uint32 = 1 << iota // lazy inbox drain (normal priority)
	wakeFlush                    // deferred group pushes (normal priority)
)

// groups is the gateway's group-message state: paced fan-outs in progress
// (a recall stops them) and caches that spare a store call or a parse per
// broadcast and per replay.
type groups struct {
	mu     sync.Mutex
	pacing map[string]*fanout // by message id
	exprs  map[string]*audience.Expr
	caps   map[string]appCap // daily cap by app id
	// done maps the message ids fanned out (or recalled) lately to what
	// Broadcast answered: a record the dispatcher hands over again (a
	// retried call, a redelivered log record, a rescheduled send) is not
	// pushed twice.
	done map[string]int64
}

type appCap struct {
	cap int
	at  time.Time
}

func newGroups() groups {
	return groups{
		pacing: make(map[string]*fanout),
		exprs:  make(map[string]*audience.Expr),
		caps:   make(map[string]appCap),
		done:   make(map[string]int64),
	}
}

// claim marks the message as being fanned out. If it was handled (or is
// being handled) already it returns that answer (0 while in progress) and
// false.
func (gs *groups) claim(id string) (int64, bool) {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	if n, ok := gs.done[id]; ok {
		return max(n, 0), false
	}
	if len(gs.done) >= maxCached {
		clear(gs.done)
	}
	gs.done[id] = -1
	return 0, true
}

// settle records the answer of a claimed fan-out; a failed one may run
// again.
func (gs *groups) settle(id string, matched int64, err error) {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	if err != nil {
		delete(gs.done, id)
		return
	}
	gs.done[id] = matched
}

// expr returns the parsed tag expression of the message (nil for a topic
// or "all" audience), parsing it once per message id.
func (g *Gateway) expr(messageID string, a *internalv1.Audience) (*audience.Expr, error) {
	src := a.GetTagExpr()
	if src == "" {
		return nil, nil
	}
	gs := &g.groups
	gs.mu.Lock()
	e, ok := gs.exprs[messageID]
	gs.mu.Unlock()
	if ok {
		return e, nil
	}
	e, err := audience.Parse(src)
	if err != nil {
		return nil, err
	}
	gs.mu.Lock()
	if len(gs.exprs) >= maxCached {
		clear(gs.exprs)
	}
	gs.exprs[messageID] = e
	gs.mu.Unlock()
	return e, nil
}

// dailyCap returns the app's notifications-per-device-per-day cap (0: none),
// cached briefly. A store error counts as no cap: a push is not dropped
// because a lookup failed.
func (g *Gateway) dailyCap(ctx context.Context, appID string) int {
	gs := &g.groups
	now := time.Now()
	gs.mu.Lock()
	c, ok := gs.caps[appID]
	gs.mu.Unlock()
	if ok && now.Sub(c.at) < appCacheTTL {
		return c.cap
	}
	app, err := g.deps.Registry.AppByID(ctx, appID)
	if err != nil {
		g.log.Warn("look up app settings", "app", appID, "err", err)
		return 0
	}
	gs.mu.Lock()
	if len(gs.caps) >= maxCached {
		clear(gs.caps)
	}
	gs.caps[appID] = appCap{cap: app.DailyCap, at: now}
	gs.mu.Unlock()
	return app.DailyCap
}

// underCap counts one notification for the device today and reports
// whether it is within the cap. Store errors let the push through.
func (g *Gateway) underCap(ctx context.Context, appID, deviceID string, limit int, now time.Time) bool {
	n, err := g.deps.Store.CountDaily(ctx, appID, deviceID, now, 1)
	if err != nil {
		g.log.Warn("count daily notifications", "app", appID, "device", deviceID, "err", err)
		return true
	}
	return n <= int64(limit)
}

func (g *Gateway) emit(r receipt.Receipt) {
	if g.deps.Receipts != nil {
		g.deps.Receipts.Emit(r)
	}
}

func expired(env *internalv1.Envelope, now time.Time) bool {
	ms := env.GetExpiresAtMs()
	return ms > 0 && now.UnixMilli() >= ms
}

// Broadcast pushes a group message to every matching session of this
// gateway and returns how many it was written or queued to: at once, paced
// evenly over Envelope.spread_over_ms, or (normal priority) at each
// device's next inbound frame or after Config.NormalMaxDelay. Devices over
// the app's daily cap are skipped. With Envelope.recall it drops the
// queued copies of that message instead and returns 0. It returns once the
// fan-out is written or queued, not when devices ack. A message handed
// over again lately (a retried call, a redelivered record) is not pushed
// again: the first answer is returned.
func (g *Gateway) Broadcast(ctx context.Context, env *internalv1.Envelope) (int64, error) {
	n, err := g.BroadcastBatch(ctx, []*internalv1.Envelope{env})
	if err != nil {
		return 0, err
	}
	return n[0], nil
}

// BroadcastBatch is Broadcast for several group messages (and recalls) in
// log order; it returns the sessions matched by each. Each message is
// matched, counted and receipted on its own, as by Broadcast, but the
// plain pushes (high priority, not paced) that one session gets from the
// batch go out in one write, in order. An envelope without an app, an
// audience or a message id fails the whole call before anything is
// pushed. If a message fails, the pushes of those before it are written
// and the error returned: a retried call gets their first answers back
// and pushes the rest.
func (g *Gateway) BroadcastBatch(ctx context.Context, envs []*internalv1.Envelope) ([]int64, error) {
	for i, env := range envs {
		if env.GetAudience() == nil || env.GetPush().GetMessageId() == "" || env.GetAppId() == "" {
			return nil, fmt.Errorf("gateway: broadcast: envelope %d: %w: needs an app, an audience and a message id", i, herald.ErrInvalidArgument)
		}
	}
	out := make([]int64, len(envs))
	var c *coalescer // one message: written as it goes, nothing to join
	if len(envs) > 1 {
		c = &coalescer{}
		defer c.flush()
	}
	for i, env := range envs {
		id, appID := env.GetPush().GetMessageId(), env.GetAppId()
		if env.GetRecall() {
			// The pushes before the recall are written first, as one by
			// one: a written push cannot be taken back.
			if c != nil {
				c.flush()
			}
			g.recall(appID, id)
			continue
		}
		n, ok := g.groups.claim(id)
		if !ok {
			out[i] = n
			continue
		}
		n, err := g.broadcast(ctx, env, c)
		g.groups.settle(id, n, err)
		if err != nil {
			return nil, err
		}
		out[i] = n
	}
	return out, nil
}

func (g *Gateway) broadcast(ctx context.Context, env *internalv1.Envelope, c *coalescer) (int64, error) {
	a, id, appID := env.GetAudience(), env.GetPush().GetMessageId(), env.GetAppId()
	now := time.Now()
	if expired(env, now) {
		return 0, nil
	}
	e, err := g.expr(id, a)
	if err != nil {
		// The api parsed it; a gateway that cannot is older or broken.
		g.log.Error("unparsable tag expression in a broadcast", "message_id", id, "err", err)
		return 0, nil
	}
	matched := g.appSessions(appID)
	n := 0
	for _, s := range matched {
		if s.matches(a, e) {
			matched[n] = s
			n++
		}
	}
	clear(matched[n:])
	matched = matched[:n]
	if len(matched) == 0 {
		return 0, nil
	}
	// The daily cap counts notifications when they are matched, also
	// those paced or deferred (a recall later does not give them back).
	if env.GetPush().GetNotification() != nil {
		if limit := g.dailyCap(ctx, appID); limit > 0 {
			n := 0
			for _, s := range matched {
				if g.underCap(ctx, appID, s.device, limit, now) {
					matched[n] = s
					n++
				}
			}
			clear(matched[n:])
			matched = matched[:n]
		}
	}
	if len(matched) == 0 {
		return 0, nil
	}
	f, err := newFanout(g, env)
	if err != nil {
		return 0, fmt.Errorf("gateway: broadcast %s: %w", id, err)
	}
	g.emit(receipt.Receipt{AppID: appID, MessageID: id, Event: receipt.EventSent, Count: int64(len(matched)), Group: true, AtMS: now.UnixMilli()})
	if spread := time.Duration(env.GetSpreadOverMs()) * time.Millisecond; spread > 0 && len(matched) > 1 {
		g.pace(f, matched, spread)
	} else if c == nil && f.badgeAdd == 0 {
		// Shared frame, a write per session: split across the cores.
		inParallel(len(matched), func(lo, hi int) {
			for _, s := range matched[lo:hi] {
				f.send(ctx, s, nil)
			}
		})
	} else {
		for _, s := range matched {
			f.send(ctx, s, c)
		}
	}
	return int64(len(matched)), nil
}

// parallelMin is the number of sessions from which a fan-out's writes are
// split across GOMAXPROCS goroutines. A write to a socket costs
// microseconds of kernel time (on loopback it also delivers to the
// reader), so one goroutine writing to tens of thousands of sessions keeps
// one core busy while the others wait; below this, goroutines cost more
// than they save.
const parallelMin = 1024

// inParallel calls fn over [0, n) in up to GOMAXPROCS contiguous chunks,
// concurrently when n >= parallelMin, and returns when all have returned.
func inParallel(n int, fn func(lo, hi int)) {
	w := runtime.GOMAXPROCS(0)
	if n < parallelMin || w < 2 {
		fn(0, n)
		return
	}
	step := (n + w - 1) / w
	var wg sync.WaitGroup
	for lo := 0; lo < n; lo += step {
		wg.Go(func() { fn(lo, min(lo+step, n)) })
	}
	wg.Wait()
}

// coalescer gathers the plain group pushes (high priority, not paced) of
// one BroadcastBatch by session, so that each session gets those of the
// whole batch in one write, in order. A push costs one small entry; the
// frames are kept once each. Its zero value is ready to use.
type coalescer struct {
	slot   map[*session]int32 // index in slots
	slots  []coalesced        // by first push, so sessions are written in match order
	frames []queuedPush       // the frames pushed, each once
	pushes []coalescedPush
}

type coalesced struct {
	s          *session
	head, tail int32 // indexes in pushes
}

type coalescedPush struct {
	frame int32 // index in frames
	next  int32 // index in pushes of the session's next push; -1 for none
}

// frame keeps the PUSH frame of message id for the pushes that follow and
// returns its index; b is shared between sessions and never modified.
func (c *coalescer) frame(id string, b []byte) int32 {
	c.frames = append(c.frames, queuedPush{id: id, frame: b})
	return int32(len(c.frames) - 1)
}

// add queues frame f (from frame) for s.
func (c *coalescer) add(s *session, f int32) {
	if c.slot == nil {
		c.slot = make(map[*session]int32)
	}
	p := int32(len(c.pushes))
	c.pushes = append(c.pushes, coalescedPush{frame: f, next: -1})
	i, ok := c.slot[s]
	if !ok {
		c.slot[s] = int32(len(c.slots))
		c.slots = append(c.slots, coalesced{s: s, head: p, tail: p})
		return
	}
	sl := &c.slots[i]
	c.pushes[sl.tail].next = p
	sl.tail = p
}

// flush writes what was gathered, one write per session, and empties c.
func (c *coalescer) flush() {
	if len(c.slots) == 0 {
		return
	}
	// Each session once, so chunks of sessions can be written concurrently.
	inParallel(len(c.slots), func(lo, hi int) {
		var (
			qs  []queuedPush
			buf []byte
		)
		for _, sl := range c.slots[lo:hi] {
			qs = qs[:0]
			for p := sl.head; p >= 0; p = c.pushes[p].next {
				qs = append(qs, c.frames[c.pushes[p].frame])
			}
			buf = sl.s.pushGroups(qs, buf[:0])
		}
	})
	clear(c.slot)
	clear(c.slots)
	c.slots = c.slots[:0]
	clear(c.frames)
	c.frames = c.frames[:0]
	c.pushes = c.pushes[:0]
}

// fanout is one group message being pushed to this gateway's sessions.
type fanout struct {
	g        *Gateway
	id       string
	normal   bool
	badgeAdd int32
	// push is the message with group = true. With badge arithmetic its
	// notification.badge is rewritten per session (by the one goroutine
	// running the fan-out); otherwise frame is its PUSH frame, shared.
	push     *devicev1.Push
	frame    []byte
	recalled atomic.Bool
	// coalesced is frame's index in the coalescer of the call (-1: not
	// kept there yet).
	coalesced int32
}

func newFanout(g *Gateway, env *internalv1.Envelope) (*fanout, error) {
	p := proto.CloneOf(env.GetPush())
	p.Group = true
	f := &fanout{
		g:         g,
		id:        p.GetMessageId(),
		normal:    env.GetPriority() == internalv1.Priority_PRIORITY_NORMAL,
		push:      p,
		coalesced: -1,
	}
	if env.GetBadgeAdd() != 0 && p.GetNotification() != nil {
		f.badgeAdd = env.GetBadgeAdd()
		return f, nil
	}
	b, err := frame.AppendMessage(nil, frame.TypePush, p)
	if err != nil {
		return nil, err
	}
	f.frame = b
	return f, nil
}

// send writes (or queues) the push to s. With a coalescer, a push that
// would be written at once is gathered there instead.
func (f *fanout) send(ctx context.Context, s *session, c *coalescer) {
	b := f.frame
	if f.badgeAdd != 0 {
		n, err := f.g.deps.Store.AddBadge(ctx, s.appID, s.device, f.badgeAdd)
		if err != nil {
			f.g.log.Warn("add to badge", "device", s.key, "err", err)
			n = f.badgeAdd
		}
		f.push.Notification.Badge = n
		if b, err = frame.AppendMessage(nil, frame.TypePush, f.push); err != nil {
			f.g.log.Error("encode push", "message_id", f.id, "err", err)
			return
		}
	}
	if c != nil && !f.normal {
		i := f.coalesced
		if f.badgeAdd != 0 {
			i = c.frame(f.id, b) // this session's own frame
		} else if i < 0 {
			i = c.frame(f.id, b)
			f.coalesced = i
		}
		c.add(s, i)
		return
	}
	s.pushGroup(f.id, b, f.normal)
}

// pace pushes to ss evenly over spread, from one goroutine; a recall or
// the gateway's shutdown ends it.
func (g *Gateway) pace(f *fanout, ss []*session, spread time.Duration) {
	g.groups.mu.Lock()
	g.groups.pacing[f.id] = f
	g.groups.mu.Unlock()
	go func() {
		defer func() {
			g.groups.mu.Lock()
			if g.groups.pacing[f.id] == f {
				delete(g.groups.pacing, f.id)
			}
			g.groups.mu.Unlock()
		}()
		start := time.Now()
		t := time.NewTimer(spread)
		defer t.Stop()
		step := float64(spread) / float64(len(ss))
		for i, s := range ss {
			if d := time.Until(start.Add(time.Duration(step * float64(i)))); d > paceSlack {
				t.Reset(d)
				select {
				case <-t.C:
				case <-g.stopped:
					return
				}
			}
			if f.recalled.Load() {
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
			f.send(ctx, s, nil)
			cancel()
		}
	}()
}

// recall stops the message's paced fan-out and drops the copies queued on
// sessions (deferred or held during a replay). A push already written
// cannot be taken back.
func (g *Gateway) recall(appID, id string) {
	g.groups.mu.Lock()
	if f := g.groups.pacing[id]; f != nil {
		f.recalled.Store(true)
	}
	if _, ok := g.groups.done[id]; !ok {
		g.groups.done[id] = 0 // a late copy of the message is not pushed
	}
	g.groups.mu.Unlock()
	for _, s := range g.appSessions(appID) {
		s.dropQueued(id)
	}
}

// Refresh reloads the device's platform, tags and topics into its live
// session, if this gateway holds one, so group pushes match on them.
func (g *Gateway) Refresh(ctx context.Context, appID, deviceID string) error {
	s := g.lookup(route.Key(appID, deviceID))
	if s == nil {
		return nil
	}
	dev, err := g.deps.Registry.Device(ctx, appID, deviceID)
	if errors.Is(err, herald.ErrDeviceNotFound) {
		return nil // deleted: the api kicks it
	}
	if err != nil {
		return fmt.Errorf("gateway: refresh %s: %w", s.key, err)
	}
	s.setProfile(dev)
	return nil
}

// groupState is a session's group-push bookkeeping, allocated on first use
// and dropped when empty, so an idle session pays one nil pointer.
type groupState struct {
	deferred []queuedPush // normal priority: written at the device's next inbound frame
	held     []queuedPush // arrived during the CONNECT replay: written after it
	sent     []string     // written, not acked yet (oldest first, bounded)
}

type queuedPush struct {
	id     string
	frame  []byte // shared between sessions: never modified
	normal bool   // normal priority: deferred to the device's next activity
}

// group returns the session's group state, allocating it (s.mu held).
func (s *session) group() *groupState {
	if s.grp == nil {
		s.grp = &groupState{}
	}
	return s.grp
}

// tidyGroup drops the group state once it is empty (s.mu held).
func (s *session) tidyGroup() {
	if gs := s.grp; gs != nil && len(gs.deferred) == 0 && len(gs.held) == 0 && len(gs.sent) == 0 {
		s.grp = nil
	}
}

// noteSent records a group push written to the device, so its ack is
// known to be a group ack (s.mu held). A device that never acks keeps at
// most twice the window of them.
func (s *session) noteSent(id string) {
	gs := s.group()
	if limit := 2 * s.g.cfg.Window; len(gs.sent) >= limit {
		n := copy(gs.sent, gs.sent[len(gs.sent)-limit+1:])
		clear(gs.sent[n:])
		gs.sent = gs.sent[:n]
	}
	gs.sent = append(gs.sent, id)
}

// takeSent forgets a written group push; false if it was not one (s.mu held).
func (s *session) takeSent(id string) bool {
	gs := s.grp
	if gs == nil {
		return false
	}
	i := slices.Index(gs.sent, id)
	if i < 0 {
		return false
	}
	gs.sent = slices.Delete(gs.sent, i, i+1)
	if len(gs.sent) == 0 {
		gs.sent = nil
	}
	return true
}

// setProfile stores the device's audience profile in the session.
func (s *session) setProfile(d store.Device) {
	s.mu.Lock()
	s.platform = d.Platform
	s.tags = nilIfEmpty(d.Tags)
	s.topics = nilIfEmpty(d.Topics)
	s.mu.Unlock()
}

func nilIfEmpty(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}

// matches reports whether the session's device is in the audience.
func (s *session) matches(a *internalv1.Audience, e *audience.Expr) bool {
	s.mu.Lock()
	closed, platform, tags, topics := s.closed, s.platform, s.tags, s.topics
	s.mu.Unlock()
	return !closed && audience.MatchDevice(a, e, platform, tags, topics)
}

// pushGroup writes a group push to the device, or queues it: held while
// the CONNECT replay runs, deferred (normal priority) until the device's
// next inbound frame.
func (s *session) pushGroup(id string, b []byte, normal bool) {
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return
	case s.replaying:
		gs := s.group()
		gs.held = append(gs.held, queuedPush{id: id, frame: b, normal: normal})
		s.mu.Unlock()
		return
	case normal:
		gs := s.group()
		gs.deferred = append(gs.deferred, queuedPush{id: id, frame: b, normal: true})
		s.mu.Unlock()
		s.wakeFor(wakeFlush)
		return
	}
	s.noteSent(id)
	s.mu.Unlock()
	_ = s.write(b) // a failed write closes the session; the device replays on reconnect
}

// pushGroups writes plain group pushes to the device in one write, or
// holds them while the CONNECT replay runs. buf is scratch space for
// joining their frames; it is returned for reuse.
func (s *session) pushGroups(qs []queuedPush, buf []byte) []byte {
	if len(qs) == 1 {
		s.pushGroup(qs[0].id, qs[0].frame, false)
		return buf
	}
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return buf
	case s.replaying:
		gs := s.group()
		gs.held = append(gs.held, qs...)
		s.mu.Unlock()
		return buf
	}
	for _, q := range qs {
		s.noteSent(q.id)
	}
	s.mu.Unlock()
	for _, q := range qs {
		buf = append(buf, q.frame...)
	}
	_ = s.write(buf) // a failed write closes the session; the device replays on reconnect
	return buf
}

// dropQueued removes queued copies of a recalled message.
func (s *session) dropQueued(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	gs := s.grp
	if gs == nil {
		return
	}
	drop := func(q queuedPush) bool { return q.id == id }
	gs.deferred = slices.DeleteFunc(gs.deferred, drop)
	gs.held = slices.DeleteFunc(gs.held, drop)
	s.tidyGroup()
}

// wakeFor marks work for the device's next inbound frame; the first mark
// arms the Config.NormalMaxDelay deadline.
func (s *session) wakeFor(bit uint32) {
	if s.wake.Or(bit) != 0 {
		return // a deadline is armed already (an earlier one is fine)
	}
	s.g.wheel.Schedule(time.Now().Add(s.g.cfg.NormalMaxDelay), func() {
		select {
		case <-s.closedCh:
		default:
			if s.wake.Load() != 0 {
				go s.awake()
			}
		}
	})
}

// drainWhenAwake schedules an inbox drain at the device's next inbound
// frame (normal priority).
func (s *session) drainWhenAwake() { s.wakeFor(wakeDrain) }

// awake runs the work marked for the device's next inbound frame. Readers
// call it when wake is non-zero; it is cheap and never blocks on the store.
func (s *session) awake() {
	bits := s.wake.Swap(0)
	if bits&wakeDrain != 0 {
		s.requestDrain()
	}
	if bits&wakeFlush != 0 {
		s.flushDeferred()
	}
}

// flushDeferred writes the deferred group pushes in one write.
func (s *session) flushDeferred() {
	s.mu.Lock()
	if s.closed || s.grp == nil || len(s.grp.deferred) == 0 {
		s.mu.Unlock()
		return
	}
	q := s.grp.deferred
	s.grp.deferred = nil
	buf := q[0].frame // shared: appended to only as a copy
	if len(q) > 1 {
		buf = nil
		for _, p := range q {
			buf = append(buf, p.frame...)
		}
	}
	for _, p := range q {
		s.noteSent(p.id)
	}
	s.mu.Unlock()
	_ = s.write(buf)
}

// replay pushes the app's group messages the device may have missed, after
// the CONNECT inbox drain: those in the topic log newer than its broadcast
// cursor minus Config.ReplayLookback (and than its registration), not
// recalled, not expired, and matching the device's tags, topics and
// platform now. Pages of Config.Window pushes are each acked before the
// next. Live group pushes held meanwhile go out after it, except those the
// replay pushed.
func (s *session) replay(cursor string, registered time.Time) {
	g := s.g
	var (
		pushed map[string]struct{} // every id pushed by this replay
		acked  map[string]struct{} // ids of the current page the device acked
	)
	defer func() { s.endReplay(pushed) }()
	after := ids.Floor(registered)
	if t := ids.Time(cursor); !t.IsZero() {
		after = max(after, ids.Floor(t.Add(-g.cfg.ReplayLookback)))
	} else {
		cursor = "" // not an id: everything replayed is new to the device
	}
	retries := 0
	for {
		select {
		case <-s.closedCh:
			return
		default:
		}
		now := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		page, err := g.deps.Store.ListBroadcasts(ctx, s.appID, after, now, g.cfg.Window)
		cancel()
		if err != nil {
			g.log.Error("list broadcasts", "device", s.key, "err", err)
			if !s.replayBackoff(&retries) {
				return
			}
			continue
		}
		if len(page) == 0 {
			return
		}
		buf, sent := s.replayPage(page, cursor, now, pushed, acked)
		if len(sent) > 0 {
			if pushed == nil {
				pushed = make(map[string]struct{})
			}
			for _, p := range sent {
				pushed[p.id] = struct{}{}
			}
			out, ok := s.pushReplayed(buf, sent)
			for i, o := range out {
				if o == delivery.Acked {
					if acked == nil {
						acked = make(map[string]struct{})
					}
					acked[sent[i].id] = struct{}{}
				}
			}
			if !ok {
				// The device stopped acking (or the write failed): try the
				// rest of this page again later, while the session lives.
				// The live group pushes stay held until the replay ends.
				if !s.replayBackoff(&retries) {
					return
				}
				continue
			}
		}
		retries, acked = 0, nil
		after = page[len(page)-1].MessageID
		if len(page) < g.cfg.Window {
			return
		}
	}
}

// replayBackoff waits before a replay page is tried again: the ack
// timeout, doubling up to 32 times it. It reports false when the session
// closed meanwhile.
func (s *session) replayBackoff(retries *int) bool {
	delay := s.g.cfg.AckTimeout << min(*retries, 5)
	*retries++
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.closedCh:
		return false
	}
}

// replayed is one push of a replay page.
type replayed struct {
	id     string
	dup    bool // not newer than the device's cursor: probably a duplicate
	resent bool // pushed before by this replay, not acked: counted already
}

// replayPage encodes the page's pushes for this device.
// Ids the device acked already (a page tried again) are skipped; ids this
// replay pushed before are sent again as resends (no second "sent").
func (s *session) replayPage(page []store.Broadcast, cursor string, now time.Time, pushed, acked map[string]struct{}) ([]byte, []replayed) {
	g := s.g
	var (
		buf  []byte
		sent []replayed
	)
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	for _, b := range page {
		if _, done := acked[b.MessageID]; done || b.Recalled {
			continue
		}
		var env internalv1.Envelope
		if err := proto.Unmarshal(b.Body, &env); err != nil {
			g.log.Error("undecodable broadcast", "app", s.appID, "message_id", b.MessageID, "err", err)
			continue
		}
		if expired(&env, now) || env.GetRecall() {
			continue
		}
		e, err := g.expr(b.MessageID, env.GetAudience())
		if err != nil || !s.matches(env.GetAudience(), e) {
			continue
		}
		p := env.GetPush()
		if p == nil || p.GetMessageId() != b.MessageID {
			continue
		}
		p.Group = true
		dup := cursor != "" && b.MessageID <= cursor
		_, resent := pushed[b.MessageID]
		if !dup && !resent && p.GetNotification() != nil {
			if limit := g.dailyCap(ctx, s.appID); limit > 0 && !g.underCap(ctx, s.appID, s.device, limit, now) {
				continue
			}
			if add := env.GetBadgeAdd(); add != 0 {
				n, err := g.deps.Store.AddBadge(ctx, s.appID, s.device, add)
				if err != nil {
					g.log.Warn("add to badge", "device", s.key, "err", err)
					n = add
				}
				p.Notification.Badge = n
			}
		}
		out, err := frame.AppendMessage(buf, frame.TypePush, p)
		if err != nil {
			g.log.Error("encode push", "message_id", b.MessageID, "err", err)
			continue
		}
		buf = out
		sent = append(sent, replayed{id: b.MessageID, dup: dup, resent: resent})
	}
	return buf, sent
}

// pushReplayed writes a replay page and waits for its acks. It returns the
// outcome of each push (nil if nothing was written) and false when the
// replay cannot go on now (the session closed, or the device stopped acking).
func (s *session) pushReplayed(buf []byte, sent []replayed) ([]delivery.Outcome, bool) {
	g := s.g
	w := newWaiter(len(sent))
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, false
	}
	for i, p := range sent {
		kind := kindGroup
		if p.dup {
			kind = kindGroupDup
		}
		s.addInflight(p.id, inflightRef{w: w, i: int32(i), kind: kind})
	}
	s.mu.Unlock()
	if s.write(buf) != nil {
		return nil, false
	}
	now := time.Now().UnixMilli()
	for _, p := range sent {
		if !p.dup && !p.resent {
			g.emit(receipt.Receipt{AppID: s.appID, MessageID: p.id, Event: receipt.EventSent, Count: 1, Group: true, AtMS: now})
		}
	}
	g.m.replayed.Add(context.Background(), int64(len(sent)))
	res := s.awaitPage(w, func(yield func(string)) {
		for _, p := range sent {
			yield(p.id)
		}
	})
	if res == pageTimedOut {
		g.log.Debug("device stopped acking its replay", "device", s.key)
	}
	return w.finish(), res == pageAcked
}

// endReplay ends the CONNECT replay: live group pushes held meanwhile go
// out now (normal priority ones at the device's next activity), except
// those the replay pushed.
func (s *session) endReplay(pushed map[string]struct{}) {
	s.mu.Lock()
	s.replaying = false
	if s.closed || s.grp == nil || len(s.grp.held) == 0 {
		s.tidyGroup()
		s.mu.Unlock()
		return
	}
	held := s.grp.held
	s.grp.held = nil
	var (
		buf      []byte
		deferred bool
	)
	for _, p := range held {
		if _, dup := pushed[p.id]; dup {
			continue
		}
		if p.normal {
			s.grp.deferred = append(s.grp.deferred, p)
			deferred = true
			continue
		}
		s.noteSent(p.id)
		buf = append(buf, p.frame...)
	}
	s.tidyGroup()
	s.mu.Unlock()
	if deferred {
		s.wakeFor(wakeFlush)
	}
	if len(buf) > 0 {
		_ = s.write(buf)
	}
}

// subscribe handles SUBSCRIBE: validate, store, update the session, answer.
func (s *session) subscribe(sub *devicev1.Subscribe) bool {
	reply := func(errName string) bool {
		b, err := frame.AppendMessage(nil, frame.TypeSubAck, &devicev1.SubAck{RequestId: sub.GetRequestId(), Error: errName})
		return err == nil && s.write(b) == nil
	}
	topics := sub.GetTopics()
	if len(topics) > maxTopicsPerDevice {
		return reply("invalid_topic")
	}
	for _, t := range topics {
		if !audience.ValidName(t) {
			return reply("invalid_topic")
		}
	}
	if len(topics) == 0 {
		return reply("")
	}
	var add, remove []string
	if sub.GetUnsubscribe() {
		remove = topics
	} else {
		add = topics
		s.mu.Lock()
		all := append(slices.Clone(s.topics), add...)
		s.mu.Unlock()
		slices.Sort(all)
		if len(slices.Compact(all)) > maxTopicsPerDevice {
			return reply("invalid_topic")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	dev, err := s.g.deps.Registry.UpdateTopics(ctx, s.appID, s.device, add, remove)
	if err != nil {
		s.g.log.Warn("update topics", "device", s.key, "err", err)
		return reply("unavailable")
	}
	s.setProfile(dev)
	return reply("")
}

// receipt handles RECEIPT: one clicked/opened receipt per message id. The
// session does not know whether an id was a group message (it may have
// been pushed by an earlier session), so Group is false; the stats
// consumer counts by message.
func (s *session) receipt(r *devicev1.Receipt) {
	var ev string
	switch r.GetEvent() {
	case devicev1.ReceiptEvent_RECEIPT_EVENT_CLICKED:
		ev = receipt.EventClicked
	case devicev1.ReceiptEvent_RECEIPT_EVENT_OPENED:
		ev = receipt.EventOpened
	default:
		return
	}
	now := time.Now().UnixMilli()
	for _, id := range r.GetMessageIds()[:min(len(r.GetMessageIds()), maxReceiptIDs)] {
		if id == "" || len(id) > 64 {
			continue
		}
		s.g.emit(receipt.Receipt{AppID: s.appID, MessageID: id, DeviceID: s.device, Event: ev, Count: 1, AtMS: now})
	}
}

// setBadge handles SETBADGE (negative values reset to 0).
func (s *session) setBadge(n int32) {
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	if err := s.g.deps.Store.SetBadge(ctx, s.appID, s.device, max(n, 0)); err != nil {
		s.g.log.Warn("set badge", "device", s.key, "err", err)
	}
}
