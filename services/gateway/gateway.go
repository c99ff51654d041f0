// Package gateway is Herald's access layer: it accepts device connections,
// authenticates them, keeps their sessions alive with negotiated heartbeats
// (timed out on one timing wheel, not a timer per connection), binds each
// session in the routing table, drains the device's offline inbox on connect,
// and writes the pushes the dispatcher hands it, reporting each one acked,
// timed out or not here.
//
// Group messages (tags, topic, "all") arrive once per gateway through
// Broadcast and fan out to the app's matching sessions: at once, paced over
// a window, or (normal priority) at each device's next inbound frame. A
// device that connects replays the group messages it missed from the app's
// topic log, after its inbox. The session also serves SUBSCRIBE, RECEIPT
// and SETBADGE, and emits delivery receipts.
//
// The I/O layer sits behind the small session type: either one reader
// goroutine per connection (IOGoroutine) or a few epoll event loops that
// decode frames incrementally and hand blocking work to a bounded worker
// pool (IOEventLoop); Deliver, Drain and the protocol are the same in both.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/heraldpush/herald/api/frame"
	"github.com/heraldpush/herald/pkg/delivery"
	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/pkg/receipt"
	"github.com/heraldpush/herald/pkg/route"
	"github.com/heraldpush/herald/pkg/store"
	"github.com/heraldpush/herald/pkg/timewheel"
	"github.com/heraldpush/herald/services/gateway/internal/netpoll"
)

// Config is the gateway's part of the Herald configuration.
type Config struct {
	Addr             string        // device listener, e.g. ":5222" or "127.0.0.1:0"
	NodeID           string        // this gateway's id in the routing table
	MaxFrameBytes    int           // largest frame accepted from a device
	HandshakeTimeout time.Duration // CONNECT must arrive within this
	Heartbeat        time.Duration // default heartbeat when the client asks for none
	HeartbeatMin     time.Duration
	HeartbeatMax     time.Duration
	AckTimeout       time.Duration // how long Deliver waits for acks
	Window           int           // unacked pushes per session
	DrainTimeout     time.Duration // shutdown: reconnects are spread over this window
	WriteTimeout     time.Duration // a write blocked this long marks a slow consumer
	IO               string        // IOGoroutine (default) or IOEventLoop
	// NormalMaxDelay bounds how long a normal-priority push (group push or
	// lazy inbox drain) waits for the device's next inbound frame.
	NormalMaxDelay time.Duration
	// ReplayLookback: the group-message replay at CONNECT starts this far
	// before the device's broadcast cursor, so a paced or deferred push
	// older than the cursor is still found (the SDK drops duplicates).
	ReplayLookback time.Duration
}

