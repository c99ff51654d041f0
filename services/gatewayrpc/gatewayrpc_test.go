package gatewayrpc_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
	"github.com/heraldpush/herald/pkg/delivery"
	"github.com/heraldpush/herald/pkg/discovery"
	"github.com/heraldpush/herald/pkg/envelope/internalv1"
	"github.com/heraldpush/herald/pkg/etcdembed"
	"github.com/heraldpush/herald/pkg/route"
	"github.com/heraldpush/herald/pkg/store"
	sdk "github.com/heraldpush/herald/sdk/go"
	"github.com/heraldpush/herald/services/api"
	"github.com/heraldpush/herald/services/dispatcher"
	"github.com/heraldpush/herald/services/gateway/gatewaytest"
	"github.com/heraldpush/herald/services/gatewayrpc"
)

var (
	_ dispatcher.Gateways = (*gatewayrpc.Client)(nil)
	_ api.Kicker          = (*gatewayrpc.Client)(nil)
)

const waitFor = 10 * time.Second

func testLogger(tb testing.TB) *slog.Logger {
	return gatewaytest.Logger(tb, slog.LevelError)
}

// cluster is one real gateway node registered in a real (embedded) etcd,
// the discovery Set the other roles would keep, and a Client over it.
type cluster struct {
	etcd   *etcdembed.Server
	set    *discovery.Set
	gw     *gatewaytest.Env
	client *gatewayrpc.Client
}

func startCluster(tb testing.TB, opts gatewayrpc.Options) *cluster {
	tb.Helper()
	log := testLogger(tb)
	srv, err := etcdembed.Start(tb.Context(), etcdembed.Config{Dir: tb.TempDir(), Logger: log})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = srv.Close() })
	gw := gatewaytest.Start(tb, gatewaytest.Options{
		RPC: 2 * time.Second,
		App: store.App{ID: "app", Name: "app", Key: "key", Secret: "secret"},
	})

	reg, err := discovery.Register(tb.Context(), srv.Client(), discovery.Gateway{
		Node: "gw-1", DeviceAddr: gw.Gateway.Addr(), GRPCAddr: gw.RPC.Addr(), Weight: 100,
	}, 10*time.Second, log)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = reg.Close(context.Background()) })
	set, err := discovery.Watch(tb.Context(), srv.Client(), log)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(set.Close)
	client := gatewayrpc.New(set, gw.Routes, opts, log)
	tb.Cleanup(func() { _ = client.Close() })
	return &cluster{etcd: srv, set: set, gw: gw, client: client}
}

