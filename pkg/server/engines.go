package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/cockroachdb/pebble/v2"
	clientv3 "go.etcd.io/etcd/client/v3"

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
)

// engines are the backends one process opened, closed in reverse order.
type engines struct {
	store  store.Store
	log    pushlog.Log
	routes route.Table
	etcd   *clientv3.Client // discovery (and etcd routes); nil in a plain all-in-one
	// background jobs the engines need (the Pebble store's expiry sweep)
	jobs []role

	closers []closer
}

type closer struct {
	name string
	fn   func() error
}

func (e *engines) add(name string, fn func() error) { e.closers = append(e.closers, closer{name, fn}) }

func (e *engines) close(logger *slog.Logger) {
	for i := len(e.closers) - 1; i >= 0; i-- {
		if err := e.closers[i].fn(); err != nil {
			logger.Warn("close engine", "engine", e.closers[i].name, "err", err)
		}
	}
	e.closers = nil
}

// open opens the store, the log, the routing table and the etcd client the
// configuration names.
func (e *engines) open(ctx context.Context, cfg config.Config, logger *slog.Logger) error {
	var embeddedEtcd *etcdembed.Server
	if cfg.RunsEmbeddedEtcd() {
		srv, err := etcdembed.Start(ctx, etcdembed.Config{
			Dir:        filepath.Join(cfg.DataDir, "etcd"),
			ClientAddr: cfg.Etcd.ClientAddr,
			PeerAddr:   cfg.Etcd.PeerAddr,
			Logger:     logger.With("component", "etcd"),
		})
		if err != nil {
			return fmt.Errorf("server: embedded etcd: %w", err)
		}
		e.add("embedded etcd", srv.Close)
		embeddedEtcd = srv
	}
	if len(cfg.Discovery.EtcdEndpoints) > 0 {
		cli, err := clientv3.New(clientv3.Config{Endpoints: cfg.Discovery.EtcdEndpoints, DialTimeout: 5 * time.Second})
		if err != nil {
			return fmt.Errorf("server: etcd client: %w", err)
		}
		e.add("etcd client", cli.Close)
		e.etcd = cli
	} else if embeddedEtcd != nil {
		e.etcd = embeddedEtcd.Client()
	}

	var db *pebble.DB
	if cfg.Store.Backend == config.BackendPebble || cfg.Queue.Backend == config.BackendPebble {
		var err error
		if db, err = pebbledb.Open(filepath.Join(cfg.DataDir, "pebble"), logger); err != nil {
			return fmt.Errorf("server: open pebble: %w", err)
		}
		e.add("pebble", db.Close)
	}
	switch cfg.Store.Backend {
	case config.BackendPebble:
		st := pebblestore.New(db, pebblestore.Options{}, logger.With("component", "store"))
		e.add("store", st.Close)
		e.store = st
		e.jobs = append(e.jobs, role{name: "store sweep", run: st.Run})
	case config.BackendCassandra:
		st, err := openCassandra(ctx, cfg, logger)
		if err != nil {
			return err
		}
		e.add("store", st.Close)
		e.store = st
	default:
		return fmt.Errorf("server: unknown store backend %q", cfg.Store.Backend)
	}
	switch cfg.Queue.Backend {
	case config.BackendPebble:
		l, err := pebblelog.New(db, pebblelog.Options{
			Partitions: cfg.LogStore.Partitions,
			MaxBatch:   cfg.Dispatcher.BatchSize,
			Retention:  cfg.LogStore.Retention,
		}, logger.With("component", "pushlog"))
		if err != nil {
			return fmt.Errorf("server: open push log: %w", err)
		}
		e.add("push log", l.Close)
		e.log = l
	case config.BackendKafka:
		l, err := openKafka(ctx, cfg, logger)
		if err != nil {
			return err
		}
		e.add("push log", l.Close)
		e.log = l
	default:
		return fmt.Errorf("server: unknown queue backend %q", cfg.Queue.Backend)
	}
	rt, err := e.routingTable(cfg, embeddedEtcd, logger)
	if err != nil {
		return err
	}
	e.add("routing table", rt.Close)
	e.routes = rt
	return nil
}

func (e *engines) routingTable(cfg config.Config, embedded *etcdembed.Server, logger *slog.Logger) (route.Table, error) {
	switch cfg.Router.Backend {
	case config.BackendMemory:
		return memroute.New(), nil
	case config.BackendEtcd:
		var cli *clientv3.Client
		switch {
		case len(cfg.Router.EtcdEndpoints) > 0:
			c, err := clientv3.New(clientv3.Config{Endpoints: cfg.Router.EtcdEndpoints, DialTimeout: 5 * time.Second})
			if err != nil {
				return nil, fmt.Errorf("server: etcd client for routes: %w", err)
			}
			e.add("etcd routes client", c.Close)
			cli = c
		case e.etcd != nil:
			cli = e.etcd
		case embedded != nil:
			cli = embedded.Client()
		default:
			return nil, errors.New("server: router.backend etcd needs router.etcd_endpoints, discovery.etcd_endpoints or the embedded etcd server")
		}
		return etcdroute.New(cli, etcdroute.Options{Prefix: cfg.Discovery.EtcdPrefix + "routes/", LeaseTTL: cfg.Router.LeaseTTL}, logger.With("component", "routes")), nil
	case config.BackendRedis:
		return openRedisRoutes(cfg, logger)
	}
	return nil, fmt.Errorf("server: unknown router backend %q", cfg.Router.Backend)
}