func (c *Config) setDefaults() {
	if c.NodeID == "" {
		c.NodeID = "gateway-1"
	}
	if c.MaxFrameBytes <= 0 {
		c.MaxFrameBytes = frame.DefaultMaxFrame
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = 10 * time.Second
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = 4 * time.Minute
	}
	if c.HeartbeatMin <= 0 {
		c.HeartbeatMin = 30 * time.Second
	}
	if c.HeartbeatMax <= 0 {
		c.HeartbeatMax = 10 * time.Minute
	}
	if c.AckTimeout <= 0 {
		c.AckTimeout = 10 * time.Second
	}
	if c.Window <= 0 {
		c.Window = 64
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 10 * time.Second
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.IO == "" {
		c.IO = IOGoroutine
	}
	if c.NormalMaxDelay <= 0 {
		c.NormalMaxDelay = 10 * time.Minute
	}
	if c.ReplayLookback <= 0 {
		c.ReplayLookback = 70 * time.Minute
	}
}

// GroupStore is the part of the store group messages use: badge counters,
// daily quotas and the apps' topic logs (the replay source).
type GroupStore interface {
	store.Badges
	store.Quotas
	store.TopicLog
}

// Deps are the gateway's collaborators.
type Deps struct {
	Registry store.Registry
	Inbox    store.Inbox
	Status   store.Status
	// Store keeps badges, daily quotas and topic logs; nil takes Registry
	// if it implements GroupStore (a store.Store does).
	Store    GroupStore
	Routes   route.Table
	Log      pushlog.Appender // upstream messages
	Receipts *receipt.Emitter // delivered / sent / clicked / opened; nil = none
	Meter    metric.Meter     // nil = no metrics
}

// Gateway is the access-layer role.
type Gateway struct {
	cfg     Config
	deps    Deps
	log     *slog.Logger
	appKeys store.AppCache // handshakes look the app key up here (store.AppCacheTTL)
	wheel   *timewheel.Wheel
	nextID  atomic.Uint64
	m       metrics

	mu       sync.RWMutex
	sessions map[string]*session   // by route key
	apps     map[string][]*session // the same sessions by app (session.appIdx)
	conns    map[*session]struct{}
	closing  bool

	groups groups

	ready   chan struct{}
	stopped chan struct{} // closed once Run has shut the sessions down
	addr    atomic.Value  // string
}

// New returns a gateway; Run starts it.
func New(cfg Config, deps Deps, logger *slog.Logger) (*Gateway, error) {
	cfg.setDefaults()
	if cfg.IO != IOGoroutine && cfg.IO != IOEventLoop {
		return nil, fmt.Errorf("gateway: io %q is neither %q nor %q", cfg.IO, IOGoroutine, IOEventLoop)
	}
	if deps.Store == nil {
		deps.Store, _ = deps.Registry.(GroupStore)
	}
	if deps.Registry == nil || deps.Inbox == nil || deps.Status == nil || deps.Store == nil || deps.Routes == nil || deps.Log == nil {
		return nil, errors.New("gateway: registry, inbox, status, store, routes and log are required")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	meter := deps.Meter
	if meter == nil {
		meter = noop.NewMeterProvider().Meter("herald/gateway")
	}
	m, err := newMetrics(meter)
	if err != nil {
		return nil, err
	}
	g := &Gateway{
		cfg:      cfg,
		deps:     deps,
		log:      logger.With("role", "gateway", "node", cfg.NodeID),
		wheel:    timewheel.New(100*time.Millisecond, 1024),
		m:        m,
		sessions: make(map[string]*session),
		apps:     make(map[string][]*session),
		conns:    make(map[*session]struct{}),
		groups:   newGroups(),
		ready:    make(chan struct{}),
		stopped:  make(chan struct{}),
	}
	g.addr.Store("")
	return g, nil
}

// NodeID is this gateway's routing-table node id.
func (g *Gateway) NodeID() string { return g.cfg.NodeID }

// Ready is closed once the listener is bound.
func (g *Gateway) Ready() <-chan struct{} { return g.ready }

// Addr is the bound device listener address (after Ready).
func (g *Gateway) Addr() string { return g.addr.Load().(string) }

// Run accepts devices until ctx ends, then drains: every session is told to
// reconnect (close code 3001, retry-after spread over the drain window) and
// its route is removed.
func (g *Gateway) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", g.cfg.Addr)
	if err != nil {
		return fmt.Errorf("gateway: listen %s: %w", g.cfg.Addr, err)
	}
	g.addr.Store(ln.Addr().String())
	wheelCtx, stopWheel := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWheel()
	go g.wheel.Run(wheelCtx)
	close(g.ready)
	g.log.Info("gateway listening", "addr", ln.Addr().String())

	var (
		wg   sync.WaitGroup
		loop *eventLoop
	)
	if g.cfg.IO == IOEventLoop {
		loop, err = newEventLoop(ctx, g)
		switch {
		case errors.Is(err, netpoll.ErrUnsupported):
			// The default everywhere; a laptop without epoll still runs.
			g.log.Warn("event loops need Linux; serving with a goroutine per connection", "io", IOGoroutine)
			loop = nil
		case err != nil:
			_ = ln.Close()
			return fmt.Errorf("gateway: start event loops: %w", err)
		}
	}
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		var delay time.Duration
		for {
			c, err := ln.Accept()
			if err != nil {
				if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
					return
				}
				// Out of file descriptors and the like: back off, keep serving.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				g.log.Warn("accept failed", "err", err, "retry_in", delay)
				time.Sleep(delay)
				continue
			}
			delay = 0
			if loop != nil {
				loop.attach(c)
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				g.serve(ctx, c)
			}()
		}
	}()
	<-ctx.Done()
	_ = ln.Close()
	<-acceptDone
	close(g.stopped) // paced fan-outs end
	g.shutdown()
	wg.Wait()
	if loop != nil {
		loop.stop()
	}
	return nil
}

