package server

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/heraldpush/herald/pkg/config"
	"github.com/heraldpush/herald/pkg/pushlog"
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

func openKafka(context.Context, config.Config, *slog.Logger) (pushlog.Log, error) {
	return nil, notYet("queue.backend kafka")
}

func openRedisRoutes(config.Config, *slog.Logger) (route.Table, error) {
	return nil, notYet("router.backend redis")
}

func (s *Server) buildRole(context.Context) error {
	return notYet("-target=" + s.cfg.Target)
}
