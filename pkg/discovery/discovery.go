// Package discovery lets the roles of a Herald cluster find the gateways.
// Every gateway registers itself in etcd under a lease it keeps alive
// (Register); the dispatchers, the api and the router keep a live view of
// the registered gateways (Watch) to reach them over gRPC, to hand devices
// a weighted list of gateway addresses (Order, Set.Endpoints), and to drop
// the routes of gateways that vanished.
//
// Layout (Prefix "/herald/gateways/" by default):
//
//	<Prefix><node> = JSON{node, device_addr, grpc_addr, load, weight, started_at}
//
// The key is attached to the gateway's lease: a gateway that shuts down
// revokes it and disappears at once; one whose process dies disappears
// when its lease expires, ttl after its last keepalive.
package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/heraldpush/herald"
)

// DefaultPrefix is where gateways register.
const DefaultPrefix = "/herald/gateways/"

// DefaultLoadInterval is the least time between two load updates of a
// registration.
const DefaultLoadInterval = 5 * time.Second

// Gateway is one registered gateway node.
type Gateway struct {
	Node       string `json:"node"`        // routing-table node id
	DeviceAddr string `json:"device_addr"` // host:port devices connect to
	GRPCAddr   string `json:"grpc_addr"`   // host:port of the GatewayNode gRPC service
	Load       int    `json:"load"`        // live sessions, updated every few seconds
	// Weight is the gateway's relative share of new devices (capacity, or
	// a small number for a canary). 0 offers the gateway only after every
	// gateway of positive weight (a draining or standby node).
	Weight    int       `json:"weight"`
	StartedAt time.Time `json:"started_at"`
}

// Option tunes Register and Watch.
type Option func(*options)

type options struct {
	prefix       string
	loadInterval time.Duration
	onChange     []func(Event)
}

// WithPrefix sets the key prefix (default DefaultPrefix). Register and
// Watch must use the same one; tests use it to share one etcd.
func WithPrefix(p string) Option {
	return func(o *options) {
		if p != "" {
			o.prefix = strings.TrimSuffix(p, "/") + "/"
		}
	}
}

// WithLoadInterval sets the least time between two load writes of a
// registration (default DefaultLoadInterval).
func WithLoadInterval(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.loadInterval = d
		}
	}
}

