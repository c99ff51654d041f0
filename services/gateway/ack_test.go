package gateway

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
	"github.com/heraldpush/herald/pkg/delivery"
	"github.com/heraldpush/herald/pkg/route"
	"github.com/heraldpush/herald/pkg/store"
)

// A live push's ack skips the inbox (nothing is stored for it), but an ack
// that comes after Deliver gave up must still remove the copy the
// dispatcher stored meanwhile, or the device gets the message again on its
// next connect.
func TestAckOfLiveAndGivenUpPushes(t *testing.T) {
	for _, model := range ioModels {
		t.Run(model, func(t *testing.T) {
			e := startEnvWith(t, Config{IO: model, AckTimeout: 300 * time.Millisecond})
			const dev = "acker-1"
			e.registerDevice(t, dev)
			d := dialRaw(t, e.gw.Addr())
			d.send(t, connectFrame(t, dev))
			if f := d.next(t); f.Type != frame.TypeConnAck {
				t.Fatalf("got %s, want CONNACK", f.Type)
			}
			key := route.Key("app-rpc", dev)
			routes, err := e.routes.Lookup(t.Context(), []string{key})
			if err != nil || routes[key].Node == "" {
				t.Fatalf("route of %s: %v %v", key, routes, err)
			}
			conn := routes[key].ConnID
			// Live pushes wait (NotHere) until the connect-time inbox drain
			// and group replay are done.
			settled := time.Now().Add(rpcWait)
			for {
				s := e.gw.lookup(key)
				s.mu.Lock()
				busy := s.draining || s.replaying
				s.mu.Unlock()
				if !busy {
					break
				}
				if time.Now().After(settled) {
					t.Fatal("the session never finished its connect-time drain")
				}
				time.Sleep(5 * time.Millisecond)
			}
			createMessage := func(id string) {
				t.Helper()
				err := e.store.CreateMessage(t.Context(), store.Message{ID: id, AppID: "app-rpc", Targets: []string{dev}, CreatedAt: time.Now()})
				if err != nil {
					t.Fatal(err)
				}
			}
			ack := func(id string) {
				t.Helper()
				b, err := frame.AppendMessage(nil, frame.TypeAck, &devicev1.Ack{MessageIds: []string{id}})
				if err != nil {
					t.Fatal(err)
				}
				d.send(t, b)
			}
			readPush := func(want string) {
				t.Helper()
				f := d.next(t)
				var p devicev1.Push
				if f.Type != frame.TypePush || proto.Unmarshal(f.Body, &p) != nil || p.GetMessageId() != want {
					t.Fatalf("got %s %s, want PUSH %s", f.Type, p.GetMessageId(), want)
				}
			}
			delivered := func(id string) {
				t.Helper()
				deadline := time.Now().Add(rpcWait)
				for {
					_, c, err := e.store.MessageStatus(t.Context(), id)
					if err != nil {
						t.Fatal(err)
					}
					if c.Delivered == 1 {
						return
					}
					if time.Now().After(deadline) {
						t.Fatalf("%s: counts %+v, want delivered 1", id, c)
					}
					time.Sleep(10 * time.Millisecond)
				}
			}

			const live = "01LIVEACK0000000000000000A"
			createMessage(live)
			done := make(chan []delivery.Outcome, 1)
			go func() {
				done <- e.gw.Deliver(t.Context(), []delivery.Delivery{{Device: key, ConnID: conn, Envelope: envelope(dev, live)}})
			}()
			readPush(live)
			ack(live)
			if out := <-done; out[0] != delivery.Acked {
				t.Fatalf("live push: %s, want acked", out[0])
			}
			delivered(live)

			const late = "01LATEACK0000000000000000B"
			createMessage(late)
			go func() {
				done <- e.gw.Deliver(t.Context(), []delivery.Delivery{{Device: key, ConnID: conn, Envelope: envelope(dev, late)}})
			}()
			readPush(late)
			if out := <-done; out[0] != delivery.TimedOut {
				t.Fatalf("unacked push: %s, want timed out", out[0])
			}
			// What the dispatcher does with a push Deliver gave up on.
			body, err := proto.Marshal(envelope(dev, late))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := e.store.Put(t.Context(), "app-rpc", dev, store.InboxEntry{MessageID: late, Body: body}); err != nil {
				t.Fatal(err)
			}
			ack(late)
			delivered(late)
			deadline := time.Now().Add(rpcWait)
			for {
				left, err := e.store.List(t.Context(), "app-rpc", dev, "", 10)
				if err != nil {
					t.Fatal(err)
				}
				if len(left) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("inbox still holds %s after its late ack", left[0].MessageID)
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}
