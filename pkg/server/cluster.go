package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/redis/go-redis/v9"

	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/pkg/pushlog/kafkalog"
	"github.com/heraldpush/herald/pkg/route/redisroute"

	"github.com/heraldpush/herald/pkg/config"
	"github.com/heraldpush/herald/pkg/route"
	"github.com/heraldpush/herald/pkg/store"
)

// The cluster engines and the single-role wiring land with the cluster
// issue; until then they are refused with a clear message.

func notYet(what string) error {
	return fmt.Errorf("server: %s is not available in this build yet (cluster milestone); use the embedded engines with -target=all", what)
}

func openCassandra(context.Context, config.Config, *slog.Logger) (store.Store, error) {
	return nil, notYet("store.backend cassandra")
}

func migrateCassandra(context.Context, config.Config, *slog.Logger) error {
	return notYet("store.backend cassandra")
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

func (s *Server) buildRole(context.Context) error {
	return notYet("-target=" + s.cfg.Target)
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
