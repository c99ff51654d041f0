package herald

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"
)

// endpointsAPI is a scripted Herald API serving GET /v1/endpoints.
type endpointsAPI struct {
	srv *httptest.Server

	mu      sync.Mutex
	status  int
	body    string
	queries []string // "path?query" of every request
}

func newEndpointsAPI(t testing.TB, addrs ...string) *endpointsAPI {
	t.Helper()
	a := &endpointsAPI{}
	a.serve(addrs...)
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.queries = append(a.queries, r.Method+" "+r.URL.Path+"?"+r.URL.RawQuery)
		status, body := a.status, a.body
		a.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(a.srv.Close)
	return a
}

// serve makes the API answer the list addrs from now on.
func (a *endpointsAPI) serve(addrs ...string) {
	type ep struct {
		Addr   string `json:"addr"`
		Weight int    `json:"weight"`
	}
	answer := struct {
		Endpoints  []ep `json:"endpoints"`
		TTLSeconds int  `json:"ttl_seconds"`
	}{Endpoints: []ep{}, TTLSeconds: 300}
	for _, x := range addrs {
		answer.Endpoints = append(answer.Endpoints, ep{Addr: x, Weight: 100})
	}
	b, _ := json.Marshal(answer)
	a.answer(http.StatusOK, string(b))
}

func (a *endpointsAPI) answer(status int, body string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.status, a.body = status, body
}

func (a *endpointsAPI) requests() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.queries)
}

// deadAddr is an address where nothing listens: connecting is refused.
func deadAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

func TestEndpointsListIsTriedInOrder(t *testing.T) {
	fallback, first, second := newPeer(t), newPeer(t), newPeer(t)
	api := newEndpointsAPI(t, first.addr(), second.addr())
	cfg := testConfig(fallback.addr())
	cfg.EndpointsURL = api.srv.URL + "/"
	startClient(t, cfg)
	first.accept(t).handshake(30)
	want := []string{"GET /v1/endpoints?app_key=ak&device_id=dev-1"}
	if got := api.requests(); !slices.Equal(got, want) {
		t.Fatalf("API requests %v, want %v", got, want)
	}
	fallback.noConnection(t, 50*time.Millisecond)
}

func TestEndpointsFailoverToTheNextWhenOneRefuses(t *testing.T) {
	p := newPeer(t)
	api := newEndpointsAPI(t, deadAddr(t), p.addr())
	cfg := testConfig()
	cfg.EndpointsURL = api.srv.URL
	cfg.MinBackoff, cfg.MaxBackoff = 5*time.Second, 5*time.Second // failover within a round is immediate
	startClient(t, cfg)
	p.accept(t).handshake(30)
	if got := len(api.requests()); got != 1 {
		t.Fatalf("%d API requests, want 1", got)
	}
}

func TestEndpointsFallBackToAddrs(t *testing.T) {
	down := httptest.NewServer(http.NotFoundHandler())
	downURL := down.URL
	down.Close()
	tests := []struct {
		name string
		url  func(t *testing.T) string
	}{
		{"API down", func(*testing.T) string { return downURL }},
		{"app not found", func(t *testing.T) string {
			api := newEndpointsAPI(t)
			api.answer(http.StatusNotFound, `{"error":{"code":"app_not_found","message":"no app"}}`)
			return api.srv.URL
		}},
		{"unavailable", func(t *testing.T) string {
			api := newEndpointsAPI(t)
			api.answer(http.StatusServiceUnavailable, `{"error":{"code":"unavailable","message":"retry"}}`)
			return api.srv.URL
		}},
		{"empty list", func(t *testing.T) string { return newEndpointsAPI(t).srv.URL }},
		{"garbage", func(t *testing.T) string {
			api := newEndpointsAPI(t)
			api.answer(http.StatusOK, `<html>`)
			return api.srv.URL
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPeer(t)
			cfg := testConfig(p.addr())
			cfg.EndpointsURL = tt.url(t)
			startClient(t, cfg)
			p.accept(t).handshake(30)
		})
	}
}

func TestEndpointsFetchedAgainWhenAllFail(t *testing.T) {
	p := newPeer(t)
	api := newEndpointsAPI(t, deadAddr(t), deadAddr(t))
	cfg := testConfig() // no fallback: only the API can name p
	cfg.EndpointsURL = api.srv.URL
	startClient(t, cfg)
	// Let the first round fail, then move the device to p.
	deadline := time.Now().Add(waitFor)
	for len(api.requests()) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("API asked %d times, want a second fetch after every gateway failed", len(api.requests()))
		}
		time.Sleep(5 * time.Millisecond)
	}
	api.serve(p.addr())
	p.accept(t).handshake(30)
}

