//go:build integration

package discovery

import (
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/heraldpush/herald/pkg/enginetest"
)

// dialEtcd connects to the real etcd that `make deps-up` starts.
func dialEtcd(tb testing.TB) *clientv3.Client {
	tb.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: enginetest.Etcd(tb), DialTimeout: 5 * time.Second})
	if err != nil {
		tb.Fatalf("etcd client: %v", err)
	}
	return cli
}

// TestRealEtcd registers, watches, unregisters and lets a dead gateway
// expire on the real etcd server, under a prefix of its own.
func TestRealEtcd(t *testing.T) {
	const ttl = 2 * time.Second
	prefix := WithPrefix(fmt.Sprintf("/herald-test/discovery/%d/", time.Now().UnixNano()))
	cli := dialEtcd(t)
	defer cli.Close()
	s, rec := watch(t, cli, prefix)

	r := register(t, cli, gw("gw-1"), ttl, prefix)
	eventually(t, s, waitFor, "gw-1 not seen", func() bool { _, ok := s.Get("gw-1"); return ok })
	if err := r.Close(t.Context()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	eventually(t, s, 3*time.Second, "gw-1 still registered after Close", func() bool { _, ok := s.Get("gw-1"); return !ok })

	own := dialEtcd(t)
	register(t, own, gw("gw-dies"), ttl, prefix)
	eventually(t, s, waitFor, "gw-dies not seen", func() bool { _, ok := s.Get("gw-dies"); return ok })
	_ = own.Close()
	eventually(t, s, ttl+5*time.Second, "gw-dies still registered after its TTL", func() bool { _, ok := s.Get("gw-dies"); return !ok })
	if !rec.has("left gw-1") || !rec.has("left gw-dies") {
		t.Errorf("events %v", rec.events)
	}
}
