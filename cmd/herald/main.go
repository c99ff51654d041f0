// Command herald is the Herald server. With no -target (or -target=all) it
// runs every role in one process on embedded engines; see `herald -h` and
// docs/configuration.md. `herald migrate [flags]` prepares the cluster
// engines (Cassandra schema, Kafka topics) and exits.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/heraldpush/herald/pkg/config"
	"github.com/heraldpush/herald/pkg/server"
)

func main() {
	os.Exit(run())
}

func run() int {
	args := os.Args[1:]
	migrate := len(args) > 0 && args[0] == "migrate"
	if migrate {
		args = args[1:]
	}
	cfg, err := config.Load(args, os.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		config.Usage(os.Stdout)
		return 0
	}
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "herald:", err)
		return 2
	}
	if cfg.CheckOnly {
		fmt.Println("config ok")
		return 0
	}
	logger := cfg.Log.NewLogger(os.Stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if migrate {
		if err := server.Migrate(ctx, cfg, logger); err != nil {
			logger.Error("migrate failed", "err", err)
			return 1
		}
		fmt.Println("migrate ok")
		return 0
	}
	srv, err := server.New(ctx, cfg, logger)
	if err != nil {
		logger.Error("herald failed to start", "err", err)
		return 1
	}
	go func() {
		select {
		case <-srv.Ready():
			fmt.Fprintf(os.Stderr, "herald is ready: REST http://%s  gRPC %s  devices %s\n",
				srv.APIAddr(), srv.GRPCAddr(), srv.GatewayAddr())
			if cfg.AdminToken == "" {
				fmt.Fprintf(os.Stderr, "admin token: %s (kept in %s/%s; set HERALD_ADMIN_TOKEN to choose one)\n",
					srv.AdminToken(), cfg.DataDir, server.AdminTokenFile)
			}
		case <-ctx.Done():
		}
	}()
	if err := srv.Run(ctx); err != nil {
		logger.Error("herald stopped with an error", "err", err)
		return 1
	}
	return 0
}
