// Package redisroute keeps the routing table in Redis (a single server, a
// Sentinel-managed primary, or Redis Cluster), one key per device, each
// with a TTL so the routes of a gateway that died without a word vanish by
// themselves.
//
// # Layout
//
// With Prefix "herald:" (the default) and b = FNV-1a-32(device) mod 1024:
//
//	herald:route:{b}<device>  string "<conn id> <node>", PX RouteTTL
//	herald:node:{b}<node>     set of the devices in bucket b bound to node
//
// The bucket {b} is a Redis Cluster hash tag: a device's route and its
// entry in its node's index live in the same slot, so every change of a
// route and of its index entry is one atomic Lua script on one shard, and
// the routes still spread over 1024 slots. A node's index is 1024 small
// sets; DropNode works through them bucket by bucket. The index may hold
// stale entries (a route that expired); every script that uses it compares
// the route's value first, and a node's index set expires no sooner than
// the newest route it indexes.
//
// Prefix must not contain '{' (it would become the hash tag).
//
// # Refresh contract (Touch)
//
// Heartbeats must not become Redis writes. A route lives RouteTTL after
// its Bind or its last Touch. The gateway holding a session calls Touch at
// most once per RouteTTL/3 for that session (for example on the first
// heartbeat after RouteTTL/3 has passed since the last Bind or Touch), so
// one late Touch still leaves a third of the TTL. With the default 30 min
// TTL that is one write per session per 10 minutes, whatever the heartbeat
// interval. Touch fails with ErrNotBound when the route is no longer the
// session's (it expired, a newer session replaced it, or the node was
// dropped): the gateway then decides whether to Bind again (the session
// is still its device's newest) or to close the session.
//
// All gateways sharing a table should use the same RouteTTL; a mix is
// safe (index sets only ever get their TTL extended), only wasteful.
package redisroute

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/route"
	"github.com/redis/go-redis/v9"
)

const (
	// buckets is the number of hash-tag buckets. It is part of the data
	// layout: every process sharing a table must agree on it.
	buckets = 1024
	// lookupChunk is the most keys Lookup asks for in one MGET or pipeline.
	lookupChunk = 500
	// dropBatch is the most index entries one DropNode script pops.
	dropBatch = 500
)

// ErrNotBound is returned by Touch when the device's route is not, or no
// longer, the given one.
var ErrNotBound = errors.New("redisroute: route not bound")

// Options tune a Table. The zero value takes every default.
type Options struct {
	// Prefix of every key the table writes. Default "herald:". Tables on
	// different prefixes are independent.
	Prefix string
	// RouteTTL is how long a route lives after its Bind or last Touch.
	// Default 30m; rounded up to a whole millisecond.
	RouteTTL time.Duration
}

// Table is a route.Table on Redis, safe for concurrent use.
type Table struct {
	rdb         redis.UniversalClient
	routePrefix string // <Prefix>route:
	nodePrefix  string // <Prefix>node:
	ttlMS       int64
	log         *slog.Logger
	closed      atomic.Bool
}

var _ route.Table = (*Table)(nil)

// New returns a table on client. The caller keeps ownership of client:
// Close does not close it.
func New(client redis.UniversalClient, opts Options, logger *slog.Logger) *Table {
	if opts.Prefix == "" {
		opts.Prefix = "herald:"
	}
	if opts.RouteTTL <= 0 {
		opts.RouteTTL = 30 * time.Minute
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Table{
		rdb:         client,
		routePrefix: opts.Prefix + "route:",
		nodePrefix:  opts.Prefix + "node:",
		ttlMS:       int64((opts.RouteTTL + time.Millisecond - 1) / time.Millisecond),
		log:         logger,
	}
}

// bindScript sets the route, moves the device's index entry to the new
// node and makes sure the node's index set outlives the route.
//
// KEYS[1] route key, KEYS[2] index set of the new node.
// ARGV[1] value, ARGV[2] TTL in ms, ARGV[3] new node,
// ARGV[4] index prefix of the bucket, ARGV[5] device.
var bindScript = redis.NewScript(`
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if old then
  local sp = string.find(old, ' ', 1, true)
  if sp then
    local was = string.sub(old, sp + 1)
    if was ~= ARGV[3] then
      redis.call('SREM', ARGV[4] .. was, ARGV[5])
    end
  end
end
redis.call('SADD', KEYS[2], ARGV[5])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return 1
`)

// unbindScript deletes the route if it is still ARGV[1]. Either way it
// drops the device from the node's index unless the device still routes
// to that node (through another session).
//
// KEYS[1] route key, KEYS[2] index set of the node.
// ARGV[1] value, ARGV[2] device, ARGV[3] node.
var unbindScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
  return 1
end
local sp = cur and string.find(cur, ' ', 1, true)
if not sp or string.sub(cur, sp + 1) ~= ARGV[3] then
  redis.call('SREM', KEYS[2], ARGV[2])
end
return 0
`)

// touchScript extends the route if it is still ARGV[1], and its node's
// index set with it.
//
// KEYS[1] route key, KEYS[2] index set of the node.
// ARGV[1] value, ARGV[2] TTL in ms, ARGV[3] device.
var touchScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return 1
`)