func makeOptions(opts []Option) options {
	o := options{prefix: DefaultPrefix, loadInterval: DefaultLoadInterval}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// Registration is a gateway's live entry in etcd. Its methods are safe for
// concurrent use.
type Registration struct {
	cli    *clientv3.Client
	key    string
	ttl    int64 // seconds
	log    *slog.Logger
	every  time.Duration
	base   Gateway // Load is the last one written
	load   atomic.Int64
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	lease  clientv3.LeaseID
	closed bool
}

// Register puts g under the prefix with a lease of ttl (rounded up to whole
// seconds; etcd raises it to its minimum if lower) and keeps the lease
// alive until Close. If the lease is lost (etcd unreachable for longer than
// ttl) it registers again as soon as etcd answers. A record left by an
// earlier process with the same node id is replaced. ctx bounds only the
// initial registration; the registration lives until Close (or until cli
// is closed, which leaves the record to expire: a crash).
func Register(ctx context.Context, cli *clientv3.Client, g Gateway, ttl time.Duration, logger *slog.Logger, opts ...Option) (*Registration, error) {
	if err := validNode(g.Node); err != nil {
		return nil, err
	}
	if g.DeviceAddr == "" || g.GRPCAddr == "" {
		return nil, fmt.Errorf("discovery: register %q: device and grpc addresses required: %w", g.Node, herald.ErrInvalidArgument)
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("discovery: register %q: ttl %s: %w", g.Node, ttl, herald.ErrInvalidArgument)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if g.StartedAt.IsZero() {
		g.StartedAt = time.Now()
	}
	o := makeOptions(opts)
	r := &Registration{
		cli:   cli,
		key:   o.prefix + g.Node,
		ttl:   int64((ttl + time.Second - 1) / time.Second),
		log:   logger.With("component", "discovery", "node", g.Node),
		every: o.loadInterval,
		base:  g,
		done:  make(chan struct{}),
	}
	r.load.Store(int64(g.Load))
	if prev, err := cli.Get(ctx, r.key); err == nil && len(prev.Kvs) > 0 {
		r.log.Warn("replacing an existing registration of this node id", "previous", string(prev.Kvs[0].Value))
	}
	ka, err := r.register(ctx)
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r.cancel = cancel
	go r.run(runCtx, ka)
	r.log.Info("gateway registered", "device_addr", g.DeviceAddr, "grpc_addr", g.GRPCAddr, "ttl_s", r.ttl)
	return r, nil
}

// register grants a lease, puts the record under it and starts its
// keepalive, which runs until the returned cancel or the lease's loss.
func (r *Registration) register(ctx context.Context) (*keepalive, error) {
	lease, err := r.cli.Grant(ctx, r.ttl)
	if err != nil {
		return nil, r.fail(ctx, "grant lease", err)
	}
	g := r.base
	g.Load = int(r.load.Load())
	val, err := json.Marshal(g)
	if err != nil {
		return nil, fmt.Errorf("discovery: encode %q: %w", g.Node, err)
	}
	if _, err := r.cli.Put(ctx, r.key, string(val), clientv3.WithLease(lease.ID)); err != nil {
		r.revokeQuietly(ctx, lease.ID)
		return nil, r.fail(ctx, "put", err)
	}
	kaCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	ch, err := r.cli.KeepAlive(kaCtx, lease.ID)
	if err != nil {
		cancel()
		r.revokeQuietly(ctx, lease.ID)
		return nil, r.fail(ctx, "keep lease alive", err)
	}
	r.mu.Lock()
	r.lease = lease.ID
	r.base.Load = g.Load
	r.mu.Unlock()
	return &keepalive{ch: ch, cancel: cancel}, nil
}

type keepalive struct {
	ch     <-chan *clientv3.LeaseKeepAliveResponse
	cancel context.CancelFunc
}

// run consumes keepalive answers, writes load changes at most every
// r.every, and registers again when the lease is lost.
func (r *Registration) run(ctx context.Context, ka *keepalive) {
	defer close(r.done)
	tick := time.NewTicker(r.every)
	defer tick.Stop()
	for {
		select {
		case _, ok := <-ka.ch:
			if ok {
				continue
			}
			ka.cancel()
			if ctx.Err() != nil {
				return
			}
			r.log.Warn("registration lease lost; registering again")
			if ka = r.reregister(ctx); ka == nil {
				return
			}
		case <-tick.C:
			r.writeLoad(ctx)
		case <-ctx.Done():
			ka.cancel()
			return
		}
	}
}

// reregister retries register with backoff until it succeeds, ctx ends or
// the client is closed.
func (r *Registration) reregister(ctx context.Context) *keepalive {
	var delay time.Duration
	for {
		if ctx.Err() != nil || r.cli.Ctx().Err() != nil {
			return nil
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ka, err := r.register(cctx)
		cancel()
		if err == nil {
			r.log.Info("gateway registered again")
			return ka
		}
		delay = min(max(2*delay, 100*time.Millisecond), 5*time.Second)
		r.log.Warn("register again failed", "err", err, "retry_in", delay)
		t := time.NewTimer(delay/2 + rand.N(delay/2+1))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil
		}
	}
}

// writeLoad puts the record again if the load changed since the last write.
func (r *Registration) writeLoad(ctx context.Context) {
	n := int(r.load.Load())
	r.mu.Lock()
	g, lease := r.base, r.lease
	r.mu.Unlock()
	if g.Load == n {
		return
	}
	g.Load = n
	val, err := json.Marshal(g)
	if err != nil {
		r.log.Warn("encode registration", "err", err)
		return
	}
	cctx, cancel := context.WithTimeout(ctx, r.every)
	defer cancel()
	if _, err := r.cli.Put(cctx, r.key, string(val), clientv3.WithLease(lease)); err != nil {
		// A lost lease shows on the keepalive channel; run registers again.
		r.log.Warn("write load", "load", n, "err", err)
		return
	}
	r.mu.Lock()
	if r.lease == lease {
		r.base.Load = n
	}
	r.mu.Unlock()
}

// SetLoad records the gateway's current number of sessions. It is cheap:
// the value is written to etcd at most once per load interval.
func (r *Registration) SetLoad(n int) { r.load.Store(int64(max(n, 0))) }

// Close revokes the registration: the gateway disappears from every Set at
// once. Calling it again returns nil.
func (r *Registration) Close(ctx context.Context) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.mu.Unlock()
	r.cancel()
	<-r.done
	r.mu.Lock()
	lease := r.lease
	r.mu.Unlock()
	if _, err := r.cli.Revoke(ctx, lease); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return r.fail(ctx, "revoke", err)
	}
	r.log.Info("gateway unregistered")
	return nil
}

func (r *Registration) revokeQuietly(ctx context.Context, id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := r.cli.Revoke(ctx, id); err != nil {
		r.log.Warn("revoke unused lease", "lease", int64(id), "err", err)
	}
}

func (r *Registration) fail(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("discovery: %s %s: %w", op, r.key, ctx.Err())
	}
	return fmt.Errorf("discovery: %s %s: %w: %w", op, r.key, herald.ErrUnavailable, err)
}

func validNode(node string) error {
	if node == "" || strings.ContainsAny(node, "/\x00") {
		return fmt.Errorf("discovery: node id %q: %w", node, herald.ErrInvalidArgument)
	}
	return nil
}

// decode reads a registration record. The key's last element must match
// the record's node id.
func decode(node string, val []byte) (Gateway, error) {
	if err := validNode(node); err != nil {
		return Gateway{}, err
	}
	var g Gateway
	if err := json.Unmarshal(val, &g); err != nil {
		return Gateway{}, fmt.Errorf("discovery: record of %q: %w", node, err)
	}
	if g.Node != node {
		return Gateway{}, fmt.Errorf("discovery: record of %q names node %q", node, g.Node)
	}
	if g.Weight < 0 || g.Load < 0 {
		return Gateway{}, fmt.Errorf("discovery: record of %q: negative weight or load", node)
	}
	return g, nil
}
