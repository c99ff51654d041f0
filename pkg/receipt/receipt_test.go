package receipt_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	herald "github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/pebbledb"
	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/pkg/pushlog/pebblelog"
	"github.com/heraldpush/herald/pkg/receipt"
)

func openLog(tb testing.TB) *pebblelog.Log {
	tb.Helper()
	db, err := pebbledb.Open(tb.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatalf("open db: %v", err)
	}
	l, err := pebblelog.New(db, pebblelog.Options{}, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatalf("pebblelog.New: %v", err)
	}
	tb.Cleanup(func() { _ = db.Close() })
	tb.Cleanup(func() { _ = l.Close() })
	return l
}

// readReceipts consumes the receipts log until it holds want receipts, and
// checks that each record is keyed by its app id.
func readReceipts(tb testing.TB, l pushlog.Log, want int) []receipt.Receipt {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), 10*time.Second)
	defer cancel()
	cons, err := l.Consume(ctx, pushlog.TopicReceipts, "test")
	if err != nil {
		tb.Fatalf("consume: %v", err)
	}
	defer cons.Close()
	var out []receipt.Receipt
	for len(out) < want {
		recs, err := cons.Fetch(ctx)
		if err != nil {
			tb.Fatalf("fetch after %d of %d receipts: %v", len(out), want, err)
		}
		for _, rec := range recs {
			r, err := receipt.Decode(rec.Value)
			if err != nil {
				tb.Fatalf("decode %q: %v", rec.Value, err)
			}
			if string(rec.Key) != r.AppID {
				tb.Errorf("record key %q, want the app id %q", rec.Key, r.AppID)
			}
			out = append(out, r)
		}
	}
	if len(out) != want {
		tb.Fatalf("got %d receipts, want %d", len(out), want)
	}
	return out
}

func counters(tb testing.TB, rd *sdkmetric.ManualReader) map[string]int64 {
	tb.Helper()
	var rm metricdata.ResourceMetrics
	if err := rd.Collect(tb.Context(), &rm); err != nil {
		tb.Fatalf("collect metrics: %v", err)
	}
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if s, ok := m.Data.(metricdata.Sum[int64]); ok {
				for _, p := range s.DataPoints {
					k := m.Name
					for _, kv := range p.Attributes.ToSlice() {
						k += fmt.Sprintf(",%s=%s", kv.Key, kv.Value.Emit())
					}
					out[k] += p.Value
				}
			}
		}
	}
	return out
}

func testReceipt(i int) receipt.Receipt {
	return receipt.Receipt{
		AppID:     fmt.Sprintf("app%d", i%3),
		MessageID: fmt.Sprintf("m%d", i),
		DeviceID:  fmt.Sprintf("d%d", i),
		Event:     receipt.EventDelivered,
		Count:     1,
		AtMS:      1764400000000 + int64(i),
	}
}

func TestEmitterRunAppendsEverything(t *testing.T) {
	l := openLog(t)
	rd := sdkmetric.NewManualReader()
	em := receipt.NewEmitter(l, nil, receipt.WithMeter(sdkmetric.NewMeterProvider(sdkmetric.WithReader(rd)).Meter("test")))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- em.Run(ctx) }()

	const n = 2000 // several batches
	want := map[string]receipt.Receipt{}
	for i := range n {
		r := testReceipt(i)
		want[r.MessageID] = r
		em.Emit(r)
	}
	got := readReceipts(t, l, n)
	for _, r := range got {
		if want[r.MessageID] != r {
			t.Errorf("receipt %+v, want %+v", r, want[r.MessageID])
		}
		delete(want, r.MessageID)
	}
	if len(want) != 0 {
		t.Errorf("%d receipts missing", len(want))
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	c := counters(t, rd)
	if c["herald_receipts_emitted"] != n || c["herald_receipts_dropped,reason=buffer_full"] != 0 {
		t.Errorf("metrics %v, want %d emitted and none dropped", c, n)
	}
}

