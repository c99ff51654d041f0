// Package server builds the roles one herald process runs from its
// configuration, wires them through their Go interfaces (in one process) or
// gRPC and etcd discovery (in a cluster), and supervises them: if one role
// fails, the others are stopped; on shutdown readiness goes false first, the
// api stops taking sends, gateways tell devices to reconnect, the dispatcher
// settles what it holds, and the engines close last.
//
// cmd/herald is a thin main around it; tests embed it to run the real
// platform in process.
package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/heraldpush/herald/pkg/config"
	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/pkg/receipt"
	"github.com/heraldpush/herald/pkg/store"
	"github.com/heraldpush/herald/pkg/telemetry"
	"github.com/heraldpush/herald/services/api"
	"github.com/heraldpush/herald/services/gateway"
)

// AdminTokenFile is where a generated admin token is kept, under the data dir.
const AdminTokenFile = "admin-token"

// role is one supervised component.
type role struct {
	name  string
	run   func(ctx context.Context) error
	ready <-chan struct{} // nil: ready at once
	// late roles stop after the others: the dispatcher settles (stores)
	// what the gateway and the api leave in flight.
	late bool
}

// Server is one herald process.
type Server struct {
	cfg    config.Config
	log    *slog.Logger
	tel    *telemetry.Telemetry
	health *telemetry.Health
	eng    *engines

	roles []role
	// receipts is the process's one receipt emitter (nil for the router);
	// flushed after every role stopped.
	receipts *receipt.Emitter
	gw       *gateway.Gateway
	api      *api.Server
	ops      *telemetry.OpsServer
	summary  func() []any // what "herald ready" logs

	ready chan struct{}
	once  sync.Once
}

