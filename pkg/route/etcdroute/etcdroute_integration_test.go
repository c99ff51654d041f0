//go:build integration

package etcdroute_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/heraldpush/herald/pkg/enginetest"
	"github.com/heraldpush/herald/pkg/route"
	"github.com/heraldpush/herald/pkg/route/etcdroute"
	"github.com/heraldpush/herald/pkg/route/routetest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// dialEtcd connects to the etcd of `make deps-up` (or HERALD_TEST_ETCD).
func dialEtcd(tb testing.TB) *clientv3.Client {
	tb.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   enginetest.Etcd(tb),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		tb.Fatalf("connect to etcd: %v", err)
	}
	tb.Cleanup(func() { cli.Close() })
	ctx, cancel := context.WithTimeout(tb.Context(), 10*time.Second)
	defer cancel()
	if _, err := cli.Get(ctx, "health"); err != nil {
		tb.Fatalf("etcd at %v does not answer: %v", cli.Endpoints(), err)
	}
	return cli
}

// testOptions returns options on a prefix no other test or run uses, and
// deletes its keys when the test ends (the leases expire by themselves).
func testOptions(tb testing.TB, cli *clientv3.Client) etcdroute.Options {
	tb.Helper()
	prefix := fmt.Sprintf("/herald-test/%s/%d/routes/", tb.Name(), time.Now().UnixNano())
	opts := etcdroute.Options{Prefix: prefix, LeasePrefix: prefix[:len(prefix)-len("routes/")] + "leases/"}
	tb.Cleanup(func() {
		// tb.Context() is already canceled when cleanups run.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, p := range []string{opts.Prefix, opts.LeasePrefix} {
			if _, err := cli.Delete(ctx, p, clientv3.WithPrefix()); err != nil {
				tb.Errorf("clean up %s: %v", p, err)
			}
		}
	})
	return opts
}

func TestContractRealEtcd(t *testing.T) {
	cli := dialEtcd(t)
	routetest.Run(t, func(t *testing.T) route.Table {
		return etcdroute.New(cli, testOptions(t, cli), testLogger())
	})
}

func TestRoutesOfDeadGatewayExpireRealEtcd(t *testing.T) {
	const ttl = 2 * time.Second
	liveCli := dialEtcd(t)
	opts := testOptions(t, liveCli)
	opts.LeaseTTL = ttl

	live := etcdroute.New(liveCli, opts, testLogger())
	defer live.Close()
	liveDev := route.Key("app", "on-live-gateway")
	liveRoute := route.Route{Node: "gw-live", ConnID: 1}
	bind(t, live, liveDev, liveRoute) // granted first: expires first if not kept alive

	// The gateway process that dies has its own connection to etcd.
	deadCli := dialEtcd(t)
	dead := etcdroute.New(deadCli, opts, testLogger())
	var deadDevs []string
	for i := range 5 {
		d := route.Key("app", fmt.Sprintf("on-dead-gateway-%d", i))
		deadDevs = append(deadDevs, d)
		bind(t, dead, d, route.Route{Node: "gw-dead", ConnID: uint64(i)})
	}
	if got := lookup(t, live, deadDevs...); len(got) != len(deadDevs) {
		t.Fatalf("routes of the gateway before it died: %v, want %d", got, len(deadDevs))
	}
	// Die without DropNode: keepalives stop, nothing is revoked.
	died := time.Now()
	if err := dead.Close(); err != nil {
		t.Fatal(err)
	}
	if err := deadCli.Close(); err != nil {
		t.Fatal(err)
	}

	// etcd enforces at least its minimum TTL and may add up to an election
	// timeout after a leader change; allow generously, but bounded.
	deadline := time.Now().Add(ttl + 20*time.Second)
	for len(lookup(t, live, deadDevs...)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("routes of the dead gateway still there %v after it died (lease TTL %v)", time.Since(died), ttl)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if gone := time.Since(died); gone < ttl/2 {
		t.Errorf("routes of the dead gateway vanished after %v, before the lease TTL %v", gone, ttl)
	}
	t.Logf("routes of the dead gateway vanished %v after it died (lease TTL %v)", time.Since(died), ttl)
	// The live gateway's lease is older than the dead one's, and it is kept
	// alive: its route is still there.
	if got := lookup(t, live, liveDev); got[liveDev] != liveRoute {
		t.Fatalf("route of the live gateway = %v, want %+v (kept alive past the TTL)", got, liveRoute)
	}
	// The dead node's lease record went with its lease: a restarted
	// gateway of the same name binds again, and DropNode still works.
	again := etcdroute.New(liveCli, opts, testLogger())
	defer again.Close()
	r := route.Route{Node: "gw-dead", ConnID: 100}
	bind(t, again, deadDevs[0], r)
	if got := lookup(t, live, deadDevs[0]); got[deadDevs[0]] != r {
		t.Fatalf("route after the gateway came back = %v, want %+v", got, r)
	}
	if err := live.DropNode(t.Context(), "gw-dead"); err != nil {
		t.Fatalf("DropNode: %v", err)
	}
	if got := lookup(t, live, deadDevs...); len(got) != 0 {
		t.Fatalf("routes after DropNode = %v, want none", got)
	}
}
