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
	liveCli := dialEtcd(t)
	opts := testOptions(t, liveCli)
	live, deadDevs := deadGatewayRoutesExpire(t, liveCli, func() *clientv3.Client { return dialEtcd(t) }, opts, 20*time.Second)
	defer live.Close()

	// The dead node's lease record went with its lease: a restarted
	// gateway of the same name binds again, and DropNode still works.
	opts.LeaseTTL = 2 * time.Second
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
