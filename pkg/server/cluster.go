package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"net"
	"os"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldpush/herald/pkg/discovery"
	"github.com/heraldpush/herald/services/api"
	"github.com/heraldpush/herald/services/gateway"
	"github.com/heraldpush/herald/services/gatewayrpc"
	"github.com/heraldpush/herald/services/scheduler"

	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/pkg/pushlog/kafkalog"
	"github.com/heraldpush/herald/pkg/route/redisroute"
	"github.com/heraldpush/herald/pkg/store/cassandrastore"

	"github.com/heraldpush/herald/pkg/config"
	"github.com/heraldpush/herald/pkg/route"
	"github.com/heraldpush/herald/pkg/store"
)

// openCassandra opens the Cassandra store; the schema comes from `herald migrate`.
func openCassandra(ctx context.Context, cfg config.Config, logger *slog.Logger) (store.Store, error) {
	c := cfg.Store.Cassandra
	st, err := cassandrastore.Open(ctx, cassandrastore.Config{
		Hosts: c.Hosts, Keyspace: c.Keyspace, Consistency: c.Consistency, Timeout: c.Timeout,
	}, logger.With("component", "store"))
	if err != nil {
		return nil, fmt.Errorf("server: open cassandra store (did `herald migrate` run?): %w", err)
	}
	return st, nil
}

// migrateCassandra applies the versioned CQL files of deploy/cassandra.
func migrateCassandra(ctx context.Context, cfg config.Config, logger *slog.Logger) error {
	c := cfg.Store.Cassandra
	if err := cassandrastore.Migrate(ctx, cassandrastore.MigrateConfig{
		Hosts: c.Hosts, Keyspace: c.Keyspace, ReplicationFactor: c.ReplicationFactor,
	}); err != nil {
		return fmt.Errorf("server: migrate cassandra: %w", err)
	}
	logger.Info("cassandra schema ready", "keyspace", c.Keyspace)
	return nil
}

func openKafka(_ context.Context, cfg config.Config, logger *slog.Logger) (*kafkalog.Log, error) {
	k := cfg.Queue.Kafka
	l, err := kafkalog.New(kafkalog.Config{
		Brokers:           k.Brokers,
		TopicPrefix:       k.TopicPrefix,
		Partitions:        k.Partitions,
		ReplicationFactor: k.ReplicationFactor,
		ClientID:          "herald-" + cfg.NodeID,
		MaxBatch:          cfg.Dispatcher.BatchSize,
	}, logger.With("component", "kafka"))
	if err != nil {
		return nil, fmt.Errorf("server: kafka log: %w", err)
	}
	return l, nil
}

// openRedisRoutes returns the Redis routing table; closing it closes its client.
func openRedisRoutes(cfg config.Config, logger *slog.Logger) (route.Table, error) {
	rdb := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{cfg.Router.RedisAddr}})
	t := redisroute.New(rdb, redisroute.Options{RouteTTL: cfg.Router.RouteTTL}, logger.With("component", "routes"))
	return closingTable{Table: t, close: rdb.Close}, nil
}

// closingTable closes an extra resource (the table's client) with the table.
type closingTable struct {
	*redisroute.Table
	close func() error
}

func (c closingTable) Close() error {
	return errors.Join(c.Table.Close(), c.close())
}

// buildRole wires the one role this process runs; it finds the others
// through etcd discovery and calls them over gRPC.
func (s *Server) buildRole(ctx context.Context) error {
	e := s.eng
	if e.etcd == nil {
		return errors.New("server: a single role needs discovery.etcd_endpoints")
	}
	switch s.cfg.Target {
	case config.TargetGateway:
		return s.buildGateway()
	case config.TargetDispatcher:
		_, gws, err := s.watchGateways(ctx)
		if err != nil {
			return err
		}
		var lead scheduler.Leadership
		if s.sharedEtcd() {
			lead = newEtcdLeadership(e.etcd, s.cfg.Discovery.EtcdPrefix+electionKey, s.cfg.NodeID, s.cfg.Discovery.LeaseTTL)
		}
		dispatch, err := s.dispatchRoles(gws, lead)
		if err != nil {
			return err
		}
		s.roles = append(s.roles, dispatch...)
		s.summary = func() []any { return nil }
	case config.TargetAPI:
		set, gws, err := s.watchGateways(ctx)
		if err != nil {
			return err
		}
		a, err := api.New(s.apiConfig(), api.Deps{
			Store: e.store, Log: e.log, Kicker: gws, Endpoints: set, Receipts: s.receipts, Meter: s.tel.Meter("herald/api"),
		}, s.log)
		if err != nil {
			return err
		}
		s.api = a
		s.roles = append(s.roles, role{name: "api", run: a.Run, ready: a.Ready()})
		s.summary = func() []any { return []any{"api_http", a.HTTPAddr(), "api_grpc", a.GRPCAddr()} }
	case config.TargetRouter:
		// The router keeps the routing table clean: when a gateway leaves
		// (its discovery lease ran out: the process died), every route
		// that still points at it is dropped at once.
		set, err := discovery.Watch(context.WithoutCancel(ctx), e.etcd, s.log, s.gatewayPrefix(), discovery.OnChange(func(ev discovery.Event) {
			if ev.Kind != discovery.Left {
				return
			}
			go func() {
				dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				if err := e.routes.DropNode(dctx, ev.Gateway.Node); err != nil {
					s.log.Warn("drop routes of a departed gateway", "node", ev.Gateway.Node, "err", err)
					return
				}
				s.log.Info("dropped routes of a departed gateway", "node", ev.Gateway.Node)
			}()
		}))
		if err != nil {
			return fmt.Errorf("server: watch gateways: %w", err)
		}
		e.add("gateway watch", func() error { set.Close(); return nil })
		s.roles = append(s.roles, role{name: "router", run: func(ctx context.Context) error { <-ctx.Done(); return nil }})
		s.summary = func() []any { return []any{"gateways", len(set.List())} }
	default:
		return fmt.Errorf("server: unknown target %q", s.cfg.Target)
	}
	return nil
}

