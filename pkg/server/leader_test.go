package server

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/heraldpush/herald/pkg/etcdembed"
)

// One scheduler leads at a time; when the leader stops, another takes over
// at once (it resigns rather than waiting out its lease).
func TestSchedulerLeadershipHandsOver(t *testing.T) {
	srv, err := etcdembed.Start(t.Context(), etcdembed.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	client := func() *clientv3.Client {
		c, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	a := newEtcdLeadership(client(), "/herald/"+electionKey, "node-a", 10*time.Second)
	b := newEtcdLeadership(client(), "/herald/"+electionKey, "node-b", 10*time.Second)
	// A cluster under another etcd prefix elects its own scheduler.
	other := newEtcdLeadership(client(), "/herald/eu-2/"+electionKey, "node-x", 10*time.Second)

	actx, stopA := context.WithCancel(t.Context())
	aLeads, err := a.Lead(actx)
	if err != nil {
		t.Fatal(err)
	}
	octx, cancelOther := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancelOther()
	if _, err := other.Lead(octx); err != nil {
		t.Fatalf("a scheduler of another cluster (etcd prefix) could not lead while a leads: %v", err)
	}
	bLeads := make(chan context.Context, 1)
	go func() {
		ctx, err := b.Lead(t.Context())
		if err != nil {
			t.Errorf("b: %v", err)
			return
		}
		bLeads <- ctx
	}()
	select {
	case <-bLeads:
		t.Fatal("b leads while a does")
	case <-time.After(300 * time.Millisecond):
	}
	stopA()
	select {
	case <-aLeads.Done():
	case <-time.After(time.Second):
		t.Fatal("a's leadership context did not end")
	}
	start := time.Now()
	select {
	case ctx := <-bLeads:
		if ctx.Err() != nil {
			t.Error("b's leadership context already ended")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("b never took over")
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("hand-over took %v, want well under the 10s lease", took)
	}
}
