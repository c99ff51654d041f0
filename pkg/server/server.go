// Package server builds the roles one herald process runs from its
// configuration, wires them through their Go interfaces and supervises them:
// if one role fails, the others are stopped; on shutdown readiness goes false
// first, the api stops taking sends, gateways tell devices to reconnect,
// the dispatcher settles what it holds, and the engines close last.
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
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/heraldpush/herald/pkg/config"
	"github.com/heraldpush/herald/pkg/etcdembed"
	"github.com/heraldpush/herald/pkg/pebbledb"
	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/pkg/pushlog/pebblelog"
	"github.com/heraldpush/herald/pkg/route"
	"github.com/heraldpush/herald/pkg/route/etcdroute"
	"github.com/heraldpush/herald/pkg/route/memroute"
	"github.com/heraldpush/herald/pkg/store"
	"github.com/heraldpush/herald/pkg/store/pebblestore"
	"github.com/heraldpush/herald/pkg/telemetry"
	"github.com/heraldpush/herald/services/api"
	"github.com/heraldpush/herald/services/dispatcher"
	"github.com/heraldpush/herald/services/gateway"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// AdminTokenFile is where a generated admin token is kept, under the data dir.
const AdminTokenFile = "admin-token"

// Server is one herald process.
type Server struct {
	cfg    config.Config
	log    *slog.Logger
	tel    *telemetry.Telemetry
	health *telemetry.Health

	closers []func() error // engines, closed in reverse order after the roles stop

	etcd   *etcdembed.Server
	routes route.Table
	store  *pebblestore.Store
	plog   *pebblelog.Log
	gw     *gateway.Gateway
	disp   *dispatcher.Dispatcher
	api    *api.Server
	ops    *telemetry.OpsServer

	ready chan struct{}
	once  sync.Once
}

