package e2e

import (
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Acceptance 1: 1,000 devices connected with the SDK, 10,000 unicast
// messages; every device receives exactly its own messages, once, and every
// message's status counts equal the truth.
func TestUnicastThousandDevices(t *testing.T) {
	nDevices, perDevice := 1000, 10
	if testing.Short() {
		nDevices, perDevice = 100, 5
	}
	p := startPlatform(t, testConfig(t))
	api := newAPI(p.api)
	ap := api.createApp(t, "unicast")

	devs := make([]*device, nDevices)
	for i := range devs {
		id := deviceID(i)
		devs[i] = newDevice(ap, id, api.registerDevice(t, ap, id), p.gw)
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 50)
	for _, d := range devs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := d.connectE(); err != nil {
				t.Error(err)
			}
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

	// Send from 32 concurrent "business services"; message k of device i
	// carries i and k so each device can check it got its own.
	type sent struct{ id, device, seq string }
	total := nDevices * perDevice
	msgs := make([]sent, total)
	jobs := make(chan int)
	start := time.Now()
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range jobs {
				i, k := n%nDevices, n/nDevices
				id, err := api.sendE(ap, sendReq{
					Audience:     toDevices(devs[i].id),
					Notification: map[string]any{"title": "t", "body": fmt.Sprintf("%d/%d", i, k)},
					Data:         map[string]string{"device": devs[i].id, "seq": strconv.Itoa(k)},
				})
				if err != nil {
					t.Error(err)
					continue
				}
				msgs[n] = sent{id: id, device: devs[i].id, seq: strconv.Itoa(k)}
			}
		}()
	}
	for n := 0; n < total; n++ {
		jobs <- n
	}
	close(jobs)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("accepted %d messages in %s", total, time.Since(start))

	eventually(t, 90*time.Second, "every device has its messages", func() (bool, string) {
		have := 0
		for _, d := range devs {
			have += d.count()
		}
		return have >= total, fmt.Sprintf("%d of %d received", have, total)
	})
	t.Logf("all delivered %s after the first send", time.Since(start))

	want := make(map[string]map[string]bool) // device -> message ids
	for _, m := range msgs {
		if want[m.device] == nil {
			want[m.device] = make(map[string]bool)
		}
		want[m.device][m.id] = true
	}
	for _, d := range devs {
		got := d.received()
		if len(got) != perDevice {
			t.Errorf("device %s received %d messages, want %d", d.id, len(got), perDevice)
		}
		for _, m := range got {
			if !want[d.id][m.ID] {
				t.Errorf("device %s received message %s that was not sent to it", d.id, m.ID)
			}
			if m.Data["device"] != d.id {
				t.Errorf("device %s received a payload for %q", d.id, m.Data["device"])
			}
		}
	}
	// Status counts equal the truth: each message targeted one device that acked it.
	eventually(t, 30*time.Second, "status counts settle", func() (bool, string) {
		for _, m := range msgs {
			st := api.status(t, ap, m.id)
			if st.Counts != (counts{Targeted: 1, Delivered: 1}) || st.State != "done" {
				return false, fmt.Sprintf("message %s: %+v state %s", m.id, st.Counts, st.State)
			}
		}
		return true, ""
	})
}
