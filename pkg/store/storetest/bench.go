package storetest

import (
	"fmt"
	"testing"
	"time"

	"github.com/heraldpush/herald/pkg/ids"
	"github.com/heraldpush/herald/pkg/store"
)

// MarkBenchmark measures Mark of one delivered target, the gateway's ack
// path. Every iteration marks a distinct pending target.
func MarkBenchmark(b *testing.B, open func(testing.TB) store.Store) {
	s := open(b)
	defer s.Close()
	const perMessage = 1000
	targets := make([]string, perMessage)
	for i := range targets {
		targets[i] = fmt.Sprintf("d%04d", i)
	}
	g := ids.New(nil)
	var msgs []string
	for range b.N/perMessage + 1 {
		id := g.Next()
		msgs = append(msgs, id)
		err := s.CreateMessage(b.Context(), store.Message{ID: id, AppID: "bench", Targets: targets, CreatedAt: time.Now()})
		if err != nil {
			b.Fatalf("CreateMessage: %v", err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		t := store.Transition{MessageID: msgs[i/perMessage], DeviceID: targets[i%perMessage], State: store.StateDelivered}
		if err := s.Mark(b.Context(), t); err != nil {
			b.Fatalf("Mark: %v", err)
		}
	}
}

// InboxBenchmark measures one offline message's life in the inbox: Put,
// List (the drain on connect) and Delete (the ack).
func InboxBenchmark(b *testing.B, open func(testing.TB) store.Store) {
	s := open(b)
	defer s.Close()
	g := ids.New(nil)
	body := make([]byte, 256)
	const devices = 100
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		dev := fmt.Sprintf("d%03d", i%devices)
		id := g.Next()
		e := store.InboxEntry{MessageID: id, CollapseID: "c", ExpiresAt: time.Now().Add(time.Hour), Body: body}
		if _, err := s.Put(b.Context(), "bench", dev, e); err != nil {
			b.Fatalf("Put: %v", err)
		}
		es, err := s.List(b.Context(), "bench", dev, "", 10)
		if err != nil || len(es) != 1 {
			b.Fatalf("List = %d entries, %v; want 1", len(es), err)
		}
		if err := s.Delete(b.Context(), "bench", dev, id); err != nil {
			b.Fatalf("Delete: %v", err)
		}
	}
}
