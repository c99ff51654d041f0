package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/etcdembed"
)

// waitFor bounds the wait for something that should happen at once.
const waitFor = 10 * time.Second

func testLogger(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tb.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// startEtcd starts a real etcd server in the test process.
func startEtcd(tb testing.TB) *etcdembed.Server {
	tb.Helper()
	srv, err := etcdembed.Start(tb.Context(), etcdembed.Config{Dir: tb.TempDir(), Logger: testLogger(tb)})
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

func gw(node string) Gateway {
	return Gateway{Node: node, DeviceAddr: "10.0.0.1:5222", GRPCAddr: "10.0.0.1:9091", Weight: 100}
}

func register(tb testing.TB, cli *clientv3.Client, g Gateway, ttl time.Duration, opts ...Option) *Registration {
	tb.Helper()
	r, err := Register(tb.Context(), cli, g, ttl, testLogger(tb), opts...)
	if err != nil {
		tb.Fatalf("Register(%s): %v", g.Node, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = r.Close(ctx)
	})
	return r
}

// recorder collects a Set's events.
type recorder struct {
	mu     sync.Mutex
	events []string
}

func (r *recorder) record(ev Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev.Kind.String()+" "+ev.Gateway.Node)
}

func (r *recorder) has(want string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Contains(r.events, want)
}

func watch(tb testing.TB, cli *clientv3.Client, opts ...Option) (*Set, *recorder) {
	tb.Helper()
	rec := &recorder{}
	s, err := Watch(tb.Context(), cli, testLogger(tb), append(opts, OnChange(rec.record))...)
	if err != nil {
		tb.Fatalf("Watch: %v", err)
	}
	tb.Cleanup(s.Close)
	return s, rec
}

// eventually polls cond until it holds, waiting on the Set's change
// notifications.
func eventually(tb testing.TB, s *Set, within time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		ch := s.Changed()
		if cond() {
			return
		}
		select {
		case <-ch:
		case <-time.After(20 * time.Millisecond):
		case <-deadline.C:
			tb.Fatalf("after %s: %s", within, what)
		}
	}
}

