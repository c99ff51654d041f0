package gateway

import (
	"context"
	"slices"
	"sync"

	"github.com/heraldpush/herald/pkg/delivery"
	"github.com/heraldpush/herald/pkg/envelope/internalv1"
)

// Directory reaches the gateways running in this process by node id. It is
// the in-process implementation of the dispatcher's Gateways and the api's
// Kicker; a cluster uses gRPC clients with the same methods.
type Directory struct {
	mu    sync.RWMutex
	nodes map[string]*Gateway
}

// NewDirectory returns a directory of the given gateways.
func NewDirectory(gws ...*Gateway) *Directory {
	d := &Directory{nodes: make(map[string]*Gateway, len(gws))}
	for _, g := range gws {
		d.nodes[g.NodeID()] = g
	}
	return d
}

func (d *Directory) node(id string) *Gateway {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.nodes[id]
}

// Nodes returns the node ids of the directory's gateways, sorted.
func (d *Directory) Nodes() []string {
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := make([]string, 0, len(d.nodes))
	for id := range d.nodes {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// Deliver hands the deliveries to the node; a node that is not here (a
// stale route) answers NotHere for all of them.
func (d *Directory) Deliver(ctx context.Context, node string, ds []delivery.Delivery) ([]delivery.Outcome, error) {
	g := d.node(node)
	if g == nil {
		out := make([]delivery.Outcome, len(ds))
		for i := range out {
			out[i] = delivery.NotHere
		}
		return out, nil
	}
	return g.Deliver(ctx, ds), nil
}

// Drain asks the node to drain the device's inbox, now or (lazy) when the
// device is next active.
func (d *Directory) Drain(ctx context.Context, node, device string, connID uint64, lazy bool) error {
	if g := d.node(node); g != nil {
		g.Drain(ctx, device, connID, lazy)
	}
	return nil
}

// Broadcast hands group messages (and recalls) to the node, in log order,
// and returns the sessions each matched there (Gateway.BroadcastBatch). A
// node that is not here matches nothing.
func (d *Directory) Broadcast(ctx context.Context, node string, envs []*internalv1.Envelope) ([]int64, error) {
	g := d.node(node)
	if g == nil {
		return make([]int64, len(envs)), nil
	}
	return g.BroadcastBatch(ctx, envs)
}

// Kick closes the device's session on whichever local gateway holds it.
func (d *Directory) Kick(ctx context.Context, appID, deviceID string) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	for _, g := range d.nodes {
		if err := g.Kick(ctx, appID, deviceID); err != nil {
			return err
		}
	}
	return nil
}

// Refresh reloads the device's platform, tags and topics into its session
// on whichever local gateway holds it.
func (d *Directory) Refresh(ctx context.Context, appID, deviceID string) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	for _, g := range d.nodes {
		if err := g.Refresh(ctx, appID, deviceID); err != nil {
			return err
		}
	}
	return nil
}
