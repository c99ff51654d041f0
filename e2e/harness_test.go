// Package e2e runs the real Herald platform (pkg/server, the same code as
// cmd/herald) in process or as a child process, drives it through its REST
// API and real device connections made with the Go SDK, and checks what a
// user of the platform would check: every message arrives once, status
// counts equal the truth, nothing accepted is lost.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/heraldpush/herald/pkg/config"
	"github.com/heraldpush/herald/pkg/server"
	herald "github.com/heraldpush/herald/sdk/go"
)

const adminToken = "e2e-admin-token"

// testConfig is an all-in-one config on loopback ports chosen by the kernel.
func testConfig(t testing.TB) config.Config {
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.NodeID = "gw-e2e"
	cfg.AdminToken = adminToken
	cfg.API.HTTPAddr = "127.0.0.1:0"
	cfg.API.GRPCAddr = "127.0.0.1:0"
	cfg.Gateway.Addr = "127.0.0.1:0"
	cfg.Ops.Addr = "127.0.0.1:0"
	cfg.Etcd.ClientAddr = "127.0.0.1:0"
	cfg.Etcd.PeerAddr = "127.0.0.1:0"
	cfg.Gateway.AckTimeout = 2 * time.Second
	cfg.Gateway.DrainTimeout = time.Second
	cfg.Dispatcher.CommitInterval = 50 * time.Millisecond
	if io := os.Getenv("HERALD_TEST_GATEWAY_IO"); io != "" {
		cfg.Gateway.IO = io
	}
	return cfg
}

// platform is a running all-in-one Herald.
type platform struct {
	srv  *server.Server
	api  string // http://host:port
	gw   string
	stop func()
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("HERALD_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func startPlatform(t testing.TB, cfg config.Config) *platform {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("config: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, cfg, testLogger(t))
	if err != nil {
		cancel()
		t.Fatalf("server.New: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("server stopped before ready: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("server not ready after 30s")
	}
	var once sync.Once
	p := &platform{srv: srv, api: "http://" + srv.APIAddr(), gw: srv.GatewayAddr()}
	p.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("server.Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Error("server did not stop within 30s")
			}
		})
	}
	t.Cleanup(p.stop)
	return p
}

// apiClient speaks the REST API as a business service would.
type apiClient struct {
	base string
	http *http.Client
}

func newAPI(base string) *apiClient {
	return &apiClient{base: base, http: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
}

type app struct {
	ID     string `json:"app_id"`
	Key    string `json:"app_key"`
	Secret string `json:"app_secret"`
}

// do sends a request and decodes a JSON answer into out (if non-nil). It
// returns the status code and the raw body; transport errors fail the test.
func (a *apiClient) do(t testing.TB, method, path string, auth func(*http.Request), body any, out any) (int, []byte) {
	t.Helper()
	code, raw, err := a.doE(method, path, auth, body, out)
	if err != nil {
		t.Fatal(err)
	}
	return code, raw
}

// doE is do for goroutines other than the test's: it returns errors.
func (a *apiClient) doE(method, path string, auth func(*http.Request), body any, out any) (int, []byte, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = bytes.NewReader([]byte(b))
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			return 0, nil, fmt.Errorf("encode body: %w", err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, a.base+path, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if auth != nil {
		auth(req)
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: read: %w", method, path, err)
	}
	if out != nil && resp.StatusCode < 300 && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return 0, nil, fmt.Errorf("%s %s: decode %q: %w", method, path, raw, err)
		}
	}
	return resp.StatusCode, raw, nil
}

func admin(req *http.Request) { req.Header.Set("Authorization", "Bearer "+adminToken) }

func (ap app) auth(req *http.Request) { req.SetBasicAuth(ap.Key, ap.Secret) }

func (a *apiClient) createApp(t testing.TB, name string) app {
	t.Helper()
	var out app
	if code, raw := a.do(t, "POST", "/v1/apps", admin, map[string]string{"name": name}, &out); code != http.StatusCreated {
		t.Fatalf("create app: %d %s", code, raw)
	}
	return out
}

