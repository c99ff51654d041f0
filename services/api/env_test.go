package api

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/protobuf/proto"

	"github.com/heraldpush/herald/pkg/envelope/internalv1"
	"github.com/heraldpush/herald/pkg/ids"
	"github.com/heraldpush/herald/pkg/pebbledb"
	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/pkg/pushlog/pebblelog"
	"github.com/heraldpush/herald/pkg/receipt"
	"github.com/heraldpush/herald/pkg/route"
	"github.com/heraldpush/herald/pkg/store/pebblestore"
)

const testAdminToken = "test-admin-token"

// testEnv is a running api Server on real Pebble engines.
type testEnv struct {
	srv      *Server
	db       *pebble.DB
	store    *pebblestore.Store
	log      *pebblelog.Log
	consumer pushlog.Consumer
	url      string
	reader   *sdkmetric.ManualReader

	mu        sync.Mutex
	idsOut    []string // every message id the service generated
	kicked    []string // "app/device" of every Kick
	refreshed []string // "app/device" of every Refresh

	receipts pushlog.Consumer // the receipts log the api's emitter writes
	emitter  *receipt.Emitter
	skew     atomic.Int64 // added to the service's clock (ns)

	marker *testApp // app with device "marker", created on first use
}

func (e *testEnv) Kick(_ context.Context, appID, deviceID string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.kicked = append(e.kicked, route.Key(appID, deviceID))
	return nil
}

func (e *testEnv) Refresh(_ context.Context, appID, deviceID string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.refreshed = append(e.refreshed, route.Key(appID, deviceID))
	return nil
}

func (e *testEnv) refreshes() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.refreshed...)
}

func (e *testEnv) generatedIDs() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.idsOut...)
}

func testLogger(t testing.TB, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: level}))
}

// newEnv starts a Server listening on 127.0.0.1:0 that runs until the test ends.
func newEnv(t testing.TB, configure ...func(*Config)) *testEnv {
	t.Helper()
	quiet := testLogger(t, slog.LevelWarn)
	db, err := pebbledb.Open(t.TempDir(), quiet)
	if err != nil {
		t.Fatalf("open pebble: %v", err)
	}
	st := pebblestore.New(db, pebblestore.Options{}, quiet)
	// One partition: records come back in append order, so a marker
	// record proves that everything appended before it has been read.
	lg, err := pebblelog.New(db, pebblelog.Options{Partitions: 1}, quiet)
	if err != nil {
		t.Fatalf("open push log: %v", err)
	}
	consumer, err := lg.Consume(t.Context(), pushlog.TopicPush, "api-test")
	if err != nil {
		t.Fatalf("consume push log: %v", err)
	}
	receipts, err := lg.Consume(t.Context(), pushlog.TopicReceipts, "api-test")
	if err != nil {
		t.Fatalf("consume receipts log: %v", err)
	}
	e := &testEnv{db: db, store: st, log: lg, consumer: consumer, receipts: receipts, reader: sdkmetric.NewManualReader()}
	e.emitter = receipt.NewEmitter(lg, quiet)

	cfg := Config{HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", AdminToken: testAdminToken}
	for _, f := range configure {
		f(&cfg)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(e.reader))
	srv, err := New(cfg, Deps{Store: st, Log: lg, Kicker: e, Receipts: e.emitter, Meter: mp.Meter("api-test")}, testLogger(t, slog.LevelInfo))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	gen := ids.New(nil)
	srv.svc.nextID = func() string {
		id := gen.Next()
		e.mu.Lock()
		e.idsOut = append(e.idsOut, id)
		e.mu.Unlock()
		return id
	}
	srv.svc.now = func() time.Time { return time.Now().Add(time.Duration(e.skew.Load())) }
	e.srv = srv

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- srv.Run(ctx) }()
	go func() { done <- e.emitter.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Errorf("Run returned %v, want nil", err)
			}
		}
		_ = consumer.Close()
		_ = receipts.Close()
		_ = lg.Close()
		_ = st.Close()
		_ = db.Close()
	})
	select {
	case <-srv.Ready():
	case err := <-done:
		t.Fatalf("Run ended before ready: %v", err)
	}
	e.url = "http://" + srv.HTTPAddr()
	return e
}

// testApp is an app's credentials.
type testApp struct {
	ID, Key, Secret string
}

func (a testApp) auth(r *http.Request) { r.SetBasicAuth(a.Key, a.Secret) }

func adminAuth(r *http.Request) { r.Header.Set("Authorization", "Bearer "+testAdminToken) }

func noAuth(*http.Request) {}

// answer is an HTTP response with its body read.
type answer struct {
	status int
	header http.Header
	body   []byte
}

func (a answer) decode(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(a.body, v); err != nil {
		t.Fatalf("decode %s: %v", a.body, err)
	}
}

// errorCode returns the error code and message of an error answer.
func (a answer) errorCode(t testing.TB) (code, msg string) {
	t.Helper()
	var e errorAnswer
	a.decode(t, &e)
	return e.Error.Code, e.Error.Message
}

func (e *testEnv) do(t testing.TB, method, path string, auth func(*http.Request), body string) answer {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, e.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	auth(req)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: b}
}

// mustStatus fails the test unless a has the wanted status.
func mustStatus(t testing.TB, a answer, want int) {
	t.Helper()
	if a.status != want {
		t.Fatalf("status %d, want %d; body %s", a.status, want, a.body)
	}
}

