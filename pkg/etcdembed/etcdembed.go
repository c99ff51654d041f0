// Package etcdembed runs a real single-member etcd server inside the Herald
// process (go.etcd.io/etcd/server/v3/embed): the discovery, config and
// lease store of the all-in-one deployment, and the etcd that tests run
// against. Clusters use an external etcd through clientv3 instead.
package etcdembed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Config configures an embedded etcd server.
type Config struct {
	// Dir holds the server's data (WAL and snapshots); a restart on the
	// same Dir keeps the data. Required.
	Dir string
	// ClientAddr is the host:port clients connect to. Default
	// "127.0.0.1:0" (any free port; Endpoints reports the bound one).
	ClientAddr string
	// PeerAddr is the raft peer host:port. The single member never dials
	// it, but etcd needs one. Default "127.0.0.1:0".
	PeerAddr string
	// Name is the member name. Default "herald".
	Name string
	// ReadyTimeout bounds the wait for the server to serve. Default 30s.
	ReadyTimeout time.Duration
	// Logger receives etcd's warnings and errors. Nil discards them.
	Logger *slog.Logger
}

// Server is a running embedded etcd server.
type Server struct {
	etcd      *embed.Etcd
	client    *clientv3.Client
	endpoints []string
	logger    *slog.Logger
	level     zap.AtomicLevel // of the server's logger
	closeOnce sync.Once
	closeErr  error
}

// Start starts the server and returns once it serves client requests (or
// fails, or ctx ends, or ReadyTimeout passes).
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Dir == "" {
		return nil, errors.New("etcdembed: Config.Dir is required")
	}
	if cfg.ClientAddr == "" {
		cfg.ClientAddr = "127.0.0.1:0"
	}
	if cfg.PeerAddr == "" {
		cfg.PeerAddr = "127.0.0.1:0"
	}
	if cfg.Name == "" {
		cfg.Name = "herald"
	}
	// etcd wants its data directory private (it warns otherwise).
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("etcdembed: data dir: %w", err)
	}
	if err := os.Chmod(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("etcdembed: data dir: %w", err)
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = 30 * time.Second
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	clientURL, err := httpURL(cfg.ClientAddr)
	if err != nil {
		return nil, fmt.Errorf("etcdembed: client address: %w", err)
	}
	peerURL, err := httpURL(cfg.PeerAddr)
	if err != nil {
		return nil, fmt.Errorf("etcdembed: peer address: %w", err)
	}

	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = cfg.Dir
	ec.ListenClientUrls = []url.URL{clientURL}
	ec.AdvertiseClientUrls = []url.URL{clientURL}
	ec.ListenPeerUrls = []url.URL{peerURL}
	ec.AdvertisePeerUrls = []url.URL{peerURL}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	ec.InitialClusterToken = "herald-embedded"
	// Routes and leases churn: keep the revision history short so the
	// backend does not grow without bound.
	ec.AutoCompactionMode = embed.CompactorModePeriodic
	ec.AutoCompactionRetention = "5m"
	ec.Logger = "zap"
	ec.LogLevel = "warn"
	// Shutting down makes etcd log the closed listeners as errors: Close
	// raises the level first.
	level := zap.NewAtomicLevelAt(zapcore.WarnLevel)
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zapLogger(logger.With("component", "etcd"), level, expectedWarnings))

	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("etcdembed: start in %s: %w", cfg.Dir, err)
	}
	timer := time.NewTimer(cfg.ReadyTimeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("etcdembed: start in %s: %w", cfg.Dir, err)
	case <-timer.C:
		e.Close()
		return nil, fmt.Errorf("etcdembed: not ready after %v", cfg.ReadyTimeout)
	case <-ctx.Done():
		e.Close()
		return nil, fmt.Errorf("etcdembed: waiting for readiness: %w", ctx.Err())
	}

	s := &Server{etcd: e, logger: logger, level: level}
	for _, l := range e.Clients {
		s.endpoints = append(s.endpoints, "http://"+l.Addr().String())
	}
	s.client, err = s.Dial()
	if err != nil {
		e.Close()
		return nil, err
	}
	logger.Info("embedded etcd ready", "dir", cfg.Dir, "endpoints", s.endpoints)
	return s, nil
}

// Endpoints returns the bound client URLs (with the real port when the
// configured one was 0).
func (s *Server) Endpoints() []string { return append([]string(nil), s.endpoints...) }

// Client returns a client connected to the server. The server owns it:
// do not close it; Close does.
func (s *Server) Client() *clientv3.Client { return s.client }

// Dial returns a new client of the server that the caller closes. Useful
// when one process plays several clients (a test simulating a gateway
// that dies closes only its own client).
func (s *Server) Dial() (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   s.endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      ZapLogger(s.logger.With("component", "etcd-client"), zapcore.WarnLevel),
	})
	if err != nil {
		return nil, fmt.Errorf("etcdembed: client of %v: %w", s.endpoints, err)
	}
	return cli, nil
}

// Err reports a fatal server error after start; the owner should shut
// down when it fires.
func (s *Server) Err() <-chan error { return s.etcd.Err() }

// Close closes the server's client and stops the server, waiting for it to
// finish writing. Calling it again returns the first result.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		if err := s.client.Close(); err != nil && !errors.Is(err, context.Canceled) {
			s.closeErr = fmt.Errorf("etcdembed: close client: %w", err)
		}
		s.level.SetLevel(zapcore.FatalLevel)
		s.etcd.Close()
	})
	return s.closeErr
}

// expectedWarnings are etcd warnings that say nothing about an embedded,
// loopback-only, single-member server.
var expectedWarnings = map[string]bool{
	"Running http and grpc server on single port. This is not recommended for production.": true,
	"simple token is not cryptographically signed":                                         true,
}

func httpURL(hostport string) (url.URL, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return url.URL{}, err
	}
	if net.ParseIP(host) == nil {
		return url.URL{}, fmt.Errorf("%q: want an IP address, not a name", hostport)
	}
	return url.URL{Scheme: "http", Host: net.JoinHostPort(host, port)}, nil
}
