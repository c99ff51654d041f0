package echo_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/heraldpush/herald/api/heraldv1"
	"github.com/heraldpush/herald/examples/upstream-echo/echo"
	"github.com/heraldpush/herald/pkg/pebbledb"
	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/pkg/pushlog/pebblelog"
)

var discard = slog.New(slog.DiscardHandler)

// heraldAPI is the peer: a real gRPC server with a SendMessage that checks
// the app's Basic credentials, honours idempotency keys like the real api,
// and can be told to be unavailable for a while.
type heraldAPI struct {
	heraldv1.UnimplementedHeraldServer
	auth string // expected authorization metadata

	mu          sync.Mutex
	unavailable int                                     // fail this many more calls with Unavailable
	rateLimited int                                     // fail this many more calls with ResourceExhausted + retry-after
	calls       int                                     // SendMessage calls, failed ones included
	sent        map[string]*heraldv1.SendMessageRequest // by idempotency key
}

func (h *heraldAPI) SendMessage(ctx context.Context, req *heraldv1.SendMessageRequest) (*heraldv1.SendMessageResponse, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls++
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("authorization"); len(v) != 1 || v[0] != h.auth {
		return nil, status.Error(codes.Unauthenticated, "bad credentials")
	}
	if h.unavailable > 0 {
		h.unavailable--
		return nil, status.Error(codes.Unavailable, "temporarily unavailable, retry")
	}
	if h.rateLimited > 0 {
		h.rateLimited--
		_ = grpc.SetHeader(ctx, metadata.Pairs("retry-after", "0"))
		return nil, status.Error(codes.ResourceExhausted, "rate limited")
	}
	if len(req.GetData()["echo"]) > 100 {
		return nil, status.Error(codes.ResourceExhausted, "payload too large")
	}
	key := req.GetOptions().GetIdempotencyKey()
	if _, ok := h.sent[key]; !ok {
		h.sent[key] = req
	}
	return &heraldv1.SendMessageResponse{MessageId: "m-" + key}, nil
}

func (h *heraldAPI) answers() (map[string]*heraldv1.SendMessageRequest, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]*heraldv1.SendMessageRequest, len(h.sent))
	for k, v := range h.sent {
		out[k] = v
	}
	return out, h.calls
}

// startAPI serves h on 127.0.0.1:0 and returns a client with the given
// app credentials.
func startAPI(tb testing.TB, h *heraldAPI, key, secret string) heraldv1.HeraldClient {
	tb.Helper()
	// The api knows the app "k" with secret "s".
	h.auth = "Basic " + base64.StdEncoding.EncodeToString([]byte("k:s"))
	h.sent = map[string]*heraldv1.SendMessageRequest{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := grpc.NewServer()
	heraldv1.RegisterHeraldServer(srv, h)
	go func() { _ = srv.Serve(ln) }()
	tb.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(echo.BasicAuth(key, secret, false)))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return heraldv1.NewHeraldClient(conn)
}

func openLog(tb testing.TB) *pebblelog.Log {
	tb.Helper()
	db, err := pebbledb.Open(tb.TempDir(), discard)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = db.Close() })
	l, err := pebblelog.New(db, pebblelog.Options{}, discard)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = l.Close() })
	return l
}

const topic = "upstream.echo"

func appendRecords(tb testing.TB, l pushlog.Log, recs ...echo.Record) {
	tb.Helper()
	for _, r := range recs {
		b, err := json.Marshal(r)
		if err != nil {
			tb.Fatal(err)
		}
		if err := l.Append(tb.Context(), topic, pushlog.Record{Key: []byte(r.AppID + "/" + r.DeviceID), Value: b}); err != nil {
			tb.Fatal(err)
		}
	}
}

// runEcho runs echo.Run on a consumer of the test group. stop cancels it
// and returns Run's error; done is closed when Run has returned.
func runEcho(tb testing.TB, l pushlog.Log, send echo.Sender, cfg echo.Config) (stop func() error, done <-chan struct{}) {
	tb.Helper()
	ctx, cancel := context.WithCancel(tb.Context())
	cons, err := l.Consume(ctx, topic, "echo")
	if err != nil {
		tb.Fatal(err)
	}
	ch := make(chan struct{})
	var runErr error
	go func() {
		defer close(ch)
		runErr = echo.Run(ctx, cons, send, cfg)
		_ = cons.Close()
	}()
	stop = func() error {
		cancel()
		<-ch
		return runErr
	}
	tb.Cleanup(func() { _ = stop() })
	return stop, ch
}

// pending returns the records of the group not yet committed (it reads
// with a short deadline: an empty result means everything was committed).
func pending(tb testing.TB, l pushlog.Log) []pushlog.Record {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), 200*time.Millisecond)
	defer cancel()
	cons, err := l.Consume(tb.Context(), topic, "echo")
	if err != nil {
		tb.Fatal(err)
	}
	defer cons.Close()
	recs, err := cons.Fetch(ctx)
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		tb.Fatal(err)
	}
	return recs
}

func eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestEchoAnswersEveryDeviceOnce(t *testing.T) {
	l := openLog(t)
	api := &heraldAPI{unavailable: 3, rateLimited: 1} // the api flaps first
	client := startAPI(t, api, "k", "s")

	var recs []echo.Record
	for i := range 20 {
		recs = append(recs, echo.Record{AppID: "app", DeviceID: fmt.Sprintf("dev%d", i%5), RequestID: fmt.Sprintf("req%d", i),
			Channel: "echo", Payload: []byte(fmt.Sprintf("hello %d", i)), ReceivedAtMS: 1})
	}
	appendRecords(t, l, recs...)
	// The device resent req0 (its UPACK was lost): one answer only.
	appendRecords(t, l, recs[0])
	// Another app's device on the same channel, a too-large payload (the
	// api rejects it for good) and a value that is not a record.
	appendRecords(t, l,
		echo.Record{AppID: "other", DeviceID: "x", RequestID: "r", Payload: []byte("hi")},
		echo.Record{AppID: "app", DeviceID: "big", RequestID: "r", Payload: make([]byte, 200)})
	if err := l.Append(t.Context(), topic, pushlog.Record{Key: []byte("junk"), Value: []byte("{not json")}); err != nil {
		t.Fatal(err)
	}

	stop, _ := runEcho(t, l, client, echo.Config{AppID: "app", Logger: discard})
	eventually(t, "every record answered", func() bool { got, _ := api.answers(); return len(got) == len(recs) })
	for _, r := range recs {
		got, _ := api.answers()
		want := echo.Reply(r)
		a := got[want.GetOptions().GetIdempotencyKey()]
		if a == nil {
			t.Errorf("no answer to %s/%s", r.DeviceID, r.RequestID)
			continue
		}
		if ids := a.GetAudience().GetDeviceIds(); len(ids) != 1 || ids[0] != r.DeviceID {
			t.Errorf("answer to %s went to %v", r.RequestID, ids)
		}
		if a.GetData()["reply_to"] != r.RequestID || a.GetData()["echo"] != string(r.Payload) {
			t.Errorf("answer to %s has data %v", r.RequestID, a.GetData())
		}
	}
	if got, _ := api.answers(); len(got) != len(recs) {
		t.Errorf("%d distinct answers, want %d (the other app's device and the rejected one get none)", len(got), len(recs))
	}
	// Everything handled is committed: Run commits a batch before it
	// fetches the next, so once a later record is answered the earlier
	// ones are committed and a restart does not answer them again.
	marker := echo.Record{AppID: "app", DeviceID: "dev0", RequestID: "marker", Payload: []byte("m")}
	appendRecords(t, l, marker)
	eventually(t, "the marker answered", func() bool {
		got, _ := api.answers()
		return got[echo.Reply(marker).GetOptions().GetIdempotencyKey()] != nil
	})
	if err := stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
	for _, rec := range pending(t, l) {
		var r echo.Record
		if err := json.Unmarshal(rec.Value, &r); err != nil || r.RequestID != "marker" {
			t.Errorf("record %s left uncommitted after it was answered", rec.Value)
		}
	}
}

func TestEchoStopsOnBadCredentials(t *testing.T) {
	l := openLog(t)
	api := &heraldAPI{}
	client := startAPI(t, api, "k", "wrong")
	appendRecords(t, l, echo.Record{AppID: "app", DeviceID: "d", RequestID: "r", Payload: []byte("hi")})

	stop, done := runEcho(t, l, client, echo.Config{Logger: discard})
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run kept going with rejected credentials")
	}
	if err := stop(); !errors.Is(err, echo.ErrRejected) || status.Code(err) != codes.Unauthenticated {
		t.Errorf("Run = %v, want ErrRejected wrapping Unauthenticated", err)
	}
	// Nothing was answered, so nothing was committed: the record waits for
	// a service with the right credentials.
	if n := len(pending(t, l)); n != 1 {
		t.Errorf("%d records left for the group, want 1", n)
	}
}

func TestReplyIsValidUTF8(t *testing.T) {
	r := echo.Reply(echo.Record{AppID: "a", DeviceID: "d", RequestID: "r", Payload: []byte{'o', 'k', 0xff}})
	if got := r.GetData()["echo"]; got != "ok\uFFFD" {
		t.Errorf("echo = %q, want the invalid byte replaced", got)
	}
	// Same device and request: same idempotency key; another request: another key.
	k1 := echo.Reply(echo.Record{AppID: "a", DeviceID: "d", RequestID: "r"}).GetOptions().GetIdempotencyKey()
	k2 := echo.Reply(echo.Record{AppID: "a", DeviceID: "d", RequestID: "r2"}).GetOptions().GetIdempotencyKey()
	if k1 != r.GetOptions().GetIdempotencyKey() || k1 == k2 {
		t.Errorf("idempotency keys %q %q %q: want equal for one request, different across", k1, r.GetOptions().GetIdempotencyKey(), k2)
	}
}
