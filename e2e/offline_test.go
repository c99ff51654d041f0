package e2e

import (
	"fmt"
	"testing"
	"time"
)

// Acceptance 2: messages to an offline device arrive in send order on
// reconnect; TTL-expired ones are not delivered and are counted expired; an
// online-only (ttl 0) message to an offline device is counted expired and
// not stored; collapse_id replaces an undelivered message; an idempotency
// key sends once.
func TestOfflineDelivery(t *testing.T) {
	p := startPlatform(t, testConfig(t))
	api := newAPI(p.api)
	ap := api.createApp(t, "offline")

	t.Run("stored messages arrive in send order, expired and online-only ones do not", func(t *testing.T) {
		d := newDevice(ap, "phone-order", api.registerDevice(t, ap, "phone-order"), p.gw)
		var ordered []string
		for i := 0; i < 20; i++ {
			ordered = append(ordered, api.send(t, ap, sendReq{
				Audience:     toDevices(d.id),
				Notification: map[string]any{"title": "n", "body": fmt.Sprint(i)},
			}))
		}
		shortTTL := api.send(t, ap, sendReq{
			Audience: toDevices(d.id), Data: map[string]string{"k": "short"},
			Options: map[string]any{"ttl_seconds": 1},
		})
		onlineOnly := api.send(t, ap, sendReq{
			Audience: toDevices(d.id), Data: map[string]string{"k": "now-or-never"},
			Options: map[string]any{"ttl_seconds": 0},
		})
		// The online-only message is settled as expired without the device.
		eventually(t, 10*time.Second, "online-only message counted expired", func() (bool, string) {
			st := api.status(t, ap, onlineOnly)
			return st.Counts == counts{Targeted: 1, Expired: 1} && st.State == "done", fmt.Sprintf("%+v %s", st.Counts, st.State)
		})
		// Let the short TTL run out while the device is away.
		eventually(t, 10*time.Second, "short-TTL message counted expired", func() (bool, string) {
			st := api.status(t, ap, shortTTL)
			return st.Counts == counts{Targeted: 1, Expired: 1}, fmt.Sprintf("%+v", st.Counts)
		})
		for _, id := range ordered {
			if st := api.status(t, ap, id); st.Counts != (counts{Targeted: 1, Pending: 1}) || st.State != "sending" {
				t.Fatalf("stored message %s before reconnect: %+v %s", id, st.Counts, st.State)
			}
		}

		d.connect(t)
		defer d.disconnect(t)
		eventually(t, 20*time.Second, "stored messages delivered", func() (bool, string) {
			return d.count() >= len(ordered), fmt.Sprintf("%d of %d", d.count(), len(ordered))
		})
		got := d.received()
		if len(got) != len(ordered) {
			t.Fatalf("received %d messages, want %d (expired and online-only must not arrive)", len(got), len(ordered))
		}
		for i, m := range got {
			if m.ID != ordered[i] {
				t.Fatalf("message %d is %s, want %s: not in send order", i, m.ID, ordered[i])
			}
		}
		for _, id := range ordered {
			eventually(t, 10*time.Second, "delivered counted", func() (bool, string) {
				st := api.status(t, ap, id)
				return st.Counts == counts{Targeted: 1, Delivered: 1} && st.State == "done", fmt.Sprintf("%s: %+v", id, st.Counts)
			})
		}
		if st := api.status(t, ap, shortTTL); st.Counts != (counts{Targeted: 1, Expired: 1}) {
			t.Errorf("short-TTL message after reconnect: %+v", st.Counts)
		}
	})

	t.Run("online-only message reaches an online device", func(t *testing.T) {
		d := newDevice(ap, "phone-online", api.registerDevice(t, ap, "phone-online"), p.gw)
		d.connect(t)
		defer d.disconnect(t)
		id := api.send(t, ap, sendReq{Audience: toDevices(d.id), Data: map[string]string{"k": "live"}, Options: map[string]any{"ttl_seconds": 0}})
		eventually(t, 10*time.Second, "online-only delivered", func() (bool, string) {
			st := api.status(t, ap, id)
			return st.Counts == counts{Targeted: 1, Delivered: 1}, fmt.Sprintf("%+v", st.Counts)
		})
		if got := d.received(); len(got) != 1 || got[0].ID != id || got[0].Data["k"] != "live" {
			t.Fatalf("device received %+v", got)
		}
	})

	t.Run("collapse_id replaces the undelivered older message", func(t *testing.T) {
		d := newDevice(ap, "phone-collapse", api.registerDevice(t, ap, "phone-collapse"), p.gw)
		opts := map[string]any{"collapse_id": "score"}
		first := api.send(t, ap, sendReq{Audience: toDevices(d.id), Data: map[string]string{"score": "1:0"}, Options: opts})
		other := api.send(t, ap, sendReq{Audience: toDevices(d.id), Data: map[string]string{"note": "unrelated"}})
		second := api.send(t, ap, sendReq{Audience: toDevices(d.id), Data: map[string]string{"score": "2:0"}, Options: opts})
		eventually(t, 10*time.Second, "older collapsed", func() (bool, string) {
			st := api.status(t, ap, first)
			return st.Counts == counts{Targeted: 1, Collapsed: 1}, fmt.Sprintf("%+v", st.Counts)
		})
		d.connect(t)
		defer d.disconnect(t)
		eventually(t, 10*time.Second, "two messages delivered", func() (bool, string) {
			return d.count() >= 2, fmt.Sprint(d.count())
		})
		got := d.received()
		if len(got) != 2 || got[0].ID != other || got[1].ID != second || got[1].Data["score"] != "2:0" {
			t.Fatalf("received %+v, want [%s %s]", got, other, second)
		}
	})

	t.Run("idempotency key sends once", func(t *testing.T) {
		d := newDevice(ap, "phone-idem", api.registerDevice(t, ap, "phone-idem"), p.gw)
		d.connect(t)
		defer d.disconnect(t)
		req := sendReq{Audience: toDevices(d.id), Data: map[string]string{"order": "42"}, Options: map[string]any{"idempotency_key": "order-42"}}
		a := api.send(t, ap, req)
		b := api.send(t, ap, req)
		if a != b {
			t.Fatalf("same idempotency key gave message ids %s and %s", a, b)
		}
		eventually(t, 10*time.Second, "delivered", func() (bool, string) {
			st := api.status(t, ap, a)
			return st.Counts == counts{Targeted: 1, Delivered: 1}, fmt.Sprintf("%+v", st.Counts)
		})
		// A different key is a different message.
		c := api.send(t, ap, sendReq{Audience: toDevices(d.id), Data: map[string]string{"order": "43"}, Options: map[string]any{"idempotency_key": "order-43"}})
		if c == a {
			t.Fatal("a different idempotency key returned the first message id")
		}
		eventually(t, 10*time.Second, "two messages", func() (bool, string) { return d.count() >= 2, fmt.Sprint(d.count()) })
		if n := d.count(); n != 2 {
			t.Fatalf("device received %d messages, want 2", n)
		}
	})
}
