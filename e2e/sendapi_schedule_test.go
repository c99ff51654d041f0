package e2e

import (
	"net/http"
	"testing"
	"time"

	"github.com/heraldpush/herald/pkg/config"
)

// restartableConfig is testConfig with fixed ports, so a platform started
// again on the same data dir is found at the same addresses by the API
// client and the devices' SDK clients (which reconnect on their own).
func restartableConfig(t *testing.T) config.Config {
	cfg := testConfig(t)
	cfg.API.HTTPAddr = freePort(t)
	cfg.API.GRPCAddr = freePort(t)
	cfg.Gateway.Addr = freePort(t)
	cfg.Etcd.ClientAddr = freePort(t)
	cfg.Etcd.PeerAddr = freePort(t)
	return cfg
}

// Send API acceptance 3: a scheduled message (unicast and group) fires
// within 1 s of its send_at although the platform is stopped and started
// again on the same data in between; a message cancelled before its time
// is never delivered and stays cancelled; a sent message recalled while
// its device is offline is never delivered when the device connects
// (unicast and group), and its counts say recalled.
func TestScheduleCancelRecallAcrossRestart(t *testing.T) {
	cfg := restartableConfig(t)
	p := startPlatform(t, cfg)
	api := apiFor(t, p.api)
	ap := api.createApp(t, "schedule")
	devs := api.registerSpecs(t, ap, p.gw, []devSpec{
		{ID: "awake", Tags: []string{"sched"}},
		{ID: "cancel-target", Tags: []string{"sched-cancel"}},
		{ID: "sleeper", Tags: []string{"gone"}},
	})
	awake, sleeper := devs[0], devs[2] // devs[1] is the target of the cancelled ones
	connectEach(t, devs[:2])

	// Due 2-3 s ahead on a whole second, so the send_at text carries it
	// exactly.
	const lead = 2 * time.Second
	due := time.Now().Add(lead).Truncate(time.Second).Add(time.Second)
	at := map[string]any{"send_at": due.UTC().Format(time.RFC3339), "ttl_seconds": 600}
	uni := api.sendOK(t, ap, message{Audience: toDevices("awake"), Data: map[string]string{"k": "scheduled unicast"}, Options: at})
	grp := api.sendOK(t, ap, message{Audience: map[string]any{"tags": "sched"}, Data: map[string]string{"k": "scheduled group"}, Options: at})
	cancelU := api.sendOK(t, ap, message{Audience: toDevices("awake", "cancel-target"), Data: map[string]string{"k": "cancelled unicast"}, Options: at})
	cancelG := api.sendOK(t, ap, message{Audience: map[string]any{"tags": "sched-cancel"}, Data: map[string]string{"k": "cancelled group"}, Options: at})
	for _, a := range []msgAnswer{uni, grp, cancelU, cancelG} {
		if a.State != "scheduled" {
			t.Fatalf("message %s: state %q, want scheduled", a.MessageID, a.State)
		}
		st := api.fullStatus(t, ap, a.MessageID)
		sendAt, err := time.Parse(time.RFC3339, st.SendAt)
		if st.State != "scheduled" || err != nil || !sendAt.Equal(due) {
			t.Fatalf("status of %s: %+v, want state scheduled, send_at %s", a.MessageID, st, due.UTC().Format(time.RFC3339))
		}
	}
	for _, id := range []string{cancelU.MessageID, cancelG.MessageID} {
		var out msgAnswer
		code, raw := api.do(t, "DELETE", "/v1/messages/"+id, ap.auth, nil, &out)
		if code != http.StatusOK || out.State != "cancelled" {
			t.Fatalf("cancel %s: %d %s, want 200 state cancelled", id, code, raw)
		}
		if code, raw := api.do(t, "DELETE", "/v1/messages/"+id, ap.auth, nil, nil); code != http.StatusConflict {
			t.Fatalf("second cancel of %s: %d %s, want 409", id, code, raw)
		}
	}

	// Messages for the offline sleeper, two of them to be recalled.
	ttl := map[string]any{"ttl_seconds": 600}
	recallU := api.sendOK(t, ap, message{Audience: toDevices("sleeper"), Data: map[string]string{"k": "recalled unicast"}, Options: ttl})
	recallG := api.sendOK(t, ap, message{Audience: map[string]any{"tags": "gone"}, Data: map[string]string{"k": "recalled group"}, Options: ttl})
	keep := api.sendOK(t, ap, message{Audience: toDevices("sleeper"), Data: map[string]string{"k": "kept"}, Options: ttl})

	// Restart on the same data dir before the due time.
	start := time.Now()
	api.http.CloseIdleConnections()
	p.stop()
	p = startPlatform(t, cfg)
	t.Logf("platform restarted in %s; due in %s", time.Since(start), time.Until(due))
	if time.Now().After(due) {
		t.Fatalf("the restart took past the due time (%s): the test needs a longer lead", time.Since(start))
	}

	for _, id := range []string{recallU.MessageID, recallG.MessageID} {
		var out msgAnswer
		code, raw := api.do(t, "DELETE", "/v1/messages/"+id, ap.auth, nil, &out)
		if code != http.StatusOK || out.State != "recalled" {
			t.Fatalf("recall %s: %d %s, want 200 state recalled", id, code, raw)
		}
	}

	// The scheduled ones fire within 1 s of their time (not before it).
	waitAllHave(t, []*device{awake}, uni.MessageID, time.Until(due)+5*time.Second)
	waitAllHave(t, []*device{awake}, grp.MessageID, 5*time.Second)
	for _, id := range []string{uni.MessageID, grp.MessageID} {
		got, _ := awake.receivedAt(id)
		late := got.Sub(due)
		t.Logf("scheduled message %s reached the device %s after its send_at", id, late.Round(time.Millisecond))
		if late < 0 || late > time.Second {
			t.Errorf("message %s due at %s reached the device %s after its time, want within [0, 1s]", id, due.Format(time.StampMilli), late)
		}
	}

	// The sleeper connects; it gets only the kept message (and the barrier).
	connectEach(t, []*device{sleeper})
	time.Sleep(time.Until(due.Add(time.Second))) // past the window the cancelled ones would fire in
	last := api.sendOK(t, ap, message{Audience: "all", Data: map[string]string{"k": "last"}})
	want := wantSets{}
	want.add(uni.MessageID, awake)
	want.add(grp.MessageID, awake)
	want.add(keep.MessageID, sleeper)
	want.add(last.MessageID, devs...)
	expectExactly(t, devs, want, 30*time.Second)

	api.waitStatus(t, ap, uni.MessageID, 10*time.Second, "scheduled unicast delivered", func(st fullStatus) bool {
		return st.State == "done" && st.Counts.Targeted == 1 && st.Counts.Delivered == 1
	})
	for _, id := range []string{cancelU.MessageID, cancelG.MessageID} {
		if st := api.fullStatus(t, ap, id); st.State != "cancelled" || st.Counts.Delivered != 0 {
			t.Errorf("cancelled message %s: %+v", id, st)
		}
	}
	api.waitStatus(t, ap, recallU.MessageID, 10*time.Second, "recalled unicast counts", func(st fullStatus) bool {
		return st.State == "recalled" && st.Counts == fullCounts{Targeted: 1, Recalled: 1}
	})
	if st := api.fullStatus(t, ap, recallG.MessageID); st.State != "recalled" || st.Counts.Delivered != 0 {
		t.Errorf("recalled group message: %+v", st)
	}
}
