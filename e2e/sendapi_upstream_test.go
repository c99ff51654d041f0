package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/heraldpush/herald/api/heraldv1"
	"github.com/heraldpush/herald/examples/upstream-echo/echo"
	"github.com/heraldpush/herald/pkg/pushlog"
)

// Send API acceptance 7: 10,000 UPSTREAM frames from 100 devices reach the
// example business service (examples/upstream-echo, consuming the
// platform's upstream log and answering through the gRPC send API), and
// each of its replies reaches the device that asked, matched by the
// request id the gateway logged for the frame.
func TestUpstreamEchoService(t *testing.T) {
	nDevices, perDevice := 100, 100
	if testing.Short() {
		nDevices, perDevice = 20, 50
	}
	const channel = "echo"
	p := startPlatform(t, testConfig(t))
	api := apiFor(t, p.api)
	ap := api.createApp(t, "upstream")
	specs := make([]devSpec, nDevices)
	for i := range specs {
		specs[i] = devSpec{ID: fmt.Sprintf("up-%03d", i)}
	}
	devs := api.registerSpecs(t, ap, p.gw, specs)
	connectEach(t, devs)

	// The business service, as a company would run it next to Herald.
	conn, err := grpc.NewClient(p.srv.GRPCAddr(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(echo.BasicAuth(ap.Key, ap.Secret, false)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(t.Context())
	cons, err := p.srv.Log().Consume(ctx, pushlog.UpstreamTopic(channel), "upstream-echo")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- echo.Run(ctx, cons, heraldv1.NewHeraldClient(conn), echo.Config{AppID: ap.ID, Logger: testLogger(t)})
	}()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil && ctx.Err() == nil {
				t.Errorf("echo.Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("echo.Run did not return after its context ended")
		}
		_ = cons.Close()
	}()

	// Every device sends its frames, several in flight at once.
	start := time.Now()
	total := nDevices * perDevice
	err = parallel(total, 4*nDevices, func(i int) error {
		d := devs[i%nDevices]
		payload := fmt.Sprintf("%s#%03d", d.id, i/nDevices)
		if err := d.client.Upstream(t.Context(), channel, []byte(payload)); err != nil {
			return fmt.Errorf("%s: Upstream %s: %w", d.id, payload, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d UPSTREAM frames acknowledged in %s", total, time.Since(start))

	// Every reply arrived at its device.
	eventually(t, 90*time.Second, "every device has a reply to each of its frames", func() (bool, string) {
		missing := 0
		for _, d := range devs {
			missing += max(0, perDevice-d.count())
		}
		return missing == 0, fmt.Sprintf("%d of %d replies missing", missing, total)
	})
	t.Logf("%d replies reached their devices %s after the first frame", total, time.Since(start))

	// The request ids the gateway logged, by payload (read as a second
	// consumer group of the same log).
	requestOf := auditUpstream(t, p.srv.Log(), channel, ap.ID, total)

	for _, d := range devs {
		got := d.received()
		if len(got) != perDevice {
			t.Errorf("device %s: %d replies, want %d", d.id, len(got), perDevice)
		}
		echoed := map[string]bool{}
		for _, m := range got {
			payload := m.Data["echo"]
			if !strings.HasPrefix(payload, d.id+"#") {
				t.Errorf("device %s got a reply to another device's frame: %v", d.id, m.Data)
				continue
			}
			if echoed[payload] {
				t.Errorf("device %s: frame %s answered twice", d.id, payload)
			}
			echoed[payload] = true
			if want := requestOf[payload]; m.Data["reply_to"] != want {
				t.Errorf("device %s: reply to %s names request %q, the gateway logged %q", d.id, payload, m.Data["reply_to"], want)
			}
		}
	}
}

// auditUpstream reads the upstream log from the start until it has n
// distinct request ids and returns payload -> request id.
func auditUpstream(t *testing.T, lg pushlog.Log, channel, appID string, n int) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cons, err := lg.Consume(ctx, pushlog.UpstreamTopic(channel), "e2e-audit")
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	out := map[string]string{}
	requests := map[string]bool{}
	for len(requests) < n {
		recs, err := cons.Fetch(ctx)
		if err != nil {
			t.Fatalf("audit the upstream log: %v (%d of %d request ids read)", err, len(requests), n)
		}
		for _, r := range recs {
			var up struct {
				AppID     string `json:"app_id"`
				DeviceID  string `json:"device_id"`
				RequestID string `json:"request_id"`
				Channel   string `json:"channel"`
				Payload   []byte `json:"payload"`
			}
			if err := json.Unmarshal(r.Value, &up); err != nil {
				t.Fatalf("upstream record %q: %v", r.Value, err)
			}
			payload := string(up.Payload)
			if up.AppID != appID || up.Channel != channel || !strings.HasPrefix(payload, up.DeviceID+"#") || up.RequestID == "" {
				t.Fatalf("upstream record %+v: want app %s, channel %s, the sender's device id and a request id", up, appID, channel)
			}
			if prev, ok := out[payload]; ok && prev != up.RequestID {
				t.Fatalf("payload %s logged with request ids %s and %s", payload, prev, up.RequestID)
			}
			out[payload] = up.RequestID
			requests[up.RequestID] = true
		}
	}
	return out
}
