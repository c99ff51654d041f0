package receipts_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/heraldpush/herald/pkg/pebbledb"
	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/pkg/pushlog/pebblelog"
	"github.com/heraldpush/herald/pkg/receipt"
	"github.com/heraldpush/herald/pkg/store"
	"github.com/heraldpush/herald/pkg/store/pebblestore"
	"github.com/heraldpush/herald/services/receipts"
)

var discard = slog.New(slog.DiscardHandler)

type env struct {
	log   *pebblelog.Log
	store *pebblestore.Store
	em    *receipt.Emitter
	rd    *sdkmetric.ManualReader
	meter *sdkmetric.MeterProvider
}

func newEnv(tb testing.TB) *env {
	tb.Helper()
	ldb, err := pebbledb.Open(tb.TempDir(), discard)
	if err != nil {
		tb.Fatalf("open log db: %v", err)
	}
	tb.Cleanup(func() { _ = ldb.Close() })
	l, err := pebblelog.New(ldb, pebblelog.Options{}, discard)
	if err != nil {
		tb.Fatalf("pebblelog.New: %v", err)
	}
	tb.Cleanup(func() { _ = l.Close() })
	sdb, err := pebbledb.Open(tb.TempDir(), discard)
	if err != nil {
		tb.Fatalf("open store db: %v", err)
	}
	tb.Cleanup(func() { _ = sdb.Close() })
	st := pebblestore.New(sdb, pebblestore.Options{}, discard)
	tb.Cleanup(func() { _ = st.Close() })
	rd := sdkmetric.NewManualReader()
	return &env{log: l, store: st, em: receipt.NewEmitter(l, discard), rd: rd, meter: sdkmetric.NewMeterProvider(sdkmetric.WithReader(rd))}
}

// emit appends receipts to the receipts log through the real emitter.
func (e *env) emit(tb testing.TB, rs ...receipt.Receipt) {
	tb.Helper()
	for _, r := range rs {
		e.em.Emit(r)
	}
	if err := e.em.Flush(tb.Context()); err != nil {
		tb.Fatalf("flush receipts: %v", err)
	}
}

func (e *env) createApp(tb testing.TB, id, webhook string) store.App {
	tb.Helper()
	a := store.App{ID: id, Name: id, Key: "key-" + id, Secret: "secret-" + id, CreatedAt: time.Now(), WebhookURL: webhook}
	if err := e.store.CreateApp(tb.Context(), a); err != nil {
		tb.Fatalf("create app: %v", err)
	}
	return a
}

func (e *env) counter(tb testing.TB, name string) int64 {
	tb.Helper()
	var rm metricdata.ResourceMetrics
	if err := e.rd.Collect(tb.Context(), &rm); err != nil {
		tb.Fatalf("collect metrics: %v", err)
	}
	var n int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if s, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == name {
				for _, p := range s.DataPoints {
					n += p.Value
				}
			}
		}
	}
	return n
}

// run starts a role and stops it at the end of the test.
func run(tb testing.TB, r interface{ Run(context.Context) error }) (stop func()) {
	tb.Helper()
	ctx, cancel := context.WithCancel(tb.Context())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				tb.Errorf("Run: %v", err)
			}
		})
	}
	tb.Cleanup(stop)
	return stop
}

func eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var hour0 = time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)

func at(d time.Duration) int64 { return hour0.Add(d).UnixMilli() }

func (e *env) stats(tb testing.TB, app string) []store.StatBucket {
	tb.Helper()
	b, err := e.store.Stats(tb.Context(), app, hour0.Add(-24*time.Hour), hour0.Add(24*time.Hour))
	if err != nil {
		tb.Fatalf("stats: %v", err)
	}
	return b
}

func (e *env) counts(tb testing.TB, msg string) store.Counts {
	tb.Helper()
	_, c, err := e.store.MessageStatus(tb.Context(), msg)
	if err != nil {
		tb.Fatalf("message status %s: %v", msg, err)
	}
	return c
}

func newStats(tb testing.TB, e *env) *receipts.Stats {
	tb.Helper()
	s, err := receipts.NewStats(receipts.StatsConfig{}, receipts.StatsDeps{Log: e.log, Store: e.store, Meter: e.meter.Meter("test")}, discard)
	if err != nil {
		tb.Fatalf("NewStats: %v", err)
	}
	return s
}

