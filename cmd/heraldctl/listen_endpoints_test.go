package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
)

// endpointsAPI answers GET /v1/endpoints with one gateway address.
func endpointsAPI(t testing.TB, addr string) (url string, queries func() []string) {
	t.Helper()
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.URL.Path+"?"+r.URL.RawQuery)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"endpoints":[{"addr":"` + addr + `","weight":1}],"ttl_seconds":300}`))
	}))
	t.Cleanup(srv.Close)
	return srv.URL, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), got...)
	}
}

func TestListenThroughTheEndpointList(t *testing.T) {
	tests := []struct {
		name string
		env  func(api string) map[string]string
		args func(api string) []string
	}{
		{"--api URL by default", func(api string) map[string]string { return map[string]string{"HERALD_API": api} }, func(string) []string { return nil }},
		{"--endpoints URL", func(string) map[string]string { return nil }, func(api string) []string { return []string{"--endpoints", api} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newGateway(t)
			api, queries := endpointsAPI(t, g.ln.Addr().String())
			done := make(chan listenResult, 1)
			go func() {
				args := append([]string{"listen", "--app-key", "ak", "--device-id", "d1", "--token", "tok", "--count", "1"}, tt.args(api)...)
				code, out, errOut := runCLI(t, tt.env(api), args...)
				done <- listenResult{code, out, errOut}
			}()
			g.accept()
			g.expect(frame.TypeConnect, nil)
			g.send(frame.TypeConnAck, &devicev1.ConnAck{ProtocolVersion: 1, HeartbeatSeconds: 30, MaxFrameBytes: frame.DefaultMaxFrame})
			g.send(frame.TypePush, &devicev1.Push{MessageId: "m1", Kind: devicev1.Kind_KIND_DATA})
			g.expect(frame.TypeAck, nil)
			r := waitListen(t, done)
			if r.code != exitOK || !strings.Contains(r.stdout, `"m1"`) {
				t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
			}
			if q := queries(); len(q) != 1 || q[0] != "/v1/endpoints?app_key=ak&device_id=d1" {
				t.Fatalf("API requests %v", q)
			}
		})
	}
}

func TestListenWithANamedGatewaySkipsTheList(t *testing.T) {
	g := newGateway(t)
	api, queries := endpointsAPI(t, "127.0.0.1:1")
	done := make(chan listenResult, 1)
	go func() {
		code, out, errOut := runCLI(t, map[string]string{"HERALD_API": api, "HERALD_GATEWAY": g.ln.Addr().String()},
			"listen", "--app-key", "ak", "--device-id", "d1", "--token", "tok", "--count", "1")
		done <- listenResult{code, out, errOut}
	}()
	g.accept()
	g.expect(frame.TypeConnect, nil)
	g.send(frame.TypeConnAck, &devicev1.ConnAck{ProtocolVersion: 1, HeartbeatSeconds: 30, MaxFrameBytes: frame.DefaultMaxFrame})
	g.send(frame.TypePush, &devicev1.Push{MessageId: "m1"})
	g.expect(frame.TypeAck, nil)
	if r := waitListen(t, done); r.code != exitOK {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if q := queries(); len(q) != 0 {
		t.Fatalf("API asked %v although HERALD_GATEWAY names the gateway", q)
	}
}