// dropScript pops up to ARGV[3] devices from a node's index set of one
// bucket and deletes those of their routes that still name the node. It
// returns how many it popped; the set disappears when emptied.
//
// KEYS[1] index set. ARGV[1] route prefix of the bucket, ARGV[2] node,
// ARGV[3] batch size.
var dropScript = redis.NewScript(`
local devices = redis.call('SPOP', KEYS[1], ARGV[3])
for _, d in ipairs(devices) do
  local k = ARGV[1] .. d
  local v = redis.call('GET', k)
  if v then
    local sp = string.find(v, ' ', 1, true)
    if sp and string.sub(v, sp + 1) == ARGV[2] then
      redis.call('DEL', k)
    end
  end
end
return #devices
`)

// Bind points the device at r for RouteTTL, replacing any previous route.
func (t *Table) Bind(ctx context.Context, device string, r route.Route) error {
	if err := t.check(ctx); err != nil {
		return err
	}
	if device == "" || r.Node == "" {
		return fmt.Errorf("redisroute: bind %q to node %q: %w", device, r.Node, herald.ErrInvalidArgument)
	}
	b := bucketOf(device)
	keys := []string{t.routeKey(b, device), t.nodeKey(b, r.Node)}
	err := bindScript.Run(ctx, t.rdb, keys, encode(r), t.ttlMS, r.Node, t.nodeKey(b, ""), device).Err()
	if err != nil {
		return t.fail(ctx, "bind "+device, err)
	}
	return nil
}

// Unbind deletes the device's route if it is still exactly r.
func (t *Table) Unbind(ctx context.Context, device string, r route.Route) (bool, error) {
	if err := t.check(ctx); err != nil {
		return false, err
	}
	b := bucketOf(device)
	keys := []string{t.routeKey(b, device), t.nodeKey(b, r.Node)}
	n, err := unbindScript.Run(ctx, t.rdb, keys, encode(r), device, r.Node).Int64()
	if err != nil {
		return false, t.fail(ctx, "unbind "+device, err)
	}
	return n == 1, nil
}

// TouchInterval is how often a live session should Touch its route:
// a third of RouteTTL, so two missed refreshes still leave it alive.
func (t *Table) TouchInterval() time.Duration {
	return time.Duration(t.ttlMS) * time.Millisecond / 3
}

// Touch restarts the TTL of the device's route if it is still exactly r,
// and fails with ErrNotBound otherwise. See the package documentation for
// how often a gateway calls it.
func (t *Table) Touch(ctx context.Context, device string, r route.Route) error {
	if err := t.check(ctx); err != nil {
		return err
	}
	if device == "" || r.Node == "" {
		return fmt.Errorf("redisroute: touch %q on node %q: %w", device, r.Node, herald.ErrInvalidArgument)
	}
	b := bucketOf(device)
	keys := []string{t.routeKey(b, device), t.nodeKey(b, r.Node)}
	n, err := touchScript.Run(ctx, t.rdb, keys, encode(r), t.ttlMS, device).Int64()
	if err != nil {
		return t.fail(ctx, "touch "+device, err)
	}
	if n != 1 {
		return fmt.Errorf("redisroute: touch %q on node %q: %w", device, r.Node, ErrNotBound)
	}
	return nil
}

// Lookup returns the routes of those devices that have one, reading at
// most 500 keys per round trip: MGET on a single server, a pipeline of
// GETs on a cluster (it splits per shard). A value the table does not
// understand is logged and left out.
func (t *Table) Lookup(ctx context.Context, devices []string) (map[string]route.Route, error) {
	if err := t.check(ctx); err != nil {
		return nil, err
	}
	out := make(map[string]route.Route, len(devices))
	keys := make([]string, 0, min(len(devices), lookupChunk))
	for start := 0; start < len(devices); start += lookupChunk {
		chunk := devices[start:min(start+lookupChunk, len(devices))]
		keys = keys[:0]
		for _, d := range chunk {
			keys = append(keys, t.routeKey(bucketOf(d), d))
		}
		vals, err := t.get(ctx, keys)
		if err != nil {
			return nil, t.fail(ctx, fmt.Sprintf("lookup %d devices", len(devices)), err)
		}
		for i, v := range vals {
			if v == nil {
				continue
			}
			r, ok := decode(*v)
			if !ok {
				t.log.Warn("route value not understood", "device", chunk[i], "value", *v)
				continue
			}
			out[chunk[i]] = r
		}
	}
	return out, nil
}

