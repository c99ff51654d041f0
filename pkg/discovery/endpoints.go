package discovery

import (
	"context"
	"fmt"
	"hash/fnv"
	"math"
	"slices"

	"github.com/heraldpush/herald"
)

// Endpoint is one gateway address offered to a device.
type Endpoint struct {
	Addr string // host:port of the gateway's device listener
	// Weight is the gateway's share of new devices right now: its
	// registered weight adjusted for its load (0: offered only as a last
	// resort).
	Weight int
}

// Load correction bounds: a gateway far below its fair share of sessions
// counts up to 4 times its weight, one far above it down to a quarter.
const (
	maxLoadFactor = 4.0
	minLoadFactor = 0.25
)

// Order returns the device addresses of gws in the order the device with
// route key key should try them: weighted rendezvous hashing (highest
// random weight) over the gateways' weights corrected for load. Each
// device gets its own stable order, devices spread over gateways in
// proportion to their weights, a lightly loaded gateway (one just
// started) draws more new devices, and when a gateway leaves only the
// devices that had it first move. Gateways of weight 0 come last;
// gateways without a device address are left out.
func Order(gws []Gateway, key string) []Endpoint {
	type scored struct {
		ep    Endpoint
		last  bool // weight 0
		score float64
		node  string
	}
	var totalW, totalLoad float64
	for _, g := range gws {
		if g.DeviceAddr == "" || g.Weight <= 0 {
			continue
		}
		totalW += float64(g.Weight)
		totalLoad += float64(g.Load)
	}
	out := make([]scored, 0, len(gws))
	for _, g := range gws {
		if g.DeviceAddr == "" {
			continue
		}
		u := unit(key, g.Node)
		if g.Weight <= 0 {
			out = append(out, scored{ep: Endpoint{Addr: g.DeviceAddr}, last: true, score: -1 / math.Log(u), node: g.Node})
			continue
		}
		w := float64(g.Weight) * loadFactor(float64(g.Weight), float64(g.Load), totalW, totalLoad)
		out = append(out, scored{
			ep:    Endpoint{Addr: g.DeviceAddr, Weight: max(1, int(math.Round(w)))},
			score: w / -math.Log(u),
			node:  g.Node,
		})
	}
	slices.SortFunc(out, func(a, b scored) int {
		switch {
		case a.last != b.last:
			if a.last {
				return 1
			}
			return -1
		case a.score > b.score:
			return -1
		case a.score < b.score:
			return 1
		case a.node < b.node:
			return -1
		case a.node > b.node:
			return 1
		}
		return 0
	})
	eps := make([]Endpoint, 0, len(out))
	seen := make(map[string]bool, len(out))
	for _, s := range out {
		if !seen[s.ep.Addr] {
			seen[s.ep.Addr] = true
			eps = append(eps, s.ep)
		}
	}
	return eps
}

// loadFactor compares a gateway's load with its fair share of the total
// (in proportion to weight): (fair+1)/(load+1), bounded. With no load
// anywhere it is 1.
func loadFactor(w, load, totalW, totalLoad float64) float64 {
	if totalW <= 0 {
		return 1
	}
	fair := totalLoad * w / totalW
	f := (fair + 1) / (load + 1)
	return min(max(f, minLoadFactor), maxLoadFactor)
}

// unit maps (key, node) to a uniform number in (0, 1).
func unit(key, node string) float64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(key))
	_, _ = h.Write([]byte{0})
	_, _ = h.Write([]byte(node))
	x := h.Sum64()
	// splitmix64 finalizer: FNV's low-entropy high bits are mixed in.
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return (float64(x>>11) + 0.5) / (1 << 53)
}

// EndpointsFunc adapts a function to the api's endpoint provider.
type EndpointsFunc func(ctx context.Context, appID, deviceID string) ([]Endpoint, error)

// Endpoints calls f.
func (f EndpointsFunc) Endpoints(ctx context.Context, appID, deviceID string) ([]Endpoint, error) {
	return f(ctx, appID, deviceID)
}

// Static is the endpoint provider of a deployment without discovery (the
// all-in-one process): every device gets the one address addr returns
// (called per request, so it may report a port bound after start). An
// empty address is herald.ErrUnavailable.
func Static(addr func() string) EndpointsFunc {
	return func(context.Context, string, string) ([]Endpoint, error) {
		a := addr()
		if a == "" {
			return nil, fmt.Errorf("discovery: gateway address not known yet: %w", herald.ErrUnavailable)
		}
		return []Endpoint{{Addr: a, Weight: 1}}, nil
	}
}