func TestStats(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	if err := e.store.CreateMessage(ctx, store.Message{ID: "g1", AppID: "app1", Group: true, Audience: "tags", CreatedAt: hour0, ExpiresAt: hour0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := e.store.CreateMessage(ctx, store.Message{ID: "u1", AppID: "app1", Targets: []string{"d1", "d2"}, Audience: "devices", CreatedAt: hour0, ExpiresAt: hour0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	e.emit(t,
		// Group message g1: 100 matched on one gateway, 20 on another, 1 replayed.
		receipt.Receipt{AppID: "app1", MessageID: "g1", Event: receipt.EventSent, Count: 100, Group: true, AtMS: at(time.Minute)},
		receipt.Receipt{AppID: "app1", MessageID: "g1", Event: receipt.EventSent, Count: 20, Group: true, AtMS: at(time.Minute)},
		receipt.Receipt{AppID: "app1", MessageID: "g1", Event: receipt.EventSent, Count: 1, Group: true, AtMS: at(90 * time.Minute)},
		receipt.Receipt{AppID: "app1", MessageID: "g1", DeviceID: "a", Event: receipt.EventDelivered, Group: true, AtMS: at(2 * time.Minute)},
		receipt.Receipt{AppID: "app1", MessageID: "g1", DeviceID: "b", Event: receipt.EventDelivered, Group: true, AtMS: at(2 * time.Minute)},
		receipt.Receipt{AppID: "app1", MessageID: "g1", DeviceID: "c", Event: receipt.EventDelivered, Group: true, AtMS: at(91 * time.Minute)},
		receipt.Receipt{AppID: "app1", MessageID: "g1", DeviceID: "a", Event: receipt.EventClicked, Group: true, AtMS: at(3 * time.Minute)},
		receipt.Receipt{AppID: "app1", MessageID: "g1", DeviceID: "a", Event: receipt.EventOpened, Group: true, AtMS: at(3 * time.Minute)},
		// Unicast u1: delivered counts come from status marks, not counters.
		receipt.Receipt{AppID: "app1", MessageID: "u1", Event: receipt.EventSent, Count: 2, AtMS: at(time.Minute)},
		receipt.Receipt{AppID: "app1", MessageID: "u1", DeviceID: "d1", Event: receipt.EventDelivered, AtMS: at(time.Minute)},
		receipt.Receipt{AppID: "app1", MessageID: "u1", DeviceID: "d1", Event: receipt.EventClicked, AtMS: at(4 * time.Minute)},
		receipt.Receipt{AppID: "app1", MessageID: "u1", DeviceID: "d2", Event: receipt.EventExpired, AtMS: at(5 * time.Minute)},
		// Another app, another hour.
		receipt.Receipt{AppID: "app2", MessageID: "u2", Event: receipt.EventSent, Count: 5, AtMS: at(-time.Hour)},
	)
	// A value that is not a receipt is skipped, not fatal.
	if err := e.log.Append(ctx, pushlog.TopicReceipts, pushlog.Record{Key: []byte("app1"), Value: []byte("{oops")}); err != nil {
		t.Fatal(err)
	}

	stop := run(t, newStats(t, e))
	want1 := []store.StatBucket{
		{Hour: hour0, StatCounts: store.StatCounts{Sent: 122, Delivered: 3, Clicked: 2}},
		{Hour: hour0.Add(time.Hour), StatCounts: store.StatCounts{Sent: 1, Delivered: 1}},
	}
	eventually(t, "app1 statistics", func() bool { return fmt.Sprint(e.stats(t, "app1")) == fmt.Sprint(want1) })
	eventually(t, "app2 statistics", func() bool {
		return fmt.Sprint(e.stats(t, "app2")) == fmt.Sprint([]store.StatBucket{{Hour: hour0.Add(-time.Hour), StatCounts: store.StatCounts{Sent: 5}}})
	})
	if c := e.counts(t, "g1"); c.Targeted != 121 || c.Delivered != 3 || c.Clicked != 1 || c.Pending != 118 {
		t.Errorf("g1 counts %+v, want targeted 121, delivered 3, clicked 1, pending 118", c)
	}
	if c := e.counts(t, "u1"); c.Targeted != 2 || c.Delivered != 0 || c.Clicked != 1 {
		t.Errorf("u1 counts %+v, want targeted 2 (its targets), delivered 0 (no marks), clicked 1", c)
	}
	eventually(t, "the bad value counted", func() bool { return e.counter(t, "herald_receipts_bad") == 1 })

	// After a restart, what was committed is not counted again.
	stop()
	run(t, newStats(t, e))
	e.emit(t, receipt.Receipt{AppID: "app1", MessageID: "g1", DeviceID: "z", Event: receipt.EventDelivered, Group: true, AtMS: at(time.Minute)})
	want1[0].Delivered++
	eventually(t, "the new receipt counted once", func() bool { return fmt.Sprint(e.stats(t, "app1")) == fmt.Sprint(want1) })
	if c := e.counts(t, "g1"); c.Targeted != 121 || c.Delivered != 4 {
		t.Errorf("g1 counts after restart %+v, want targeted 121, delivered 4", c)
	}
}

// receiver is an app's webhook endpoint: it checks every request's
// signature and records the receipts it accepted.
type receiver struct {
	*httptest.Server
	secret string
	fail   atomic.Int32 // answer 500 to this many more requests

	mu       sync.Mutex
	got      map[string]int // "message/device/event" -> times received
	requests int
	badSig   int
}

func newReceiver(tb testing.TB, secret string) *receiver {
	r := &receiver{secret: secret, got: map[string]int{}}
	r.Server = httptest.NewServer(http.HandlerFunc(r.serve))
	tb.Cleanup(r.Close)
	return r
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests++
	if err != nil || req.Method != http.MethodPost || req.Header.Get("Content-Type") != "application/json" {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	if !receipts.Verify(body, r.secret, req.Header.Get(receipts.SignatureHeader)) {
		r.badSig++
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	if r.fail.Load() > 0 {
		r.fail.Add(-1)
		http.Error(w, "try later", http.StatusInternalServerError)
		return
	}
	var p receipts.Payload
	if err := json.Unmarshal(body, &p); err != nil {
		http.Error(w, "bad json", http.StatusBadRequest)
		return
	}
	for _, rc := range p.Receipts {
		r.got[rc.MessageID+"/"+rc.DeviceID+"/"+rc.Event]++
	}
	w.WriteHeader(http.StatusNoContent)
}

func (r *receiver) snapshot() (got map[string]int, requests, badSig int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	got = make(map[string]int, len(r.got))
	for k, v := range r.got {
		got[k] = v
	}
	return got, r.requests, r.badSig
}

// closedURL is an address nothing listens on.
func closedURL(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return "http://" + addr + "/hook"
}

func newWebhooks(tb testing.TB, e *env, cfg receipts.WebhooksConfig) *receipts.Webhooks {
	tb.Helper()
	w, err := receipts.NewWebhooks(cfg, receipts.WebhooksDeps{Log: e.log, Apps: e.store, Meter: e.meter.Meter("test")}, discard)
	if err != nil {
		tb.Fatalf("NewWebhooks: %v", err)
	}
	return w
}

func deviceReceipts(app, msg string, events ...string) []receipt.Receipt {
	var rs []receipt.Receipt
	for i, ev := range events {
		rs = append(rs, receipt.Receipt{AppID: app, MessageID: msg, DeviceID: fmt.Sprintf("d%d", i), Event: ev, AtMS: at(0)})
	}
	return rs
}

func TestWebhooksSignedAndRetried(t *testing.T) {
	e := newEnv(t)
	ok := newReceiver(t, "secret-ok")
	flaky := newReceiver(t, "secret-flaky")
	flaky.fail.Store(1) // 500 once, then fine
	e.createApp(t, "ok", ok.URL)
	e.createApp(t, "flaky", flaky.URL)
	e.createApp(t, "quiet", "") // no webhook: nothing is posted

	all := []string{receipt.EventDelivered, receipt.EventClicked, receipt.EventOpened, receipt.EventExpired, receipt.EventFailed, receipt.EventRecalled}
	e.emit(t, deviceReceipts("ok", "m1", all...)...)
	e.emit(t, receipt.Receipt{AppID: "ok", MessageID: "m1", Event: receipt.EventSent, Count: 6, AtMS: at(0)})
	e.emit(t, deviceReceipts("flaky", "m2", receipt.EventDelivered, receipt.EventDelivered)...)
	e.emit(t, deviceReceipts("quiet", "m3", receipt.EventDelivered)...)
	e.emit(t, deviceReceipts("unknown-app", "m4", receipt.EventDelivered)...)

	// Default backoff: the flaky app's retry comes 0.5 s after its 500.
	run(t, newWebhooks(t, e, receipts.WebhooksConfig{}))
	wantOK := map[string]int{}
	for i, ev := range all {
		wantOK[fmt.Sprintf("m1/d%d/%s", i, ev)] = 1
	}
	eventually(t, "the ok app's receipts", func() bool { got, _, _ := ok.snapshot(); return fmt.Sprint(got) == fmt.Sprint(wantOK) })
	eventually(t, "the flaky app's receipts after a retry", func() bool {
		got, _, _ := flaky.snapshot()
		return fmt.Sprint(got) == fmt.Sprint(map[string]int{"m2/d0/delivered": 1, "m2/d1/delivered": 1})
	})
	if _, reqs, bad := flaky.snapshot(); reqs != 2 || bad != 0 {
		t.Errorf("flaky receiver: %d requests (%d badly signed), want 2 well signed", reqs, bad)
	}
	if _, _, bad := ok.snapshot(); bad != 0 {
		t.Errorf("%d badly signed requests", bad)
	}
	if n := e.counter(t, "herald_webhook_receipts_dropped"); n != 0 {
		t.Errorf("%d receipts dropped, want 0", n)
	}
}

func TestWebhooksSettingChangesApply(t *testing.T) {
	e := newEnv(t)
	rcv := newReceiver(t, "secret-a")
	e.createApp(t, "a", "")
	run(t, newWebhooks(t, e, receipts.WebhooksConfig{AppCache: 20 * time.Millisecond}))
	e.emit(t, receipt.Receipt{AppID: "a", MessageID: "before", DeviceID: "d", Event: receipt.EventDelivered})
	// (Whether "before" is posted depends on when the consumer reads it.)
	// PATCH /v1/app {"webhook_url"}: later receipts go to the new URL.
	if err := e.store.UpdateApp(t.Context(), store.App{ID: "a", WebhookURL: rcv.URL}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "receipts at the new URL", func() bool {
		e.emit(t, receipt.Receipt{AppID: "a", MessageID: "after", DeviceID: "d", Event: receipt.EventDelivered})
		got, _, _ := rcv.snapshot()
		return got["after/d/delivered"] > 0
	})
}

func TestDeadWebhookDoesNotHoldBackStats(t *testing.T) {
	e := newEnv(t)
	e.createApp(t, "down", closedURL(t))
	ctx := t.Context()
	if err := e.store.CreateMessage(ctx, store.Message{ID: "g", AppID: "down", Group: true, Audience: "all", CreatedAt: hour0, ExpiresAt: hour0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	backoff := []time.Duration{10 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond, 80 * time.Millisecond}
	run(t, newWebhooks(t, e, receipts.WebhooksConfig{Backoff: backoff}))
	run(t, newStats(t, e))
	rs := append([]receipt.Receipt{{AppID: "down", MessageID: "g", Event: receipt.EventSent, Count: 3, Group: true, AtMS: at(0)}},
		deviceReceipts("down", "g", receipt.EventDelivered, receipt.EventDelivered, receipt.EventClicked)...)
	for i := range rs {
		rs[i].Group = true
		rs[i].AtMS = at(0)
	}
	e.emit(t, rs...)
	eventually(t, "statistics despite the dead webhook", func() bool {
		c := e.counts(t, "g")
		return c.Targeted == 3 && c.Delivered == 2 && c.Clicked == 1
	})
	// The webhook consumer retries 4 times, then drops the app's 3
	// receipts (not "sent") and moves on.
	eventually(t, "the dead webhook's receipts dropped", func() bool { return e.counter(t, "herald_webhook_receipts_dropped") == 3 })
}

func TestSignVerify(t *testing.T) {
	body := []byte(`{"receipts":[]}`)
	sig := receipts.Sign(body, "s3cret")
	// HMAC-SHA256("s3cret", body), computed independently:
	// printf '%s' '{"receipts":[]}' | openssl dgst -sha256 -hmac s3cret
	if want := "sha256=fb5e28081cba142e5a4548ec59aa7b518ed6b1994290665c5c730b7e70d002e5"; sig != want {
		t.Errorf("Sign = %s, want %s", sig, want)
	}
	tests := []struct {
		name   string
		body   []byte
		secret string
		sig    string
		ok     bool
	}{
		{"good", body, "s3cret", sig, true},
		{"other secret", body, "other", sig, false},
		{"other body", []byte(`{"receipts":[{}]}`), "s3cret", sig, false},
		{"no prefix", body, "s3cret", sig[len("sha256="):], false},
		{"empty", body, "s3cret", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := receipts.Verify(tt.body, tt.secret, tt.sig); got != tt.ok {
				t.Errorf("Verify = %v, want %v", got, tt.ok)
			}
		})
	}
}
