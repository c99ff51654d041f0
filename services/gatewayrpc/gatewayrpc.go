// Package gatewayrpc is the client side of the gateways' internal gRPC
// service (herald.internal.v1.GatewayNode): a Client reaches every gateway
// node of a cluster by its node id, resolving the id to the node's gRPC
// address through discovery, and implements the dispatcher's Gateways and
// the api's Kicker over it, so the roles work the same in one process
// (services/gateway Directory) and across processes.
//
// A node that is unknown or cannot be reached answers NotHere for all its
// deliveries (the dispatcher stores them in the inbox), never an error
// that could lose a message.
package gatewayrpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/delivery"
	"github.com/heraldpush/herald/pkg/discovery"
	"github.com/heraldpush/herald/pkg/envelope/internalv1"
	"github.com/heraldpush/herald/pkg/route"
)

// Nodes resolves a gateway node id to its registration and lists the
// registered gateways; *discovery.Set is one.
type Nodes interface {
	Get(node string) (discovery.Gateway, bool)
	List() []discovery.Gateway
}

// Options tune a Client. The zero value takes every default.
type Options struct {
	// CallTimeout bounds a call whose context has no deadline. Default 15s.
	CallTimeout time.Duration
	// KeepaliveTime is how often an idle connection is pinged. Default
	// 30s (the gateway's server permits pings every 10s or more).
	KeepaliveTime time.Duration
	// MaxBatchBytes bounds the encoded size of one Deliver call; larger
	// batches are split into calls made in parallel. Default 8 MiB (the
	// gateway accepts 16 MiB).
	MaxBatchBytes int
	// MaxBatch bounds the deliveries of one Deliver call. Default 4096.
	MaxBatch int
	// DialOptions are appended to the client's own (tests, TLS).
	DialOptions []grpc.DialOption
}

func (o *Options) setDefaults() {
	if o.CallTimeout <= 0 {
		o.CallTimeout = 15 * time.Second
	}
	if o.KeepaliveTime <= 0 {
		o.KeepaliveTime = 30 * time.Second
	}
	if o.MaxBatchBytes <= 0 {
		o.MaxBatchBytes = 8 << 20
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 4096
	}
}

// Client reaches the gateway nodes over gRPC: one connection per node,
// made on first use and replaced when the node's address changes. It is
// safe for concurrent use.
type Client struct {
	nodes  Nodes
	routes route.Table
	opts   Options
	log    *slog.Logger

	mu     sync.Mutex
	conns  map[string]*nodeConn
	closed bool
}

type nodeConn struct {
	addr   string
	conn   *grpc.ClientConn
	node   internalv1.GatewayNodeClient
	health healthpb.HealthClient
}

// New returns a client resolving node ids through nodes. routes is used by
// Kick and Refresh to find the device's gateway; it may be nil if they are
// not used.
func New(nodes Nodes, routes route.Table, opts Options, logger *slog.Logger) *Client {
	opts.setDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Client{
		nodes:  nodes,
		routes: routes,
		opts:   opts,
		log:    logger.With("component", "gatewayrpc"),
		conns:  make(map[string]*nodeConn),
	}
}

// errUnknownNode: the node is not registered (it left, or never was).
var errUnknownNode = errors.New("gatewayrpc: node not registered")

// conn returns the connection to node, dialing it (lazily: grpc connects on
// the first call) if there is none or the node's address changed.
func (c *Client) conn(node string) (*nodeConn, error) {
	g, ok := c.nodes.Get(node)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, fmt.Errorf("gatewayrpc: %w", herald.ErrClosed)
	}
	nc := c.conns[node]
	if !ok || g.GRPCAddr == "" {
		if nc != nil {
			c.dropLocked(node, nc)
		}
		return nil, fmt.Errorf("%w: %q", errUnknownNode, node)
	}
	if nc != nil && nc.addr == g.GRPCAddr {
		return nc, nil
	}
	if nc != nil {
		c.dropLocked(node, nc)
	}
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: c.opts.KeepaliveTime, Timeout: 10 * time.Second, PermitWithoutStream: true}),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(2*c.opts.MaxBatchBytes + (1 << 20))),
	}, c.opts.DialOptions...)
	cc, err := grpc.NewClient(g.GRPCAddr, opts...)
	if err != nil {
		return nil, fmt.Errorf("gatewayrpc: client of %s at %s: %w", node, g.GRPCAddr, err)
	}
	nc = &nodeConn{addr: g.GRPCAddr, conn: cc, node: internalv1.NewGatewayNodeClient(cc), health: healthpb.NewHealthClient(cc)}
	c.conns[node] = nc
	c.log.Debug("gateway connection opened", "node", node, "addr", g.GRPCAddr)
	return nc, nil
}

