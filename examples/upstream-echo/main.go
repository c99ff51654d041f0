// Command upstream-echo is an example business service: it answers every
// upstream message the devices of one app send on one channel with a data
// message echoing it. See README.md.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/heraldpush/herald/api/heraldv1"
	"github.com/heraldpush/herald/examples/upstream-echo/echo"
	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/pkg/pushlog/kafkalog"
)

func main() {
	os.Exit(run())
}

// env returns the environment variable, or def when it is unset.
func env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

func run() int {
	fs := flag.NewFlagSet("upstream-echo", flag.ContinueOnError)
	brokers := fs.String("kafka-brokers", env("HERALD_ECHO_KAFKA_BROKERS", "127.0.0.1:9092"), "Kafka bootstrap brokers, comma-separated (HERALD_ECHO_KAFKA_BROKERS)")
	prefix := fs.String("topic-prefix", env("HERALD_ECHO_TOPIC_PREFIX", kafkalog.DefaultTopicPrefix), "Herald's queue.kafka.topic_prefix (HERALD_ECHO_TOPIC_PREFIX)")
	channel := fs.String("channel", env("HERALD_ECHO_CHANNEL", "echo"), "upstream channel to answer (HERALD_ECHO_CHANNEL)")
	group := fs.String("group", env("HERALD_ECHO_GROUP", "upstream-echo"), "consumer group: run several copies with one group to share the work (HERALD_ECHO_GROUP)")
	apiAddr := fs.String("api", env("HERALD_ECHO_API", "127.0.0.1:9090"), "Herald api gRPC address (HERALD_ECHO_API)")
	useTLS := fs.Bool("tls", env("HERALD_ECHO_TLS", "") == "true", "use TLS to the api (HERALD_ECHO_TLS=true)")
	appID := fs.String("app-id", env("HERALD_ECHO_APP_ID", ""), "answer only this app's devices; \"\" = every record (HERALD_ECHO_APP_ID)")
	appKey := fs.String("app-key", env("HERALD_ECHO_APP_KEY", ""), "app key (HERALD_ECHO_APP_KEY)")
	appSecret := fs.String("app-secret", env("HERALD_ECHO_APP_SECRET", ""), "app secret; prefer the environment to a flag (HERALD_ECHO_APP_SECRET)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *appKey == "" || *appSecret == "" {
		fmt.Fprintln(os.Stderr, "upstream-echo: -app-key and -app-secret (or HERALD_ECHO_APP_KEY / HERALD_ECHO_APP_SECRET) are required")
		return 2
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, logger, *brokers, *prefix, *channel, *group, *apiAddr, *useTLS, *appID, *appKey, *appSecret); err != nil {
		logger.Error("upstream-echo stopped", "err", err)
		return 1
	}
	return 0
}

func serve(ctx context.Context, logger *slog.Logger, brokers, prefix, channel, group, apiAddr string, useTLS bool, appID, key, secret string) error {
	tc := insecure.NewCredentials()
	if useTLS {
		tc = credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12})
	}
	conn, err := grpc.NewClient(apiAddr,
		grpc.WithTransportCredentials(tc),
		grpc.WithPerRPCCredentials(echo.BasicAuth(key, secret, useTLS)))
	if err != nil {
		return fmt.Errorf("api client: %w", err)
	}
	defer conn.Close()

	lg, err := kafkalog.New(kafkalog.Config{Brokers: strings.Split(brokers, ","), TopicPrefix: prefix, ClientID: "upstream-echo"},
		logger.With("component", "kafka"))
	if err != nil {
		return fmt.Errorf("kafka: %w", err)
	}
	defer lg.Close()
	cons, err := lg.Consume(ctx, pushlog.UpstreamTopic(channel), group)
	if err != nil {
		return fmt.Errorf("consume %s: %w", pushlog.UpstreamTopic(channel), err)
	}
	defer cons.Close()
	logger.Info("answering upstream messages", "channel", channel, "group", group, "api", apiAddr)
	return echo.Run(ctx, cons, heraldv1.NewHeraldClient(conn), echo.Config{AppID: appID, Logger: logger})
}
