package server

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// electionPrefix is the etcd key prefix of the scheduler election.
const electionPrefix = "/herald/elections/scheduler"

// etcdLeadership elects one scheduler among the dispatchers of a cluster
// (services/scheduler.Leadership): two would append every due message
// twice. Leadership rides an etcd session lease, so a dead leader is
// replaced within the lease TTL.
type etcdLeadership struct {
	cli  *clientv3.Client
	node string
	ttl  int // seconds
}

func newEtcdLeadership(cli *clientv3.Client, node string, ttl time.Duration) *etcdLeadership {
	return &etcdLeadership{cli: cli, node: node, ttl: max(1, int(ttl/time.Second))}
}

// Lead campaigns until this node is elected and returns a context that
// ends when the session behind the leadership ends (or ctx does).
func (l *etcdLeadership) Lead(ctx context.Context) (context.Context, error) {
	sess, err := concurrency.NewSession(l.cli, concurrency.WithTTL(l.ttl), concurrency.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("server: scheduler election session: %w", err)
	}
	el := concurrency.NewElection(sess, electionPrefix)
	if err := el.Campaign(ctx, l.node); err != nil {
		sess.Close()
		return nil, fmt.Errorf("server: scheduler election: %w", err)
	}
	lctx, cancel := context.WithCancel(ctx)
	go func() {
		defer cancel()
		select {
		case <-sess.Done():
		case <-ctx.Done():
		}
	}()
	go func() {
		<-lctx.Done()
		// Resign so another dispatcher takes over at once, not after the TTL.
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer rcancel()
		_ = el.Resign(rctx)
		sess.Close()
	}()
	return lctx, nil
}
