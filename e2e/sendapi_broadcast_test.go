package e2e

import (
	"fmt"
	"testing"
	"time"
)

// Send API acceptance 2: a broadcast to 5,000 connected devices plus 2,000
// registered devices that connect only afterwards: every one of them gets
// it exactly once (the late ones by replay from the app's topic log), and
// the message counts all 7,000 as targeted and delivered.
func TestBroadcastReachesOnlineAndLateDevices(t *testing.T) {
	nOnline, nLate := 5000, 2000
	if testing.Short() {
		nOnline, nLate = 500, 200
	}
	p := startPlatform(t, testConfig(t))
	api := apiFor(t, p.api)
	ap := api.createApp(t, "broadcast")

	specs := make([]devSpec, nOnline+nLate)
	for i := range specs {
		specs[i] = devSpec{ID: fmt.Sprintf("bc-%05d", i)}
	}
	start := time.Now()
	devs := api.registerSpecs(t, ap, p.gw, specs)
	smallDedup(devs)
	t.Logf("%d devices registered in %s", len(devs), time.Since(start))
	online, late := devs[:nOnline], devs[nOnline:]
	connectEach(t, online)

	start = time.Now()
	bc := api.sendOK(t, ap, message{Audience: "all", Notification: map[string]any{"title": "to everyone"}, Options: map[string]any{"ttl_seconds": 3600}})
	waitAllHave(t, online, bc.MessageID, 60*time.Second)
	t.Logf("broadcast reached %d connected devices in %s", nOnline, time.Since(start))

	start = time.Now()
	connectEach(t, late)
	waitAllHave(t, late, bc.MessageID, 60*time.Second)
	t.Logf("%d late devices connected and got the broadcast in %s", nLate, time.Since(start))

	// Barrier: a second broadcast, live to everyone; then every device
	// holds exactly the two, once each.
	second := api.sendOK(t, ap, message{Audience: "all", Data: map[string]string{"n": "2"}, Options: map[string]any{"ttl_seconds": 3600}})
	want := wantSets{}
	want.add(bc.MessageID, devs...)
	want.add(second.MessageID, devs...)
	expectExactly(t, devs, want, 60*time.Second)
	for _, d := range devs {
		if m := d.received()[0]; m.ID != bc.MessageID || m.Title != "to everyone" || !m.Group {
			t.Fatalf("device %s: first message %+v, want the broadcast %s (group, title)", d.id, m, bc.MessageID)
		}
	}
	n := int64(len(devs))
	api.waitStatus(t, ap, bc.MessageID, 30*time.Second, "broadcast counts every device targeted and delivered once", func(st fullStatus) bool {
		return st.Counts.Targeted == n && st.Counts.Delivered == n
	})
}

