package e2e

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// Connection-scale acceptance 3: 5,000 sessions; a message to all of them
// while 10% reconnect; no message lost or duplicated. There is no broadcast
// API yet, so the fan-out is 5 sends of 1,000 device ids each (the send
// limit); the reconnecting tenth goes through a proxy that cuts their
// connections abruptly mid fan-out, and their SDK clients reconnect.
func TestFanoutWhileReconnecting(t *testing.T) {
	nDevices, rounds := 5000, 3
	if testing.Short() {
		nDevices, rounds = 500, 2
	}
	p := startPlatform(t, testConfig(t))
	api := newAPI(p.api)
	ap := api.createApp(t, "fanout")
	proxy := startProxy(t, p.gw)

	devs := make([]*device, nDevices)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range devs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			id := fmt.Sprintf("fan-%05d", i)
			var out struct {
				Token string `json:"device_token"`
			}
			code, raw, err := api.doE("POST", "/v1/devices", ap.auth, map[string]string{"device_id": id, "platform": "ios"}, &out)
			if err != nil || code != 201 {
				t.Errorf("register %s: %d %s %v", id, code, raw, err)
				return
			}
			addr := p.gw
			if i%10 == 0 {
				addr = proxy.addr() // the tenth that will reconnect
			}
			d := newDevice(ap, id, out.Token, addr)
			if err := d.connectE(); err != nil {
				t.Error(err)
				return
			}
			devs[i] = d
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	t.Cleanup(func() {
		for _, d := range devs {
			d.disconnect(t)
		}
	})

	var ids []string
	for r := 0; r < rounds; r++ {
		start := time.Now()
		for b := 0; b < nDevices; b += 1000 {
			var batch []string
			for _, d := range devs[b:min(b+1000, nDevices)] {
				batch = append(batch, d.id)
			}
			ids = append(ids, api.send(t, ap, sendReq{Audience: toDevices(batch...), Data: map[string]string{"round": fmt.Sprint(r)}}))
			if b/1000 == (nDevices-1)/1000/2 {
				proxy.cutAll() // the reconnecting tenth drops mid fan-out
			}
		}
		eventually(t, 60*time.Second, "round delivered to every device", func() (bool, string) {
			missing := 0
			for _, d := range devs {
				if d.count() < r+1 {
					missing++
				}
			}
			return missing == 0, fmt.Sprintf("round %d: %d of %d devices missing it", r, missing, nDevices)
		})
		t.Logf("round %d: %d devices in %s (a tenth reconnected meanwhile)", r, nDevices, time.Since(start))
	}
	for _, d := range devs {
		got := d.received()
		if len(got) != rounds {
			t.Errorf("device %s received %d messages, want %d", d.id, len(got), rounds)
		}
		seen := map[string]bool{}
		for _, m := range got {
			if seen[m.Data["round"]] {
				t.Errorf("device %s got round %s twice", d.id, m.Data["round"])
			}
			seen[m.Data["round"]] = true
		}
	}
	eventually(t, 30*time.Second, "every message counts all its targets delivered", func() (bool, string) {
		for _, id := range ids {
			st := api.status(t, ap, id)
			if st.Counts.Delivered != st.Counts.Targeted || st.Counts.Pending != 0 {
				return false, fmt.Sprintf("message %s: %+v", id, st.Counts)
			}
		}
		return true, ""
	})
}
