package gateway_test

import (
	"log/slog"
	"os"
	"testing"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/heraldpush/herald/pkg/store"
	herald "github.com/heraldpush/herald/sdk/go"
	"github.com/heraldpush/herald/services/gateway"
	"github.com/heraldpush/herald/services/gateway/gatewaytest"
)

// TestMain gives the in-package tests the gatewaytest harness, which
// they cannot import themselves (gatewaytest imports package gateway).
func TestMain(m *testing.M) {
	gateway.Harness = harness
	os.Exit(m.Run())
}

func harness(tb testing.TB, cfg gateway.Config, meter metric.Meter) gateway.HarnessEnv {
	tb.Helper()
	e := gatewaytest.Start(tb, gatewaytest.Options{
		Config: cfg, NodeID: "gw-rpc", RPC: 5 * time.Second, Meter: meter, LogLevel: slog.LevelWarn,
		App: store.App{ID: "app-rpc", Name: "rpc", Key: "key-rpc", Secret: "secret"},
	})
	register := func(tb testing.TB, deviceID string) store.App {
		tb.Helper()
		now := time.Now()
		e.RegisterDevice(tb, store.Device{ID: deviceID, CreatedAt: now, UpdatedAt: now})
		return e.App
	}
	return gateway.HarnessEnv{
		Gateway: e.Gateway, RPC: e.RPC, Store: e.Store, Log: e.Log, Receipts: e.Receipts, Routes: e.Routes,
		RegisterDevice: register,
		Connect: func(tb testing.TB, deviceID string, onMessage func(herald.Message)) gateway.HarnessDevice {
			tb.Helper()
			register(tb, deviceID)
			d := e.Connect(tb, deviceID, 100, onMessage)
			return gateway.HarnessDevice{Key: d.Key, Route: d.Route, Msgs: d.Msgs, Client: d.Client, Done: d.Done}
		},
	}
}
