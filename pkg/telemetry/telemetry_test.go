package telemetry_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/heraldpush/herald/pkg/telemetry"
)

// startOps runs an ops server for h on an ephemeral port and returns its base URL.
func startOps(tb testing.TB, h *telemetry.Health) string {
	tb.Helper()
	mux := http.NewServeMux()
	h.Mount(mux)
	ctx, cancel := context.WithCancel(tb.Context())
	srv, err := telemetry.ListenOps(ctx, "127.0.0.1:0", mux, nil)
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("Run: %v", err)
		}
	})
	return "http://" + srv.Addr()
}

func get(tb testing.TB, url string) (int, string) {
	tb.Helper()
	req, err := http.NewRequestWithContext(tb.Context(), http.MethodGet, url, nil)
	if err != nil {
		tb.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

func newTelemetry(tb testing.TB) *telemetry.Telemetry {
	tb.Helper()
	tel, err := telemetry.New("herald-test")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := tel.Shutdown(context.WithoutCancel(tb.Context())); err != nil {
			tb.Error(err)
		}
	})
	return tel
}

func TestMetricsExposition(t *testing.T) {
	tel := newTelemetry(t)
	meter := tel.Meter("github.com/heraldpush/herald/pkg/telemetry_test")

	pushes, err := meter.Int64Counter("herald.gateway.pushes", metric.WithDescription("PUSH frames written."))
	if err != nil {
		t.Fatal(err)
	}
	sessions, err := meter.Int64UpDownCounter("herald.gateway.sessions")
	if err != nil {
		t.Fatal(err)
	}
	latency, err := meter.Float64Histogram("herald.api.send.duration", metric.WithUnit("s"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	pushes.Add(ctx, 3, metric.WithAttributes(attribute.String("kind", "notification")))
	pushes.Add(ctx, 4, metric.WithAttributes(attribute.String("kind", "notification")))
	sessions.Add(ctx, 2)
	latency.Record(ctx, 0.02)

	base := startOps(t, telemetry.NewHealth(tel.MetricsHandler()))
	code, body := get(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics status %d", code)
	}
	for _, want := range []string{
		"# HELP herald_gateway_pushes_total PUSH frames written.",
		`herald_gateway_pushes_total{kind="notification",`,
		"herald_gateway_sessions{",
		"herald_api_send_duration_seconds_bucket{",
		`target_info{`,
		`service_name="herald-test"`,
		"go_goroutines ",
		"go_memstats_heap_alloc_bytes ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if !strings.Contains(body, "} 7\n") {
		t.Errorf("/metrics: the counter should read 7:\n%s", grep(body, "herald_gateway_pushes_total"))
	}
}

func grep(text, substr string) string {
	var out []string
	for line := range strings.Lines(text) {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "")
}

func TestHealthEndpoints(t *testing.T) {
	h := telemetry.NewHealth(nil)
	var (
		mu         sync.Mutex
		backendErr error
	)
	setBackendErr := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		backendErr = err
	}
	h.AddCheck("pushlog", func(context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		return backendErr
	})
	base := startOps(t, h)

	steps := []struct {
		name       string
		act        func()
		wantStatus int
		wantBody   string
	}{
		{name: "starting", act: func() {}, wantStatus: http.StatusServiceUnavailable, wantBody: "not ready: starting\n"},
		{name: "ready", act: func() { h.SetReady(true) }, wantStatus: http.StatusOK, wantBody: "ok\n"},
		{name: "failing check", act: func() { setBackendErr(errors.New("disk full")) }, wantStatus: http.StatusServiceUnavailable, wantBody: "not ready: pushlog: disk full\n"},
		{name: "check recovers", act: func() { setBackendErr(nil) }, wantStatus: http.StatusOK, wantBody: "ok\n"},
		{name: "stopping", act: func() { h.SetReady(false) }, wantStatus: http.StatusServiceUnavailable, wantBody: "not ready: stopping\n"},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			s.act()
			code, body := get(t, base+"/readyz")
			if code != s.wantStatus || body != s.wantBody {
				t.Errorf("/readyz = %d %q, want %d %q", code, body, s.wantStatus, s.wantBody)
			}
			code, body = get(t, base+"/healthz")
			if code != http.StatusOK || body != "ok\n" {
				t.Errorf("/healthz = %d %q, want 200 ok", code, body)
			}
		})
	}
	if code, _ := get(t, base+"/metrics"); code != http.StatusNotFound {
		t.Errorf("/metrics without a handler = %d, want 404", code)
	}
}

func TestServeOps(t *testing.T) {
	t.Run("empty addr waits for ctx", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- telemetry.ServeOps(ctx, "", http.NewServeMux(), nil) }()
		select {
		case err := <-done:
			t.Fatalf("ServeOps returned before ctx ended: %v", err)
		default:
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("ServeOps: %v", err)
		}
	})
	t.Run("bad addr", func(t *testing.T) {
		err := telemetry.ServeOps(t.Context(), "127.0.0.1:99999", http.NewServeMux(), nil)
		if err == nil {
			t.Fatal("ServeOps on a bad address: nil error")
		}
	})
	t.Run("graceful shutdown", func(t *testing.T) {
		srv, err := telemetry.ListenOps(t.Context(), "127.0.0.1:0", http.NewServeMux(), nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- srv.Run(ctx) }()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
		case <-time.After(telemetry.ShutdownTimeout + time.Second):
			t.Fatal("Run did not return after ctx ended")
		}
	})
}
