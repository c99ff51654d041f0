// Package memroute is the in-process routing table: the default for a
// single-process Herald and the reference the contract suite is written
// against. Routes live in sharded maps; each shard also indexes its routes
// by gateway node so DropNode costs the routes of that node, not the table.
package memroute

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/route"
)

const shardCount = 64 // a power of two

// Table is an in-memory route.Table, safe for concurrent use.
type Table struct {
	shards [shardCount]shard
	closed atomic.Bool
}

type shard struct {
	mu     sync.RWMutex
	routes map[string]route.Route
	byNode map[string]map[string]struct{} // node -> devices bound to it
}

var _ route.Table = (*Table)(nil)

// New returns an empty table.
func New() *Table {
	t := &Table{}
	for i := range t.shards {
		t.shards[i].routes = make(map[string]route.Route)
		t.shards[i].byNode = make(map[string]map[string]struct{})
	}
	return t
}

// shardOf picks a shard by the FNV-1a hash of the device key.
func (t *Table) shardOf(device string) *shard {
	h := uint32(2166136261)
	for i := 0; i < len(device); i++ {
		h ^= uint32(device[i])
		h *= 16777619
	}
	return &t.shards[h&(shardCount-1)]
}

func (t *Table) check(ctx context.Context) error {
	if t.closed.Load() {
		return fmt.Errorf("memroute: %w", herald.ErrClosed)
	}
	return ctx.Err()
}

// Bind points the device at r, replacing any previous route.
func (t *Table) Bind(ctx context.Context, device string, r route.Route) error {
	if err := t.check(ctx); err != nil {
		return err
	}
	if device == "" || r.Node == "" {
		return fmt.Errorf("memroute: bind %q to node %q: %w", device, r.Node, herald.ErrInvalidArgument)
	}
	s := t.shardOf(device)
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.routes[device]; ok {
		s.unindex(device, old.Node)
	}
	s.routes[device] = r
	devs := s.byNode[r.Node]
	if devs == nil {
		devs = make(map[string]struct{})
		s.byNode[r.Node] = devs
	}
	devs[device] = struct{}{}
	return nil
}

// Unbind removes the device's route if it is exactly r.
func (t *Table) Unbind(ctx context.Context, device string, r route.Route) (bool, error) {
	if err := t.check(ctx); err != nil {
		return false, err
	}
	s := t.shardOf(device)
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.routes[device]; !ok || old != r {
		return false, nil
	}
	delete(s.routes, device)
	s.unindex(device, r.Node)
	return true, nil
}

// Lookup returns the routes of those devices that have one.
func (t *Table) Lookup(ctx context.Context, devices []string) (map[string]route.Route, error) {
	if err := t.check(ctx); err != nil {
		return nil, err
	}
	out := make(map[string]route.Route, len(devices))
	for _, d := range devices {
		s := t.shardOf(d)
		s.mu.RLock()
		r, ok := s.routes[d]
		s.mu.RUnlock()
		if ok {
			out[d] = r
		}
	}
	return out, nil
}

// DropNode removes every route of the node.
func (t *Table) DropNode(ctx context.Context, node string) error {
	if err := t.check(ctx); err != nil {
		return err
	}
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for d := range s.byNode[node] {
			delete(s.routes, d)
		}
		delete(s.byNode, node)
		s.mu.Unlock()
	}
	return nil
}

// Len returns the number of routes (for metrics and tests).
func (t *Table) Len() int {
	n := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.RLock()
		n += len(s.routes)
		s.mu.RUnlock()
	}
	return n
}

// Close makes further calls fail with herald.ErrClosed.
func (t *Table) Close() error {
	t.closed.Store(true)
	return nil
}

// unindex removes device from node's index. s.mu held.
func (s *shard) unindex(device, node string) {
	devs := s.byNode[node]
	delete(devs, device)
	if len(devs) == 0 {
		delete(s.byNode, node)
	}
}
