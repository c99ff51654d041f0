package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// Send API acceptance 4: a broadcast to 5,000 connected devices with
// spread_over_seconds 10 arrives spread over the window: no 1 s bucket of
// device receive times holds more than twice the even share, the
// deliveries span at least 8 s, and every device gets it once.
func TestBroadcastSpreadOver(t *testing.T) {
	n := 5000
	if testing.Short() {
		n = 1000
	}
	const window = 10
	p := startPlatform(t, testConfig(t))
	api := apiFor(t, p.api)
	ap := api.createApp(t, "spread")
	specs := make([]devSpec, n)
	for i := range specs {
		specs[i] = devSpec{ID: fmt.Sprintf("sp-%05d", i)}
	}
	devs := api.registerSpecs(t, ap, p.gw, specs)
	smallDedup(devs)
	connectEach(t, devs)

	sent := time.Now()
	bc := api.sendOK(t, ap, message{Audience: "all", Data: map[string]string{"k": "spread"}, Options: map[string]any{"spread_over_seconds": window, "ttl_seconds": 600}})
	waitAllHave(t, devs, bc.MessageID, (window+30)*time.Second)

	buckets := make([]int, 2*window)
	var first, last time.Time
	for _, d := range devs {
		at, _ := d.receivedAt(bc.MessageID)
		if first.IsZero() || at.Before(first) {
			first = at
		}
		if at.After(last) {
			last = at
		}
		b := int(at.Sub(sent) / time.Second)
		if b >= len(buckets) {
			b = len(buckets) - 1
		}
		buckets[b]++
	}
	var hist []string
	for i, c := range buckets {
		if c > 0 {
			hist = append(hist, fmt.Sprintf("%ds:%d", i, c))
		}
	}
	t.Logf("receive times per second after the send: %s; first %s, last %s after it",
		strings.Join(hist, " "), first.Sub(sent).Round(time.Millisecond), last.Sub(sent).Round(time.Millisecond))
	even := n / window
	for i, c := range buckets {
		if c > 2*even {
			t.Errorf("second %d after the send holds %d deliveries, more than twice the even share %d", i, c, even)
		}
	}
	if span := last.Sub(first); span < 8*time.Second {
		t.Errorf("deliveries span %s, want at least 8s of the %ds window", span, window)
	}

	// Every device got it once (a plain broadcast as the barrier).
	again := api.sendOK(t, ap, message{Audience: "all", Data: map[string]string{"k": "after"}})
	want := wantSets{}
	want.add(bc.MessageID, devs...)
	want.add(again.MessageID, devs...)
	expectExactly(t, devs, want, 30*time.Second)
}
