// Package api is Herald's business-facing role: the REST/JSON API and the
// gRPC service (heraldv1.Herald) through which a company's services create
// apps, register devices, send messages and read their delivery status.
//
// Both protocols are thin translations onto one core (service) that works on
// plain Go types; domain errors become HTTP and gRPC codes in one table
// (errors.go). A send is answered only once its records are durable in the
// push log, and a send that fails leaves nothing behind that would deliver it.
package api

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"

	"github.com/heraldpush/herald/api/heraldv1"
	"github.com/heraldpush/herald/pkg/ids"
	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/pkg/receipt"
	"github.com/heraldpush/herald/pkg/store"
)

// shutdownTimeout bounds the graceful part of shutdown; connections still
// busy after it are closed.
const shutdownTimeout = 5 * time.Second

// Config configures the api role. Zero fields take the documented defaults.
type Config struct {
	HTTPAddr string // REST listen address; default ":8080"
	GRPCAddr string // gRPC listen address; default ":9090"
	// AdminToken guards admin calls (creating apps). Empty: admin calls
	// are refused with 403 forbidden.
	AdminToken      string
	MaxTargets      int           // device ids per send; default 1000
	MaxPayloadBytes int           // encoded notification + data; default 4096
	MaxBodyBytes    int           // request body (and gRPC message); default 1 MiB
	DefaultTTL      time.Duration // when a send sets none; default 24h
	MaxTTL          time.Duration // largest TTL a send may ask for; default 240h
	// DefaultRateLimit is the sends per second an app may make when its
	// own RateLimit is 0; 0 = unlimited. Enforced per api instance.
	DefaultRateLimit int
	MaxSendAhead     time.Duration // how far ahead send_at may be; default 168h
	MaxSpread        time.Duration // largest spread_over_seconds; default 1h
	// Mount, if set, registers more handlers (e.g. /healthz, /readyz,
	// /metrics) on the REST server's mux.
	Mount func(*http.ServeMux)
}

func (c Config) withDefaults() (Config, error) {
	if c.HTTPAddr == "" {
		c.HTTPAddr = ":8080"
	}
	if c.GRPCAddr == "" {
		c.GRPCAddr = ":9090"
	}
	if c.MaxTargets == 0 {
		c.MaxTargets = 1000
	}
	if c.MaxPayloadBytes == 0 {
		c.MaxPayloadBytes = 4096
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 1 << 20
	}
	if c.DefaultTTL == 0 {
		c.DefaultTTL = 24 * time.Hour
	}
	if c.MaxTTL == 0 {
		c.MaxTTL = 240 * time.Hour
	}
	if c.MaxSendAhead == 0 {
		c.MaxSendAhead = 168 * time.Hour
	}
	if c.MaxSpread == 0 {
		c.MaxSpread = time.Hour
	}
	var errs []error
	if c.MaxTargets < 0 {
		errs = append(errs, fmt.Errorf("api: MaxTargets is %d, want > 0", c.MaxTargets))
	}
	if c.MaxPayloadBytes < 0 {
		errs = append(errs, fmt.Errorf("api: MaxPayloadBytes is %d, want > 0", c.MaxPayloadBytes))
	}
	if c.MaxBodyBytes < 0 {
		errs = append(errs, fmt.Errorf("api: MaxBodyBytes is %d, want > 0", c.MaxBodyBytes))
	}
	if c.MaxTTL < time.Second {
		errs = append(errs, fmt.Errorf("api: MaxTTL is %s, want >= 1s", c.MaxTTL))
	}
	if c.DefaultTTL < 0 || c.DefaultTTL > c.MaxTTL {
		errs = append(errs, fmt.Errorf("api: DefaultTTL is %s, want between 0 and MaxTTL (%s)", c.DefaultTTL, c.MaxTTL))
	}
	if c.DefaultRateLimit < 0 {
		errs = append(errs, fmt.Errorf("api: DefaultRateLimit is %d, want >= 0 (0 = unlimited)", c.DefaultRateLimit))
	}
	if c.MaxSendAhead < time.Second {
		errs = append(errs, fmt.Errorf("api: MaxSendAhead is %s, want >= 1s", c.MaxSendAhead))
	}
	if c.MaxSpread < time.Second {
		errs = append(errs, fmt.Errorf("api: MaxSpread is %s, want >= 1s", c.MaxSpread))
	}
	return c, errors.Join(errs...)
}

// Kicker reaches the live session of a device, wherever it is connected.
type Kicker interface {
	// Kick closes the session (the api calls it after deleting the device).
	Kick(ctx context.Context, appID, deviceID string) error
	// Refresh makes the session reload the device's registration (alias,
	// tags, topics) so group messages match on the new values.
	Refresh(ctx context.Context, appID, deviceID string) error
}

// Deps are the components the api role works with.
type Deps struct {
	Store  store.Store
	Log    pushlog.Appender
	Kicker Kicker // may be nil
	// Endpoints lists gateway addresses for GET /v1/endpoints; nil answers
	// 503 unavailable.
	Endpoints Endpoints
	// Receipts gets the api's "sent", "failed" and "recalled" receipts;
	// nil = none.
	Receipts *receipt.Emitter
	Meter    metric.Meter // nil = no metrics
}