// register adds a gateway node to discovery (one that may not exist).
func (c *cluster) register(tb testing.TB, node, grpcAddr string) {
	tb.Helper()
	reg, err := discovery.Register(tb.Context(), c.etcd.Client(), discovery.Gateway{
		Node: node, DeviceAddr: "127.0.0.1:1", GRPCAddr: grpcAddr, Weight: 100,
	}, 10*time.Second, testLogger(tb))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = reg.Close(context.Background()) })
	deadline := time.Now().Add(waitFor)
	for {
		if _, ok := c.set.Get(node); ok {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s never seen", node)
		}
		select {
		case <-c.set.Changed():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// connect registers a device and connects it to the gateway with the SDK.
func (c *cluster) connect(tb testing.TB, deviceID string) *gatewaytest.Device {
	tb.Helper()
	c.gw.RegisterDevice(tb, store.Device{ID: deviceID})
	return c.gw.Connect(tb, deviceID, 1000, nil)
}

func receive(tb testing.TB, d *gatewaytest.Device, n int) map[string]bool {
	tb.Helper()
	got := map[string]bool{}
	for len(got) < n {
		select {
		case m := <-d.Msgs:
			got[m.ID] = true
		case <-time.After(waitFor):
			tb.Fatalf("received %d of %d messages", len(got), n)
		}
	}
	return got
}

func push(d *gatewaytest.Device, id string) delivery.Delivery {
	return delivery.Delivery{Device: d.Key, ConnID: d.Route.ConnID, Envelope: &internalv1.Envelope{
		AppId: "app", DeviceId: d.ID,
		Push: &devicev1.Push{MessageId: id, Kind: devicev1.Kind_KIND_DATA, Data: map[string]string{"id": id}},
	}}
}

func allAre(out []delivery.Outcome, want delivery.Outcome) bool {
	for _, o := range out {
		if o != want {
			return false
		}
	}
	return true
}

func TestDeliver(t *testing.T) {
	c := startCluster(t, gatewayrpc.Options{MaxBatch: 3}) // 10 deliveries: 4 calls
	d := c.connect(t, "dev-1")
	stale := push(d, "01STALE")
	stale.ConnID += 100
	ds := []delivery.Delivery{stale}
	for i := range 10 {
		ds = append(ds, push(d, fmt.Sprintf("01M%02d", i)))
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	out, err := c.client.Deliver(ctx, "gw-1", ds)
	if err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	if len(out) != len(ds) || out[0] != delivery.NotHere || !allAre(out[1:], delivery.Acked) {
		t.Fatalf("outcomes %v, want not_here then 10 acked", out)
	}
	got := receive(t, d, 10)
	if got["01STALE"] {
		t.Fatal("the stale session's message was delivered")
	}
}

func TestDeliverToMissingNodesStoresEverything(t *testing.T) {
	c := startCluster(t, gatewayrpc.Options{})
	d := c.connect(t, "dev-1")
	// Registered, but nothing listens at its gRPC address.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	_ = ln.Close()
	c.register(t, "gw-dead", dead)

	tests := []struct{ name, node string }{
		{"unknown node", "gw-never"},
		{"unreachable node", "gw-dead"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			start := time.Now()
			out, err := c.client.Deliver(ctx, tt.node, []delivery.Delivery{push(d, "01A"), push(d, "01B")})
			if err != nil || len(out) != 2 || !allAre(out, delivery.NotHere) {
				t.Fatalf("Deliver = %v, %v; want all not_here and no error", out, err)
			}
			if el := time.Since(start); el > 3*time.Second {
				t.Errorf("took %s: an unreachable node must fail fast", el)
			}
		})
	}
}

func TestDeliverWhenTheGatewayDies(t *testing.T) {
	c := startCluster(t, gatewayrpc.Options{})
	d := c.connect(t, "dev-1")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if out, _ := c.client.Deliver(ctx, "gw-1", []delivery.Delivery{push(d, "01A")}); !allAre(out, delivery.Acked) {
		t.Fatalf("first delivery %v", out)
	}
	c.gw.Stop() // still registered (its lease lives on), but gone
	out, err := c.client.Deliver(ctx, "gw-1", []delivery.Delivery{push(d, "01B"), push(d, "01C")})
	if err != nil || len(out) != 2 {
		t.Fatalf("Deliver = %v, %v", out, err)
	}
	for _, o := range out {
		if o == delivery.Acked {
			t.Fatalf("outcomes %v from a dead gateway", out)
		}
	}
	if err := c.client.Check(ctx, "gw-1"); !errors.Is(err, herald.ErrUnavailable) {
		t.Fatalf("Check of a dead gateway: %v, want ErrUnavailable", err)
	}
}

func TestDrain(t *testing.T) {
	c := startCluster(t, gatewayrpc.Options{})
	d := c.connect(t, "dev-1")
	p := push(d, "01STORED")
	body, err := proto.Marshal(p.Envelope)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.gw.Store.Put(t.Context(), "app", "dev-1", store.InboxEntry{MessageID: "01STORED", ExpiresAt: time.Now().Add(time.Hour), Body: body}); err != nil {
		t.Fatal(err)
	}
	if err := c.client.Drain(t.Context(), "gw-1", d.Key, d.Route.ConnID, false); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	if got := receive(t, d, 1); !got["01STORED"] {
		t.Fatalf("received %v", got)
	}
	if err := c.client.Drain(t.Context(), "gw-never", d.Key, 1, false); !errors.Is(err, herald.ErrUnavailable) {
		t.Fatalf("Drain on an unknown node: %v, want ErrUnavailable", err)
	}
}

func TestKick(t *testing.T) {
	c := startCluster(t, gatewayrpc.Options{})
	d := c.connect(t, "dev-1")
	if err := c.client.Kick(t.Context(), "app", "dev-nobody"); err != nil {
		t.Fatalf("Kick without a route: %v", err)
	}
	if err := c.gw.Routes.Bind(t.Context(), "app/dev-elsewhere", route.Route{Node: "gw-gone", ConnID: 7}); err != nil {
		t.Fatal(err)
	}
	if err := c.client.Kick(t.Context(), "app", "dev-elsewhere"); err != nil {
		t.Fatalf("Kick with a route to a vanished node: %v", err)
	}
	// The api kicks with a context that has no deadline.
	if err := c.client.Kick(context.WithoutCancel(t.Context()), "app", "dev-1"); err != nil {
		t.Fatalf("Kick: %v", err)
	}
	select {
	case err := <-d.Done:
		d.Done <- err
		var ce *sdk.CloseError
		if !errors.As(err, &ce) || ce.Code != frame.CodeDeviceDeleted {
			t.Fatalf("device Run returned %v, want close code 4006", err)
		}
	case <-time.After(waitFor):
		t.Fatal("the kicked device is still connected")
	}
}

func TestCheck(t *testing.T) {
	c := startCluster(t, gatewayrpc.Options{})
	deadline := time.Now().Add(waitFor)
	for {
		err := c.client.Check(t.Context(), "gw-1")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Check: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := c.client.Check(t.Context(), "gw-never"); !errors.Is(err, herald.ErrUnavailable) {
		t.Fatalf("Check of an unknown node: %v", err)
	}
}

func TestClosedClient(t *testing.T) {
	c := startCluster(t, gatewayrpc.Options{})
	d := c.connect(t, "dev-1")
	_ = c.client.Close()
	out, err := c.client.Deliver(t.Context(), "gw-1", []delivery.Delivery{push(d, "01A")})
	if err != nil || !allAre(out, delivery.NotHere) {
		t.Fatalf("Deliver after Close = %v, %v", out, err)
	}
}

func TestNodesBroadcastRefresh(t *testing.T) {
	c := startCluster(t, gatewayrpc.Options{})
	ctx := t.Context()
	d := c.connect(t, "dev-1")
	if got := c.client.Nodes(); len(got) != 1 || got[0] != "gw-1" {
		t.Fatalf("Nodes() = %v, want [gw-1]", got)
	}
	vip := &internalv1.Audience{TagExpr: "vip"}
	env := func(id string) *internalv1.Envelope {
		return &internalv1.Envelope{AppId: "app", Audience: vip, ExpiresAtMs: time.Now().Add(time.Hour).UnixMilli(),
			Push: &devicev1.Push{MessageId: id, Kind: devicev1.Kind_KIND_DATA, Data: map[string]string{"id": id}}}
	}
	if n, err := c.client.Broadcast(ctx, "gw-1", []*internalv1.Envelope{env("01G1")}); err != nil || !slices.Equal(n, []int64{0}) {
		t.Fatalf("Broadcast before the tag: %v %v, want 0 matched", n, err)
	}
	if _, err := c.gw.Store.UpdateTags(ctx, "app", "dev-1", []string{"vip"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.client.Refresh(ctx, "app", "dev-1"); err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	if err := c.client.Refresh(ctx, "app", "dev-nobody"); err != nil {
		t.Fatalf("Refresh without a route: %v", err)
	}
	if n, err := c.client.Broadcast(ctx, "gw-1", []*internalv1.Envelope{env("01G2")}); err != nil || !slices.Equal(n, []int64{1}) {
		t.Fatalf("Broadcast after Refresh: %v %v, want 1 matched", n, err)
	}
	if got := receive(t, d, 1); !got["01G2"] {
		t.Fatalf("received %v", got)
	}
	if n, err := c.client.Broadcast(ctx, "gw-1", []*internalv1.Envelope{env("01G5"), env("01G6")}); err != nil || !slices.Equal(n, []int64{1, 1}) {
		t.Fatalf("Broadcast of two messages: %v %v, want 1 matched each", n, err)
	}
	if got := receive(t, d, 2); !got["01G5"] || !got["01G6"] {
		t.Fatalf("received %v", got)
	}
	if n, err := c.client.Broadcast(ctx, "gw-gone", []*internalv1.Envelope{env("01G3")}); err != nil || !slices.Equal(n, []int64{0}) {
		t.Fatalf("Broadcast to a node that left: %v %v, want 0 and no error", n, err)
	}
	c.register(t, "gw-dead", "127.0.0.1:1")
	if _, err := c.client.Broadcast(ctx, "gw-dead", []*internalv1.Envelope{env("01G4")}); !errors.Is(err, herald.ErrUnavailable) {
		t.Fatalf("Broadcast to an unreachable node: %v, want ErrUnavailable", err)
	}
}

func TestLazyDrain(t *testing.T) {
	c := startCluster(t, gatewayrpc.Options{})
	d := c.connect(t, "dev-1")
	p := push(d, "01LAZY")
	body, err := proto.Marshal(p.Envelope)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.gw.Store.Put(t.Context(), "app", "dev-1", store.InboxEntry{MessageID: "01LAZY", ExpiresAt: time.Now().Add(time.Hour), Body: body}); err != nil {
		t.Fatal(err)
	}
	if err := c.client.Drain(t.Context(), "gw-1", d.Key, d.Route.ConnID, true); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	select {
	case m := <-d.Msgs:
		t.Fatalf("a lazy drain pushed %s before the device was active", m.ID)
	case <-time.After(300 * time.Millisecond):
	}
}
