//go:build integration

package redisroute_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldpush/herald/pkg/enginetest"
	"github.com/heraldpush/herald/pkg/route"
	"github.com/heraldpush/herald/pkg/route/redisroute"
	"github.com/heraldpush/herald/pkg/route/routetest"
	"github.com/redis/go-redis/v9"
)

func testLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// newClient connects to the Redis of `make deps-up` (or HERALD_TEST_REDIS).
func newClient(tb testing.TB) *redis.Client {
	tb.Helper()
	c := redis.NewClient(&redis.Options{Addr: enginetest.Redis(tb)})
	tb.Cleanup(func() { c.Close() })
	if err := c.Ping(tb.Context()).Err(); err != nil {
		tb.Fatalf("ping Redis: %v", err)
	}
	return c
}

// testPrefix returns a key prefix no other test or run uses, and deletes
// its keys when the test ends.
func testPrefix(tb testing.TB, c *redis.Client) string {
	tb.Helper()
	p := fmt.Sprintf("herald-test:%s:%d:", tb.Name(), time.Now().UnixNano())
	tb.Cleanup(func() {
		// tb.Context() is already canceled when cleanups run.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		keys := keysUnder(ctx, tb, c, p)
		for start := 0; start < len(keys); start += 1000 {
			if err := c.Unlink(ctx, keys[start:min(start+1000, len(keys))]...).Err(); err != nil {
				tb.Errorf("clean up test keys: %v", err)
				return
			}
		}
	})
	return p
}