// Server serves the REST and gRPC APIs.
type Server struct {
	cfg     Config
	svc     *service
	logger  *slog.Logger
	metrics *metrics
	handler http.Handler

	started  atomic.Bool
	ready    chan struct{}
	httpAddr string // set before ready is closed
	grpcAddr string
}

// New builds the api role. It does not listen until Run.
func New(cfg Config, deps Deps, logger *slog.Logger) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if deps.Store == nil || deps.Log == nil {
		return nil, errors.New("api: Deps.Store and Deps.Log are required")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(deps.Meter)
	if err != nil {
		return nil, fmt.Errorf("api: metrics: %w", err)
	}
	svc := &service{
		store:     deps.Store,
		log:       deps.Log,
		kicker:    deps.Kicker,
		endpoints: deps.Endpoints,
		receipts:  deps.Receipts,
		nextID:    ids.New(nil).Next,
		now:       time.Now,
		limits: sendLimits{
			MaxTargets:      cfg.MaxTargets,
			MaxPayloadBytes: cfg.MaxPayloadBytes,
			DefaultTTL:      cfg.DefaultTTL,
			MaxTTL:          cfg.MaxTTL,
			MaxSendAhead:    cfg.MaxSendAhead,
			MaxSpread:       cfg.MaxSpread,
		},
		rates:    newRateLimiter(cfg.DefaultRateLimit),
		logger:   logger,
		accepted: m.messageAccepted,
	}
	if cfg.AdminToken != "" {
		h := sha256.Sum256([]byte(cfg.AdminToken))
		svc.admin = h[:]
	}
	s := &Server{cfg: cfg, svc: svc, logger: logger, metrics: m, ready: make(chan struct{})}
	s.handler = newREST(svc, cfg, m, logger)
	return s, nil
}

// Ready is closed once both listeners are bound.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// HTTPAddr is the bound REST address; valid once Ready is closed.
func (s *Server) HTTPAddr() string {
	select {
	case <-s.ready:
		return s.httpAddr
	default:
		return ""
	}
}

// GRPCAddr is the bound gRPC address; valid once Ready is closed.
func (s *Server) GRPCAddr() string {
	select {
	case <-s.ready:
		return s.grpcAddr
	default:
		return ""
	}
}

// Run listens on both addresses and serves until ctx ends, then shuts down
// gracefully and returns nil. It returns an error if a listener cannot be
// bound or a server fails. Run may be called once.
func (s *Server) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("api: Run called twice")
	}
	var lc net.ListenConfig
	hl, err := lc.Listen(ctx, "tcp", s.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("api: listen http: %w", err)
	}
	gl, err := lc.Listen(ctx, "tcp", s.cfg.GRPCAddr)
	if err != nil {
		_ = hl.Close()
		return fmt.Errorf("api: listen grpc: %w", err)
	}

	hs := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelWarn),
	}
	fresh := trackFresh(hs)
	gs := grpc.NewServer(
		grpc.MaxRecvMsgSize(s.cfg.MaxBodyBytes),
		grpc.ChainUnaryInterceptor(unaryInterceptor(s.metrics, s.logger)),
	)
	heraldv1.RegisterHeraldServer(gs, &grpcAPI{svc: s.svc})

	s.httpAddr = hl.Addr().String()
	s.grpcAddr = gl.Addr().String()
	close(s.ready)
	s.logger.InfoContext(ctx, "api listening", "http", s.httpAddr, "grpc", s.grpcAddr)

	errc := make(chan error, 2)
	go func() {
		err := hs.Serve(hl)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		errc <- err
	}()
	go func() { errc <- gs.Serve(gl) }()

	var runErr error
	running := 2
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		running--
		if runErr == nil {
			runErr = errors.New("server stopped unexpectedly")
		}
		runErr = fmt.Errorf("api: serve: %w", runErr)
	}

	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	// net/http's Shutdown waits up to 5 s for connections that never sent
	// a request (clients open spares); close those at once instead.
	fresh.closeAll()
	if err := hs.Shutdown(sctx); err != nil {
		s.logger.WarnContext(ctx, "http shutdown deadline passed, closing connections", "err", err)
		_ = hs.Close()
	}
	stopped := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-sctx.Done():
		s.logger.WarnContext(ctx, "grpc shutdown deadline passed, closing connections")
		gs.Stop()
		<-stopped
	}
	for ; running > 0; running-- {
		<-errc
	}
	s.logger.InfoContext(ctx, "api stopped")
	return runErr
}

// freshConns tracks a server's connections that have not sent a request yet.
type freshConns struct {
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	shutdown bool
}

// trackFresh hooks hs's ConnState to track its fresh connections.
func trackFresh(hs *http.Server) *freshConns {
	f := &freshConns{conns: make(map[net.Conn]struct{})}
	hs.ConnState = func(c net.Conn, st http.ConnState) {
		f.mu.Lock()
		defer f.mu.Unlock()
		switch {
		case st == http.StateNew && f.shutdown:
			_ = c.Close()
		case st == http.StateNew:
			f.conns[c] = struct{}{}
		default:
			delete(f.conns, c)
		}
	}
	return f
}

// closeAll closes every connection that has not sent a request, and any
// that arrives from now on.
func (f *freshConns) closeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.shutdown = true
	for c := range f.conns {
		_ = c.Close()
		delete(f.conns, c)
	}
}