func TestEndpointsFallBackWhenTheAPIGoesDownLater(t *testing.T) {
	listed, fallback := newPeer(t), newPeer(t)
	api := newEndpointsAPI(t, listed.addr())
	cfg := testConfig(fallback.addr())
	cfg.EndpointsURL = api.srv.URL
	startClient(t, cfg)
	pc := listed.accept(t)
	pc.handshake(30)

	// The API and the listed gateway go away: after the last good list
	// fails, the device reaches the fallback address.
	api.srv.Close()
	_ = listed.ln.Close()
	_ = pc.conn.Close()
	fallback.accept(t).handshake(30)
}

func TestEndpointsOnlyURLAndAPIDownKeepsTrying(t *testing.T) {
	api := newEndpointsAPI(t)
	api.answer(http.StatusServiceUnavailable, `{}`)
	noGateway := make(chan struct{}, 1)
	cfg := testConfig()
	cfg.EndpointsURL = api.srv.URL
	cfg.OnState = func(s State, err error) {
		if errors.Is(err, ErrNoGateway) {
			select {
			case noGateway <- struct{}{}:
			default:
			}
		}
	}
	startClient(t, cfg)
	select {
	case <-noGateway:
	case <-time.After(waitFor):
		t.Fatal("no ErrNoGateway state")
	}
	p := newPeer(t)
	api.serve(p.addr())
	p.accept(t).handshake(30)
}

func TestEndpointsConfig(t *testing.T) {
	tests := []struct {
		name   string
		url    string
		addrs  []string
		wantOK bool
	}{
		{"URL only", "http://127.0.0.1:8080", nil, true},
		{"URL with path", "https://push.example.com/herald/", nil, true},
		{"URL and fallback", "http://127.0.0.1:8080", []string{"127.0.0.1:5222"}, true},
		{"not http", "ftp://127.0.0.1", nil, false},
		{"no host", "http://", nil, false},
		{"unparsable", "http://[::1", nil, false},
		{"neither", "", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(tt.addrs...)
			cfg.EndpointsURL = tt.url
			_, err := New(cfg)
			if tt.wantOK != (err == nil) || (err != nil && !errors.Is(err, ErrInvalidConfig)) {
				t.Fatalf("New: %v, want ok=%v", err, tt.wantOK)
			}
		})
	}
	u, err := endpointsRequestURL("https://push.example.com/herald/", "k y", "d/1")
	if err != nil || u != "https://push.example.com/herald/v1/endpoints?app_key=k+y&device_id=d%2F1" {
		t.Fatalf("request URL %q, %v", u, err)
	}
}

func TestParseEndpoints(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		want    []string
		wantTTL time.Duration
		wantErr bool
	}{
		{"ok", `{"endpoints":[{"addr":"a:1","weight":3},{"addr":"b:2","weight":1}],"ttl_seconds":60}`, []string{"a:1", "b:2"}, time.Minute, false},
		{"bad and duplicate addresses dropped", `{"endpoints":[{"addr":"nohost"},{"addr":"a:1"},{"addr":"a:1"},{"addr":""}]}`, []string{"a:1"}, defaultEndpointsTTL, false},
		{"absurd ttl", `{"endpoints":[{"addr":"a:1"}],"ttl_seconds":99999999999}`, []string{"a:1"}, defaultEndpointsTTL, false},
		{"negative ttl", `{"endpoints":[{"addr":"a:1"}],"ttl_seconds":-1}`, []string{"a:1"}, defaultEndpointsTTL, false},
		{"empty", `{"endpoints":[]}`, nil, 0, true},
		{"not JSON", `<html>`, nil, 0, true},
		{"wrong shape", `{"endpoints":"a:1"}`, nil, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ttl, err := parseEndpoints([]byte(tt.body))
			if (err != nil) != tt.wantErr || !slices.Equal(got, tt.want) || ttl != tt.wantTTL {
				t.Fatalf("parseEndpoints = %v, %s, %v; want %v, %s, err=%v", got, ttl, err, tt.want, tt.wantTTL, tt.wantErr)
			}
		})
	}
}

func FuzzParseEndpoints(f *testing.F) {
	f.Add([]byte(`{"endpoints":[{"addr":"10.0.0.1:5222","weight":100}],"ttl_seconds":300}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		addrs, ttl, err := parseEndpoints(body)
		if err != nil {
			return
		}
		if len(addrs) == 0 || ttl <= 0 || ttl > 24*time.Hour {
			t.Fatalf("accepted %v with ttl %s", addrs, ttl)
		}
		seen := map[string]bool{}
		for _, a := range addrs {
			if _, _, err := net.SplitHostPort(a); err != nil || seen[a] {
				t.Fatalf("accepted bad or duplicate address %q", a)
			}
			seen[a] = true
		}
	})
}