// New opens the engines and builds the roles. Nothing listens until Run.
func New(ctx context.Context, cfg config.Config, logger *slog.Logger) (s *Server, err error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s = &Server{cfg: cfg, log: logger, ready: make(chan struct{}), eng: &engines{}}
	defer func() {
		if err != nil {
			s.eng.close(logger)
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("server: data dir: %w", err)
	}
	if cfg.Runs(config.TargetAPI) && s.cfg.AdminToken == "" {
		tok, generated, err := adminToken(cfg.DataDir)
		if err != nil {
			return nil, err
		}
		s.cfg.AdminToken = tok
		if generated {
			logger.Info("generated admin token", "file", filepath.Join(cfg.DataDir, AdminTokenFile))
		}
	}
	if s.tel, err = telemetry.New("herald"); err != nil {
		return nil, fmt.Errorf("server: telemetry: %w", err)
	}
	s.eng.add("telemetry", func() error { return s.tel.Shutdown(context.Background()) })
	s.health = telemetry.NewHealth(s.tel.MetricsHandler())

	if err := s.eng.open(ctx, s.cfg, logger); err != nil {
		return nil, err
	}
	if cfg.Target != config.TargetRouter {
		s.receipts = receipt.NewEmitter(s.eng.log, logger.With("component", "receipts"), receipt.WithMeter(s.tel.Meter("herald/receipts")))
		// Late: it stops with the dispatcher, whose last receipts Run's
		// final flush (below, after every role) still appends.
		s.roles = append(s.roles, role{name: "receipt emitter", run: s.receipts.Run, late: true})
	}
	if cfg.Target == config.TargetAll {
		err = s.buildAll()
	} else {
		err = s.buildRole(ctx)
	}
	if err != nil {
		return nil, err
	}
	if cfg.Ops.Addr != "" {
		mux := http.NewServeMux()
		s.health.Mount(mux)
		// Profiles on the ops endpoint only (loopback by default), never on
		// the public API listener.
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		if s.ops, err = telemetry.ListenOps(ctx, cfg.Ops.Addr, mux, logger); err != nil {
			return nil, err
		}
		s.roles = append(s.roles, role{name: "ops", run: s.ops.Run})
	}
	return s, nil
}

// apiConfig is the api role's configuration.
func (s *Server) apiConfig() api.Config {
	c := s.cfg
	return api.Config{
		HTTPAddr:         c.API.HTTPAddr,
		GRPCAddr:         c.API.GRPCAddr,
		AdminToken:       s.cfg.AdminToken,
		MaxTargets:       c.API.MaxTargets,
		MaxPayloadBytes:  c.API.MaxPayloadBytes,
		MaxBodyBytes:     c.API.MaxBodyBytes,
		DefaultTTL:       c.API.DefaultTTL,
		MaxTTL:           c.API.MaxTTL,
		DefaultRateLimit: c.API.DefaultRateLimit,
		MaxSendAhead:     c.API.MaxSendAhead,
		MaxSpread:        c.API.MaxSpread,
		Mount:            s.health.Mount,
	}
}

// gatewayConfig is the gateway role's configuration.
func (s *Server) gatewayConfig() gateway.Config {
	g := s.cfg.Gateway
	return gateway.Config{
		Addr:             g.Addr,
		NodeID:           s.cfg.NodeID,
		MaxFrameBytes:    g.MaxFrameBytes,
		HandshakeTimeout: g.HandshakeTimeout,
		Heartbeat:        g.Heartbeat,
		HeartbeatMin:     g.HeartbeatMin,
		HeartbeatMax:     g.HeartbeatMax,
		AckTimeout:       g.AckTimeout,
		Window:           g.Window,
		DrainTimeout:     g.DrainTimeout,
		IO:               g.IO,
		NormalMaxDelay:   g.NormalMaxDelay,
		ReplayLookback:   g.ReplayLookback,
	}
}

// Run runs every role until ctx ends or one of them fails, then shuts down
// in order and closes the engines.
func (s *Server) Run(ctx context.Context) error {
	defer s.eng.close(s.log)
	earlyCtx, stopEarly := context.WithCancel(context.WithoutCancel(ctx))
	defer stopEarly()
	lateCtx, stopLate := context.WithCancel(context.WithoutCancel(ctx))
	defer stopLate()

	early, gctx := errgroup.WithContext(earlyCtx)
	lateErr := make(chan error, 1)
	var late sync.WaitGroup
	var lateErrs []error
	var lateMu sync.Mutex
	for _, r := range s.roles {
		if r.late {
			late.Add(1)
			go func() {
				defer late.Done()
				if err := r.run(lateCtx); err != nil {
					lateMu.Lock()
					lateErrs = append(lateErrs, fmt.Errorf("%s: %w", r.name, err))
					lateMu.Unlock()
					select {
					case lateErr <- err:
					default:
					}
				}
			}()
			continue
		}
		early.Go(func() error {
			if err := r.run(gctx); err != nil {
				return fmt.Errorf("%s: %w", r.name, err)
			}
			return nil
		})
	}
	go func() {
		for _, r := range s.roles {
			if r.ready == nil {
				continue
			}
			select {
			case <-r.ready:
			case <-gctx.Done():
				return
			}
		}
		s.health.SetReady(true)
		s.log.Info("herald ready", append([]any{"target", s.cfg.Target, "node", s.cfg.NodeID}, s.summary()...)...)
		s.once.Do(func() { close(s.ready) })
	}()

	select {
	case <-ctx.Done():
	case <-gctx.Done():
	case <-lateErr:
	}
	s.health.SetReady(false)
	stopEarly()
	err := early.Wait()
	stopLate()
	late.Wait()
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if ferr := s.receipts.Flush(fctx); ferr != nil {
		s.log.Warn("flush receipts on shutdown", "err", ferr)
	}
	return errors.Join(ignoreCanceled(err), ignoreCanceled(errors.Join(lateErrs...)))
}

func ignoreCanceled(err error) error {
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// Ready is closed once every role listens.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// APIAddr is the REST address, GRPCAddr the gRPC one, GatewayAddr the device
// listener; valid after Ready, "" for roles this process does not run.
func (s *Server) APIAddr() string {
	if s.api == nil {
		return ""
	}
	return s.api.HTTPAddr()
}

func (s *Server) GRPCAddr() string {
	if s.api == nil {
		return ""
	}
	return s.api.GRPCAddr()
}

func (s *Server) GatewayAddr() string {
	if s.gw == nil {
		return ""
	}
	return s.gw.Addr()
}

// OpsAddr is the ops endpoint address ("" when disabled).
func (s *Server) OpsAddr() string {
	if s.ops == nil {
		return ""
	}
	return s.ops.Addr()
}

// Log is the process's push/upstream log, for tests and tools.
func (s *Server) Log() pushlog.Log { return s.eng.log }

// Store is the process's store, for tests and tools that inspect state.
func (s *Server) Store() store.Store { return s.eng.store }

// AdminToken is the admin token in force (configured or generated).
func (s *Server) AdminToken() string { return s.cfg.AdminToken }

// adminToken reads the token kept in the data dir, or makes and keeps one.
func adminToken(dir string) (tok string, generated bool, err error) {
	path := filepath.Join(dir, AdminTokenFile)
	b, err := os.ReadFile(path)
	if err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b)), false, nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", false, fmt.Errorf("server: read admin token: %w", err)
	}
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		return "", false, fmt.Errorf("server: generate admin token: %w", err)
	}
	tok = hex.EncodeToString(raw)
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", false, fmt.Errorf("server: write admin token: %w", err)
	}
	return tok, true, nil
}
