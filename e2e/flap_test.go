package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	herald "github.com/heraldpush/herald/sdk/go"
)

// Acceptance 4: devices that flap while messages stream in end with every
// message delivered and nothing left pending in their inboxes. Half the
// devices restart their client in a loop (clean disconnects); the other half
// keep one client whose connection a proxy cuts abruptly at random (lost
// acks, no DISCONNECT), and those must hand each message to the app exactly
// once.
func TestFlappingDevices(t *testing.T) {
	nDevices, nMessages := 50, 2000
	if testing.Short() {
		nDevices, nMessages = 10, 300
	}
	p := startPlatform(t, testConfig(t))
	api := newAPI(p.api)
	ap := api.createApp(t, "flap")

	type rec struct {
		mu   sync.Mutex
		seen map[string]int // message id -> times handed to the app (across clients)
	}
	devs := make([]string, nDevices)
	tokens := make([]string, nDevices)
	recs := make([]*rec, nDevices)
	for i := range devs {
		devs[i] = fmt.Sprintf("flap-%03d", i)
		tokens[i] = api.registerDevice(t, ap, devs[i])
		recs[i] = &rec{seen: make(map[string]int)}
	}

	proxy := startProxy(t, p.gw)
	// Restarters (even i): connect a fresh SDK client, stay up 20-200 ms,
	// drop it, stay away 0-100 ms; until the sends are done, then stay
	// connected. Droppers (odd i): one client through the chaos proxy.
	stopFlapping := make(chan struct{})
	finalCtx, stopFinal := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := recs[i]
			addr := p.gw
			if i%2 == 1 {
				addr = proxy.addr()
			}
			newClient := func() *herald.Client {
				c, err := herald.New(herald.Config{
					Addrs: []string{addr}, AppKey: ap.Key, DeviceID: devs[i], Token: tokens[i],
					MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
					OnMessage: func(m herald.Message) {
						r.mu.Lock()
						r.seen[m.ID]++
						r.mu.Unlock()
					},
				})
				if err != nil {
					t.Error(err)
				}
				return c
			}
			if i%2 == 1 {
				_ = newClient().Run(finalCtx)
				return
			}
			for {
				select {
				case <-stopFlapping:
					c := newClient()
					_ = c.Run(finalCtx)
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(20+rand.IntN(180))*time.Millisecond)
				_ = newClient().Run(ctx)
				cancel()
				time.Sleep(time.Duration(rand.IntN(100)) * time.Millisecond)
			}
		}()
	}
	defer func() {
		stopFinal()
		wg.Wait()
	}()

	// The network: cut a random proxied connection every 5 ms while sending.
	chaosDone := make(chan int)
	go func() {
		cuts := 0
		for {
			select {
			case <-stopFlapping:
				chaosDone <- cuts
				return
			case <-time.After(5 * time.Millisecond):
				if proxy.cutRandom() {
					cuts++
				}
			}
		}
	}()

	type sent struct{ id, device string }
	msgs := make([]sent, nMessages)
	var swg sync.WaitGroup
	jobs := make(chan int)
	for w := 0; w < 8; w++ {
		swg.Add(1)
		go func() {
			defer swg.Done()
			for n := range jobs {
				dev := devs[n%nDevices]
				id, err := api.sendE(ap, sendReq{Audience: toDevices(dev), Data: map[string]string{"n": fmt.Sprint(n)}})
				if err != nil {
					t.Error(err)
					continue
				}
				msgs[n] = sent{id: id, device: dev}
			}
		}()
	}
	for n := 0; n < nMessages; n++ {
		jobs <- n
		if n%10 == 0 {
			time.Sleep(10 * time.Millisecond) // stream over a few seconds of flapping
		}
	}
	close(jobs)
	swg.Wait()
	close(stopFlapping)
	cuts := <-chaosDone
	if t.Failed() {
		t.FailNow()
	}

	byDevice := make(map[string]int)
	for i, d := range devs {
		byDevice[d] = i
	}
	eventually(t, 60*time.Second, "every message delivered to its device", func() (bool, string) {
		missing := 0
		for _, m := range msgs {
			r := recs[byDevice[m.device]]
			r.mu.Lock()
			if r.seen[m.id] == 0 {
				missing++
			}
			r.mu.Unlock()
		}
		return missing == 0, fmt.Sprintf("%d of %d missing", missing, len(msgs))
	})
	// Nothing pending: every message is acked (its inbox copy removed).
	eventually(t, 30*time.Second, "status delivered for every message", func() (bool, string) {
		for _, m := range msgs {
			st := api.status(t, ap, m.id)
			if st.Counts != (counts{Targeted: 1, Delivered: 1}) {
				return false, fmt.Sprintf("%s: %+v", m.id, st.Counts)
			}
		}
		return true, ""
	})
	for _, d := range devs {
		left, err := p.srv.Store().List(t.Context(), ap.ID, d, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(left) != 0 {
			t.Errorf("device %s ends with %d messages in its inbox", d, len(left))
		}
	}
	dups := 0
	for i, r := range recs {
		r.mu.Lock()
		for id, n := range r.seen {
			if i%2 == 1 && n != 1 {
				t.Errorf("device %s (one client, cut connections) handed message %s to the app %d times", devs[i], id, n)
			}
			dups += n - 1
		}
		r.mu.Unlock()
	}
	// Across separate clients (no shared dedup memory) a message whose ack
	// was lost in a drop is redelivered: allowed, and reported.
	t.Logf("%d messages, %d connections cut, %d redelivered to restarted clients", nMessages, cuts, dups)
}