func TestEmitterRunFlushesOnShutdown(t *testing.T) {
	l := openLog(t)
	em := receipt.NewEmitter(l, nil)
	ctx, cancel := context.WithCancel(t.Context())
	cancel() // Run starts already cancelled: it only flushes
	for i := range 10 {
		em.Emit(testReceipt(i))
	}
	if err := em.Run(ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
	readReceipts(t, l, 10)
}

func TestEmitterFillsDefaults(t *testing.T) {
	l := openLog(t)
	em := receipt.NewEmitter(l, nil)
	before := time.Now().UnixMilli()
	em.Emit(receipt.Receipt{AppID: "a", MessageID: "m", Event: receipt.EventClicked})
	if err := em.Flush(t.Context()); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	r := readReceipts(t, l, 1)[0]
	if r.Count != 1 || r.AtMS < before || r.AtMS > time.Now().UnixMilli() {
		t.Errorf("receipt %+v: want count 1 and at_ms now", r)
	}
}

func TestEmitterDropsWhenBufferFull(t *testing.T) {
	l := openLog(t)
	rd := sdkmetric.NewManualReader()
	em := receipt.NewEmitter(l, nil, receipt.WithBuffer(4),
		receipt.WithMeter(sdkmetric.NewMeterProvider(sdkmetric.WithReader(rd)).Meter("test")))
	start := time.Now()
	for i := range 10 { // nobody runs the emitter: Emit must still return
		em.Emit(testReceipt(i))
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Emit blocked for %v", d)
	}
	if err := em.Flush(t.Context()); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	kept := map[string]bool{}
	for _, r := range readReceipts(t, l, 4) {
		kept[r.MessageID] = true
	}
	for i := range 4 {
		if !kept[fmt.Sprintf("m%d", i)] {
			t.Errorf("receipt m%d missing: the first four emitted are kept (have %v)", i, kept)
		}
	}
	c := counters(t, rd)
	if c["herald_receipts_dropped,reason=buffer_full"] != 6 || c["herald_receipts_emitted"] != 4 {
		t.Errorf("metrics %v, want 6 dropped (buffer_full) and 4 emitted", c)
	}
}

func TestEmitterDropsWhenLogIsDown(t *testing.T) {
	l := openLog(t)
	rd := sdkmetric.NewManualReader()
	em := receipt.NewEmitter(l, nil, receipt.WithMeter(sdkmetric.NewMeterProvider(sdkmetric.WithReader(rd)).Meter("test")))
	if err := l.Close(); err != nil {
		t.Fatalf("close log: %v", err)
	}
	for i := range 3 {
		em.Emit(testReceipt(i))
	}
	// Flush retries, then gives up on the batch without an error: receipts
	// never hold anything else back.
	if err := em.Flush(t.Context()); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if c := counters(t, rd); c["herald_receipts_dropped,reason=append_failed"] != 3 {
		t.Errorf("metrics %v, want 3 dropped (append_failed)", c)
	}
	// Flush with a context that ends reports it.
	em.Emit(testReceipt(4))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := em.Flush(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Flush with a cancelled context = %v, want context.Canceled", err)
	}
}

func TestNilEmitter(t *testing.T) {
	var em *receipt.Emitter
	em.Emit(testReceipt(1))
	if err := em.Flush(t.Context()); err != nil {
		t.Errorf("Flush on nil: %v", err)
	}
}

func TestDecode(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    receipt.Receipt
		wantErr bool
	}{
		{"full", `{"app_id":"a","message_id":"m","device_id":"d","event":"delivered","count":1,"group":false,"at_ms":1764400000000}`,
			receipt.Receipt{AppID: "a", MessageID: "m", DeviceID: "d", Event: "delivered", Count: 1, AtMS: 1764400000000}, false},
		{"group sent", `{"app_id":"a","message_id":"m","event":"sent","count":250,"group":true,"at_ms":5}`,
			receipt.Receipt{AppID: "a", MessageID: "m", Event: "sent", Count: 250, Group: true, AtMS: 5}, false},
		{"count defaults to 1", `{"app_id":"a","message_id":"m","event":"clicked"}`,
			receipt.Receipt{AppID: "a", MessageID: "m", Event: "clicked", Count: 1}, false},
		{"unknown event and fields are kept for newer emitters", `{"app_id":"a","message_id":"m","event":"dismissed","extra":1}`,
			receipt.Receipt{AppID: "a", MessageID: "m", Event: "dismissed", Count: 1}, false},
		{"not json", `delivered`, receipt.Receipt{}, true},
		{"truncated", `{"app_id":"a"`, receipt.Receipt{}, true},
		{"wrong type", `{"app_id":"a","message_id":"m","event":"sent","count":"2"}`, receipt.Receipt{}, true},
		{"no app", `{"message_id":"m","event":"sent"}`, receipt.Receipt{}, true},
		{"no message", `{"app_id":"a","event":"sent"}`, receipt.Receipt{}, true},
		{"no event", `{"app_id":"a","message_id":"m"}`, receipt.Receipt{}, true},
		{"negative count", `{"app_id":"a","message_id":"m","event":"sent","count":-1}`, receipt.Receipt{}, true},
		{"empty", ``, receipt.Receipt{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := receipt.Decode([]byte(tt.in))
			if tt.wantErr {
				if !errors.Is(err, herald.ErrInvalidArgument) {
					t.Errorf("Decode = %+v, %v; want an invalid-argument error", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("Decode = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"app_id":"a","message_id":"m","device_id":"d","event":"delivered","count":1,"group":false,"at_ms":1}`))
	f.Add([]byte(`{"app_id":"a","message_id":"m","event":"sent","count":-1}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := receipt.Decode(b)
		if err != nil {
			return
		}
		if r.AppID == "" || r.MessageID == "" || r.Event == "" || r.Count < 1 {
			t.Fatalf("Decode(%q) accepted %+v", b, r)
		}
		r2, err := receipt.Decode(receipt.Encode(r))
		if err != nil || r2 != r {
			t.Fatalf("round trip of %+v = %+v, %v", r, r2, err)
		}
	})
}
