package etcdroute_test

import (
	"fmt"
	clientv3 "go.etcd.io/etcd/client/v3"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/heraldpush/herald/pkg/etcdembed"
	"github.com/heraldpush/herald/pkg/route"
	"github.com/heraldpush/herald/pkg/route/etcdroute"
	"github.com/heraldpush/herald/pkg/route/routetest"
)

func testLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// startEtcd starts a real etcd server in the test process.
func startEtcd(tb testing.TB) *etcdembed.Server {
	tb.Helper()
	srv, err := etcdembed.Start(tb.Context(), etcdembed.Config{Dir: tb.TempDir(), Logger: testLogger()})
	if err != nil {
		tb.Fatalf("start etcd: %v", err)
	}
	tb.Cleanup(func() {
		if err := srv.Close(); err != nil {
			tb.Errorf("close etcd: %v", err)
		}
	})
	return srv
}

func TestContract(t *testing.T) {
	srv := startEtcd(t)
	routetest.Run(t, func(t *testing.T) route.Table {
		// One server for the suite; each subtest gets its own keyspace.
		return etcdroute.New(srv.Client(), etcdroute.Options{Prefix: "/test/" + t.Name() + "/"}, testLogger())
	})
}

func TestContractSmallTransactions(t *testing.T) {
	srv := startEtcd(t)
	tbl := etcdroute.New(srv.Client(), etcdroute.Options{MaxTxnOps: 3}, testLogger())
	defer tbl.Close()
	var devices []string
	want := map[string]route.Route{}
	for i := range 10 {
		d := route.Key("app", fmt.Sprint(i))
		devices = append(devices, d)
		if i%3 != 0 {
			want[d] = route.Route{Node: "gw", ConnID: uint64(i)}
			bind(t, tbl, d, want[d])
		}
	}
	got, err := tbl.Lookup(t.Context(), devices)
	if err != nil {
		t.Fatalf("Lookup: %v", err)
	}
	if len(got) != len(want) {
		t.Fatalf("Lookup = %v, want %v", got, want)
	}
	for d, r := range want {
		if got[d] != r {
			t.Fatalf("Lookup[%q] = %+v, want %+v", d, got[d], r)
		}
	}
}

func TestRoutesOfDeadGatewayExpire(t *testing.T) {
	srv := startEtcd(t)
	dial := func() *clientv3.Client {
		cli, err := srv.Dial()
		if err != nil {
			t.Fatal(err)
		}
		return cli
	}
	live, _ := deadGatewayRoutesExpire(t, srv.Client(), dial, etcdroute.Options{}, 15*time.Second)
	live.Close()
}

// deadGatewayRoutesExpire is the dead-gateway scenario, on any etcd: a live
// gateway binds a route, then a second gateway process with its own etcd
// client binds five and dies without DropNode (keepalives stop, nothing is
// revoked). Its routes must vanish after the 2 s lease TTL (within grace
// more), not before half of it, while the live gateway's older, kept-alive
// route survives. It returns the live table and the dead gateway's devices.
func deadGatewayRoutesExpire(t *testing.T, liveCli *clientv3.Client, dial func() *clientv3.Client, opts etcdroute.Options, grace time.Duration) (*etcdroute.Table, []string) {
	t.Helper()
	const ttl = 2 * time.Second
	opts.LeaseTTL = ttl

	live := etcdroute.New(liveCli, opts, testLogger())
	liveDev := route.Key("app", "on-live-gateway")
	liveRoute := route.Route{Node: "gw-live", ConnID: 1}
	bind(t, live, liveDev, liveRoute) // granted first: expires first if not kept alive

	deadCli := dial()
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
	died := time.Now()
	if err := dead.Close(); err != nil {
		t.Fatal(err)
	}
	if err := deadCli.Close(); err != nil {
		t.Fatal(err)
	}

	// etcd enforces at least its minimum TTL and may add up to an election
	// timeout after a leader change; allow generously, but bounded.
	deadline := time.Now().Add(ttl + grace)
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
	if got := lookup(t, live, liveDev); got[liveDev] != liveRoute {
		t.Fatalf("route of the live gateway = %v, want %+v (kept alive past the TTL)", got, liveRoute)
	}
	return live, deadDevs
}

func TestDropNodeFromAnotherTableAndRebind(t *testing.T) {
	srv := startEtcd(t)
	gateway := etcdroute.New(srv.Client(), etcdroute.Options{}, testLogger())
	defer gateway.Close()
	router := etcdroute.New(srv.Client(), etcdroute.Options{}, testLogger())
	defer router.Close()

	devs := []string{route.Key("app", "a"), route.Key("app", "b")}
	for i, d := range devs {
		bind(t, gateway, d, route.Route{Node: "gw-1", ConnID: uint64(i)})
	}
	other := route.Key("app", "elsewhere")
	bind(t, gateway, other, route.Route{Node: "gw-2", ConnID: 9})

	// A different process (the router) drops gw-1: it finds the lease
	// through the node's lease record.
	if err := router.DropNode(t.Context(), "gw-1"); err != nil {
		t.Fatalf("DropNode: %v", err)
	}
	if got := lookup(t, gateway, devs...); len(got) != 0 {
		t.Fatalf("routes after DropNode from another table: %v, want none", got)
	}

	// The gateway's lease is gone under it; its next bind grants a new one.
	r := route.Route{Node: "gw-1", ConnID: 42}
	bind(t, gateway, devs[0], r)
	if got := lookup(t, router, devs[0], other); got[devs[0]] != r || got[other] != (route.Route{Node: "gw-2", ConnID: 9}) {
		t.Fatalf("routes after rebind = %v", got)
	}
	// And DropNode works again on the new lease.
	if err := router.DropNode(t.Context(), "gw-1"); err != nil {
		t.Fatalf("second DropNode: %v", err)
	}
	if got := lookup(t, gateway, devs...); len(got) != 0 {
		t.Fatalf("routes after second DropNode: %v, want none", got)
	}
}

func BenchmarkLookup100(b *testing.B) {
	srv := startEtcd(b)
	tbl := etcdroute.New(srv.Client(), etcdroute.Options{}, testLogger())
	defer tbl.Close()
	batch := make([]string, 100)
	for i := range batch {
		batch[i] = route.Key("app", fmt.Sprint(i))
		if i%2 == 0 {
			bind(b, tbl, batch[i], route.Route{Node: "gw", ConnID: uint64(i)})
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tbl.Lookup(b.Context(), batch); err != nil {
			b.Fatal(err)
		}
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
		tb.Fatalf("Lookup: %v", err)
	}
	return got
}