// gatewayPrefix is where this cluster's gateways register in etcd.
func (s *Server) gatewayPrefix() discovery.Option {
	return discovery.WithPrefix(s.cfg.Discovery.EtcdPrefix + "gateways/")
}

// watchGateways returns the live gateway set and a gRPC client over it.
func (s *Server) watchGateways(ctx context.Context) (*discovery.Set, *gatewayrpc.Client, error) {
	set, err := discovery.Watch(context.WithoutCancel(ctx), s.eng.etcd, s.log, s.gatewayPrefix())
	if err != nil {
		return nil, nil, fmt.Errorf("server: watch gateways: %w", err)
	}
	s.eng.add("gateway watch", func() error { set.Close(); return nil })
	cli := gatewayrpc.New(set, s.eng.routes, gatewayrpc.Options{}, s.log)
	s.eng.add("gateway clients", cli.Close)
	return set, cli, nil
}

// buildGateway runs a gateway with its internal gRPC service, registered in
// discovery once both listen; the registration is revoked first on shutdown.
func (s *Server) buildGateway() error {
	e := s.eng
	gw, err := s.newGateway()
	if err != nil {
		return err
	}
	rpc := gateway.NewRPCServer(gw, gateway.RPCConfig{Addr: s.cfg.Discovery.GatewayGRPCAddr}, s.log)
	registered := make(chan struct{})
	register := func(ctx context.Context) error {
		for _, ready := range []<-chan struct{}{gw.Ready(), rpc.Ready()} {
			select {
			case <-ready:
			case <-ctx.Done():
				return nil
			}
		}
		reg, err := discovery.Register(ctx, e.etcd, discovery.Gateway{
			Node:       s.cfg.NodeID,
			DeviceAddr: advertise(s.cfg.Discovery.AdvertiseAddr, gw.Addr()),
			GRPCAddr:   advertise("", rpc.Addr()),
			Weight:     100,
			StartedAt:  time.Now(),
		}, s.cfg.Discovery.LeaseTTL, s.log, s.gatewayPrefix())
		if err != nil {
			return fmt.Errorf("register gateway: %w", err)
		}
		close(registered)
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				reg.SetLoad(gw.Sessions())
			case <-ctx.Done():
				cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				return reg.Close(cctx)
			}
		}
	}
	s.gw = gw
	s.roles = append(s.roles,
		role{name: "gateway", run: gw.Run, ready: gw.Ready()},
		role{name: "gateway rpc", run: rpc.Run, ready: rpc.Ready()},
		role{name: "discovery registration", run: register, ready: registered},
	)
	s.summary = func() []any { return []any{"gateway", gw.Addr(), "rpc", rpc.Addr()} }
	return nil
}

// advertise is the address other processes use to reach a listener bound
// at bound: the configured one, else bound with an unspecified host
// replaced by this host's name.
func advertise(configured, bound string) string {
	if configured != "" {
		return configured
	}
	host, port, err := net.SplitHostPort(bound)
	if err != nil {
		return bound
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		if h, err := os.Hostname(); err == nil {
			host = h
		}
	}
	return net.JoinHostPort(host, port)
}

// Migrate prepares the configured cluster engines: the Cassandra keyspace
// and tables, the Kafka topics. It is idempotent. The embedded engines need
// nothing.
func Migrate(ctx context.Context, cfg config.Config, logger *slog.Logger) error {
	if cfg.Store.Backend == config.BackendPebble && cfg.Queue.Backend == config.BackendPebble {
		logger.Info("embedded engines: nothing to migrate")
		return nil
	}
	if cfg.Queue.Backend == config.BackendKafka {
		l, err := openKafka(ctx, cfg, logger)
		if err != nil {
			return err
		}
		defer l.Close()
		if err := l.EnsureTopics(ctx, pushlog.TopicPush, pushlog.TopicReceipts); err != nil {
			return fmt.Errorf("server: create kafka topics: %w", err)
		}
		logger.Info("kafka topics ready", "prefix", cfg.Queue.Kafka.TopicPrefix, "partitions", cfg.Queue.Kafka.Partitions)
	}
	if cfg.Store.Backend == config.BackendCassandra {
		if err := migrateCassandra(ctx, cfg, logger); err != nil {
			return err
		}
	}
	return nil
}
