//go:build integration

package e2e

import (
	"errors"
	"fmt"
	"os/exec"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/pkg/enginetest"
	"github.com/heraldpush/herald/pkg/route"
	"github.com/heraldpush/herald/pkg/route/redisroute"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// streamer sends to random devices until stopped, recording what was
// accepted (202) per device, and the nonce (data "nonce") of every refused
// send: a send refused because the push log timed out may still have been
// written (docs/api.md, 503), so it may arrive — at most once.
type streamer struct {
	mu       sync.Mutex
	want     map[string]map[string]bool
	refused  map[string]map[string]bool // device -> nonces of refused sends
	accepted int
	failed   int
	codes    map[int]int // refused sends by HTTP status (0: no answer)
	stop     chan struct{}
	done     sync.WaitGroup
}

// nonces numbers every streamed send of the test binary, so that a refused
// send of one streamer is told apart from the sends of the next.
var nonces atomic.Int64

func startStreaming(t *testing.T, api *apiClient, ap app, devs []*device, workers int, pause time.Duration) *streamer {
	s := &streamer{want: make(map[string]map[string]bool), refused: make(map[string]map[string]bool), stop: make(chan struct{}), codes: make(map[int]int)}
	for _, d := range devs {
		s.want[d.id] = make(map[string]bool)
		s.refused[d.id] = make(map[string]bool)
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
				nonce := strconv.FormatInt(nonces.Add(1), 10)
				id, err := api.sendE(ap, sendReq{Audience: toDevices(d.id), Data: map[string]string{"to": d.id, "nonce": nonce}})
				s.mu.Lock()
				if err != nil {
					s.failed++
					s.refused[d.id][nonce] = true
					var se *sendError
					if errors.As(err, &se) {
						s.codes[se.Code]++
					} else {
						s.codes[0]++
					}
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
	t.Logf("streamed: %d accepted, %d refused %v", s.accepted, s.failed, s.codes)
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
	// Stranded devices: raw sessions on the gateway about to die that will
	// not reconnect, so only the router can remove their routes.
	var stranded []*device
	for i := 0; i < 5; i++ {
		id := fmt.Sprintf("stranded-%d", i)
		tok := api.registerDevice(t, ap, id)
		connectRaw(t, cl.gateways[0].gw, &devicev1.Connect{ProtocolVersion: 1, AppKey: ap.Key, DeviceId: id, DeviceToken: tok, HeartbeatSeconds: 60})
		stranded = append(stranded, &device{id: id})
	}
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
	stranded = append(stranded, devs...)
	eventually(t, 60*time.Second, "all devices on the surviving gateway", func() (bool, string) {
		n := gatewayConnections(t, cl.gateways[1].ops)
		return n == len(devs), fmt.Sprintf("%d of %d", n, len(devs))
	})
	expectExactly(t, devs, want, 120*time.Second)
	expectDelivered(t, api, ap, want)
	// The dead node is gone from the endpoint list.
	cl.waitEndpoints(api, ap, 1)
	// And from the routing table: no route points at it any more.
	assertNoRoutesOn(t, cl, cl.gateways[0].name, stranded, ap.ID)
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

// engine stops or starts one engine of `make deps-up`.
func engine(t *testing.T, verb, name string) {
	t.Helper()
	cmd := exec.Command("../scripts/deps.sh", verb, name)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("deps.sh %s %s: %v\n%s", verb, name, err, out)
	}
}

// Acceptance (cluster) 5: stop and restart the Kafka broker, then the
// Cassandra node, under load. Sends during an outage fail with a retriable
// error (503), never 202 for a message that is not durable; after recovery
// every accepted message is delivered.
func TestClusterEngineOutage(t *testing.T) {
	cl := startCluster(t, clusterSpec{router: "redis", gateways: 1, dispatchers: 1})
	api := newAPI("http://" + cl.api.api)
	ap := api.createApp(t, "outage")
	cl.waitEndpoints(api, ap, 1)
	devs := connectAll(t, api, ap, "http://"+cl.api.api, 100, cl.gatewayAddrs(), "out")
	all := make(map[string]map[string]bool)     // every accepted message so far, per device
	refused := make(map[string]map[string]bool) // every refused send's nonce so far: a Kafka-outage one may arrive during the next outage
	for _, d := range devs {
		all[d.id] = make(map[string]bool)
		refused[d.id] = make(map[string]bool)
	}

	for _, name := range []string{"kafka", "cassandra"} {
		t.Run(name, func(t *testing.T) {
			s := startStreaming(t, api, ap, devs, 4, 5*time.Millisecond)
			time.Sleep(2 * time.Second)
			engine(t, "stop", name)
			t.Logf("%s stopped", name)
			// Longer than a send waits for the engine (the Kafka writer's
			// 10 s timeout), so sends made during the outage get answered.
			time.Sleep(12 * time.Second)
			engine(t, "start", name)
			t.Logf("%s restarted", name)
			// Sends are accepted again after recovery.
			s.mu.Lock()
			base := s.accepted
			s.mu.Unlock()
			eventually(t, 180*time.Second, "sends accepted again", func() (bool, string) {
				s.mu.Lock()
				defer s.mu.Unlock()
				return s.accepted >= base+20, fmt.Sprintf("%d accepted since the restart", s.accepted-base)
			})
			want := s.finish(t)
			if s.codes[503] == 0 {
				t.Errorf("no send was refused with 503 while %s was down", name)
			}
			for code, n := range s.codes {
				if code != 503 {
					t.Errorf("%d sends got HTTP %d during the %s outage; want 503 (retriable)", n, code, name)
				}
			}
			for dev, ids := range want {
				for id := range ids {
					all[dev][id] = true
				}
			}
			want = all
			for dev, ns := range s.refused {
				for n := range ns {
					refused[dev][n] = true
				}
			}
			expectExactlyOrRefused(t, devs, want, refused, 180*time.Second)
			expectDelivered(t, api, ap, want)
		})
	}
}

// assertNoRoutesOn checks that no device's route points at node.
func assertNoRoutesOn(t *testing.T, cl *cluster, node string, devs []*device, appID string) {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: enginetest.Redis(t)})
	defer rdb.Close()
	table := redisroute.New(rdb, redisroute.Options{}, nil)
	keys := make([]string, len(devs))
	for i, d := range devs {
		keys[i] = route.Key(appID, d.id)
	}
	eventually(t, 30*time.Second, "no route points at the dead gateway", func() (bool, string) {
		routes, err := table.Lookup(t.Context(), keys)
		if err != nil {
			return false, err.Error()
		}
		n := 0
		for _, r := range routes {
			if r.Node == node {
				n++
			}
		}
		return n == 0, fmt.Sprintf("%d routes still point at %s", n, node)
	})
}

// expectExactlyOrRefused is expectExactly, except that a device may also
// have a message of a send that was refused (its data nonce is in
// refused[device]), at most once: the push log may have taken a write whose
// answer timed out (docs/api.md, 503).
func expectExactlyOrRefused(t *testing.T, devs []*device, want map[string]map[string]bool, refused map[string]map[string]bool, within time.Duration) {
	t.Helper()
	late := 0
	expectExactlyOf(t, devs, want, func(d *device) map[string]bool {
		also := make(map[string]bool)
		for _, m := range d.received() {
			if !want[d.id][m.ID] && refused[d.id][m.Data["nonce"]] {
				also[m.ID] = true
				late++
			}
		}
		return also
	}, within)
	if late > 0 {
		t.Logf("%d messages of refused sends arrived (their writes outlived the 503)", late)
	}
}