// shutdown tells every session to reconnect elsewhere, spreading the
// reconnects over the drain window, and closes them.
func (g *Gateway) shutdown() {
	g.mu.Lock()
	g.closing = true
	all := make([]*session, 0, len(g.conns))
	for s := range g.conns {
		all = append(all, s)
	}
	g.mu.Unlock()
	window := g.cfg.DrainTimeout
	for _, s := range all {
		retry := time.Duration(rand.Int64N(int64(window)))
		s.closeWith(frame.CodeShutdown, "gateway shutting down", retry)
	}
}

func (g *Gateway) register(s *session) (old *session, ok bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closing {
		return nil, false
	}
	old = g.sessions[s.key]
	g.sessions[s.key] = s
	if old != nil && old.appIdx >= 0 {
		g.apps[s.appID][old.appIdx] = s
		s.appIdx, old.appIdx = old.appIdx, -1
	} else {
		s.appIdx = int32(len(g.apps[s.appID]))
		g.apps[s.appID] = append(g.apps[s.appID], s)
	}
	return old, true
}

func (g *Gateway) track(s *session) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closing {
		return false
	}
	g.conns[s] = struct{}{}
	return true
}

func (g *Gateway) forget(s *session) (wasCurrent bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.conns, s)
	if s.key != "" && g.sessions[s.key] == s {
		delete(g.sessions, s.key)
		g.unindexLocked(s)
		return true
	}
	return false
}

// unindexLocked removes s from its app's session list (g.mu held).
func (g *Gateway) unindexLocked(s *session) {
	list := g.apps[s.appID]
	i := s.appIdx
	if i < 0 || int(i) >= len(list) || list[i] != s {
		return
	}
	last := list[len(list)-1]
	list[i], last.appIdx = last, i
	list[len(list)-1] = nil
	list = list[:len(list)-1]
	s.appIdx = -1
	if len(list) == 0 {
		delete(g.apps, s.appID)
		return
	}
	g.apps[s.appID] = list
}

// appSessions returns a snapshot of the app's current sessions.
func (g *Gateway) appSessions(appID string) []*session {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return slices.Clone(g.apps[appID])
}

func (g *Gateway) lookup(key string) *session {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.sessions[key]
}

// Sessions is the number of authenticated sessions.
func (g *Gateway) Sessions() int {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return len(g.sessions)
}

// Deliver writes each delivery to its session and waits (up to the ack
// timeout, or ctx) for the device's acks. Deliveries whose session is not
// here, is draining its inbox, or has a full window come back NotHere.
func (g *Gateway) Deliver(ctx context.Context, ds []delivery.Delivery) []delivery.Outcome {
	w := newWaiter(len(ds))
	bySession := make(map[*session][]int)
	for i, d := range ds {
		s := g.lookup(d.Device)
		if s == nil || s.id != d.ConnID {
			w.resolve(i, delivery.NotHere)
			continue
		}
		bySession[s] = append(bySession[s], i)
	}
	var frames pushFrames
	if len(bySession) > 1 {
		frames = make(pushFrames)
	}
	for s, idx := range bySession {
		s.pushLive(ds, idx, w, frames)
	}
	timer := time.NewTimer(g.cfg.AckTimeout)
	defer timer.Stop()
	select {
	case <-w.done:
	case <-timer.C:
	case <-ctx.Done():
	}
	out := w.finish()
	for s, idx := range bySession {
		s.forgetTimedOut(ds, idx, out)
	}
	g.m.record(ctx, out)
	return out
}

// Drain asks the session (if it is still the device's current one) to push
// what is in the device's inbox: now, or with lazy at the device's next
// inbound frame (a heartbeat, anything) or after Config.NormalMaxDelay,
// whichever comes first. It returns at once; draining is async.
func (g *Gateway) Drain(_ context.Context, device string, connID uint64, lazy bool) {
	s := g.lookup(device)
	if s == nil || s.id != connID {
		return
	}
	if lazy {
		s.drainWhenAwake()
		return
	}
	s.requestDrain()
}

// Kick closes the device's session (it was deleted): close code 4006.
func (g *Gateway) Kick(_ context.Context, appID, deviceID string) error {
	if s := g.lookup(route.Key(appID, deviceID)); s != nil {
		s.closeWith(frame.CodeDeviceDeleted, "device deleted", 0)
	}
	return nil
}

func (g *Gateway) negotiateHeartbeat(requested uint32) time.Duration {
	hb := g.cfg.Heartbeat
	if requested > 0 {
		hb = time.Duration(requested) * time.Second
	}
	return min(max(hb, g.cfg.HeartbeatMin), g.cfg.HeartbeatMax)
}