// globEscaper quotes the SCAN MATCH pattern characters.
var globEscaper = strings.NewReplacer(`\`, `\\`, "*", `\*`, "?", `\?`, "[", `\[`, "]", `\]`)

// keysUnder lists the keys that start with prefix.
func keysUnder(ctx context.Context, tb testing.TB, c *redis.Client, prefix string) []string {
	tb.Helper()
	var keys []string
	iter := c.Scan(ctx, 0, globEscaper.Replace(prefix)+"*", 1000).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		tb.Fatalf("scan %q: %v", prefix, err)
	}
	return keys
}

func newTable(tb testing.TB, c *redis.Client, opts redisroute.Options) *redisroute.Table {
	tb.Helper()
	if opts.Prefix == "" {
		opts.Prefix = testPrefix(tb, c)
	}
	tbl := redisroute.New(c, opts, testLogger())
	tb.Cleanup(func() { tbl.Close() })
	return tbl
}

func TestContract(t *testing.T) {
	c := newClient(t)
	routetest.Run(t, func(t *testing.T) route.Table {
		return redisroute.New(c, redisroute.Options{Prefix: testPrefix(t, c)}, testLogger())
	})
}

func TestRouteExpiresUnlessTouched(t *testing.T) {
	const ttl = 2 * time.Second
	c := newClient(t)
	prefix := testPrefix(t, c)
	tbl := newTable(t, c, redisroute.Options{Prefix: prefix, RouteTTL: ttl})

	idle := route.Key("app", "idle")
	idleRoute := route.Route{Node: "gw-a", ConnID: 1}
	alive := route.Key("app", "alive")
	aliveRoute := route.Route{Node: "gw-a", ConnID: 2}
	bound := time.Now()
	bind(t, tbl, idle, idleRoute)
	bind(t, tbl, alive, aliveRoute)
	lastTouch := time.Now()

	// The gateway touches the live session's route every TTL/4 and never
	// the idle one's, until the idle one is gone.
	touch := func() {
		if time.Since(lastTouch) < ttl/4 {
			return
		}
		if err := tbl.Touch(t.Context(), alive, aliveRoute); err != nil {
			t.Fatalf("Touch: %v", err)
		}
		lastTouch = time.Now()
	}
	deadline := time.Now().Add(ttl + 15*time.Second)
	for len(lookup(t, tbl, idle)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("untouched route still there %v after its bind (TTL %v)", time.Since(bound), ttl)
		}
		touch()
		time.Sleep(20 * time.Millisecond)
	}
	if gone := time.Since(bound); gone < ttl {
		t.Errorf("untouched route vanished after %v, before its TTL %v", gone, ttl)
	}
	if err := tbl.Touch(t.Context(), idle, idleRoute); !errors.Is(err, redisroute.ErrNotBound) {
		t.Errorf("Touch of the expired route = %v, want %v", err, redisroute.ErrNotBound)
	}
	// Keep touching past a second TTL: the touched route lives on.
	for until := time.Now().Add(ttl); time.Now().Before(until); time.Sleep(20 * time.Millisecond) {
		touch()
	}
	if got := lookup(t, tbl, alive); got[alive] != aliveRoute {
		t.Fatalf("touched route = %v, want %+v, %v after its bind", got, aliveRoute, time.Since(bound))
	}

	// The gateway dies: no more touches. Its route goes, and so does
	// everything the table wrote (the node's index), without DropNode.
	died := time.Now()
	deadline = time.Now().Add(ttl + 15*time.Second)
	for {
		keys := keysUnder(t.Context(), t, c, prefix)
		if len(keys) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("keys still there %v after the last touch (TTL %v): %q", time.Since(died), ttl, keys)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := lookup(t, tbl, alive); len(got) != 0 {
		t.Fatalf("route of the dead gateway = %v, want none", got)
	}
}

func TestTouchOnlyItsOwnRoute(t *testing.T) {
	tbl := newTable(t, newClient(t), redisroute.Options{})
	dev := route.Key("app", "phone")
	old := route.Route{Node: "gw-a", ConnID: 1}
	cur := route.Route{Node: "gw-b", ConnID: 2}
	bind(t, tbl, dev, old)
	bind(t, tbl, dev, cur)

	tests := []struct {
		name   string
		device string
		r      route.Route
		want   error
	}{
		{"current route", dev, cur, nil},
		{"replaced session", dev, old, redisroute.ErrNotBound},
		{"never bound", route.Key("app", "other"), cur, redisroute.ErrNotBound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tbl.Touch(t.Context(), tt.device, tt.r); !errors.Is(err, tt.want) {
				t.Fatalf("Touch(%q, %+v) = %v, want %v", tt.device, tt.r, err, tt.want)
			}
		})
	}
	if got := lookup(t, tbl, dev); got[dev] != cur {
		t.Fatalf("route after touches = %v, want %+v", got, cur)
	}
	// The replaced node no longer owns the device.
	if err := tbl.DropNode(t.Context(), "gw-a"); err != nil {
		t.Fatal(err)
	}
	if got := lookup(t, tbl, dev); got[dev] != cur {
		t.Fatalf("route after dropping the old node = %v, want %+v", got, cur)
	}
}

func TestDropNode10k(t *testing.T) {
	const n, moved = 10_000, 200
	c := newClient(t)
	prefix := testPrefix(t, c)
	tbl := newTable(t, c, redisroute.Options{Prefix: prefix})

	devices := make([]string, n)
	want := make(map[string]route.Route, n/2)
	for i := range devices {
		devices[i] = route.Key("app", fmt.Sprintf("device-%05d", i))
	}
	bindAll(t, tbl, n, func(i int) (string, route.Route) {
		node := []string{"gw-a", "gw-b"}[i%2]
		return devices[i], route.Route{Node: node, ConnID: uint64(i)}
	})
	// Some of gw-a's devices moved to gw-b since.
	bindAll(t, tbl, moved, func(i int) (string, route.Route) {
		return devices[2*i], route.Route{Node: "gw-b", ConnID: uint64(n + i)}
	})
	for i, d := range devices {
		switch {
		case i%2 == 1:
			want[d] = route.Route{Node: "gw-b", ConnID: uint64(i)}
		case i/2 < moved:
			want[d] = route.Route{Node: "gw-b", ConnID: uint64(n + i/2)}
		}
	}

	start := time.Now()
	if err := tbl.DropNode(t.Context(), "gw-a"); err != nil {
		t.Fatalf("DropNode: %v", err)
	}
	t.Logf("DropNode of %d routes took %v", n/2-moved, time.Since(start))
	wantRoutes(t, lookup(t, tbl, devices...), want)

	// Nothing of gw-a is left behind, and gw-b's index is intact: dropping
	// it too leaves an empty table.
	if keys := keysUnder(t.Context(), t, c, prefix+"node:"); len(keys) == 0 {
		t.Fatal("no index of gw-b")
	} else {
		for _, k := range keys {
			if k[len(k)-4:] != "gw-b" {
				t.Fatalf("index key %q left after dropping gw-a", k)
			}
		}
	}
	if err := tbl.DropNode(t.Context(), "gw-b"); err != nil {
		t.Fatalf("DropNode: %v", err)
	}
	if keys := keysUnder(t.Context(), t, c, prefix); len(keys) != 0 {
		t.Fatalf("%d keys left after dropping every node, for example %q", len(keys), keys[0])
	}
}

func TestLookup5000(t *testing.T) {
	const n = 5000
	tbl := newTable(t, newClient(t), redisroute.Options{})
	devices := make([]string, n)
	want := make(map[string]route.Route, n/2)
	for i := range devices {
		devices[i] = route.Key(fmt.Sprintf("app%d", i%7), fmt.Sprintf("device-%05d", i))
		if i%2 == 0 {
			want[devices[i]] = route.Route{Node: fmt.Sprintf("gw-%d", i%5), ConnID: uint64(i) << 32}
		}
	}
	bindAll(t, tbl, n/2, func(i int) (string, route.Route) {
		return devices[2*i], want[devices[2*i]]
	})
	wantRoutes(t, lookup(t, tbl, devices...), want)
}

func TestUnbindAndRebindLeaveNothingBehind(t *testing.T) {
	const n = 200
	c := newClient(t)
	prefix := testPrefix(t, c)
	tbl := newTable(t, c, redisroute.Options{Prefix: prefix})
	devs := make([]string, n)
	for i := range devs {
		devs[i] = route.Key("app", fmt.Sprint(i))
	}
	// Every device connects to gw-a, half move to gw-b, and then every
	// session ends with its own Unbind; the stale gw-a sessions' unbinds
	// come last, as they do when an old TCP connection times out.
	bindAll(t, tbl, n, func(i int) (string, route.Route) { return devs[i], route.Route{Node: "gw-a", ConnID: uint64(i)} })
	bindAll(t, tbl, n/2, func(i int) (string, route.Route) { return devs[i], route.Route{Node: "gw-b", ConnID: uint64(i)} })
	for i, d := range devs {
		r := route.Route{Node: "gw-a", ConnID: uint64(i)}
		if i < n/2 {
			r.Node = "gw-b"
		}
		if ok, err := tbl.Unbind(t.Context(), d, r); err != nil || !ok {
			t.Fatalf("Unbind(%q, %+v) = %v, %v; want true", d, r, ok, err)
		}
	}
	for i, d := range devs[:n/2] {
		if ok, err := tbl.Unbind(t.Context(), d, route.Route{Node: "gw-a", ConnID: uint64(i)}); err != nil || ok {
			t.Fatalf("stale Unbind(%q) = %v, %v; want false", d, ok, err)
		}
	}
	if keys := keysUnder(t.Context(), t, c, prefix); len(keys) != 0 {
		t.Fatalf("%d keys left after every session ended, for example %q", len(keys), keys[0])
	}
}

func BenchmarkLookup100(b *testing.B) {
	const bound = 10_000
	tbl := newTable(b, newClient(b), redisroute.Options{})
	bindAll(b, tbl, bound, func(i int) (string, route.Route) {
		return route.Key("app", fmt.Sprint(i)), route.Route{Node: "gw", ConnID: uint64(i)}
	})
	batch := make([]string, 100)
	for i := range batch {
		batch[i] = route.Key("app", fmt.Sprint(i*997%(bound*2))) // about half bound
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tbl.Lookup(b.Context(), batch); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBind(b *testing.B) {
	tbl := newTable(b, newClient(b), redisroute.Options{})
	keys := make([]string, 1<<14)
	for i := range keys {
		keys[i] = route.Key("app", fmt.Sprint(i))
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if err := tbl.Bind(b.Context(), keys[i&(len(keys)-1)], route.Route{Node: "gw", ConnID: uint64(i)}); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

// bindAll binds n routes from 16 goroutines.
func bindAll(tb testing.TB, tbl route.Table, n int, at func(i int) (string, route.Route)) {
	tb.Helper()
	const workers = 16
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				d, r := at(i)
				if err := tbl.Bind(tb.Context(), d, r); err != nil {
					errs[w] = err
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		tb.Fatal(err)
	}
}

func bind(tb testing.TB, tbl route.Table, device string, r route.Route) {
	tb.Helper()
	if err := tbl.Bind(tb.Context(), device, r); err != nil {
		tb.Fatalf("Bind(%q, %+v): %v", device, r, err)
	}
}

func lookup(tb testing.TB, tbl route.Table, devices ...string) map[string]route.Route {
	tb.Helper()
	got, err := tbl.Lookup(tb.Context(), devices)
	if err != nil {
		tb.Fatalf("Lookup(%d devices): %v", len(devices), err)
	}
	return got
}

// wantRoutes fails unless got is exactly want, naming a few differences.
func wantRoutes(tb testing.TB, got, want map[string]route.Route) {
	tb.Helper()
	var diffs []string
	for d, w := range want {
		if g, ok := got[d]; !ok {
			diffs = append(diffs, fmt.Sprintf("%q: no route, want %+v", d, w))
		} else if g != w {
			diffs = append(diffs, fmt.Sprintf("%q: %+v, want %+v", d, g, w))
		}
	}
	for d, g := range got {
		if _, ok := want[d]; !ok {
			diffs = append(diffs, fmt.Sprintf("%q: unexpected route %+v", d, g))
		}
	}
	if len(diffs) > 0 {
		tb.Fatalf("%d routes differ (of %d wanted), first: %v", len(diffs), len(want), diffs[:min(5, len(diffs))])
	}
}