func (c *Client) dropLocked(node string, nc *nodeConn) {
	delete(c.conns, node)
	if err := nc.conn.Close(); err != nil {
		c.log.Debug("close gateway connection", "node", node, "err", err)
	}
}

// Forget closes the connection to node, if any (it left the cluster).
func (c *Client) Forget(node string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if nc := c.conns[node]; nc != nil {
		c.dropLocked(node, nc)
	}
}

// Close closes every connection; later calls fail (Deliver: all NotHere).
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for node, nc := range c.conns {
		c.dropLocked(node, nc)
	}
	return nil
}

// withDeadline applies the default call timeout when ctx has no deadline.
func (c *Client) withDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.opts.CallTimeout)
}

// Deliver hands the node its deliveries and returns one outcome each. It
// never returns an error: a node that is unknown or unreachable answers
// NotHere for all (logged), a call that ran out of time TimedOut (the
// messages may have been written), so the dispatcher stores them.
func (c *Client) Deliver(ctx context.Context, node string, ds []delivery.Delivery) ([]delivery.Outcome, error) {
	out := make([]delivery.Outcome, len(ds))
	for i := range out {
		out[i] = delivery.NotHere
	}
	if len(ds) == 0 {
		return out, nil
	}
	nc, err := c.conn(node)
	if err != nil {
		c.log.Warn("deliveries for an unreachable gateway; storing", "node", node, "n", len(ds), "err", err)
		return out, nil
	}
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for _, b := range c.split(ds) {
		wg.Go(func() { c.deliverBatch(ctx, node, nc, ds, b, out) })
	}
	wg.Wait()
	return out, nil
}

// batch is a range [from, to) of a Deliver call's deliveries.
type batch struct{ from, to int }

// split cuts ds into batches of at most MaxBatch deliveries and about
// MaxBatchBytes each.
func (c *Client) split(ds []delivery.Delivery) []batch {
	var out []batch
	from, size := 0, 0
	for i, d := range ds {
		n := proto.Size(d.Envelope) + len(d.Device) + 16
		if i > from && (i-from >= c.opts.MaxBatch || size+n > c.opts.MaxBatchBytes) {
			out = append(out, batch{from, i})
			from, size = i, 0
		}
		size += n
	}
	return append(out, batch{from, len(ds)})
}

func (c *Client) deliverBatch(ctx context.Context, node string, nc *nodeConn, ds []delivery.Delivery, b batch, out []delivery.Outcome) {
	req := &internalv1.DeliverRequest{Node: node, Deliveries: make([]*internalv1.Delivery, 0, b.to-b.from)}
	for _, d := range ds[b.from:b.to] {
		req.Deliveries = append(req.Deliveries, &internalv1.Delivery{Device: d.Device, ConnId: d.ConnID, Envelope: d.Envelope})
	}
	resp, err := nc.node.Deliver(ctx, req)
	if err != nil {
		o := delivery.NotHere
		switch status.Code(err) {
		case codes.DeadlineExceeded, codes.Canceled:
			// The gateway may have written them and may still see acks.
			o = delivery.TimedOut
		}
		for i := b.from; i < b.to; i++ {
			out[i] = o
		}
		c.log.Warn("deliver to gateway failed; storing", "node", node, "addr", nc.addr, "n", b.to-b.from, "err", err)
		return
	}
	got := resp.GetOutcomes()
	if len(got) != b.to-b.from {
		c.log.Warn("gateway answered the wrong number of outcomes; storing", "node", node, "n", b.to-b.from, "outcomes", len(got))
		return // out stays NotHere
	}
	for i, o := range got {
		out[b.from+i] = outcomeFromProto(o)
	}
}

func outcomeFromProto(o internalv1.Outcome) delivery.Outcome {
	switch o {
	case internalv1.Outcome_OUTCOME_ACKED:
		return delivery.Acked
	case internalv1.Outcome_OUTCOME_TIMED_OUT:
		return delivery.TimedOut
	}
	return delivery.NotHere
}

// Nodes returns the node ids of the registered gateways, sorted.
func (c *Client) Nodes() []string {
	gws := c.nodes.List()
	out := make([]string, 0, len(gws))
	for _, g := range gws {
		out = append(out, g.Node)
	}
	slices.Sort(out)
	return out
}

