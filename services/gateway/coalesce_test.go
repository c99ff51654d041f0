package gateway

import (
	"context"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/pkg/envelope/internalv1"
	"github.com/heraldpush/herald/pkg/receipt"
)

// writesOut reads the gateway's write counter (herald_gateway_frames_out).
func writesOut(tb testing.TB, r *sdkmetric.ManualReader) int64 {
	tb.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		tb.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "herald_gateway_frames_out" {
				continue
			}
			var n int64
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				n += dp.Value
			}
			return n
		}
	}
	return 0
}

// settled waits until the device's session is past its CONNECT drain and
// replay, so live group pushes are written rather than held.
func (e *rpcEnv) settled(tb testing.TB, deviceID string) *session {
	tb.Helper()
	var s *session
	eventually(tb, "session of "+deviceID+" settled", func() bool {
		if s = e.gw.lookup("app-rpc/" + deviceID); s == nil {
			return false
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		return !s.replaying
	})
	return s
}

// A batch of group messages reaches each session in one write, every
// device getting the messages it matches, in order, exactly once; each
// message is counted and receipted on its own.
func TestBroadcastBatchWritesOncePerSession(t *testing.T) {
	for _, model := range ioModels {
		t.Run(model, func(t *testing.T) {
			reader := sdkmetric.NewManualReader()
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
			t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
			e := startEnvMetered(t, Config{IO: model}, mp.Meter("test"))
			const n = 12
			devs := make([]*rawDevice, n)
			for i := range devs {
				id := "w" + strconv.Itoa(i)
				var tags []string
				if i%2 == 0 {
					tags = []string{"vip"}
				}
				e.registerProfile(t, id, profile{tags: tags})
				devs[i] = e.rawConnect(t, id, "")
			}
			for i := range devs {
				e.settled(t, "w"+strconv.Itoa(i))
			}
			// Messages 0, 2 and 4 go to everybody, 1 and 3 to the vip half.
			base := time.Now()
			envs := make([]*internalv1.Envelope, 5)
			for i := range envs {
				aud := &internalv1.Audience{All: true}
				if i%2 == 1 {
					aud = &internalv1.Audience{TagExpr: "vip"}
				}
				envs[i] = group(ulidAt(base.Add(time.Duration(i)*time.Millisecond)), aud)
			}
			before := writesOut(t, reader)
			matched, err := e.gw.BroadcastBatch(t.Context(), envs)
			if err != nil {
				t.Fatal(err)
			}
			if want := []int64{n, n / 2, n, n / 2, n}; !slices.Equal(matched, want) {
				t.Errorf("matched %v, want %v", matched, want)
			}
			for i, d := range devs {
				for k, env := range envs {
					if k%2 == 1 && i%2 == 1 {
						continue
					}
					p := d.push(t)
					if want := env.GetPush().GetMessageId(); p.GetMessageId() != want || !p.GetGroup() {
						t.Fatalf("device %d push %d: got %s (group %v), want %s", i, k, p.GetMessageId(), p.GetGroup(), want)
					}
				}
			}
			for _, d := range devs {
				d.quiet(t, 20*time.Millisecond) // exactly once
			}
			if got := writesOut(t, reader) - before; got != n {
				t.Errorf("%d writes for %d sessions, want one each", got, n)
			}
			for i, env := range envs {
				id := env.GetPush().GetMessageId()
				sent := e.receiptsWhere(t, func(r receipt.Receipt) bool { return r.MessageID == id && r.Event == receipt.EventSent })
				if len(sent) != 1 || sent[0].Count != matched[i] {
					t.Errorf("message %d: sent receipts %+v, want one with count %d", i, sent, matched[i])
				}
			}
			// Group acks are known per message.
			devs[0].ack(t, envs[0].GetPush().GetMessageId(), envs[1].GetPush().GetMessageId())
			eventually(t, "delivered receipts", func() bool {
				return len(e.receiptsWhere(t, func(r receipt.Receipt) bool { return r.Event == receipt.EventDelivered && r.DeviceID == "w0" })) == 2
			})
			// The same batch again (a retried call) pushes nothing and
			// answers as before.
			again, err := e.gw.BroadcastBatch(t.Context(), envs)
			if err != nil || !slices.Equal(again, matched) {
				t.Errorf("repeated batch: %v %v, want %v", again, err, matched)
			}
			devs[1].quiet(t, 50*time.Millisecond)
		})
	}
}

// A session still replaying holds a batch's pushes and writes them, in
// order, when its replay ends; a recall in the batch drops nothing already
// written before it, and the batch's recalled message is not pushed.
func TestBroadcastBatchHeldAndRecalled(t *testing.T) {
	e := startRPCEnv(t)
	e.registerProfile(t, "h", profile{})
	d := e.rawConnect(t, "h", "")
	s := e.settled(t, "h")
	s.mu.Lock()
	s.replaying = true
	s.mu.Unlock()
	base := time.Now()
	ids := make([]string, 3)
	envs := make([]*internalv1.Envelope, 0, 4)
	for i := range ids {
		ids[i] = ulidAt(base.Add(time.Duration(i) * time.Millisecond))
		envs = append(envs, group(ids[i], &internalv1.Audience{All: true}))
	}
	// Recall the last one within the same batch: it is still held, so it
	// is dropped.
	rec := group(ids[2], &internalv1.Audience{All: true})
	rec.Recall = true
	envs = append(envs, rec)
	matched, err := e.gw.BroadcastBatch(t.Context(), envs)
	if err != nil || !slices.Equal(matched, []int64{1, 1, 1, 0}) {
		t.Fatalf("BroadcastBatch: %v %v", matched, err)
	}
	d.quiet(t, 50*time.Millisecond) // held during the replay
	s.endReplay(nil)
	for _, want := range ids[:2] {
		if p := d.push(t); p.GetMessageId() != want {
			t.Fatalf("got %s, want %s", p.GetMessageId(), want)
		}
	}
	d.quiet(t, 50*time.Millisecond)
}

// An invalid envelope fails the whole batch before anything is pushed;
// the gRPC server answers each message, the single envelope first.
func TestBroadcastBatchOverGRPC(t *testing.T) {
	e := startRPCEnv(t)
	e.registerProfile(t, "g", profile{})
	d := e.rawConnect(t, "g", "")
	e.settled(t, "g")
	a, b, c := ulidAt(time.Now()), ulidAt(time.Now().Add(time.Millisecond)), ulidAt(time.Now().Add(2*time.Millisecond))
	all := &internalv1.Audience{All: true}
	if _, err := e.gw.BroadcastBatch(t.Context(), []*internalv1.Envelope{group(a, all), {AppId: "app-rpc"}}); err == nil {
		t.Fatal("a batch with an envelope without an audience was accepted")
	}
	d.quiet(t, 50*time.Millisecond)
	resp, err := e.client.Broadcast(t.Context(), &internalv1.BroadcastRequest{Node: "gw-rpc", Envelope: group(a, all), Envelopes: []*internalv1.Envelope{group(b, all), group(c, all)}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetMatched() != 1 || !slices.Equal(resp.GetMatchedEach(), []int64{1, 1, 1}) {
		t.Fatalf("answer %v", resp)
	}
	for _, want := range []string{a, b, c} {
		if p := d.push(t); p.GetMessageId() != want {
			t.Fatalf("got %s, want %s", p.GetMessageId(), want)
		}
	}
	resp, err = e.client.Broadcast(t.Context(), &internalv1.BroadcastRequest{Node: "gw-other", Envelopes: []*internalv1.Envelope{group(b, all), group(c, all)}})
	if err != nil || !slices.Equal(resp.GetMatchedEach(), []int64{0, 0}) {
		t.Fatalf("broadcast for another node: %v %v", resp, err)
	}
}

// BenchmarkBroadcastBatch fans batches of group messages out to N live
// sessions: each session gets the batch in one write. An op is one batch.
func BenchmarkBroadcastBatch(b *testing.B) {
	const n = 500
	for _, model := range ioModels {
		for _, size := range []int{1, 5, 20} {
			b.Run(model+"/"+strconv.Itoa(size)+"msgs", func(b *testing.B) {
				e := startEnv(b, model)
				for i := range n {
					id := "bb-" + strconv.Itoa(i)
					e.connectIdle(b, id)
				}
				for i := range n {
					e.settled(b, "bb-"+strconv.Itoa(i))
				}
				start := time.Now()
				seq := 0
				envs := make([]*internalv1.Envelope, size)
				b.ReportAllocs()
				for b.Loop() {
					for i := range envs {
						envs[i] = &internalv1.Envelope{
							AppId: "app-rpc", Audience: &internalv1.Audience{All: true},
							Push: &devicev1.Push{
								MessageId: ulidAt(start.Add(time.Duration(seq) * time.Microsecond)), Kind: devicev1.Kind_KIND_NOTIFICATION,
								Notification: &devicev1.Notification{Title: "Hello", Body: "A message body of a typical size"},
							},
						}
						seq++
					}
					if _, err := e.gw.BroadcastBatch(context.Background(), envs); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n*size), "ns/delivery")
			})
		}
	}
}

// inParallel covers every index exactly once, whether it splits or not.
func TestInParallelCoversEachIndexOnce(t *testing.T) {
	for _, n := range []int{0, 1, parallelMin - 1, parallelMin, parallelMin + 1, 5003} {
		seen := make([]atomic.Int32, n)
		inParallel(n, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				seen[i].Add(1)
			}
		})
		for i := range seen {
			if got := seen[i].Load(); got != 1 {
				t.Fatalf("n=%d: index %d visited %d times", n, i, got)
			}
		}
	}
}
