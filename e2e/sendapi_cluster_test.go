//go:build integration

package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/heraldpush/herald/api/heraldv1"
	"github.com/heraldpush/herald/examples/upstream-echo/echo"
	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/pkg/pushlog/kafkalog"
)

// envValue returns the value of KEY=value in env ("" if absent).
func envValue(env []string, key string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			return v
		}
	}
	return ""
}

// clusterDevices registers devices that find their gateway through the
// cluster's endpoint list; they are not connected.
func clusterDevices(t *testing.T, cl *cluster, api *apiClient, ap app, prefix string, n int) []*device {
	t.Helper()
	specs := make([]devSpec, n)
	for i := range specs {
		specs[i] = devSpec{ID: fmt.Sprintf("%s-%05d", prefix, i)}
	}
	devs := api.registerSpecs(t, ap, "", specs)
	for _, d := range devs {
		d.gw = cl.gatewayAddrs()
		d.endpoints = "http://" + cl.api.api
	}
	return devs
}

// Send API acceptance (cluster): on Kafka, Cassandra and Redis with two
// gateway processes and two dispatcher processes: a broadcast reaches
// 1,000 connected devices spread over both gateways and 300 devices that
// connect afterwards, each exactly once; 2,000 UPSTREAM frames go through
// Kafka to the example service and every reply reaches its device; the
// receipts webhook gets every delivered and clicked receipt, signed, and
// the message counts are true.
func TestClusterSendAPI(t *testing.T) {
	cl := startCluster(t, clusterSpec{router: "redis", gateways: 2, dispatchers: 2})
	api := apiFor(t, "http://"+cl.api.api)

	t.Run("broadcast to connected and late devices", func(t *testing.T) {
		ap := api.createApp(t, "cluster-broadcast")
		cl.waitEndpoints(api, ap, 2)
		online := clusterDevices(t, cl, api, ap, "on", 1000)
		late := clusterDevices(t, cl, api, ap, "late", 300)
		connectEach(t, online)
		for _, g := range cl.gateways {
			if n := gatewayConnections(t, g.ops); n < len(online)/10 {
				t.Fatalf("gateway %s holds %d of %d devices: the broadcast would not cross gateways", g.name, n, len(online))
			}
		}
		bc := api.sendOK(t, ap, message{Audience: "all", Notification: map[string]any{"title": "cluster"}, Options: map[string]any{"ttl_seconds": 3600}})
		waitAllHave(t, online, bc.MessageID, 60*time.Second)
		connectEach(t, late)
		waitAllHave(t, late, bc.MessageID, 60*time.Second)
		all := append(append([]*device(nil), online...), late...)
		second := api.sendOK(t, ap, message{Audience: "all", Data: map[string]string{"n": "2"}, Options: map[string]any{"ttl_seconds": 3600}})
		want := wantSets{}
		want.add(bc.MessageID, all...)
		want.add(second.MessageID, all...)
		expectExactly(t, all, want, 60*time.Second)
		n := int64(len(all))
		api.waitStatus(t, ap, bc.MessageID, 60*time.Second, "broadcast counts", func(st fullStatus) bool {
			return st.Counts.Targeted == n && st.Counts.Delivered == n
		})
	})

	t.Run("upstream through Kafka to the example service", func(t *testing.T) {
		const channel, nDevices, perDevice = "echo", 100, 20
		ap := api.createApp(t, "cluster-upstream")
		cl.waitEndpoints(api, ap, 2)
		devs := clusterDevices(t, cl, api, ap, "up", nDevices)
		connectEach(t, devs)

		kl, err := kafkalog.New(kafkalog.Config{
			Brokers:     strings.Split(envValue(cl.common, "HERALD_QUEUE_KAFKA_BROKERS"), ","),
			TopicPrefix: envValue(cl.common, "HERALD_QUEUE_KAFKA_TOPIC_PREFIX"),
			Partitions:  8,
		}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		defer kl.Close()
		conn, err := grpc.NewClient(envValue(cl.api.env, "HERALD_API_GRPC_ADDR"),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithPerRPCCredentials(echo.BasicAuth(ap.Key, ap.Secret, false)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithCancel(t.Context())
		cons, err := kl.Consume(ctx, pushlog.UpstreamTopic(channel), "upstream-echo")
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			done <- echo.Run(ctx, cons, heraldv1.NewHeraldClient(conn), echo.Config{AppID: ap.ID, Logger: testLogger(t)})
		}()
		defer func() {
			cancel()
			<-done
			_ = cons.Close()
		}()

		err = parallel(nDevices*perDevice, 2*nDevices, func(i int) error {
			d := devs[i%nDevices]
			return d.client.Upstream(t.Context(), channel, []byte(fmt.Sprintf("%s#%03d", d.id, i/nDevices)))
		})
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, 90*time.Second, "every frame answered", func() (bool, string) {
			missing := 0
			for _, d := range devs {
				missing += max(0, perDevice-d.count())
			}
			return missing == 0, fmt.Sprintf("%d of %d replies missing", missing, nDevices*perDevice)
		})
		for _, d := range devs {
			echoed := map[string]bool{}
			for _, m := range d.received() {
				if !strings.HasPrefix(m.Data["echo"], d.id+"#") || m.Data["reply_to"] == "" || echoed[m.Data["echo"]] {
					t.Errorf("device %s: unexpected reply %v", d.id, m.Data)
				}
				echoed[m.Data["echo"]] = true
			}
			if len(echoed) != perDevice {
				t.Errorf("device %s: %d distinct replies, want %d", d.id, len(echoed), perDevice)
			}
		}
	})

	t.Run("receipts webhook", func(t *testing.T) {
		ap := api.createApp(t, "cluster-receipts")
		hook, srv := newWebhookReceiver(t, ap)
		code, raw := api.do(t, "PATCH", "/v1/app", ap.auth, map[string]string{"webhook_url": srv.URL}, nil)
		ok2xx(t, "PATCH /v1/app", code, raw)
		cl.waitEndpoints(api, ap, 2)
		devs := clusterDevices(t, cl, api, ap, "rc", 40)
		connectEach(t, devs)
		uni := api.sendOK(t, ap, message{Audience: toDevices(idsOf(devs[:20])...), Notification: map[string]any{"title": "u"}}).MessageID
		grp := api.sendOK(t, ap, message{Audience: "all", Notification: map[string]any{"title": "g"}}).MessageID
		waitAllHave(t, devs[:20], uni, 30*time.Second)
		waitAllHave(t, devs, grp, 30*time.Second)
		for _, d := range devs[:10] {
			if err := d.client.ReportClick(t.Context(), uni, grp); err != nil {
				t.Fatal(err)
			}
		}
		want := map[string][]string{
			uni + " delivered": idsOf(devs[:20]),
			uni + " clicked":   idsOf(devs[:10]),
			grp + " delivered": idsOf(devs),
			grp + " clicked":   idsOf(devs[:10]),
		}
		hook.await(t, want, 60*time.Second)
		api.waitStatus(t, ap, uni, 60*time.Second, "unicast counts", func(st fullStatus) bool {
			return st.Counts.Targeted == 20 && st.Counts.Delivered == 20 && st.Counts.Clicked == 10
		})
		api.waitStatus(t, ap, grp, 60*time.Second, "group counts", func(st fullStatus) bool {
			return st.Counts.Targeted == 40 && st.Counts.Delivered == 40 && st.Counts.Clicked == 10
		})
	})
}
