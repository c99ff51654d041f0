package gateway

import (
	"context"
	"sync"

	"github.com/heraldpush/herald/pkg/delivery"
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

// Drain asks the node to drain the device's inbox.
func (d *Directory) Drain(ctx context.Context, node, device string, connID uint64) error {
	if g := d.node(node); g != nil {
		g.Drain(ctx, device, connID)
	}
	return nil
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
