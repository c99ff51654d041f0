package gateway

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
	"github.com/heraldpush/herald/pkg/envelope/internalv1"
	"github.com/heraldpush/herald/pkg/pushlog/pebblelog"
	"github.com/heraldpush/herald/pkg/receipt"
	"github.com/heraldpush/herald/pkg/route"
	"github.com/heraldpush/herald/pkg/route/memroute"
	"github.com/heraldpush/herald/pkg/store"
	"github.com/heraldpush/herald/pkg/store/pebblestore"
	herald "github.com/heraldpush/herald/sdk/go"
)

const rpcWait = 10 * time.Second

// rpcEnv is a running gateway on Pebble with its gRPC server and a client
// of it.
type rpcEnv struct {
	gw       *Gateway
	srv      *RPCServer
	store    *pebblestore.Store
	log      *pebblelog.Log
	receipts *receipt.Emitter
	routes   *memroute.Table
	client   internalv1.GatewayNodeClient
	health   healthpb.HealthClient
	h        HarnessEnv
}

// testIO is the I/O model the tests run the gateway with:
// HERALD_TEST_GATEWAY_IO, default goroutine.
func testIO() string {
	if io := os.Getenv("HERALD_TEST_GATEWAY_IO"); io != "" {
		return io
	}
	return IOGoroutine
}

// Harness starts a gateway for these tests with the start-up of package
// gatewaytest, which they cannot import (it imports this package):
// harness_test.go (package gateway_test) sets it in TestMain. The gateway
// is node "gw-rpc" with its gRPC server; the app is "app-rpc".
var Harness func(tb testing.TB, cfg Config, meter metric.Meter) HarnessEnv

// HarnessEnv is what Harness started.
type HarnessEnv struct {
	Gateway  *Gateway
	RPC      *RPCServer
	Store    *pebblestore.Store
	Log      *pebblelog.Log
	Receipts *receipt.Emitter
	Routes   *memroute.Table
	// RegisterDevice creates the app (once) and the device, whose token
	// is "token-<id>".
	RegisterDevice func(tb testing.TB, deviceID string) store.App
	// Connect registers a device and connects it with the SDK; its
	// messages go to onMessage (nil: to HarnessDevice.Msgs).
	Connect func(tb testing.TB, deviceID string, onMessage func(herald.Message)) HarnessDevice
}

// HarnessDevice is a device Harness connected.
type HarnessDevice struct {
	Key    string
	Route  route.Route
	Msgs   chan herald.Message
	Client *herald.Client
	Done   chan error
}

func startRPCEnv(tb testing.TB) *rpcEnv {
	tb.Helper()
	return startEnv(tb, testIO())
}

// startEnv starts a gateway with the given I/O model, its gRPC server and a
// client of it.
func startEnv(tb testing.TB, io string) *rpcEnv {
	tb.Helper()
	return startEnvWith(tb, Config{IO: io})
}

// startEnvWith starts a gateway with cfg (node id, address, ack and drain
// timeouts set by the harness), its gRPC server and a client of it.
func startEnvWith(tb testing.TB, cfg Config) *rpcEnv {
	tb.Helper()
	return startEnvMetered(tb, cfg, nil)
}