func (a *apiClient) registerDevice(t testing.TB, ap app, id string) string {
	t.Helper()
	var out struct {
		DeviceID string `json:"device_id"`
		Token    string `json:"device_token"`
	}
	code, raw := a.do(t, "POST", "/v1/devices", ap.auth, map[string]string{"device_id": id, "platform": "android"}, &out)
	if code != http.StatusCreated {
		t.Fatalf("register device %s: %d %s", id, code, raw)
	}
	return out.Token
}

// sendReq is a POST /v1/messages body.
type sendReq struct {
	Audience     map[string]any    `json:"audience"`
	Notification map[string]any    `json:"notification,omitempty"`
	Data         map[string]string `json:"data,omitempty"`
	Options      map[string]any    `json:"options,omitempty"`
}

func toDevices(ids ...string) map[string]any { return map[string]any{"device_ids": ids} }

// send posts a message and requires 202; it returns the message id.
func (a *apiClient) send(t testing.TB, ap app, req sendReq) string {
	t.Helper()
	id, err := a.sendE(ap, req)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// sendE is send for other goroutines.
func (a *apiClient) sendE(ap app, req sendReq) (string, error) {
	var out struct {
		MessageID string `json:"message_id"`
	}
	code, raw, err := a.doE("POST", "/v1/messages", ap.auth, req, &out)
	if err != nil {
		return "", err
	}
	if code != http.StatusAccepted || out.MessageID == "" {
		return "", &sendError{Code: code, Body: string(raw)}
	}
	return out.MessageID, nil
}

// sendError is a send the API answered with something other than 202.
type sendError struct {
	Code int
	Body string
}

func (e *sendError) Error() string { return fmt.Sprintf("send: %d %s", e.Code, e.Body) }

type counts struct {
	Targeted  int64 `json:"targeted"`
	Delivered int64 `json:"delivered"`
	Pending   int64 `json:"pending"`
	Expired   int64 `json:"expired"`
	Failed    int64 `json:"failed"`
	Collapsed int64 `json:"collapsed"`
}

type messageStatus struct {
	MessageID string `json:"message_id"`
	State     string `json:"state"`
	Counts    counts `json:"counts"`
}

func (a *apiClient) status(t testing.TB, ap app, id string) messageStatus {
	t.Helper()
	var out messageStatus
	if code, raw := a.do(t, "GET", "/v1/messages/"+id, ap.auth, nil, &out); code != http.StatusOK {
		t.Fatalf("status %s: %d %s", id, code, raw)
	}
	return out
}

// device is a real SDK client that records what it receives.
type device struct {
	id, token string
	app       app
	gw        []string
	endpoints string // API base URL for the gateway endpoint list ("" = only gw)

	// hold, if set, blocks the app's message handler (and so the acks)
	// until it is closed: a slow app, messages in flight.
	hold chan struct{}
	// conf, if set, adjusts the SDK config before the client is made.
	conf func(*herald.Config)
	// client is the SDK client of the last connect.
	client *herald.Client

	mu    sync.Mutex
	got   []herald.Message
	gotAt []time.Time // when each of got reached the app
	seen  map[string]int

	cancel context.CancelFunc
	done   chan error
}

func newDevice(ap app, id, token string, gw ...string) *device {
	return &device{id: id, token: token, app: ap, gw: gw, seen: make(map[string]int)}
}

// connect starts the SDK client; it returns once the device is connected.
func (d *device) connect(t testing.TB) {
	t.Helper()
	if err := d.connectE(); err != nil {
		t.Fatal(err)
	}
}

// connectE is connect for other goroutines.
func (d *device) connectE() error {
	connected := make(chan struct{}, 1)
	cfg := herald.Config{
		Addrs: d.gw, EndpointsURL: d.endpoints, AppKey: d.app.Key, DeviceID: d.id, Token: d.token,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
		OnMessage: func(m herald.Message) {
			if d.hold != nil {
				<-d.hold
			}
			at := time.Now()
			d.mu.Lock()
			d.got = append(d.got, m)
			d.gotAt = append(d.gotAt, at)
			d.seen[m.ID]++
			d.mu.Unlock()
		},
		OnState: func(s herald.State, _ error) {
			if s == herald.Connected {
				select {
				case connected <- struct{}{}:
				default:
				}
			}
		},
	}
	if d.conf != nil {
		d.conf(&cfg)
	}
	c, err := herald.New(cfg)
	if err != nil {
		return fmt.Errorf("sdk: %w", err)
	}
	d.client = c
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	d.done = make(chan error, 1)
	go func() { d.done <- c.Run(ctx) }()
	select {
	case <-connected:
		return nil
	case err := <-d.done:
		cancel()
		return fmt.Errorf("device %s: Run ended before connecting: %v", d.id, err)
	case <-time.After(20 * time.Second):
		cancel()
		return fmt.Errorf("device %s: not connected after 20s", d.id)
	}
}

// disconnect stops the client and waits for it.
func (d *device) disconnect(t testing.TB) {
	t.Helper()
	if d.cancel == nil {
		return
	}
	d.cancel()
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		t.Errorf("device %s: Run did not return", d.id)
	}
	d.cancel = nil
}

