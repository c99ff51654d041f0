// Package etcdroute keeps the routing table in etcd, under one lease per
// gateway node: every route a node binds is attached to the node's lease,
// which the Table keeps alive while it lives. When the process serving a
// node dies, its keepalives stop and all its routes vanish together when
// the lease expires; DropNode revokes the lease to remove them at once.
//
// Layout (Prefix "/herald/routes/" by default):
//
//	<Prefix><device key>  = "<conn id> <node>"   (attached to the node's lease)
//	<LeasePrefix><node>   = "<lease id, hex>"    (attached to the same lease)
//
// The lease record lets any Table, not only the one that granted it, drop
// a node (a router noticing a dead gateway, for example).
package etcdroute

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/route"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Options tune a Table. The zero value takes every default.
type Options struct {
	// Prefix of the route keys. Default "/herald/routes/".
	Prefix string
	// LeasePrefix of the per-node lease records. Default: Prefix without
	// its trailing slash, plus ".leases/" ("/herald/routes.leases/").
	LeasePrefix string
	// LeaseTTL is how long the routes of a node whose process died
	// survive it (rounded up to whole seconds; etcd raises it to its
	// minimum, about 2s, if lower). Default 15s.
	LeaseTTL time.Duration
	// MaxTxnOps is the most operations Lookup puts in one transaction;
	// it must not exceed the server's --max-txn-ops. Default 128 (etcd's
	// default).
	MaxTxnOps int
}

// Table is a route.Table on etcd, safe for concurrent use.
type Table struct {
	cli         *clientv3.Client
	prefix      string
	leasePrefix string
	ttl         int64 // seconds
	maxOps      int
	log         *slog.Logger

	closed atomic.Bool
	mu     sync.Mutex // guards leases; held while granting one
	leases map[string]*nodeLease
	wg     sync.WaitGroup // keepalive drainers
}

// nodeLease is the lease of one gateway node and its keepalive.
type nodeLease struct {
	id     clientv3.LeaseID
	cancel context.CancelFunc // stops the keepalive
}

var _ route.Table = (*Table)(nil)

// New returns a table on cli. The caller keeps ownership of cli: Close
// stops the table's keepalives but does not close the client.
func New(cli *clientv3.Client, opts Options, logger *slog.Logger) *Table {
	if opts.Prefix == "" {
		opts.Prefix = "/herald/routes/"
	}
	if opts.LeasePrefix == "" {
		opts.LeasePrefix = strings.TrimSuffix(opts.Prefix, "/") + ".leases/"
	}
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = 15 * time.Second
	}
	if opts.MaxTxnOps <= 0 {
		opts.MaxTxnOps = 128
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ttl := int64((opts.LeaseTTL + time.Second - 1) / time.Second)
	return &Table{
		cli:         cli,
		prefix:      opts.Prefix,
		leasePrefix: opts.LeasePrefix,
		ttl:         ttl,
		maxOps:      opts.MaxTxnOps,
		log:         logger,
		leases:      make(map[string]*nodeLease),
	}
}

// Bind points the device at r under r.Node's lease, granting the lease on
// the node's first bind.
func (t *Table) Bind(ctx context.Context, device string, r route.Route) error {
	if err := t.check(ctx); err != nil {
		return err
	}
	if device == "" || r.Node == "" {
		return fmt.Errorf("etcdroute: bind %q to node %q: %w", device, r.Node, herald.ErrInvalidArgument)
	}
	for attempt := 0; ; attempt++ {
		id, err := t.leaseOf(ctx, r.Node)
		if err != nil {
			return err
		}
		_, err = t.cli.Put(ctx, t.prefix+device, encode(r), clientv3.WithLease(id))
		if err == nil {
			return nil
		}
		if errors.Is(err, rpctypes.ErrLeaseNotFound) && attempt == 0 {
			// The lease expired (keepalives failed for longer than the
			// TTL) before its keepalive channel told us: grant anew.
			t.forget(r.Node, id)
			continue
		}
		return t.fail(ctx, "bind "+device, err)
	}
}

// Unbind deletes the device's route if it still encodes r.
func (t *Table) Unbind(ctx context.Context, device string, r route.Route) (bool, error) {
	if err := t.check(ctx); err != nil {
		return false, err
	}
	key := t.prefix + device
	resp, err := t.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(key), "=", encode(r))).
		Then(clientv3.OpDelete(key)).
		Commit()
	if err != nil {
		return false, t.fail(ctx, "unbind "+device, err)
	}
	return resp.Succeeded, nil
}

// Lookup reads the routes of the devices in transactions of at most
// MaxTxnOps gets each. A route etcd holds in an unknown encoding is logged
// and left out.
func (t *Table) Lookup(ctx context.Context, devices []string) (map[string]route.Route, error) {
	if err := t.check(ctx); err != nil {
		return nil, err
	}
	out := make(map[string]route.Route, len(devices))
	ops := make([]clientv3.Op, 0, min(len(devices), t.maxOps))
	for start := 0; start < len(devices); start += t.maxOps {
		chunk := devices[start:min(start+t.maxOps, len(devices))]
		ops = ops[:0]
		for _, d := range chunk {
			ops = append(ops, clientv3.OpGet(t.prefix+d))
		}
		resp, err := t.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, t.fail(ctx, fmt.Sprintf("lookup %d devices", len(devices)), err)
		}
		for i, r := range resp.Responses {
			rr := r.GetResponseRange()
			if rr == nil || len(rr.Kvs) == 0 {
				continue
			}
			rt, ok := decode(rr.Kvs[0].Value)
			if !ok {
				t.log.Warn("route value not understood", "device", chunk[i], "value", string(rr.Kvs[0].Value))
				continue
			}
			out[chunk[i]] = rt
		}
	}
	return out, nil
}

