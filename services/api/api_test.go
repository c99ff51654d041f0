package api

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

func TestConfigDefaults(t *testing.T) {
	got, err := Config{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	want := Config{HTTPAddr: ":8080", GRPCAddr: ":9090", MaxTargets: 1000, MaxPayloadBytes: 4096,
		MaxBodyBytes: 1 << 20, DefaultTTL: 24 * time.Hour, MaxTTL: 240 * time.Hour}
	if got.HTTPAddr != want.HTTPAddr || got.GRPCAddr != want.GRPCAddr || got.MaxTargets != want.MaxTargets ||
		got.MaxPayloadBytes != want.MaxPayloadBytes || got.MaxBodyBytes != want.MaxBodyBytes ||
		got.DefaultTTL != want.DefaultTTL || got.MaxTTL != want.MaxTTL || got.DefaultRateLimit != 0 ||
		got.MaxSendAhead != 168*time.Hour || got.MaxSpread != time.Hour {
		t.Fatalf("defaults %+v, want %+v", got, want)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantMsg string
	}{
		{"negative targets", Config{MaxTargets: -1}, "MaxTargets"},
		{"negative payload", Config{MaxPayloadBytes: -1}, "MaxPayloadBytes"},
		{"negative body", Config{MaxBodyBytes: -1}, "MaxBodyBytes"},
		{"tiny max ttl", Config{MaxTTL: time.Millisecond}, "MaxTTL"},
		{"default over max", Config{DefaultTTL: 48 * time.Hour, MaxTTL: 24 * time.Hour}, "DefaultTTL"},
		{"negative rate limit", Config{DefaultRateLimit: -1}, "DefaultRateLimit"},
		{"tiny send ahead", Config{MaxSendAhead: time.Millisecond}, "MaxSendAhead"},
		{"negative spread", Config{MaxSpread: -time.Hour}, "MaxSpread"},
		{"no deps", Config{}, "Deps"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg, Deps{}, nil)
			if err == nil || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("New: %v, want an error about %s", err, tt.wantMsg)
			}
		})
	}
}

func TestRunLifecycle(t *testing.T) {
	e := newEnv(t)
	t.Run("run twice", func(t *testing.T) {
		if err := e.srv.Run(t.Context()); err == nil {
			t.Fatal("second Run returned nil")
		}
	})

	t.Run("stops when the context ends and frees its ports", func(t *testing.T) {
		srv, err := New(Config{HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0"}, Deps{Store: e.store, Log: e.log}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if srv.HTTPAddr() != "" || srv.GRPCAddr() != "" {
			t.Fatal("addresses known before Ready")
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- srv.Run(ctx) }()
		<-srv.Ready()
		httpAddr, grpcAddr := srv.HTTPAddr(), srv.GRPCAddr()
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Run returned %v, want nil", err)
		}
		for _, addr := range []string{httpAddr, grpcAddr} {
			l, err := net.Listen("tcp", addr)
			if err != nil {
				t.Fatalf("port %s still held after Run returned: %v", addr, err)
			}
			_ = l.Close()
		}
	})

	t.Run("a connection that never sent a request does not hold up the stop", func(t *testing.T) {
		srv, err := New(Config{HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0"}, Deps{Store: e.store, Log: e.log}, nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- srv.Run(ctx) }()
		<-srv.Ready()
		spare, err := net.Dial("tcp", srv.HTTPAddr()) // like a client's spare connection
		if err != nil {
			t.Fatal(err)
		}
		defer spare.Close()
		time.Sleep(50 * time.Millisecond) // let the server see it
		cancel()
		// net/http alone waits 5 s for such a connection before closing it.
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Run returned %v, want nil", err)
			}
		case <-time.After(4 * time.Second):
			t.Fatal("Run still stopping after 4 s: it waited for a connection that never sent a request")
		}
		_ = spare.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := spare.Read(make([]byte, 1)); err == nil {
			t.Fatal("the spare connection is still open after the api stopped")
		}
	})

	t.Run("busy port", func(t *testing.T) {
		busy, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer busy.Close()
		for _, cfg := range []Config{
			{HTTPAddr: busy.Addr().String(), GRPCAddr: "127.0.0.1:0"},
			{HTTPAddr: "127.0.0.1:0", GRPCAddr: busy.Addr().String()},
		} {
			srv, err := New(cfg, Deps{Store: e.store, Log: e.log}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := srv.Run(t.Context()); err == nil {
				t.Fatalf("Run on a busy port (%+v) returned nil", cfg)
			}
			select {
			case <-srv.Ready():
				t.Fatal("Ready closed though a listener failed")
			default:
			}
		}
	})
}
