//go:build integration

package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/heraldpush/herald/pkg/enginetest"
	herald "github.com/heraldpush/herald/sdk/go"
)

// Crash tests of the send API on the cluster (issue #4): group messages
// and the send_at scheduler through the SIGKILL of a gateway, a
// dispatcher, and the dispatcher that holds the scheduler lease. What
// they prove is what a user relies on: once the api accepted a send,
// every device it targets is handed the message exactly once.

// chaosLease is HERALD_DISCOVERY_LEASE_TTL of startCluster: how long a dead
// gateway stays in the endpoint list, and the TTL of the scheduler
// election's etcd session.
const chaosLease = 3 * time.Second

// chaosFleet registers n devices of the app that find their gateway
// through the endpoint list (they fail over through it) and connects them.
func chaosFleet(t *testing.T, cl *cluster, api *apiClient, ap app, prefix string, n int) []*device {
	t.Helper()
	devs := clusterDevices(t, cl, api, ap, prefix, n)
	connectEach(t, devs)
	return devs
}

// requireSpread fails the test unless each gateway holds at least a tenth
// of n connections.
func requireSpread(t *testing.T, cl *cluster, n int) {
	t.Helper()
	for _, g := range cl.gateways {
		if got := gatewayConnections(t, g.ops); got < n/10 {
			t.Fatalf("gateway %s holds %d of %d devices: the crash would not test anything", g.name, got, n)
		}
	}
}

// groupSender sends "all" broadcasts round-robin over apps until stopped
// and records, per app, the message ids the api accepted. A refused send
// is not accepted and not expected anywhere.
type groupSender struct {
	mu       sync.Mutex
	accepted map[string][]string // app id -> accepted message ids, in order
	n        int
	refused  map[string]int // error -> count
	stop     chan struct{}
	done     sync.WaitGroup
}

func startGroupSender(api *apiClient, apps []app, pause time.Duration) *groupSender {
	s := &groupSender{accepted: make(map[string][]string), refused: make(map[string]int), stop: make(chan struct{})}
	s.done.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-s.stop:
				return
			default:
			}
			ap := apps[i%len(apps)]
			id, err := api.sendOKE(ap, message{
				Audience: "all",
				Data:     map[string]string{"seq": strconv.Itoa(i)},
				Options:  map[string]any{"ttl_seconds": 3600},
			})
			s.mu.Lock()
			if err != nil {
				var se *sendError
				if errors.As(err, &se) {
					s.refused["HTTP "+strconv.Itoa(se.Code)]++
				} else {
					s.refused[err.Error()]++
				}
			} else {
				s.accepted[ap.ID] = append(s.accepted[ap.ID], id)
				s.n++
			}
			s.mu.Unlock()
			time.Sleep(pause)
		}
	})
	return s
}

// count is how many sends were accepted so far.
func (s *groupSender) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// finish stops the sender and returns the accepted ids per app. The api
// does not depend on gateways or dispatchers: no send may be refused.
func (s *groupSender) finish(t *testing.T) map[string][]string {
	t.Helper()
	close(s.stop)
	s.done.Wait()
	t.Logf("broadcasts: %d accepted, refused %v", s.n, s.refused)
	for e, n := range s.refused {
		t.Errorf("%d broadcasts refused while a process was killed (%s); the api does not depend on the killed role", n, e)
	}
	return s.accepted
}

// waitUntil sleeps until the time (or returns at once if it passed).
func waitUntil(at time.Time) { time.Sleep(time.Until(at)) }

// expectGroupExactly waits until every device has each message of want
// exactly once and nothing else, then sends one more broadcast per app (a
// barrier) and checks again once every device has it: a duplicate or a
// stray message that arrives late is caught too.
func expectGroupExactly(t *testing.T, api *apiClient, fleets map[app][]*device, want wantSets, within time.Duration) {
	t.Helper()
	var all []*device
	for _, devs := range fleets {
		all = append(all, devs...)
	}
	expectExactly(t, all, want, within)
	if t.Failed() {
		return
	}
	for ap, devs := range fleets {
		b := api.sendOK(t, ap, message{Audience: "all", Data: map[string]string{"barrier": "1"}, Options: map[string]any{"ttl_seconds": 3600}})
		want.add(b.MessageID, devs...)
	}
	expectExactly(t, all, want, 30*time.Second)
}

