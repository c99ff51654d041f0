package server

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// electionKey is the scheduler election's key under discovery.etcd_prefix.
const electionKey = "elections/scheduler"

// etcdLeadership elects one scheduler among the dispatchers of a cluster
// (services/scheduler.Leadership): two would append every due message
// twice. Leadership rides an etcd session lease, so a dead leader is
// replaced within the lease TTL.
type etcdLeadership struct {
	cli    *clientv3.Client
	prefix string // the election's etcd key prefix
	node   string
	ttl    int // seconds
}

func newEtcdLeadership(cli *clientv3.Client, prefix, node string, ttl time.Duration) *etcdLeadership {
	return &etcdLeadership{cli: cli, prefix: prefix, node: node, ttl: max(1, int(ttl/time.Second))}
}

// Lead campaigns until this node is elected and returns a context that
// ends when the session behind the leadership ends (or ctx does).
func (l *etcdLeadership) Lead(ctx context.Context) (context.Context, error) {
	sess, err := concurrency.NewSession(l.cli, concurrency.WithTTL(l.ttl), concurrency.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("server: scheduler election session: %w", err)
	}
	el := concurrency.NewElection(sess, l.prefix)
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