// Broadcast hands the node group messages (and recalls) in log order and
// returns the sessions each matched; the node writes the plain pushes of
// the whole call to each session at once. A node that is no longer
// registered matches nothing (nil error: it left, and its devices replay
// the messages from the topic log when they reconnect elsewhere); an
// unreachable one is an error wrapping herald.ErrUnavailable, for the
// caller to retry.
func (c *Client) Broadcast(ctx context.Context, node string, envs []*internalv1.Envelope) ([]int64, error) {
	nc, err := c.conn(node)
	if errors.Is(err, errUnknownNode) {
		c.log.Debug("broadcast for a gateway that left", "node", node)
		return make([]int64, len(envs)), nil
	}
	if err != nil {
		return nil, fmt.Errorf("gatewayrpc: broadcast on %s: %w: %w", node, herald.ErrUnavailable, err)
	}
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	resp, err := nc.node.Broadcast(ctx, &internalv1.BroadcastRequest{Node: node, Envelopes: envs})
	if err != nil {
		return nil, fmt.Errorf("gatewayrpc: broadcast on %s: %w: %w", node, herald.ErrUnavailable, err)
	}
	out := resp.GetMatchedEach()
	if len(out) != len(envs) {
		// A broken or mismatched gateway: no answer to trust.
		return nil, fmt.Errorf("gatewayrpc: broadcast on %s: %w: %d answers for %d messages", node, herald.ErrUnavailable, len(out), len(envs))
	}
	return out, nil
}

// Drain asks the node to push the device's inbox to session connID (lazy:
// at the device's next activity). An unknown or unreachable node is an
// error wrapping herald.ErrUnavailable (the device drains its inbox when it
// reconnects anyway).
func (c *Client) Drain(ctx context.Context, node, device string, connID uint64, lazy bool) error {
	nc, err := c.conn(node)
	if err != nil {
		return fmt.Errorf("gatewayrpc: drain %s on %s: %w: %w", device, node, herald.ErrUnavailable, err)
	}
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	if _, err := nc.node.Drain(ctx, &internalv1.DrainRequest{Node: node, Device: device, ConnId: connID, Lazy: lazy}); err != nil {
		return fmt.Errorf("gatewayrpc: drain %s on %s: %w: %w", device, node, herald.ErrUnavailable, err)
	}
	return nil
}

// Kick closes the device's session on the gateway its route points at.
// No route, or a route to a node no longer registered, is nothing to do.
func (c *Client) Kick(ctx context.Context, appID, deviceID string) error {
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	key := route.Key(appID, deviceID)
	node, nc, err := c.routed(ctx, key)
	if err != nil {
		return fmt.Errorf("gatewayrpc: kick %w", err)
	}
	if nc == nil {
		return nil
	}
	if _, err := nc.node.Kick(ctx, &internalv1.KickRequest{Node: node, AppId: appID, DeviceId: deviceID}); err != nil {
		return fmt.Errorf("gatewayrpc: kick %s on %s: %w: %w", key, node, herald.ErrUnavailable, err)
	}
	return nil
}

// Refresh has the gateway its route points at reload the device's
// platform, tags and topics into the live session. No route, or a route to
// a node no longer registered, is nothing to do.
func (c *Client) Refresh(ctx context.Context, appID, deviceID string) error {
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	key := route.Key(appID, deviceID)
	node, nc, err := c.routed(ctx, key)
	if err != nil {
		return fmt.Errorf("gatewayrpc: refresh %w", err)
	}
	if nc == nil {
		return nil
	}
	if _, err := nc.node.Refresh(ctx, &internalv1.RefreshRequest{Node: node, AppId: appID, DeviceId: deviceID}); err != nil {
		return fmt.Errorf("gatewayrpc: refresh %s on %s: %w: %w", key, node, herald.ErrUnavailable, err)
	}
	return nil
}

// routed finds the connection to the node the device's route points at;
// nc is nil (and err nil) when there is no route or the node is gone.
func (c *Client) routed(ctx context.Context, key string) (node string, nc *nodeConn, err error) {
	if c.routes == nil {
		return "", nil, errors.New("needs a routing table")
	}
	got, err := c.routes.Lookup(ctx, []string{key})
	if err != nil {
		return "", nil, fmt.Errorf("%s: look up route: %w", key, err)
	}
	r, ok := got[key]
	if !ok {
		return "", nil, nil
	}
	nc, err = c.conn(r.Node)
	if errors.Is(err, errUnknownNode) {
		return "", nil, nil // the node is gone, and its sessions with it
	}
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", key, err)
	}
	return r.Node, nc, nil
}

// Check asks the node's gRPC health service whether it serves; nil when it
// does.
func (c *Client) Check(ctx context.Context, node string) error {
	nc, err := c.conn(node)
	if err != nil {
		return fmt.Errorf("gatewayrpc: check %s: %w: %w", node, herald.ErrUnavailable, err)
	}
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	resp, err := nc.health.Check(ctx, &healthpb.HealthCheckRequest{Service: internalv1.GatewayNode_ServiceDesc.ServiceName})
	if err != nil {
		return fmt.Errorf("gatewayrpc: check %s: %w: %w", node, herald.ErrUnavailable, err)
	}
	if s := resp.GetStatus(); s != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("gatewayrpc: check %s: %s: %w", node, s, herald.ErrUnavailable)
	}
	return nil
}
