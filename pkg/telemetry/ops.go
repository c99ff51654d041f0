package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// ShutdownTimeout bounds the graceful shutdown of the ops server.
const ShutdownTimeout = 5 * time.Second

// OpsServer is the HTTP server of the operations endpoint.
type OpsServer struct {
	ln     net.Listener
	srv    *http.Server
	logger *slog.Logger
}

// ListenOps binds addr (which may be "127.0.0.1:0") and returns a server
// ready to Run; Addr reports the bound address. logger may be nil.
func ListenOps(ctx context.Context, addr string, h http.Handler, logger *slog.Logger) (*OpsServer, error) {
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("telemetry: ops listen %s: %w", addr, err)
	}
	return &OpsServer{
		ln:     ln,
		logger: logger,
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       60 * time.Second,
			ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		},
	}, nil
}

// Addr is the bound address, host:port.
func (s *OpsServer) Addr() string { return s.ln.Addr().String() }

// Run serves until ctx ends, then shuts down gracefully (in-flight requests
// get ShutdownTimeout) and returns nil; it returns an error only if serving fails.
func (s *OpsServer) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("telemetry: ops serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ShutdownTimeout)
	defer cancel()
	if err := s.srv.Shutdown(sctx); err != nil {
		_ = s.srv.Close()
		<-errc
		return fmt.Errorf("telemetry: ops shutdown: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("telemetry: ops serve: %w", err)
	}
	return nil
}

// Close stops the server at once and releases its listener; use it when Run
// will not be called (startup failed elsewhere).
func (s *OpsServer) Close() error {
	err := s.srv.Close()
	if lerr := s.ln.Close(); lerr != nil && !errors.Is(lerr, net.ErrClosed) && err == nil {
		err = lerr
	}
	return err
}

// ServeOps serves h on addr until ctx ends, logging the bound address
// ("ops endpoint listening", addr). An empty addr disables the endpoint:
// ServeOps then just waits for ctx, so it can sit in a supervisor like any
// other role. It returns nil after a clean shutdown.
func ServeOps(ctx context.Context, addr string, h http.Handler, logger *slog.Logger) error {
	if addr == "" {
		<-ctx.Done()
		return nil
	}
	s, err := ListenOps(ctx, addr, h, logger)
	if err != nil {
		return err
	}
	s.logger.Info("ops endpoint listening", "addr", s.Addr())
	return s.Run(ctx)
}