// get reads keys in one round trip; a missing key reads as nil.
func (t *Table) get(ctx context.Context, keys []string) ([]*string, error) {
	out := make([]*string, len(keys))
	if c, ok := t.rdb.(*redis.Client); ok {
		vals, err := c.MGet(ctx, keys...).Result()
		if err != nil {
			return nil, err
		}
		if len(vals) != len(keys) {
			return nil, fmt.Errorf("MGET of %d keys answered %d values", len(keys), len(vals))
		}
		for i, v := range vals {
			if s, ok := v.(string); ok {
				out[i] = &s
			}
		}
		return out, nil
	}
	// Cluster or ring: keys of one MGET must share a slot; a pipeline of
	// GETs is split per shard by the client.
	pipe := t.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.Get(ctx, k)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	for i, c := range cmds {
		s, err := c.Result()
		switch {
		case errors.Is(err, redis.Nil):
		case err != nil:
			return nil, err
		default:
			out[i] = &s
		}
	}
	return out, nil
}

// DropNode deletes every route that still names node, working through the
// node's 1024 index sets in pipelined rounds of one script per bucket
// (each pops up to 500 entries and compares before deleting), until every
// set is empty and so gone. Routes bound to the node while it runs may
// survive it.
func (t *Table) DropNode(ctx context.Context, node string) error {
	if err := t.check(ctx); err != nil {
		return err
	}
	pending := make([]int, buckets)
	for b := range pending {
		pending[b] = b
	}
	reloaded := false
	for len(pending) > 0 {
		pipe := t.rdb.Pipeline()
		cmds := make([]*redis.Cmd, len(pending))
		for i, b := range pending {
			cmds[i] = pipe.EvalSha(ctx, dropScript.Hash(), []string{t.nodeKey(b, node)}, t.routeKey(b, ""), node, dropBatch)
		}
		_, _ = pipe.Exec(ctx) // each command's error is looked at below
		next := pending[:0]
		noScript := false
		for i, c := range cmds {
			n, err := c.Int64()
			switch {
			case redis.HasErrorPrefix(err, "NOSCRIPT"):
				noScript = true
				next = append(next, pending[i])
			case err != nil:
				return t.fail(ctx, "drop node "+node, err)
			case n >= dropBatch:
				next = append(next, pending[i])
			}
		}
		if noScript {
			// The script cache is empty (server restart, SCRIPT FLUSH, a
			// new shard): load it once and go on.
			if reloaded {
				return t.fail(ctx, "drop node "+node, errors.New("drop script still not loaded after SCRIPT LOAD"))
			}
			if err := dropScript.Load(ctx, t.rdb).Err(); err != nil {
				return t.fail(ctx, "drop node "+node, err)
			}
			reloaded = true
		}
		pending = next
	}
	return nil
}

// Close makes further calls fail with herald.ErrClosed. It does not close
// the client, and routes stay until they expire or their node is dropped.
func (t *Table) Close() error {
	t.closed.Store(true)
	return nil
}

func (t *Table) check(ctx context.Context) error {
	if t.closed.Load() {
		return fmt.Errorf("redisroute: %w", herald.ErrClosed)
	}
	return ctx.Err()
}

func (t *Table) routeKey(b int, device string) string {
	return t.routePrefix + "{" + strconv.Itoa(b) + "}" + device
}

func (t *Table) nodeKey(b int, node string) string {
	return t.nodePrefix + "{" + strconv.Itoa(b) + "}" + node
}

// bucketOf is FNV-1a-32 of the device key, mod buckets. It is part of the
// data layout.
func bucketOf(device string) int {
	h := uint32(2166136261)
	for i := 0; i < len(device); i++ {
		h ^= uint32(device[i])
		h *= 16777619
	}
	return int(h % buckets)
}

// fail wraps a Redis error: the caller's own cancellation stays what it
// is; a closed client is herald.ErrClosed; a server that cannot serve
// right now (network, timeouts, LOADING, READONLY, CLUSTERDOWN, ...) is
// herald.ErrUnavailable; any other error reply is a bug or a
// misconfiguration and is passed on as it is.
func (t *Table) fail(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("redisroute: %s: %w", op, ctx.Err())
	}
	if errors.Is(err, redis.ErrClosed) {
		return fmt.Errorf("redisroute: %s: %w: %w", op, herald.ErrClosed, err)
	}
	var reply redis.Error
	if errors.As(err, &reply) && !transient(err) {
		return fmt.Errorf("redisroute: %s: %w", op, err)
	}
	return fmt.Errorf("redisroute: %s: %w: %w", op, herald.ErrUnavailable, err)
}

// transient reports whether a Redis error reply means "retry later".
func transient(err error) bool {
	switch {
	case redis.IsLoadingError(err), redis.IsReadOnlyError(err), redis.IsClusterDownError(err),
		redis.IsTryAgainError(err), redis.IsMasterDownError(err), redis.IsMaxClientsError(err),
		redis.IsOOMError(err), redis.IsNoReplicasError(err), redis.HasErrorPrefix(err, "BUSY"):
		return true
	}
	return false
}