func TestRegisterSeeUnregister(t *testing.T) {
	srv := startEtcd(t)
	cli := srv.Client()
	before := register(t, cli, gw("gw-before"), 10*time.Second)
	s, rec := watch(t, cli)
	if _, ok := s.Get("gw-before"); !ok || !rec.has("joined gw-before") {
		t.Fatalf("a gateway registered before Watch is missing: %v %v", s.List(), rec.events)
	}

	r := register(t, cli, gw("gw-1"), 10*time.Second, WithLoadInterval(20*time.Millisecond))
	eventually(t, s, waitFor, "gw-1 not seen", func() bool { _, ok := s.Get("gw-1"); return ok })
	got, _ := s.Get("gw-1")
	if want := gw("gw-1"); got.DeviceAddr != want.DeviceAddr || got.GRPCAddr != want.GRPCAddr || got.Weight != 100 || got.StartedAt.IsZero() {
		t.Fatalf("Get(gw-1) = %+v", got)
	}
	if nodes := nodesOf(s.List()); !slices.Equal(nodes, []string{"gw-1", "gw-before"}) {
		t.Fatalf("List() = %v", nodes)
	}

	r.SetLoad(42)
	eventually(t, s, waitFor, "load 42 not seen", func() bool { g, _ := s.Get("gw-1"); return g.Load == 42 })
	if !rec.has("updated gw-1") {
		t.Errorf("no update event: %v", rec.events)
	}

	// Graceful shutdown: gone at once, not after the 10s TTL.
	start := time.Now()
	if err := r.Close(t.Context()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	eventually(t, s, 3*time.Second, "gw-1 still registered after Close", func() bool { _, ok := s.Get("gw-1"); return !ok })
	if !rec.has("left gw-1") {
		t.Errorf("no left event: %v", rec.events)
	}
	t.Logf("gone %s after Close", time.Since(start))
	if err := r.Close(t.Context()); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, ok := s.Get("gw-before"); !ok {
		t.Errorf("closing gw-1 removed gw-before")
	}
	_ = before
}

func TestLoadWritesAreThrottled(t *testing.T) {
	srv := startEtcd(t)
	cli := srv.Client()
	s, rec := watch(t, cli)
	r := register(t, cli, gw("gw-1"), 10*time.Second, WithLoadInterval(300*time.Millisecond))
	eventually(t, s, waitFor, "gw-1 not seen", func() bool { _, ok := s.Get("gw-1"); return ok })
	for i := range 1000 {
		r.SetLoad(i + 1)
	}
	eventually(t, s, waitFor, "load 1000 not seen", func() bool { g, _ := s.Get("gw-1"); return g.Load == 1000 })
	rec.mu.Lock()
	updates := 0
	for _, e := range rec.events {
		if e == "updated gw-1" {
			updates++
		}
	}
	rec.mu.Unlock()
	if updates > 2 {
		t.Fatalf("%d load writes for 1000 quick SetLoad calls, want at most 2", updates)
	}
}

func TestGatewayVanishesWhenItsProcessDies(t *testing.T) {
	const ttl = 2 * time.Second
	srv := startEtcd(t)
	s, rec := watch(t, srv.Client())

	// The "gateway process" has its own client; dying = the client closes
	// without revoking anything.
	own, err := srv.Dial()
	if err != nil {
		t.Fatal(err)
	}
	register(t, own, gw("gw-dies"), ttl)
	register(t, srv.Client(), gw("gw-lives"), ttl)
	eventually(t, s, waitFor, "gw-dies not seen", func() bool { _, ok := s.Get("gw-dies"); return ok })

	if err := own.Close(); err != nil {
		t.Fatalf("close client: %v", err)
	}
	died := time.Now()
	if _, ok := s.Get("gw-dies"); !ok {
		t.Fatal("gw-dies vanished before its lease expired")
	}
	eventually(t, s, ttl+5*time.Second, "gw-dies still registered after its TTL", func() bool { _, ok := s.Get("gw-dies"); return !ok })
	t.Logf("gone %s after the process died (ttl %s)", time.Since(died), ttl)
	if !rec.has("left gw-dies") {
		t.Errorf("no left event: %v", rec.events)
	}
	if _, ok := s.Get("gw-lives"); !ok {
		t.Fatal("the live gateway vanished too: its keepalive failed")
	}
}

func TestRegistrationSurvivesALostLease(t *testing.T) {
	srv := startEtcd(t)
	cli := srv.Client()
	s, rec := watch(t, cli)
	// The client notices a lost lease at its next keepalive (every TTL/3).
	r := register(t, cli, gw("gw-1"), 3*time.Second)
	eventually(t, s, waitFor, "gw-1 not seen", func() bool { _, ok := s.Get("gw-1"); return ok })

	// etcd forgets the lease (as after a partition longer than the TTL).
	r.mu.Lock()
	lease := r.lease
	r.mu.Unlock()
	if _, err := cli.Revoke(t.Context(), lease); err != nil {
		t.Fatal(err)
	}
	eventually(t, s, waitFor, "gw-1 not removed by the revoke", func() bool { return rec.has("left gw-1") })
	eventually(t, s, waitFor, "gw-1 did not register again", func() bool { _, ok := s.Get("gw-1"); return ok })
}

func TestWatchListsAgainAfterCompaction(t *testing.T) {
	srv := startEtcd(t)
	cli := srv.Client()
	gone := register(t, cli, gw("gw-gone"), 10*time.Second)
	s, rec := watch(t, cli)
	if _, ok := s.Get("gw-gone"); !ok {
		t.Fatal("gw-gone not listed")
	}

	// Stop watching, change things, compact the history the Set would
	// resume from, then resume: it must list again.
	s.Close()
	if err := gone.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	register(t, cli, gw("gw-new"), 10*time.Second)
	resp, err := cli.Get(t.Context(), "anything")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(t.Context(), resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	s.cancel, s.done = cancel, make(chan struct{})
	go s.run(ctx)

	eventually(t, s, waitFor, "the Set did not list again", func() bool {
		_, newOK := s.Get("gw-new")
		_, goneOK := s.Get("gw-gone")
		return newOK && !goneOK
	})
	if !rec.has("left gw-gone") || !rec.has("joined gw-new") {
		t.Errorf("events %v, want the listing's difference", rec.events)
	}
}

func TestRegisterRejectsBadInput(t *testing.T) {
	srv := startEtcd(t)
	tests := []struct {
		name string
		g    Gateway
		ttl  time.Duration
	}{
		{"no node", Gateway{DeviceAddr: "a:1", GRPCAddr: "a:2"}, time.Second},
		{"slash in node", Gateway{Node: "a/b", DeviceAddr: "a:1", GRPCAddr: "a:2"}, time.Second},
		{"no device address", Gateway{Node: "n", GRPCAddr: "a:2"}, time.Second},
		{"no grpc address", Gateway{Node: "n", DeviceAddr: "a:1"}, time.Second},
		{"no ttl", Gateway{Node: "n", DeviceAddr: "a:1", GRPCAddr: "a:2"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Register(t.Context(), srv.Client(), tt.g, tt.ttl, nil); !errors.Is(err, herald.ErrInvalidArgument) {
				t.Fatalf("Register: %v, want ErrInvalidArgument", err)
			}
		})
	}
}

func TestPrefixesAreIsolated(t *testing.T) {
	srv := startEtcd(t)
	cli := srv.Client()
	a, _ := watch(t, cli, WithPrefix("/test/a"))
	b, _ := watch(t, cli, WithPrefix("/test/b/"))
	register(t, cli, gw("gw-a"), 10*time.Second, WithPrefix("/test/a/"))
	register(t, cli, gw("gw-b"), 10*time.Second, WithPrefix("/test/b"))
	eventually(t, a, waitFor, "gw-a not seen", func() bool { _, ok := a.Get("gw-a"); return ok })
	eventually(t, b, waitFor, "gw-b not seen", func() bool { _, ok := b.Get("gw-b"); return ok })
	if got := nodesOf(a.List()); !slices.Equal(got, []string{"gw-a"}) {
		t.Errorf("prefix a lists %v", got)
	}
	if got := nodesOf(b.List()); !slices.Equal(got, []string{"gw-b"}) {
		t.Errorf("prefix b lists %v", got)
	}
}

func TestSetEndpoints(t *testing.T) {
	srv := startEtcd(t)
	cli := srv.Client()
	s, _ := watch(t, cli)
	if _, err := s.Endpoints(t.Context(), "app", "dev"); !errors.Is(err, herald.ErrUnavailable) {
		t.Fatalf("Endpoints with no gateway: %v, want ErrUnavailable", err)
	}
	for i := range 3 {
		g := gw(fmt.Sprintf("gw-%d", i))
		g.DeviceAddr = fmt.Sprintf("10.0.0.%d:5222", i)
		register(t, cli, g, 10*time.Second)
	}
	eventually(t, s, waitFor, "3 gateways not seen", func() bool { return len(s.List()) == 3 })
	eps, err := s.Endpoints(t.Context(), "app", "dev")
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != 3 {
		t.Fatalf("Endpoints = %v, want 3", eps)
	}
	again, _ := s.Endpoints(t.Context(), "app", "dev")
	if !slices.Equal(eps, again) {
		t.Fatalf("order changed between calls: %v then %v", eps, again)
	}
}

func nodesOf(gws []Gateway) []string {
	var out []string
	for _, g := range gws {
		out = append(out, g.Node)
	}
	return out
}