// Send API acceptance 2, replay rules: an expired group message is not
// replayed to devices that connect after its TTL; a tag message matches on
// the device's tags when it is delivered, so a device that gained the tag
// after the send (before the TTL) gets it on connect and one that lost the
// tag does not.
func TestBroadcastReplayRules(t *testing.T) {
	p := startPlatform(t, testConfig(t))
	api := apiFor(t, p.api)
	ap := api.createApp(t, "replay-rules")

	var specs []devSpec
	for i := 0; i < 10; i++ {
		specs = append(specs, devSpec{ID: fmt.Sprintf("live-%02d", i), Tags: []string{"flash"}})
	}
	for i := 0; i < 50; i++ {
		specs = append(specs, devSpec{ID: fmt.Sprintf("late-%02d", i), Tags: []string{"flash"}})
	}
	specs = append(specs,
		devSpec{ID: "gains-tag"},
		devSpec{ID: "loses-tag", Tags: []string{"promo"}},
		devSpec{ID: "keeps-tag", Tags: []string{"promo"}},
		devSpec{ID: "never-tagged"},
	)
	devs := api.registerSpecs(t, ap, p.gw, specs)
	live, late, rest := devs[:10], devs[10:60], devs[60:]
	connectEach(t, live)
	want := wantSets{}

	// An expired flash message: the live devices get it, the late ones,
	// connecting after its TTL, do not.
	sent := time.Now()
	flash := api.sendOK(t, ap, message{Audience: map[string]any{"tags": "flash"}, Data: map[string]string{"k": "flash"}, Options: map[string]any{"ttl_seconds": 2}})
	want.add(flash.MessageID, live...)
	waitAllHave(t, live, flash.MessageID, 10*time.Second)

	// A promo message sent while the four rule devices are offline; then
	// one gains the tag and one loses it.
	promo := api.sendOK(t, ap, message{Audience: map[string]any{"tags": "promo"}, Data: map[string]string{"k": "promo"}, Options: map[string]any{"ttl_seconds": 600}})
	api.putTag(t, ap, "gains-tag", "promo")
	api.deleteTag(t, ap, "loses-tag", "promo")
	want.add(promo.MessageID, rest[0], rest[2]) // gains-tag, keeps-tag

	time.Sleep(time.Until(sent.Add(2*time.Second + 200*time.Millisecond))) // the flash TTL passes
	api.waitStatus(t, ap, flash.MessageID, 5*time.Second, "expired broadcast is done", func(st fullStatus) bool { return st.State == "done" })
	connectEach(t, late)
	connectEach(t, rest)

	// Barrier: a group message after the connects is pushed after each
	// device's replay.
	last := api.sendOK(t, ap, message{Audience: "all", Data: map[string]string{"k": "last"}})
	want.add(last.MessageID, devs...)
	expectExactly(t, devs, want, 30*time.Second)
}

// A broadcast while a quarter of the devices lose their connections right
// after the send (cut abruptly by a proxy, no DISCONNECT): the SDK clients
// reconnect, the gateway replays what they missed, and the SDK drops what
// they already had, so every app still sees the message exactly once.
func TestBroadcastWhileReconnecting(t *testing.T) {
	n := 1200 // above the gateway's parallelMin: the writes are split across goroutines
	p := startPlatform(t, testConfig(t))
	api := apiFor(t, p.api)
	ap := api.createApp(t, "broadcast-reconnect")
	proxy := startProxy(t, p.gw)
	specs := make([]devSpec, n)
	for i := range specs {
		specs[i] = devSpec{ID: fmt.Sprintf("rb-%04d", i)}
	}
	devs := api.registerSpecs(t, ap, p.gw, specs)
	for i, d := range devs {
		if i%4 == 0 {
			d.gw = []string{proxy.addr()}
		}
	}
	connectEach(t, devs)
	want := wantSets{}
	for r := 0; r < 3; r++ {
		bc := api.sendOK(t, ap, message{Audience: "all", Data: map[string]string{"round": fmt.Sprint(r)}, Options: map[string]any{"ttl_seconds": 3600}})
		proxy.cutAll()
		want.add(bc.MessageID, devs...)
		waitAllHave(t, devs, bc.MessageID, 30*time.Second)
	}
	last := api.sendOK(t, ap, message{Audience: "all", Data: map[string]string{"round": "last"}})
	want.add(last.MessageID, devs...)
	expectExactly(t, devs, want, 30*time.Second)
	// The counts never count a device delivered twice. (They are not
	// exact under cuts, by design: targeted counts both a live push to a
	// session that died and the replay to the same device, and a device
	// whose ack was lost in the cut after it handled the push acks only the
	// replay, which the gateway treats as a duplicate and does not count.)
	// The last message went out after the cuts: it counts exactly; its
	// receipts come after the others' in the receipts log.
	api.waitStatus(t, ap, last.MessageID, 20*time.Second, "the last message counted delivered to every device", func(st fullStatus) bool {
		return st.Counts.Targeted == int64(n) && st.Counts.Delivered == int64(n)
	})
	for id := range want[devs[0].id] {
		st := api.fullStatus(t, ap, id)
		t.Logf("message %s: %+v", id, st.Counts)
		if st.Counts.Delivered > int64(n) || st.Counts.Delivered < int64(n)*3/4 {
			t.Errorf("message %s to %d devices (a quarter of them cut) counts %d delivered", id, n, st.Counts.Delivered)
		}
	}
}
