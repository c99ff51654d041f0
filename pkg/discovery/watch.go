package discovery

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/route"
)

// EventKind says how a gateway changed.
type EventKind uint8

const (
	Joined  EventKind = iota + 1 // newly registered
	Updated                      // its record changed (load, weight, addresses)
	Left                         // unregistered, or its lease expired
)

func (k EventKind) String() string {
	switch k {
	case Joined:
		return "joined"
	case Updated:
		return "updated"
	case Left:
		return "left"
	}
	return "unknown"
}

// Event is one change of a Set. For Left, Gateway is the last record seen.
type Event struct {
	Kind    EventKind
	Gateway Gateway
}

// OnChange registers a function Watch calls for every change, in order,
// from the watching goroutine, after the Set has applied it. It must not
// block for long. The initial listing is reported as Joined events
// before Watch returns.
func OnChange(f func(Event)) Option {
	return func(o *options) { o.onChange = append(o.onChange, f) }
}

// Set is a live view of the registered gateways: an initial listing, then
// etcd's watch from that revision; after a compaction or a watch error it
// lists again. Its methods are safe for concurrent use.
type Set struct {
	cli    *clientv3.Client
	prefix string
	log    *slog.Logger
	notify []func(Event)
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.RWMutex
	nodes   map[string]Gateway
	rev     int64
	changed chan struct{} // closed and replaced on every change
}

// Watch lists the registered gateways and keeps the returned Set current
// until ctx ends or Close is called.
func Watch(ctx context.Context, cli *clientv3.Client, logger *slog.Logger, opts ...Option) (*Set, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	o := makeOptions(opts)
	s := &Set{
		cli:     cli,
		prefix:  o.prefix,
		log:     logger.With("component", "discovery"),
		notify:  o.onChange,
		done:    make(chan struct{}),
		nodes:   make(map[string]Gateway),
		changed: make(chan struct{}),
	}
	if err := s.list(ctx); err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	s.cancel = cancel
	go s.run(runCtx)
	return s, nil
}

// Get returns the gateway registered as node.
func (s *Set) Get(node string) (Gateway, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	g, ok := s.nodes[node]
	return g, ok
}

// List returns the registered gateways ordered by node id.
func (s *Set) List() []Gateway {
	s.mu.RLock()
	out := make([]Gateway, 0, len(s.nodes))
	for _, g := range s.nodes {
		out = append(out, g)
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b Gateway) int { return strings.Compare(a.Node, b.Node) })
	return out
}

// Changed returns a channel that is closed at the Set's next change; call
// it again for the one after.
func (s *Set) Changed() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.changed
}

// Close stops watching. The Set keeps its last view.
func (s *Set) Close() {
	s.cancel()
	<-s.done
}

// Endpoints is the device address list for a device (see Order): the api's
// GET /v1/endpoints. No registered gateway is herald.ErrUnavailable.
func (s *Set) Endpoints(_ context.Context, appID, deviceID string) ([]Endpoint, error) {
	eps := Order(s.List(), route.Key(appID, deviceID))
	if len(eps) == 0 {
		return nil, fmt.Errorf("discovery: no gateway registered: %w", herald.ErrUnavailable)
	}
	return eps, nil
}

func (s *Set) run(ctx context.Context) {
	defer close(s.done)
	var delay time.Duration
	for s.alive(ctx) {
		if s.watch(ctx) {
			delay = 0
		}
		// The watch failed or was compacted: list again, with backoff.
		for s.alive(ctx) {
			delay = min(max(2*delay, 50*time.Millisecond), 5*time.Second)
			t := time.NewTimer(delay/2 + rand.N(delay/2+1))
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return
			}
			lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := s.list(lctx)
			cancel()
			if err == nil {
				break
			}
			s.log.Warn("list gateways failed", "err", err, "retry_in", delay)
		}
	}
}

// alive reports whether the Set should keep watching.
func (s *Set) alive(ctx context.Context) bool {
	return ctx.Err() == nil && s.cli.Ctx().Err() == nil
}

// watch applies watch events from the Set's revision until the watch
// fails or ctx ends. It reports whether any event arrived.
func (s *Set) watch(ctx context.Context) (progressed bool) {
	s.mu.RLock()
	rev := s.rev
	s.mu.RUnlock()
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for resp := range s.cli.Watch(wctx, s.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		if resp.CompactRevision != 0 {
			s.log.Info("gateway watch compacted; listing again", "compact_revision", resp.CompactRevision)
			return progressed
		}
		if err := resp.Err(); err != nil {
			if ctx.Err() == nil {
				s.log.Warn("gateway watch failed; listing again", "err", err)
			}
			return progressed
		}
		if len(resp.Events) == 0 {
			continue
		}
		progressed = true
		var events []Event
		s.mu.Lock()
		for _, ev := range resp.Events {
			node := strings.TrimPrefix(string(ev.Kv.Key), s.prefix)
			old, had := s.nodes[node]
			if ev.Type == clientv3.EventTypeDelete {
				if had {
					delete(s.nodes, node)
					events = append(events, Event{Kind: Left, Gateway: old})
				}
				continue
			}
			g, err := decode(node, ev.Kv.Value)
			if err != nil {
				s.log.Warn("gateway record not understood", "node", node, "err", err)
				if had {
					delete(s.nodes, node)
					events = append(events, Event{Kind: Left, Gateway: old})
				}
				continue
			}
			s.nodes[node] = g
			switch {
			case !had:
				events = append(events, Event{Kind: Joined, Gateway: g})
			case old != g:
				events = append(events, Event{Kind: Updated, Gateway: g})
			}
		}
		s.rev = resp.Header.Revision
		s.publishLocked(events)
		s.mu.Unlock()
		s.emit(events)
	}
	return progressed
}

// list replaces the Set's view with a fresh listing and reports the
// difference as events.
func (s *Set) list(ctx context.Context) error {
	resp, err := s.cli.Get(ctx, s.prefix, clientv3.WithPrefix())
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("discovery: list %s: %w", s.prefix, ctx.Err())
		}
		return fmt.Errorf("discovery: list %s: %w: %w", s.prefix, herald.ErrUnavailable, err)
	}
	fresh := make(map[string]Gateway, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		node := strings.TrimPrefix(string(kv.Key), s.prefix)
		g, err := decode(node, kv.Value)
		if err != nil {
			s.log.Warn("gateway record not understood", "node", node, "err", err)
			continue
		}
		fresh[node] = g
	}
	var events []Event
	s.mu.Lock()
	for node, old := range s.nodes {
		if _, ok := fresh[node]; !ok {
			events = append(events, Event{Kind: Left, Gateway: old})
		}
	}
	for node, g := range fresh {
		old, had := s.nodes[node]
		switch {
		case !had:
			events = append(events, Event{Kind: Joined, Gateway: g})
		case old != g:
			events = append(events, Event{Kind: Updated, Gateway: g})
		}
	}
	slices.SortFunc(events, func(a, b Event) int { return strings.Compare(a.Gateway.Node, b.Gateway.Node) })
	s.nodes = fresh
	s.rev = resp.Header.Revision
	s.publishLocked(events)
	s.mu.Unlock()
	s.emit(events)
	return nil
}

// publishLocked wakes the Changed waiters if anything changed.
func (s *Set) publishLocked(events []Event) {
	if len(events) == 0 {
		return
	}
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Set) emit(events []Event) {
	for _, ev := range events {
		for _, f := range s.notify {
			f(ev)
		}
	}
}
