package e2e

import (
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"
)

// badgeOf returns the badge of message id as the device's app saw it (-1:
// no badge, -2: no such message).
func (d *device) badgeOf(id string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, m := range d.got {
		if m.ID == id {
			if m.Badge == nil {
				return -1
			}
			return *m.Badge
		}
	}
	return -2
}

// Send options end to end, for unicast and group audiences: the "+1"
// badge counter kept per device (reset from the SDK and through the API),
// the per-device daily notification cap, and idempotency keys.
func TestSendOptions(t *testing.T) {
	p := startPlatform(t, testConfig(t))
	api := apiFor(t, p.api)

	t.Run("badge +1 counts per device and resets", func(t *testing.T) {
		ap := api.createApp(t, "badges")
		devs := api.registerSpecs(t, ap, p.gw, []devSpec{{ID: "b-0", Tags: []string{"b"}}, {ID: "b-1", Tags: []string{"b"}}})
		connectEach(t, devs)
		plusOne := func(audience any, to ...*device) string {
			id := api.sendOK(t, ap, message{Audience: audience, Notification: map[string]any{"title": "new", "badge": "+1"}}).MessageID
			waitAllHave(t, to, id, 10*time.Second)
			return id
		}
		expectBadges := func(step, id string, want ...int) {
			t.Helper()
			for i, d := range devs {
				if got := d.badgeOf(id); got != want[i] {
					t.Errorf("%s: device %s shows badge %d, want %d", step, d.id, got, want[i])
				}
			}
		}
		expectBadges("unicast +1", plusOne(toDevices("b-0", "b-1"), devs...), 1, 1)
		expectBadges("group +1", plusOne(map[string]any{"tags": "b"}, devs...), 2, 2)
		// b-0 resets from the SDK, b-1 through the API.
		if err := devs[0].client.SetBadge(t.Context(), 0); err != nil {
			t.Fatal(err)
		}
		code, raw := api.do(t, "PUT", devicePath("b-1", "badge"), ap.auth, map[string]int{"badge": 0}, nil)
		ok2xx(t, "PUT badge", code, raw)
		eventually(t, 10*time.Second, "the SDK's SETBADGE is stored", func() (bool, string) {
			var dev struct {
				Badge int `json:"badge"`
			}
			code, raw := api.do(t, "GET", devicePath("b-0"), ap.auth, nil, &dev)
			return code == http.StatusOK && dev.Badge == 0, fmt.Sprintf("%d %s", code, raw)
		})
		expectBadges("all +1 after the resets", plusOne("all", devs...), 1, 1)
		expectBadges("unicast +1 to one device", plusOne(toDevices("b-0"), devs[0]), 2, -2)
		expectBadges("group +1", plusOne(map[string]any{"tags": "b"}, devs...), 3, 2)
		set := api.sendOK(t, ap, message{Audience: toDevices("b-0", "b-1"), Notification: map[string]any{"title": "set", "badge": 7}}).MessageID
		waitAllHave(t, devs, set, 10*time.Second)
		expectBadges("badge 7", set, 7, 7)
	})

	t.Run("daily notification cap", func(t *testing.T) {
		ap := api.createApp(t, "capped")
		api.patchApp(t, ap, map[string]any{"daily_notification_cap": 2})
		devs := api.registerSpecs(t, ap, p.gw, []devSpec{{ID: "c-0", Tags: []string{"c"}}, {ID: "c-1", Tags: []string{"c"}}})
		connectEach(t, devs)
		want := wantSets{}
		// c-0: two notifications reach the cap.
		for i := 0; i < 2; i++ {
			a := api.sendOK(t, ap, message{Audience: toDevices("c-0"), Notification: map[string]any{"title": fmt.Sprint(i)}})
			want.add(a.MessageID, devs[0])
		}
		// Over the cap: c-0 is capped on a unicast send and skipped on a
		// group send; data messages do not count.
		capped := api.sendOK(t, ap, message{Audience: toDevices("c-0", "c-1"), Notification: map[string]any{"title": "third"}})
		if !slices.Equal(capped.CappedDeviceIDs, []string{"c-0"}) {
			t.Errorf("capped_device_ids %v, want [c-0]", capped.CappedDeviceIDs)
		}
		want.add(capped.MessageID, devs[1]) // c-1's first
		grp := api.sendOK(t, ap, message{Audience: map[string]any{"tags": "c"}, Notification: map[string]any{"title": "group"}})
		want.add(grp.MessageID, devs[1]) // c-1's second
		data := api.sendOK(t, ap, message{Audience: map[string]any{"tags": "c"}, Data: map[string]string{"k": "data"}})
		want.add(data.MessageID, devs...)
		expectExactly(t, devs, want, 20*time.Second)
		api.waitStatus(t, ap, capped.MessageID, 10*time.Second, "capped device counts failed", func(st fullStatus) bool {
			return st.Counts.Targeted == 2 && st.Counts.Failed == 1 && st.Counts.Delivered == 1
		})
	})

	t.Run("idempotency keys for every audience kind", func(t *testing.T) {
		ap := api.createApp(t, "idempotent")
		devs := api.registerSpecs(t, ap, p.gw, []devSpec{{ID: "i-0", Alias: "ivy", Tags: []string{"i"}}})
		connectEach(t, devs)
		api.putTopic(t, ap, "i-0", "itopic")
		want := wantSets{}
		for _, audience := range []any{toDevices("i-0"), map[string]any{"aliases": []string{"ivy"}}, map[string]any{"tags": "i"}, map[string]any{"topic": "itopic"}, "all"} {
			body := message{Audience: audience, Data: map[string]string{"a": fmt.Sprint(audience)}, Options: map[string]any{"idempotency_key": fmt.Sprintf("key-%v", audience)}}
			first := api.sendOK(t, ap, body).MessageID
			again := api.sendOK(t, ap, body).MessageID
			if again != first {
				t.Errorf("audience %v: a retry with the same idempotency key got message %s, the first %s", audience, again, first)
			}
			want.add(first, devs...)
		}
		expectExactly(t, devs, want, 20*time.Second)
	})
}