// startEnvMetered is startEnvWith with the gateway's metrics recorded on
// meter (nil: none).
func startEnvMetered(tb testing.TB, cfg Config, meter metric.Meter) *rpcEnv {
	tb.Helper()
	h := Harness(tb, cfg, meter)
	conn, err := grpc.NewClient(h.RPC.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return &rpcEnv{gw: h.Gateway, srv: h.RPC, store: h.Store, log: h.Log, receipts: h.Receipts, routes: h.Routes,
		client: internalv1.NewGatewayNodeClient(conn), health: healthpb.NewHealthClient(conn), h: h}
}

// rpcDevice is a registered device connected with the SDK: its route and
// its received messages.
type rpcDevice struct {
	key    string
	route  route.Route
	msgs   chan herald.Message
	client *herald.Client
	done   chan error
}

func (e *rpcEnv) connectDevice(tb testing.TB, deviceID string) *rpcDevice {
	return e.connectDeviceWith(tb, deviceID, nil)
}

// connectDeviceWith connects a device whose messages go to onMessage (nil:
// to rpcDevice.msgs).
func (e *rpcEnv) connectDeviceWith(tb testing.TB, deviceID string, onMessage func(herald.Message)) *rpcDevice {
	tb.Helper()
	d := e.h.Connect(tb, deviceID, onMessage)
	return &rpcDevice{key: d.Key, route: d.Route, msgs: d.Msgs, client: d.Client, done: d.Done}
}

// registerDevice creates the test app (once) and the device, whose token
// is "token-<id>".
func (e *rpcEnv) registerDevice(tb testing.TB, deviceID string) store.App {
	tb.Helper()
	return e.h.RegisterDevice(tb, deviceID)
}

func envelope(deviceID, msgID string) *internalv1.Envelope {
	return &internalv1.Envelope{
		AppId: "app-rpc", DeviceId: deviceID,
		Push: &devicev1.Push{MessageId: msgID, Kind: devicev1.Kind_KIND_DATA, Data: map[string]string{"k": msgID}},
	}
}

func TestRPCDeliver(t *testing.T) {
	e := startRPCEnv(t)
	d := e.connectDevice(t, "dev-1")
	tests := []struct {
		name string
		req  *internalv1.DeliverRequest
		want []internalv1.Outcome
		got  []string // message ids the device must receive
	}{
		{
			name: "live session acks",
			req: &internalv1.DeliverRequest{Node: "gw-rpc", Deliveries: []*internalv1.Delivery{
				{Device: d.key, ConnId: d.route.ConnID, Envelope: envelope("dev-1", "01M1")},
				{Device: d.key, ConnId: d.route.ConnID + 1000, Envelope: envelope("dev-1", "01M2")}, // a stale session
				{Device: "app-rpc/nobody", ConnId: 1, Envelope: envelope("nobody", "01M3")},
				{Device: d.key, ConnId: d.route.ConnID}, // no envelope
				{Device: d.key, ConnId: d.route.ConnID, Envelope: envelope("dev-1", "01M4")},
			}},
			want: []internalv1.Outcome{
				internalv1.Outcome_OUTCOME_ACKED, internalv1.Outcome_OUTCOME_NOT_HERE, internalv1.Outcome_OUTCOME_NOT_HERE,
				internalv1.Outcome_OUTCOME_NOT_HERE, internalv1.Outcome_OUTCOME_ACKED,
			},
			got: []string{"01M1", "01M4"},
		},
		{
			name: "another node's deliveries are not here",
			req: &internalv1.DeliverRequest{Node: "gw-other", Deliveries: []*internalv1.Delivery{
				{Device: d.key, ConnId: d.route.ConnID, Envelope: envelope("dev-1", "01M5")},
			}},
			want: []internalv1.Outcome{internalv1.Outcome_OUTCOME_NOT_HERE},
		},
		{name: "empty", req: &internalv1.DeliverRequest{Node: "gw-rpc"}, want: []internalv1.Outcome{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			resp, err := e.client.Deliver(ctx, tt.req)
			if err != nil {
				t.Fatalf("Deliver: %v", err)
			}
			if got := resp.GetOutcomes(); len(got) != len(tt.want) {
				t.Fatalf("outcomes %v, want %v", got, tt.want)
			}
			for i, o := range resp.GetOutcomes() {
				if o != tt.want[i] {
					t.Fatalf("outcomes %v, want %v", resp.GetOutcomes(), tt.want)
				}
			}
			for _, id := range tt.got {
				select {
				case m := <-d.msgs:
					if m.ID != id {
						t.Fatalf("device got %s, want %s", m.ID, id)
					}
				case <-time.After(rpcWait):
					t.Fatalf("device did not get %s", id)
				}
			}
			select {
			case m := <-d.msgs:
				t.Fatalf("device got unexpected %s", m.ID)
			default:
			}
		})
	}
}

func TestRPCDeliverAnswersBeforeTheCallerGivesUp(t *testing.T) {
	e := startRPCEnv(t)
	// The device's handler blocks, so it never acks (the SDK acks after
	// OnMessage returns). The gateway's ack timeout (2s) is longer than
	// the call's deadline: the gateway must answer TIMED_OUT in time
	// instead of the call failing.
	block := make(chan struct{})
	defer close(block)
	d := e.connectDeviceWith(t, "dev-silent", func(herald.Message) { <-block })
	ctx, cancel := context.WithTimeout(t.Context(), 800*time.Millisecond)
	defer cancel()
	resp, err := e.client.Deliver(ctx, &internalv1.DeliverRequest{Node: "gw-rpc", Deliveries: []*internalv1.Delivery{
		{Device: d.key, ConnId: d.route.ConnID, Envelope: envelope("dev-silent", "01SLOW")},
	}})
	if err != nil {
		t.Fatalf("Deliver: %v (the answer must beat the deadline)", err)
	}
	if o := resp.GetOutcomes(); len(o) != 1 || o[0] != internalv1.Outcome_OUTCOME_TIMED_OUT {
		t.Fatalf("outcomes %v", o)
	}
}

func TestRPCDrain(t *testing.T) {
	e := startRPCEnv(t)
	d := e.connectDevice(t, "dev-1")
	body, err := proto.Marshal(envelope("dev-1", "01STORED"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.Put(t.Context(), "app-rpc", "dev-1", store.InboxEntry{MessageID: "01STORED", ExpiresAt: time.Now().Add(time.Hour), Body: body}); err != nil {
		t.Fatal(err)
	}
	// A drain for another node or a stale session does nothing.
	for _, req := range []*internalv1.DrainRequest{
		{Node: "gw-other", Device: d.key, ConnId: d.route.ConnID},
		{Node: "gw-rpc", Device: d.key, ConnId: d.route.ConnID + 1},
	} {
		if _, err := e.client.Drain(t.Context(), req); err != nil {
			t.Fatalf("Drain(%v): %v", req, err)
		}
	}
	select {
	case m := <-d.msgs:
		t.Fatalf("got %s from a drain meant for another session", m.ID)
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := e.client.Drain(t.Context(), &internalv1.DrainRequest{Node: "gw-rpc", Device: d.key, ConnId: d.route.ConnID}); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	select {
	case m := <-d.msgs:
		if m.ID != "01STORED" {
			t.Fatalf("got %s, want 01STORED", m.ID)
		}
	case <-time.After(rpcWait):
		t.Fatal("the drain did not push the stored message")
	}
}

func TestRPCKick(t *testing.T) {
	e := startRPCEnv(t)
	d := e.connectDevice(t, "dev-1")
	if _, err := e.client.Kick(t.Context(), &internalv1.KickRequest{Node: "gw-rpc", AppId: "app-rpc", DeviceId: "dev-1"}); err != nil {
		t.Fatalf("Kick: %v", err)
	}
	select {
	case err := <-d.done:
		d.done <- err // for the cleanup
		var ce *herald.CloseError
		if !errors.As(err, &ce) || ce.Code != frame.CodeDeviceDeleted {
			t.Fatalf("Run returned %v, want close code 4006", err)
		}
	case <-time.After(rpcWait):
		t.Fatal("the kicked device is still connected")
	}
}

func TestRPCHealth(t *testing.T) {
	e := startRPCEnv(t)
	for _, svc := range []string{"", internalv1.GatewayNode_ServiceDesc.ServiceName} {
		deadline := time.Now().Add(rpcWait)
		for {
			resp, err := e.health.Check(t.Context(), &healthpb.HealthCheckRequest{Service: svc})
			if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("health of %q: %v %v, want SERVING", svc, resp.GetStatus(), err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}
