// Package gatewaytest starts a real gateway for other packages' tests: a
// Pebble store and push log in a temporary directory, the in-memory
// routing table, a receipt emitter, the gateway itself and (optionally)
// its gRPC server, plus helpers that register an app and devices and
// connect devices with the Go SDK. Everything started is stopped when the
// test ends.
package gatewaytest

import (
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/heraldpush/herald/pkg/pebbledb"
	"github.com/heraldpush/herald/pkg/pushlog/pebblelog"
	"github.com/heraldpush/herald/pkg/receipt"
	"github.com/heraldpush/herald/pkg/route"
	"github.com/heraldpush/herald/pkg/route/memroute"
	"github.com/heraldpush/herald/pkg/store"
	"github.com/heraldpush/herald/pkg/store/pebblestore"
	sdk "github.com/heraldpush/herald/sdk/go"
	"github.com/heraldpush/herald/services/gateway"
)

// Wait bounds every wait of the helpers (start, stop, a device's route).
const Wait = 10 * time.Second

// Options tunes Start. The zero value is a gateway "gw-1" without a gRPC
// server on a one-partition log, logging errors only.
type Options struct {
	// Config is the gateway's configuration; Start sets Addr
	// (127.0.0.1:0), NodeID, DrainTimeout (100ms) and, when zero,
	// AckTimeout (2s).
	Config gateway.Config
	// NodeID is the gateway's node id (default "gw-1").
	NodeID string
	// Partitions of the push log (default 1).
	Partitions int
	// RPC starts the gateway's gRPC server with this grace period (0: no
	// server).
	RPC time.Duration
	// RunReceipts runs the receipt emitter until the test ends (otherwise
	// receipts only queue in it).
	RunReceipts bool
	// Meter records the gateway's metrics (nil: none).
	Meter metric.Meter
	// LogLevel is the least level logged to the test's output; zero
	// (slog.LevelInfo) means slog.LevelError.
	LogLevel slog.Level
	// App is the app RegisterApp creates (default ID "app", key "key-app").
	App store.App
}

// Env is a running gateway and what it runs on.
type Env struct {
	Store    *pebblestore.Store
	Log      *pebblelog.Log
	Routes   *memroute.Table
	Receipts *receipt.Emitter
	Gateway  *gateway.Gateway
	RPC      *gateway.RPCServer // nil without Options.RPC
	NodeID   string
	App      store.App
	Logger   *slog.Logger

	stopOnce sync.Once
	stop     func()
}

// Logger returns a logger writing records of level and above to the
// test's output.
func Logger(tb testing.TB, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(tb.Output(), &slog.HandlerOptions{Level: level}))
}

// Start starts the gateway (and its gRPC server) and waits until it is
// ready; the test's cleanup stops it and closes the storage.
func Start(tb testing.TB, opts Options) *Env {
	tb.Helper()
	level := opts.LogLevel
	if level == 0 {
		level = slog.LevelError
	}
	log := Logger(tb, level)
	if opts.NodeID == "" {
		opts.NodeID = "gw-1"
	}
	if opts.Partitions == 0 {
		opts.Partitions = 1
	}
	if opts.App.ID == "" {
		opts.App = store.App{ID: "app", Name: "test", Key: "key-app", Secret: "secret"}
	}
	db, err := pebbledb.Open(tb.TempDir(), log)
	if err != nil {
		tb.Fatal(err)
	}
	st := pebblestore.New(db, pebblestore.Options{}, log)
	lg, err := pebblelog.New(db, pebblelog.Options{Partitions: opts.Partitions}, log)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = lg.Close()
		_ = st.Close()
		_ = db.Close()
	})
	e := &Env{Store: st, Log: lg, Routes: memroute.New(), Receipts: receipt.NewEmitter(lg, log),
		NodeID: opts.NodeID, App: opts.App, Logger: log}
	if opts.RunReceipts {
		Run(tb, "receipts", e.Receipts.Run)
	}
	cfg := opts.Config
	cfg.Addr, cfg.NodeID, cfg.DrainTimeout = "127.0.0.1:0", opts.NodeID, 100*time.Millisecond
	if cfg.AckTimeout == 0 {
		cfg.AckTimeout = 2 * time.Second
	}
	e.Gateway, err = gateway.New(cfg, gateway.Deps{
		Registry: st, Inbox: st, Status: st, Store: st, Routes: e.Routes, Log: lg, Receipts: e.Receipts, Meter: opts.Meter,
	}, log)
	if err != nil {
		tb.Fatal(err)
	}
	runs := []func(context.Context) error{e.Gateway.Run}
	ready := []<-chan struct{}{e.Gateway.Ready()}
	if opts.RPC > 0 {
		e.RPC = gateway.NewRPCServer(e.Gateway, gateway.RPCConfig{Addr: "127.0.0.1:0", GracePeriod: opts.RPC}, log)
		runs = append(runs, e.RPC.Run)
		ready = append(ready, e.RPC.Ready())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, len(runs))
	for _, run := range runs {
		go func() { done <- run(ctx) }()
	}
	e.stop = func() {
		cancel()
		for range runs {
			select {
			case err := <-done:
				if err != nil {
					tb.Errorf("Run: %v", err)
				}
			case <-time.After(Wait):
				tb.Error("Run did not return")
			}
		}
	}
	tb.Cleanup(e.Stop)
	for _, r := range ready {
		select {
		case <-r:
		case <-time.After(Wait):
			tb.Fatal("gateway not ready")
		}
	}
	return e
}

