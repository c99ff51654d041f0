//go:build integration

package e2e

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// streamer sends to random devices until stopped, recording what was
// accepted (202) per device; failed sends are not accepted and not expected.
type streamer struct {
	mu       sync.Mutex
	want     map[string]map[string]bool
	accepted int
	failed   int
	stop     chan struct{}
	done     sync.WaitGroup
}

func startStreaming(t *testing.T, api *apiClient, ap app, devs []*device, workers int, pause time.Duration) *streamer {
	s := &streamer{want: make(map[string]map[string]bool), stop: make(chan struct{})}
	for _, d := range devs {
		s.want[d.id] = make(map[string]bool)
	}
	for w := 0; w < workers; w++ {
		s.done.Add(1)
		go func() {
			defer s.done.Done()
			for n := w; ; n += workers {
				select {
				case <-s.stop:
					return
				default:
				}
				d := devs[n%len(devs)]
				id, err := api.sendE(ap, sendReq{Audience: toDevices(d.id), Data: map[string]string{"to": d.id}})
				s.mu.Lock()
				if err != nil {
					s.failed++
				} else {
					s.want[d.id][id] = true
					s.accepted++
				}
				s.mu.Unlock()
				time.Sleep(pause)
			}
		}()
	}
	return s
}

func (s *streamer) finish(t *testing.T) map[string]map[string]bool {
	close(s.stop)
	s.done.Wait()
	t.Logf("streamed: %d accepted, %d refused", s.accepted, s.failed)
	return s.want
}

// Acceptance (cluster) 3: SIGKILL one gateway under load. Its devices
// reconnect through the endpoint list to the other; the dead node's routes
// disappear; nothing accepted is lost.
func TestClusterGatewayKill(t *testing.T) {
	cl := startCluster(t, clusterSpec{router: "redis", gateways: 2, dispatchers: 1})
	api := newAPI("http://" + cl.api.api)
	ap := api.createApp(t, "gw-kill")
	cl.waitEndpoints(api, ap, 2)
	devs := connectAll(t, api, ap, "http://"+cl.api.api, 400, cl.gatewayAddrs(), "gk")
	onDead := gatewayConnections(t, cl.gateways[0].ops)
	if onDead == 0 {
		t.Fatal("no device on the gateway about to die")
	}
	s := startStreaming(t, api, ap, devs, 8, 2*time.Millisecond)
	time.Sleep(1500 * time.Millisecond)
	cl.gateways[0].c.kill(t)
	t.Logf("SIGKILL gateway %s holding %d devices", cl.gateways[0].name, onDead)
	time.Sleep(3 * time.Second)
	want := s.finish(t)

	// Every device is back, on the survivor.
	eventually(t, 60*time.Second, "all devices on the surviving gateway", func() (bool, string) {
		n := gatewayConnections(t, cl.gateways[1].ops)
		return n == len(devs), fmt.Sprintf("%d of %d", n, len(devs))
	})
	expectExactly(t, devs, want, 120*time.Second)
	expectDelivered(t, api, ap, want)
	// The dead node is gone from the endpoint list.
	cl.waitEndpoints(api, ap, 1)
	// And from the routing table: no route points at it any more.
	assertNoRoutesOn(t, cl, cl.gateways[0].name, devs)
}

// Acceptance (cluster) 4: SIGKILL one dispatcher under load: the survivor
// takes its partitions; nothing accepted is lost.
func TestClusterDispatcherKill(t *testing.T) {
	cl := startCluster(t, clusterSpec{router: "redis", gateways: 1, dispatchers: 2})
	api := newAPI("http://" + cl.api.api)
	ap := api.createApp(t, "disp-kill")
	cl.waitEndpoints(api, ap, 1)
	devs := connectAll(t, api, ap, "http://"+cl.api.api, 200, cl.gatewayAddrs(), "dk")
	s := startStreaming(t, api, ap, devs, 8, 2*time.Millisecond)
	time.Sleep(2 * time.Second)
	cl.disps[0].c.kill(t)
	t.Logf("SIGKILL dispatcher %s", cl.disps[0].name)
	time.Sleep(4 * time.Second)
	want := s.finish(t)
	expectExactly(t, devs, want, 120*time.Second)
	expectDelivered(t, api, ap, want)
}
