package etcdembed_test

import (
	"bytes"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/heraldpush/herald/pkg/etcdembed"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func start(tb testing.TB, dir string) *etcdembed.Server {
	tb.Helper()
	s, err := etcdembed.Start(tb.Context(), etcdembed.Config{Dir: dir, Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		tb.Fatalf("Start: %v", err)
	}
	return s
}

func TestPutGetAndRestartKeepsData(t *testing.T) {
	dir := t.TempDir()
	s := start(t, dir)
	eps := s.Endpoints()
	if len(eps) != 1 {
		t.Fatalf("Endpoints = %v, want one", eps)
	}
	u, err := url.Parse(eps[0])
	if err != nil || u.Hostname() != "127.0.0.1" || u.Port() == "" || u.Port() == "0" {
		t.Fatalf("Endpoints = %v, want a resolved 127.0.0.1 port", eps)
	}

	if _, err := s.Client().Put(t.Context(), "/herald/test/k", "v1"); err != nil {
		t.Fatalf("Put: %v", err)
	}
	// A separately dialled client sees the same data.
	cli, err := s.Dial()
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	wantValue(t, cli, "/herald/test/k", "v1")
	if err := cli.Close(); err != nil {
		t.Fatalf("close dialled client: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	s2 := start(t, dir)
	defer s2.Close()
	wantValue(t, s2.Client(), "/herald/test/k", "v1")
	if _, err := s2.Client().Put(t.Context(), "/herald/test/k", "v2"); err != nil {
		t.Fatalf("Put after restart: %v", err)
	}
	wantValue(t, s2.Client(), "/herald/test/k", "v2")
}

func TestStartErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  etcdembed.Config
	}{
		{"no dir", etcdembed.Config{}},
		{"host name instead of IP", etcdembed.Config{Dir: t.TempDir(), ClientAddr: "example.com:2379"}},
		{"no port", etcdembed.Config{Dir: t.TempDir(), PeerAddr: "127.0.0.1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if s, err := etcdembed.Start(t.Context(), tt.cfg); err == nil {
				s.Close()
				t.Fatal("Start succeeded, want an error")
			}
		})
	}
}

func TestZapLoggerWritesToSlog(t *testing.T) {
	var mu sync.Mutex
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(&lockedWriter{mu: &mu, w: &buf}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	z := etcdembed.ZapLogger(l, zapcore.WarnLevel).Named("raft").With(zap.String("member", "m1"))
	z.Info("quiet")
	z.Warn("lease expired", zap.Int64("lease", 42), zap.Error(errBoom{}))
	mu.Lock()
	out := buf.String()
	mu.Unlock()
	if strings.Contains(out, "quiet") {
		t.Errorf("info entry logged below the warn level: %q", out)
	}
	for _, want := range []string{"level=WARN", `msg="lease expired"`, "logger=raft", "member=m1", "lease=42", "error=boom"} {
		if !strings.Contains(out, want) {
			t.Errorf("log %q lacks %q", out, want)
		}
	}
}

type errBoom struct{}

func (errBoom) Error() string { return "boom" }

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

func wantValue(tb testing.TB, cli *clientv3.Client, key, want string) {
	tb.Helper()
	resp, err := cli.Get(tb.Context(), key)
	if err != nil {
		tb.Fatalf("Get(%q): %v", key, err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != want {
		tb.Fatalf("Get(%q) = %v, want %q", key, resp.Kvs, want)
	}
}