// DropNode revokes the node's lease, removing all its routes at once. It
// works from any Table on the same prefixes: the lease is found through
// the node's lease record.
func (t *Table) DropNode(ctx context.Context, node string) error {
	if err := t.check(ctx); err != nil {
		return err
	}
	var ids []clientv3.LeaseID
	t.mu.Lock()
	if l := t.leases[node]; l != nil {
		l.cancel()
		delete(t.leases, node)
		ids = append(ids, l.id)
	}
	t.mu.Unlock()

	resp, err := t.cli.Get(ctx, t.leasePrefix+node)
	if err != nil {
		return t.fail(ctx, "drop node "+node, err)
	}
	for _, kv := range resp.Kvs {
		id, err := strconv.ParseInt(string(kv.Value), 16, 64)
		if err != nil {
			t.log.Warn("lease record not understood", "node", node, "value", string(kv.Value))
			continue
		}
		if len(ids) == 0 || ids[0] != clientv3.LeaseID(id) {
			ids = append(ids, clientv3.LeaseID(id))
		}
	}
	for _, id := range ids {
		if _, err := t.cli.Revoke(ctx, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return t.fail(ctx, "drop node "+node, err)
		}
	}
	return nil
}

// Close stops the keepalives of the table's leases without revoking them
// (the routes survive until the leases expire, or until DropNode), and
// makes further calls fail with herald.ErrClosed. It does not close the
// client.
func (t *Table) Close() error {
	t.mu.Lock()
	t.closed.Store(true)
	for node, l := range t.leases {
		l.cancel()
		delete(t.leases, node)
	}
	t.mu.Unlock()
	t.wg.Wait()
	return nil
}

// leaseOf returns the node's lease, granting it and starting its
// keepalive if the table holds none.
func (t *Table) leaseOf(ctx context.Context, node string) (clientv3.LeaseID, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed.Load() {
		return 0, fmt.Errorf("etcdroute: %w", herald.ErrClosed)
	}
	if l := t.leases[node]; l != nil {
		return l.id, nil
	}
	g, err := t.cli.Grant(ctx, t.ttl)
	if err != nil {
		return 0, t.fail(ctx, "grant lease of node "+node, err)
	}
	if _, err := t.cli.Put(ctx, t.leasePrefix+node, strconv.FormatInt(int64(g.ID), 16), clientv3.WithLease(g.ID)); err != nil {
		t.revokeQuietly(ctx, g.ID)
		return 0, t.fail(ctx, "record lease of node "+node, err)
	}
	// The keepalive outlives this call: it stops with DropNode or Close.
	kaCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	ch, err := t.cli.KeepAlive(kaCtx, g.ID)
	if err != nil {
		cancel()
		t.revokeQuietly(ctx, g.ID)
		return 0, t.fail(ctx, "keep lease of node "+node+" alive", err)
	}
	l := &nodeLease{id: g.ID, cancel: cancel}
	t.leases[node] = l
	t.wg.Add(1)
	go t.drain(kaCtx, node, l, ch)
	t.log.Debug("route lease granted", "node", node, "lease", int64(g.ID), "ttl_s", g.TTL)
	return g.ID, nil
}

// drain consumes the keepalive responses of l; when the channel closes
// without the table having stopped it, the lease is lost: the table
// forgets it so the node's next Bind grants a new one. Existing routes are
// not re-put: gateways bind again when their devices reconnect.
func (t *Table) drain(ctx context.Context, node string, l *nodeLease, ch <-chan *clientv3.LeaseKeepAliveResponse) {
	defer t.wg.Done()
	for range ch {
	}
	if ctx.Err() != nil {
		return // stopped by DropNode, Close or a re-grant
	}
	t.log.Warn("route lease lost", "node", node, "lease", int64(l.id))
	t.forget(node, l.id)
}

// forget drops the node's lease from the table if it is still id.
func (t *Table) forget(node string, id clientv3.LeaseID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if l := t.leases[node]; l != nil && l.id == id {
		l.cancel()
		delete(t.leases, node)
	}
}

// revokeQuietly revokes a lease that was granted for nothing, even if the
// caller's ctx is done, and only logs a failure (the lease expires anyway).
func (t *Table) revokeQuietly(ctx context.Context, id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := t.cli.Revoke(ctx, id); err != nil {
		t.log.Warn("revoke of unused route lease failed", "lease", int64(id), "error", err)
	}
}

func (t *Table) check(ctx context.Context) error {
	if t.closed.Load() {
		return fmt.Errorf("etcdroute: %w", herald.ErrClosed)
	}
	return ctx.Err()
}

// fail wraps an etcd error: the caller's own cancellation stays what it
// is; anything else means the routing table is unavailable for now.
func (t *Table) fail(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("etcdroute: %s: %w", op, ctx.Err())
	}
	return fmt.Errorf("etcdroute: %s: %w: %w", op, herald.ErrUnavailable, err)
}

// encode writes a route as "<conn id> <node>".
func encode(r route.Route) string {
	return strconv.FormatUint(r.ConnID, 10) + " " + r.Node
}

func decode(v []byte) (route.Route, bool) {
	conn, node, ok := strings.Cut(string(v), " ")
	if !ok || node == "" {
		return route.Route{}, false
	}
	id, err := strconv.ParseUint(conn, 10, 64)
	if err != nil {
		return route.Route{}, false
	}
	return route.Route{Node: node, ConnID: id}, true
}