// Stop stops the gateway and its gRPC server (once; the test's cleanup
// calls it too). The storage stays open until the test ends.
func (e *Env) Stop() { e.stopOnce.Do(e.stop) }

// Run runs fn until the test ends, then reports an error it returned
// other than context.Canceled, or that it did not return within Wait.
func Run(tb testing.TB, name string, fn func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	tb.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) {
				tb.Errorf("%s: %v", name, err)
			}
		case <-time.After(Wait):
			tb.Errorf("%s did not stop", name)
		}
	})
}

// RegisterApp creates the env's app unless it exists.
func (e *Env) RegisterApp(tb testing.TB) store.App {
	tb.Helper()
	if _, err := e.Store.AppByID(tb.Context(), e.App.ID); err != nil {
		if err := e.Store.CreateApp(tb.Context(), e.App); err != nil {
			tb.Fatal(err)
		}
	}
	return e.App
}

// Token is the device token RegisterDevice registers and Connect connects
// with.
func Token(deviceID string) string { return "token-" + deviceID }

// RegisterDevice creates the env's app (unless it exists) and stores d in
// it, with the hash of Token(d.ID) and platform "android" unless set.
func (e *Env) RegisterDevice(tb testing.TB, d store.Device) {
	tb.Helper()
	e.RegisterApp(tb)
	d.AppID = e.App.ID
	if d.Platform == "" {
		d.Platform = "android"
	}
	if d.TokenHash == nil {
		sum := sha256.Sum256([]byte(Token(d.ID)))
		d.TokenHash = sum[:]
	}
	if err := e.Store.PutDevice(tb.Context(), d); err != nil {
		tb.Fatal(err)
	}
}

// Device is a device connected with the SDK.
type Device struct {
	ID     string
	Key    string      // route.Key(app, id)
	Route  route.Route // the route the gateway bound when it connected
	Msgs   chan sdk.Message
	Client *sdk.Client
	// Done receives what the client's Run returned; a test that reads it
	// must send it back for the cleanup.
	Done chan error
}

// Connect connects an already registered device with the SDK and waits
// until the gateway has bound its route. Its messages go to onMessage, or
// to Device.Msgs (buffer bufSize) when onMessage is nil. When the test
// ends the client is closed and waited for.
func (e *Env) Connect(tb testing.TB, deviceID string, bufSize int, onMessage func(sdk.Message)) *Device {
	tb.Helper()
	d := &Device{ID: deviceID, Key: route.Key(e.App.ID, deviceID), Msgs: make(chan sdk.Message, bufSize), Done: make(chan error, 1)}
	if onMessage == nil {
		onMessage = func(m sdk.Message) { d.Msgs <- m }
	}
	c, err := sdk.New(sdk.Config{
		Addrs: []string{e.Gateway.Addr()}, AppKey: e.App.Key, DeviceID: deviceID, Token: Token(deviceID),
		OnMessage: onMessage,
	})
	if err != nil {
		tb.Fatal(err)
	}
	d.Client = c
	go func() { d.Done <- c.Run(context.Background()) }()
	tb.Cleanup(func() {
		_ = c.Close()
		<-d.Done
	})
	deadline := time.Now().Add(Wait)
	for {
		got, err := e.Routes.Lookup(tb.Context(), []string{d.Key})
		if err != nil {
			tb.Fatal(err)
		}
		if r, ok := got[d.Key]; ok {
			d.Route = r
			return d
		}
		if time.Now().After(deadline) {
			tb.Fatalf("device %s never bound a route", deviceID)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