// metricSum reads a process's /metrics and returns the sum of every series
// of the metric (counters carry the _total suffix).
func metricSum(ops, name string) (float64, error) {
	resp, err := http.Get("http://" + ops + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(?:_total)?(?:\{[^}]*\})?\s+(\S+)$`)
	sum := 0.0
	for _, m := range re.FindAllSubmatch(body, -1) {
		v, err := strconv.ParseFloat(string(m[1]), 64)
		if err != nil {
			return 0, fmt.Errorf("metric %s: %q: %w", name, m[1], err)
		}
		sum += v
	}
	return sum, nil
}

// logMetric logs a metric of each process (best effort: a killed process
// has none).
func logMetric(t *testing.T, name string, procs ...*proc) {
	t.Helper()
	for _, p := range procs {
		v, err := metricSum(p.ops, name)
		if err != nil {
			t.Logf("%s %s: unreadable (%v)", p.name, name, err)
			continue
		}
		t.Logf("%s %s = %g", p.name, name, v)
	}
}

// Crash test 1: devices spread over two gateway processes; SIGKILL one of
// them right after the api accepted a broadcast, or while broadcasts are
// being sent. The dead gateway's devices reconnect to the survivor through
// the endpoint list and replay the topic log from their broadcast cursor:
// every device ends up with every accepted broadcast exactly once.
func TestChaosSendAPIBroadcastGatewayKill(t *testing.T) {
	tests := []struct {
		name string
		// send sends the broadcasts around the kill and returns the ids
		// accepted; kill SIGKILLs the gateway.
		send func(t *testing.T, api *apiClient, ap app, kill func()) []string
	}{
		{
			name: "killed right after the api answered",
			send: func(t *testing.T, api *apiClient, ap app, kill func()) []string {
				id := api.sendOK(t, ap, message{Audience: "all", Notification: map[string]any{"title": "crash"}, Options: map[string]any{"ttl_seconds": 3600}}).MessageID
				kill()
				return []string{id}
			},
		},
		{
			name: "killed while broadcasts are being sent",
			send: func(t *testing.T, api *apiClient, ap app, kill func()) []string {
				s := startGroupSender(api, []app{ap}, 20*time.Millisecond)
				eventually(t, 20*time.Second, "broadcasts flowing", func() (bool, string) {
					n := s.count()
					return n >= 10, fmt.Sprintf("%d accepted", n)
				})
				kill()
				before := s.count()
				time.Sleep(2 * time.Second)
				ids := s.finish(t)[ap.ID]
				t.Logf("%d broadcasts accepted before the kill, %d after", before, len(ids)-before)
				if len(ids) == before {
					t.Fatal("no broadcast was accepted after the kill")
				}
				return ids
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			const n = 600
			cl := startCluster(t, clusterSpec{router: "redis", gateways: 2, dispatchers: 1})
			api := apiFor(t, "http://"+cl.api.api)
			ap := api.createApp(t, "chaos-gw")
			cl.waitEndpoints(api, ap, 2)
			devs := chaosFleet(t, cl, api, ap, "gk", n)
			requireSpread(t, cl, n)
			dead, survivor := cl.gateways[0], cl.gateways[1]
			onDead := gatewayConnections(t, dead.ops)
			t.Logf("cluster up and %d devices connected in %s; %d on %s", n, time.Since(start).Round(time.Millisecond), onDead, dead.name)

			var killed time.Time
			ids := tc.send(t, api, ap, func() {
				dead.c.kill(t)
				killed = time.Now()
				t.Logf("SIGKILL gateway %s holding %d devices", dead.name, onDead)
			})
			eventually(t, 60*time.Second, "every device on the surviving gateway", func() (bool, string) {
				got := gatewayConnections(t, survivor.ops)
				return got == n, fmt.Sprintf("%d of %d", got, n)
			})
			t.Logf("all %d devices seen on %s %s after the kill", n, survivor.name, time.Since(killed).Round(time.Millisecond))
			want := wantSets{}
			for _, id := range ids {
				want.add(id, devs...)
			}
			expectGroupExactly(t, api, map[app][]*device{ap: devs}, want, 60*time.Second)
			logMetric(t, "herald_gateway_group_replayed", survivor)
			logMetric(t, "herald_dispatcher_broadcast_skipped", cl.disps...)
			t.Logf("case took %s", time.Since(start).Round(time.Millisecond))
		})
	}
}

// Crash test 2: broadcasts stream to four apps (600 devices over two
// gateways) while the dispatchers die in turn: first the one fanning out
// group messages (by its metrics) is SIGKILLed and the other takes its
// partitions over; then it is restarted and the other one is SIGKILLed.
// A record that was in flight is processed again by the next owner of its
// partition (the gateway and the SDK drop the repeat): every accepted
// broadcast reaches every device of its app exactly once.
func TestChaosSendAPIDispatcherKill(t *testing.T) {
	start := time.Now()
	const nApps, perApp = 4, 150
	cl := startCluster(t, clusterSpec{router: "redis", gateways: 2, dispatchers: 2})
	api := apiFor(t, "http://"+cl.api.api)
	fleets := map[app][]*device{}
	var apps []app
	for i := range nApps {
		ap := api.createApp(t, fmt.Sprintf("chaos-disp-%d", i))
		if i == 0 {
			cl.waitEndpoints(api, ap, 2)
		}
		apps = append(apps, ap)
		fleets[ap] = chaosFleet(t, cl, api, ap, fmt.Sprintf("dk%d", i), perApp)
	}
	requireSpread(t, cl, nApps*perApp)
	t.Logf("cluster up and %d devices connected in %s", nApps*perApp, time.Since(start).Round(time.Millisecond))

	const fanned = "herald_dispatcher_broadcasts"
	s := startGroupSender(api, apps, 20*time.Millisecond)
	// Both dispatchers consume the push log; a group message's record is
	// keyed by its app, so each app's broadcasts go through one of them.
	// Kill first the one that has handed out the most.
	var first, second *proc
	eventually(t, 30*time.Second, "a dispatcher fanning broadcasts out", func() (bool, string) {
		a, errA := metricSum(cl.disps[0].ops, fanned)
		b, errB := metricSum(cl.disps[1].ops, fanned)
		if errA != nil || errB != nil {
			return false, fmt.Sprint(errA, errB)
		}
		first, second = cl.disps[0], cl.disps[1]
		if b > a {
			first, second = second, first
		}
		return a+b >= 20, fmt.Sprintf("%s %g, %s %g", cl.disps[0].name, a, cl.disps[1].name, b)
	})
	firstBefore, _ := metricSum(first.ops, fanned)
	logMetric(t, fanned, cl.disps...)
	first.c.kill(t)
	t.Logf("SIGKILL dispatcher %s after %d broadcasts accepted", first.name, s.count())

	time.Sleep(3 * time.Second)
	cl.restart(first)
	t.Logf("dispatcher %s restarted; %d broadcasts accepted", first.name, s.count())
	time.Sleep(2 * time.Second)
	secondBefore, _ := metricSum(second.ops, fanned)
	logMetric(t, fanned, cl.disps...)
	second.c.kill(t)
	t.Logf("SIGKILL dispatcher %s after %d broadcasts accepted", second.name, s.count())
	time.Sleep(2 * time.Second)
	accepted := s.finish(t)

	want := wantSets{}
	for _, ap := range apps {
		for _, id := range accepted[ap.ID] {
			want.add(id, fleets[ap]...)
		}
	}
	expectGroupExactly(t, api, fleets, want, 60*time.Second)
	firstAfter, err := metricSum(first.ops, fanned)
	if err != nil {
		t.Fatal(err)
	}
	// Group records the dispatchers handed to the gateways, read just
	// before each kill: a lower bound.
	handed := firstBefore + secondBefore + firstAfter
	total := 0
	for _, ids := range accepted {
		total += len(ids)
	}
	total += len(apps) // the barriers
	t.Logf("group records handed to the gateways: at least %g for %d sent (at least %g processed again after a kill)", handed, total, max(0, handed-float64(total)))
	t.Logf("test took %s", time.Since(start).Round(time.Millisecond))
}

// schedulerElection is where the dispatchers of cl campaign for the
// scheduler (pkg/server/leader.go: <discovery.etcd_prefix>elections/scheduler):
// one key per campaigner, valued with its node id.
func schedulerElection(cl *cluster) string { return cl.etcdPrefix + "elections/scheduler/" }

// schedulerCampaigners returns the node ids campaigning for the scheduler,
// the leader first.
func schedulerCampaigners(ctx context.Context, cli *clientv3.Client, cl *cluster) ([]string, error) {
	resp, err := cli.Get(ctx, schedulerElection(cl), clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	if err != nil {
		return nil, err
	}
	var nodes []string
	for _, kv := range resp.Kvs {
		nodes = append(nodes, string(kv.Value))
	}
	return nodes, nil
}

// Crash test 3: two dispatcher processes; 20 messages (unicast and
// broadcast) scheduled 3-8 s ahead and 2 more cancelled (one before the
// kill, one while no scheduler leads); the dispatcher holding the
// scheduler lease is SIGKILLed while the messages come due.
//
// The leader is found in etcd: the election key with the lowest create
// revision, the one concurrency.Election.Leader reads, valued with the
// node id. That is the same truth the dispatchers act on, and it lets the
// test check the hand-over (the survivor's key leads afterwards) without
// parsing logs.
//
// Bounds: a message fires (its status leaves "scheduled": the scheduler
// appended it to the push log) no earlier than its send_at and at most
// lease TTL + 1 s after it: the survivor is elected at most one TTL after
// the kill and fires at once what is due. Delivery after the fire waits,
// for records on partitions of the dead dispatcher, for Kafka to hand them
// over (session timeout 10 s), so it is bounded separately (60 s). Each
// device gets each message exactly once; the cancelled ones never.
func TestChaosSendAPISchedulerFailover(t *testing.T) {
	start := time.Now()
	const nDevs, nSched, perUnicast = 100, 20, 10
	cl := startCluster(t, clusterSpec{router: "redis", gateways: 2, dispatchers: 2})
	api := apiFor(t, "http://"+cl.api.api)
	ap := api.createApp(t, "chaos-sched")
	cl.waitEndpoints(api, ap, 2)
	devs := chaosFleet(t, cl, api, ap, "sc", nDevs)

	cli, err := clientv3.New(clientv3.Config{Endpoints: enginetest.Etcd(t), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	mine := map[string]*proc{}
	for _, d := range cl.disps {
		mine[d.name] = d
	}
	leader := func() (*proc, []string) {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		nodes, err := schedulerCampaigners(ctx, cli, cl)
		if err != nil || len(nodes) == 0 {
			return nil, nodes
		}
		return mine[nodes[0]], nodes
	}
	var old *proc
	eventually(t, 30*time.Second, "one of this cluster's dispatchers leads the scheduler", func() (bool, string) {
		var nodes []string
		old, nodes = leader()
		return old != nil, fmt.Sprintf("campaigners, leader first: %v", nodes)
	})
	t.Logf("cluster up in %s; scheduler leader %s", time.Since(start).Round(time.Millisecond), old.name)

	// Due times 3.0, 3.25, ... 7.75 s ahead; even ones unicast to 10
	// devices each, odd ones to all.
	base := time.Now()
	type sched struct {
		id      string
		due     time.Time
		targets []*device
		fired   time.Time // when its status was first seen out of "scheduled"
	}
	ms := make([]*sched, nSched)
	for i := range ms {
		m := &sched{due: base.Add(3*time.Second + time.Duration(i)*250*time.Millisecond).Truncate(time.Millisecond), targets: devs}
		if i%2 == 0 {
			k := (i / 2) * perUnicast
			m.targets = devs[k : k+perUnicast]
		}
		ms[i] = m
	}
	at := func(due time.Time) map[string]any {
		return map[string]any{"send_at": due.UTC().Format(time.RFC3339Nano), "ttl_seconds": 600}
	}
	err = parallel(nSched, 8, func(i int) error {
		m := ms[i]
		aud := any("all")
		if len(m.targets) < nDevs {
			aud = toDevices(idsOf(m.targets)...)
		}
		var out msgAnswer
		code, raw, err := api.doE("POST", "/v1/messages", ap.auth, message{Audience: aud, Data: map[string]string{"i": strconv.Itoa(i)}, Options: at(m.due)}, &out)
		if err != nil {
			return err
		}
		if !accepted(code) || out.State != "scheduled" {
			return fmt.Errorf("schedule %d: %d %s", i, code, raw)
		}
		m.id = out.MessageID
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Two more: cancelled before the kill and while no scheduler leads.
	cancelEarly := api.sendOK(t, ap, message{Audience: toDevices(idsOf(devs[:perUnicast])...), Data: map[string]string{"k": "cancelled early"}, Options: at(base.Add(4 * time.Second))})
	cancelGap := api.sendOK(t, ap, message{Audience: "all", Data: map[string]string{"k": "cancelled in the gap"}, Options: at(base.Add(6500 * time.Millisecond))})
	cancel := func(id string) {
		var out msgAnswer
		if code, raw := api.do(t, "DELETE", "/v1/messages/"+id, ap.auth, nil, &out); code != http.StatusOK || out.State != "cancelled" {
			t.Fatalf("cancel %s: %d %s, want 200 state cancelled", id, code, raw)
		}
	}
	cancel(cancelEarly.MessageID)
	if elapsed := time.Since(base); elapsed > 2500*time.Millisecond {
		t.Fatalf("scheduling took %s: the first message is due at 3 s", elapsed)
	}

	// Watch the statuses: when did each message fire?
	var mu sync.Mutex
	pollDone := make(chan struct{})
	stopPoll := make(chan struct{})
	go func() {
		defer close(pollDone)
		for {
			var todo []*sched
			mu.Lock()
			for _, m := range ms {
				if m.fired.IsZero() {
					todo = append(todo, m)
				}
			}
			mu.Unlock()
			if len(todo) == 0 {
				return
			}
			_ = parallel(len(todo), 8, func(i int) error {
				var st fullStatus
				code, _, err := api.doE("GET", "/v1/messages/"+todo[i].id, ap.auth, nil, &st)
				if err == nil && code == http.StatusOK && st.State != "scheduled" {
					now := time.Now()
					mu.Lock()
					todo[i].fired = now
					mu.Unlock()
				}
				return nil
			})
			select {
			case <-stopPoll:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	defer func() {
		close(stopPoll)
		<-pollDone
	}()

	// SIGKILL the leader 5 s in: the messages due 3-4.75 s were fired by
	// it, those due 5-7.75 s must be fired by the survivor.
	waitUntil(base.Add(5 * time.Second))
	if p, nodes := leader(); p != old {
		t.Fatalf("the scheduler leader changed before the kill: campaigners %v", nodes)
	}
	old.c.kill(t)
	killed := time.Now()
	t.Logf("SIGKILL scheduler leader %s at +%s", old.name, killed.Sub(base).Round(time.Millisecond))
	cancel(cancelGap.MessageID)
	var survivor *proc
	eventually(t, chaosLease+5*time.Second, "the surviving dispatcher leads the scheduler", func() (bool, string) {
		var nodes []string
		survivor, nodes = leader()
		return survivor != nil && survivor != old, fmt.Sprintf("campaigners, leader first: %v", nodes)
	})
	t.Logf("%s leads the scheduler %s after the kill", survivor.name, time.Since(killed).Round(time.Millisecond))

	// Every message fires within the bound.
	last := ms[len(ms)-1].due
	bound := chaosLease + time.Second
	eventually(t, time.Until(last)+bound+5*time.Second, "every scheduled message fired", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, m := range ms {
			if m.fired.IsZero() {
				n++
			}
		}
		return n == 0, fmt.Sprintf("%d of %d still scheduled", n, len(ms))
	})
	mu.Lock()
	var worstBefore, worstAfter time.Duration
	var timeline []string
	for i, m := range ms {
		late := m.fired.Sub(m.due)
		timeline = append(timeline, fmt.Sprintf("%d:+%.2fs->+%.2fs", i, m.due.Sub(base).Seconds(), m.fired.Sub(base).Seconds()))
		if m.due.Before(killed) {
			worstBefore = max(worstBefore, late)
		} else {
			worstAfter = max(worstAfter, late)
		}
		if late < 0 || late > bound {
			t.Errorf("message %d (%s) due at +%s fired at +%s: %s late, want within [0, %s]",
				i, m.id, m.due.Sub(base).Round(time.Millisecond), m.fired.Sub(base).Round(time.Millisecond), late.Round(time.Millisecond), bound)
		}
	}
	mu.Unlock()
	t.Logf("due -> fired: %s", strings.Join(timeline, " "))
	t.Logf("fire lateness (status poll every ~50 ms): at most %s for those due before the kill, %s for those due after", worstBefore.Round(time.Millisecond), worstAfter.Round(time.Millisecond))
	fired, err := metricSum(survivor.ops, "herald_scheduler_fired")
	if err != nil || fired == 0 {
		t.Errorf("the surviving dispatcher %s fired nothing (herald_scheduler_fired %g, %v)", survivor.name, fired, err)
	}
	t.Logf("%s herald_scheduler_fired = %g", survivor.name, fired)

	// Every device gets its scheduled messages exactly once and never a
	// cancelled one.
	want := wantSets{}
	for _, m := range ms {
		want.add(m.id, m.targets...)
	}
	expectGroupExactly(t, api, map[app][]*device{ap: devs}, want, 60*time.Second)
	// A unicast message fired twice (the old leader appended it, died
	// before marking it active, the new leader appended it again) still
	// counts each target once.
	for _, m := range ms {
		if len(m.targets) == nDevs {
			continue
		}
		api.waitStatus(t, ap, m.id, 30*time.Second, "scheduled unicast counts", func(st fullStatus) bool {
			return st.State == "done" && st.Counts == fullCounts{Targeted: perUnicast, Delivered: perUnicast}
		})
	}
	for _, id := range []string{cancelEarly.MessageID, cancelGap.MessageID} {
		if st := api.fullStatus(t, ap, id); st.State != "cancelled" || st.Counts.Delivered != 0 {
			t.Errorf("cancelled message %s: %+v", id, st)
		}
	}
	var slowest time.Duration
	mu.Lock()
	for _, m := range ms {
		for _, d := range m.targets {
			if got, ok := d.receivedAt(m.id); ok {
				slowest = max(slowest, got.Sub(m.fired))
			}
		}
	}
	mu.Unlock()
	t.Logf("slowest delivery %s after its message fired (records on the dead dispatcher's partitions wait for Kafka to hand them over)", slowest.Round(time.Millisecond))
	t.Logf("test took %s", time.Since(start).Round(time.Millisecond))
}

// Crash test 4: a gateway is SIGKILLed and restarted while broadcasts are
// sent; its devices (whose app takes 50 ms per message, so a page of
// gateway.window = 64 pushes takes longer to ack than the cluster's
// gateway.ack_timeout of 2 s) come back and replay more than one page of
// the topic log. Every accepted broadcast must still reach every device
// exactly once. (With an app that handles messages at once this passes;
// with the slow app the gateway ends the replay after the first page and
// the device, still connected, never gets the rest: see the report.)
func TestChaosSendAPIGatewayRestartSlowDevices(t *testing.T) {
	const nDevs, nMsgs, slow = 20, 100, 50 * time.Millisecond
	cl := startCluster(t, clusterSpec{router: "redis", gateways: 1, dispatchers: 1})
	api := apiFor(t, "http://"+cl.api.api)
	ap := api.createApp(t, "chaos-slow")
	cl.waitEndpoints(api, ap, 1)
	gw := cl.gateways[0]
	devs := clusterDevices(t, cl, api, ap, "slow", nDevs)
	for _, d := range devs {
		d.gw, d.endpoints = []string{gw.gw}, "" // they wait for this gateway to come back
		d.conf = func(c *herald.Config) {
			handle := c.OnMessage
			c.OnMessage = func(m herald.Message) {
				time.Sleep(slow)
				handle(m)
			}
		}
	}
	connectEach(t, devs)
	want := wantSets{}
	first := api.sendOK(t, ap, message{Audience: "all", Data: map[string]string{"k": "before"}, Options: map[string]any{"ttl_seconds": 3600}})
	want.add(first.MessageID, devs...)
	waitAllHave(t, devs, first.MessageID, 30*time.Second)

	gw.c.kill(t)
	t.Logf("SIGKILL gateway %s", gw.name)
	for i := range nMsgs {
		id := api.sendOK(t, ap, message{Audience: "all", Data: map[string]string{"seq": strconv.Itoa(i)}, Options: map[string]any{"ttl_seconds": 3600}}).MessageID
		want.add(id, devs...)
	}
	time.Sleep(2 * chaosLease) // the dispatcher keeps them in the topic log and gives up on the dead gateway
	cl.restart(gw)
	t.Logf("gateway %s restarted; %d broadcasts to replay", gw.name, nMsgs)
	expectGroupExactly(t, api, map[app][]*device{ap: devs}, want, 60*time.Second)
}