func (d *device) received() []herald.Message {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]herald.Message(nil), d.got...)
}

func (d *device) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.got)
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, within time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s: %s", what, within, detail)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func deviceID(i int) string { return fmt.Sprintf("dev-%05d", i) }

// sendToEach sends perDevice messages to every device from 32 workers and
// returns device id -> message ids.
func sendToEach(t *testing.T, api *apiClient, ap app, devs []*device, perDevice int) map[string]map[string]bool {
	t.Helper()
	want := make(map[string]map[string]bool, len(devs))
	for _, d := range devs {
		want[d.id] = make(map[string]bool, perDevice)
	}
	var mu sync.Mutex
	jobs := make(chan *device)
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range jobs {
				id, err := api.sendE(ap, sendReq{Audience: toDevices(d.id), Data: map[string]string{"to": d.id}})
				if err != nil {
					t.Error(err)
					continue
				}
				mu.Lock()
				want[d.id][id] = true
				mu.Unlock()
			}
		}()
	}
	start := time.Now()
	for k := 0; k < perDevice; k++ {
		for _, d := range devs {
			jobs <- d
		}
	}
	close(jobs)
	wg.Wait()
	t.Logf("accepted %d messages in %s", perDevice*len(devs), time.Since(start))
	if t.Failed() {
		t.FailNow()
	}
	return want
}

// expectExactly waits until every device has exactly its messages, once.
func expectExactly(t *testing.T, devs []*device, want map[string]map[string]bool, within time.Duration) {
	t.Helper()
	expectExactlyOf(t, devs, want, nil, within)
}

// expectExactlyOf waits until every device has every message of want, then
// checks that it has nothing else, except the ids extra(d) allows (extra
// may be nil), and handed nothing to the app twice.
func expectExactlyOf(t *testing.T, devs []*device, want map[string]map[string]bool, extra func(d *device) map[string]bool, within time.Duration) {
	t.Helper()
	total := 0
	for _, ids := range want {
		total += len(ids)
	}
	start := time.Now()
	defer func() { t.Logf("deliveries complete %s after the last send", time.Since(start)) }()
	eventually(t, within, "every device has its messages", func() (bool, string) {
		missing := 0
		for _, d := range devs {
			d.mu.Lock()
			for id := range want[d.id] {
				if d.seen[id] == 0 {
					missing++
				}
			}
			d.mu.Unlock()
		}
		return missing == 0, fmt.Sprintf("%d of %d missing", missing, total)
	})
	for _, d := range devs {
		var also map[string]bool
		if extra != nil {
			also = extra(d)
		}
		d.mu.Lock()
		for id, n := range d.seen {
			if !want[d.id][id] && !also[id] {
				t.Errorf("device %s got message %s that was not sent to it", d.id, id)
			}
			if n != 1 {
				t.Errorf("device %s handed message %s to the app %d times", d.id, id, n)
			}
		}
		d.mu.Unlock()
	}
}