func (e *testEnv) createApp(t testing.TB, name string) testApp {
	t.Helper()
	a := e.do(t, "POST", "/v1/apps", adminAuth, `{"name":"`+name+`"}`)
	mustStatus(t, a, http.StatusCreated)
	var c createAppAnswer
	a.decode(t, &c)
	return testApp{ID: c.AppID, Key: c.AppKey, Secret: c.AppSecret}
}

func (e *testEnv) registerDevice(t testing.TB, app testApp, deviceID string) string {
	t.Helper()
	a := e.do(t, "POST", "/v1/devices", app.auth, `{"device_id":"`+deviceID+`","platform":"android"}`)
	mustStatus(t, a, http.StatusCreated)
	var d registerDeviceAnswer
	a.decode(t, &d)
	return d.DeviceToken
}

func (e *testEnv) send(t testing.TB, app testApp, body string) answer {
	t.Helper()
	return e.do(t, "POST", "/v1/messages", app.auth, body)
}

// appended returns the push-log records appended since the previous call
// (in append order): it sends a marker message and reads up to its record.
func (e *testEnv) appended(t testing.TB) []pushlog.Record {
	t.Helper()
	if e.marker == nil {
		m := e.createApp(t, "marker")
		e.registerDevice(t, m, "marker")
		e.marker = &m
	}
	mustStatus(t, e.send(t, *e.marker, `{"audience":{"device_ids":["marker"]},"data":{"k":"v"}}`), http.StatusAccepted)
	markerKey := route.Key(e.marker.ID, "marker")
	var out []pushlog.Record
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		recs, err := e.consumer.Fetch(ctx)
		cancel()
		if err != nil {
			t.Fatalf("fetch push log: %v", err)
		}
		for i, r := range recs {
			if string(r.Key) == markerKey {
				if err := e.consumer.Commit(t.Context(), recs[:i+1]...); err != nil {
					t.Fatalf("commit: %v", err)
				}
				return out
			}
			out = append(out, r)
		}
		if err := e.consumer.Commit(t.Context(), recs...); err != nil {
			t.Fatalf("commit: %v", err)
		}
	}
}

func decodeEnvelope(t testing.TB, r pushlog.Record) *internalv1.Envelope {
	t.Helper()
	var env internalv1.Envelope
	if err := proto.Unmarshal(r.Value, &env); err != nil {
		t.Fatalf("decode envelope: %v", err)
	}
	return &env
}

// metricPoints returns the data points of the named sum metric as
// attribute-string -> value, e.g. "code=202,route=POST /v1/messages" -> 1.
func (e *testEnv) metricPoints(t testing.TB, name string) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := e.reader.Collect(t.Context(), &rm); err != nil {
		t.Fatalf("collect metrics: %v", err)
	}
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					var b bytes.Buffer
					for i, kv := range p.Attributes.ToSlice() {
						if i > 0 {
							b.WriteByte(',')
						}
						b.WriteString(string(kv.Key) + "=" + kv.Value.Emit())
					}
					out[b.String()] = p.Value
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					var b bytes.Buffer
					for i, kv := range p.Attributes.ToSlice() {
						if i > 0 {
							b.WriteByte(',')
						}
						b.WriteString(string(kv.Key) + "=" + kv.Value.Emit())
					}
					out[b.String()] = int64(p.Count)
				}
			}
		}
	}
	return out
}

// register registers a device with the given JSON body fields (device_id
// and platform are added).
func (e *testEnv) register(t testing.TB, app testApp, deviceID, platform, extra string) {
	t.Helper()
	body := `{"device_id":"` + deviceID + `","platform":"` + platform + `"`
	if extra != "" {
		body += "," + extra
	}
	mustStatus(t, e.do(t, "POST", "/v1/devices", app.auth, body+"}"), http.StatusCreated)
}

// sendOK sends and requires 202; it returns the answer.
func (e *testEnv) sendOK(t testing.TB, app testApp, body string) sendAnswer {
	t.Helper()
	a := e.send(t, app, body)
	mustStatus(t, a, http.StatusAccepted)
	var res sendAnswer
	a.decode(t, &res)
	return res
}

// mustError requires an error answer with this status and code whose
// message contains msg.
func mustError(t testing.TB, a answer, status int, code, msg string) {
	t.Helper()
	mustStatus(t, a, status)
	gotCode, gotMsg := a.errorCode(t)
	if gotCode != code || !strings.Contains(gotMsg, msg) {
		t.Fatalf("error %q %q, want %q containing %q", gotCode, gotMsg, code, msg)
	}
}

// setLimits changes an app's limits through the admin API.
func (e *testEnv) setLimits(t testing.TB, app testApp, body string) {
	t.Helper()
	mustStatus(t, e.do(t, "PATCH", "/v1/apps/"+app.ID, adminAuth, body), http.StatusOK)
}

// receiptsOf reads the receipts log until want receipts of the message
// have arrived, and returns them.
func (e *testEnv) receiptsOf(t testing.TB, messageID string, want int) []receipt.Receipt {
	t.Helper()
	var out []receipt.Receipt
	for len(out) < want {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		recs, err := e.receipts.Fetch(ctx)
		cancel()
		if err != nil {
			t.Fatalf("fetch receipts (have %d of %d): %v", len(out), want, err)
		}
		for _, r := range recs {
			rc, err := receipt.Decode(r.Value)
			if err != nil {
				t.Fatalf("decode receipt %s: %v", r.Value, err)
			}
			if rc.MessageID == messageID {
				out = append(out, rc)
			}
		}
		if err := e.receipts.Commit(t.Context(), recs...); err != nil {
			t.Fatalf("commit receipts: %v", err)
		}
	}
	return out
}