// New opens the engines and builds the roles. Nothing listens until Run.
func New(ctx context.Context, cfg config.Config, logger *slog.Logger) (s *Server, err error) {
	if cfg.Target != config.TargetAll {
		return nil, fmt.Errorf("server: -target=%s runs one role against the cluster engines (Kafka, Cassandra, Redis/etcd), "+
			"which are not available yet; run -target=all (the default) for the embedded platform", cfg.Target)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s = &Server{cfg: cfg, log: logger, ready: make(chan struct{})}
	defer func() {
		if err != nil {
			s.closeEngines()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("server: data dir: %w", err)
	}
	if s.cfg.AdminToken == "" {
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
	s.closers = append(s.closers, func() error { return s.tel.Shutdown(context.Background()) })
	s.health = telemetry.NewHealth(s.tel.MetricsHandler())

	db, err := pebbledb.Open(filepath.Join(cfg.DataDir, "pebble"), logger)
	if err != nil {
		return nil, fmt.Errorf("server: open pebble: %w", err)
	}
	s.closers = append(s.closers, db.Close)
	s.store = pebblestore.New(db, pebblestore.Options{}, logger.With("component", "store"))
	s.closers = append(s.closers, s.store.Close)
	s.plog, err = pebblelog.New(db, pebblelog.Options{
		Partitions: cfg.LogStore.Partitions,
		MaxBatch:   cfg.Dispatcher.BatchSize,
		Retention:  cfg.LogStore.Retention,
	}, logger.With("component", "pushlog"))
	if err != nil {
		return nil, fmt.Errorf("server: open push log: %w", err)
	}
	s.closers = append(s.closers, s.plog.Close)

	if cfg.RunsEmbeddedEtcd() {
		s.etcd, err = etcdembed.Start(ctx, etcdembed.Config{
			Dir:        filepath.Join(cfg.DataDir, "etcd"),
			ClientAddr: cfg.Etcd.ClientAddr,
			PeerAddr:   cfg.Etcd.PeerAddr,
			Logger:     logger.With("component", "etcd"),
		})
		if err != nil {
			return nil, fmt.Errorf("server: embedded etcd: %w", err)
		}
		s.closers = append(s.closers, s.etcd.Close)
	}
	if s.routes, err = s.routingTable(); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, s.routes.Close)

	meter := s.tel.Meter
	s.gw, err = gateway.New(gateway.Config{
		Addr:             cfg.Gateway.Addr,
		NodeID:           cfg.NodeID,
		MaxFrameBytes:    cfg.Gateway.MaxFrameBytes,
		HandshakeTimeout: cfg.Gateway.HandshakeTimeout,
		Heartbeat:        cfg.Gateway.Heartbeat,
		HeartbeatMin:     cfg.Gateway.HeartbeatMin,
		HeartbeatMax:     cfg.Gateway.HeartbeatMax,
		AckTimeout:       cfg.Gateway.AckTimeout,
		Window:           cfg.Gateway.Window,
		DrainTimeout:     cfg.Gateway.DrainTimeout,
	}, gateway.Deps{
		Registry: s.store, Inbox: s.store, Status: s.store, Routes: s.routes, Log: s.plog,
		Meter: meter("herald/gateway"),
	}, logger)
	if err != nil {
		return nil, err
	}
	gws := gateway.NewDirectory(s.gw)
	s.disp, err = dispatcher.New(dispatcher.Config{
		CommitInterval: cfg.Dispatcher.CommitInterval,
		MaxInFlight:    cfg.Dispatcher.MaxInFlight,
		DeliverTimeout: cfg.Gateway.AckTimeout + cfg.Gateway.AckTimeout/2,
	}, dispatcher.Deps{
		Log: s.plog, Routes: s.routes, Gateways: gws, Store: s.store, Meter: meter("herald/dispatcher"),
	}, logger)
	if err != nil {
		return nil, err
	}
	s.api, err = api.New(api.Config{
		HTTPAddr:        cfg.API.HTTPAddr,
		GRPCAddr:        cfg.API.GRPCAddr,
		AdminToken:      s.cfg.AdminToken,
		MaxTargets:      cfg.API.MaxTargets,
		MaxPayloadBytes: cfg.API.MaxPayloadBytes,
		MaxBodyBytes:    cfg.API.MaxBodyBytes,
		DefaultTTL:      cfg.API.DefaultTTL,
		MaxTTL:          cfg.API.MaxTTL,
		Mount:           s.health.Mount,
	}, api.Deps{Store: s.store, Log: s.plog, Kicker: gws, Meter: meter("herald/api")}, logger)
	if err != nil {
		return nil, err
	}
	if cfg.Ops.Addr != "" {
		mux := http.NewServeMux()
		s.health.Mount(mux)
		if s.ops, err = telemetry.ListenOps(ctx, cfg.Ops.Addr, mux, logger); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (s *Server) routingTable() (route.Table, error) {
	switch s.cfg.Router.Backend {
	case config.BackendMemory:
		return memroute.New(), nil
	case config.BackendEtcd:
		var cli *clientv3.Client
		if len(s.cfg.Router.EtcdEndpoints) == 0 {
			if s.etcd == nil {
				return nil, errors.New("server: router.backend etcd needs router.etcd_endpoints or the embedded etcd server")
			}
			cli = s.etcd.Client()
		} else {
			c, err := clientv3.New(clientv3.Config{Endpoints: s.cfg.Router.EtcdEndpoints})
			if err != nil {
				return nil, fmt.Errorf("server: etcd client: %w", err)
			}
			s.closers = append(s.closers, c.Close)
			cli = c
		}
		return etcdroute.New(cli, etcdroute.Options{LeaseTTL: s.cfg.Router.LeaseTTL}, s.log.With("component", "routes")), nil
	}
	return nil, fmt.Errorf("server: unknown router backend %q", s.cfg.Router.Backend)
}

// Run runs every role until ctx ends or one of them fails, then shuts down
// in order and closes the engines.
func (s *Server) Run(ctx context.Context) error {
	defer s.closeEngines()
	rolesCtx, stopRoles := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRoles()
	// The dispatcher outlives the gateway and the api: it settles (stores)
	// what they leave in flight.
	dispCtx, stopDisp := context.WithCancel(context.WithoutCancel(ctx))
	defer stopDisp()

	g, gctx := errgroup.WithContext(rolesCtx)
	g.Go(func() error { return s.gw.Run(gctx) })
	g.Go(func() error { return s.api.Run(gctx) })
	g.Go(func() error { return s.store.Run(gctx) })
	if s.ops != nil {
		g.Go(func() error { return s.ops.Run(gctx) })
	}
	dispErr := make(chan error, 1)
	go func() { dispErr <- s.disp.Run(dispCtx) }()

	go func() {
		select {
		case <-s.gw.Ready():
		case <-gctx.Done():
			return
		}
		select {
		case <-s.api.Ready():
		case <-gctx.Done():
			return
		}
		s.health.SetReady(true)
		s.log.Info("herald ready", "api_http", s.api.HTTPAddr(), "api_grpc", s.api.GRPCAddr(), "gateway", s.gw.Addr())
		s.once.Do(func() { close(s.ready) })
	}()

	var first error
	select {
	case <-ctx.Done():
	case <-gctx.Done():
	case err := <-dispErr:
		first = err
		dispErr <- err
	}
	s.health.SetReady(false)
	stopRoles()
	err := g.Wait()
	stopDisp()
	derr := <-dispErr
	return errors.Join(first, ignoreCanceled(err), ignoreCanceled(derr))
}

func ignoreCanceled(err error) error {
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func (s *Server) closeEngines() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		if err := s.closers[i](); err != nil {
			s.log.Warn("close engine", "err", err)
		}
	}
	s.closers = nil
}

// Ready is closed once every role listens.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// APIAddr is the REST address, GRPCAddr the gRPC one, GatewayAddr the device
// listener; valid after Ready.
func (s *Server) APIAddr() string     { return s.api.HTTPAddr() }
func (s *Server) GRPCAddr() string    { return s.api.GRPCAddr() }
func (s *Server) GatewayAddr() string { return s.gw.Addr() }

// OpsAddr is the ops endpoint address ("" when disabled).
func (s *Server) OpsAddr() string {
	if s.ops == nil {
		return ""
	}
	return s.ops.Addr()
}

// Log is the process's push/upstream log, for tests and tools.
func (s *Server) Log() pushlog.Log { return s.plog }

// Store is the process's store, for tests and tools that inspect state.
func (s *Server) Store() store.Store { return s.store }

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
