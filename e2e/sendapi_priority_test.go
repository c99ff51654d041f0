package e2e

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
	herald "github.com/heraldpush/herald/sdk/go"
)

// expectNoPush reads the connection for d and fails on any PUSH (other
// frames, e.g. PONG, are fine).
func (c *rawConn) expectNoPush(t *testing.T, d time.Duration, why string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	for {
		f, err := c.r.Next()
		if err != nil {
			return // the deadline passed: nothing was pushed
		}
		if f.Type == frame.TypePush {
			var p devicev1.Push
			_ = proto.Unmarshal(f.Body, &p)
			t.Fatalf("%s: got PUSH %s", why, p.GetMessageId())
		}
		if f.Type == frame.TypeDisconnect {
			t.Fatalf("%s: the server closed the session", why)
		}
	}
}

// readPush reads the next PUSH and acknowledges it.
func (c *rawConn) readPush(t *testing.T, within time.Duration) (*devicev1.Push, time.Time) {
	t.Helper()
	f := c.readFrame(t, frame.TypePush, within)
	at := time.Now()
	var p devicev1.Push
	if err := proto.Unmarshal(f.Body, &p); err != nil {
		t.Fatal(err)
	}
	return &p, at
}

func (c *rawConn) ack(t *testing.T, ids ...string) {
	t.Helper()
	b, err := frame.AppendMessage(nil, frame.TypeAck, &devicev1.Ack{MessageIds: ids})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
}

// Send API acceptance 5: a normal-priority message waits for the device's
// next heartbeat (PING) or other activity, a high-priority one is pushed at
// once. Measured with a raw protocol device that chooses when to PING, for
// unicast and group messages, and with the Go SDK pinging on its own
// 3 s heartbeat.
func TestPriorityNormalWaitsForHeartbeat(t *testing.T) {
	cfg := testConfig(t)
	cfg.Gateway.HeartbeatMin = time.Second
	cfg.Gateway.Heartbeat = 3 * time.Second
	p := startPlatform(t, cfg)
	api := apiFor(t, p.api)
	ap := api.createApp(t, "priority")
	const hb = 3 * time.Second
	devs := api.registerSpecs(t, ap, p.gw, []devSpec{{ID: "raw", Tags: []string{"raw"}}, {ID: "sdk"}})

	// The two devices are independent: their subtests run in parallel.
	t.Run("raw device chooses its PING times", func(t *testing.T) {
		t.Parallel()
		c, ack := connectRaw(t, p.gw, &devicev1.Connect{ProtocolVersion: 1, AppKey: ap.Key, DeviceId: "raw", DeviceToken: devs[0].token, HeartbeatSeconds: uint32(hb / time.Second)})
		if got := time.Duration(ack.GetHeartbeatSeconds()) * time.Second; got != hb {
			t.Fatalf("negotiated heartbeat %s, want %s", got, hb)
		}
		for _, tc := range []struct {
			name     string
			audience any
		}{
			{"unicast", toDevices("raw")},
			{"group", map[string]any{"tags": "raw"}},
		} {
			sent := time.Now()
			id := api.sendOK(t, ap, message{Audience: tc.audience, Data: map[string]string{"k": tc.name}, Options: map[string]any{"priority": "normal", "ttl_seconds": 600}}).MessageID
			// Silent for half a heartbeat and more: nothing is pushed.
			c.expectNoPush(t, hb/2, "normal-priority "+tc.name+" before the next PING")
			pingAt := time.Now()
			if _, err := c.Write(frame.Ping); err != nil {
				t.Fatal(err)
			}
			push, at := c.readPush(t, 2*time.Second)
			if push.GetMessageId() != id {
				t.Fatalf("%s: pushed %s, want %s", tc.name, push.GetMessageId(), id)
			}
			t.Logf("normal %s: sent, PING %s later, pushed %s after the PING", tc.name, pingAt.Sub(sent).Round(time.Millisecond), at.Sub(pingAt).Round(time.Millisecond))
			if at.Sub(pingAt) > time.Second {
				t.Errorf("normal %s: pushed %s after the PING, want promptly", tc.name, at.Sub(pingAt))
			}
			c.ack(t, id)
		}
		for _, tc := range []struct {
			name     string
			audience any
		}{
			{"unicast", toDevices("raw")},
			{"group", map[string]any{"tags": "raw"}},
		} {
			sent := time.Now()
			id := api.sendOK(t, ap, message{Audience: tc.audience, Data: map[string]string{"k": "high " + tc.name}, Options: map[string]any{"priority": "high", "ttl_seconds": 600}}).MessageID
			push, at := c.readPush(t, 2*time.Second)
			if push.GetMessageId() != id {
				t.Fatalf("high %s: pushed %s, want %s", tc.name, push.GetMessageId(), id)
			}
			if d := at.Sub(sent); d > 500*time.Millisecond {
				t.Errorf("high %s: pushed %s after the send, want within 500ms", tc.name, d)
			}
			c.ack(t, id)
		}
	})

	t.Run("SDK device on a 3s heartbeat", func(t *testing.T) {
		t.Parallel()
		d := devs[1]
		d.conf = func(c *herald.Config) { c.Heartbeat = hb }
		connectEach(t, []*device{d})
		connected := time.Now() // the SDK's PING ticker starts here: PINGs at connected + k*3s
		sent := time.Now()
		normal := api.sendOK(t, ap, message{Audience: toDevices("sdk"), Data: map[string]string{"k": "normal"}, Options: map[string]any{"priority": "normal", "ttl_seconds": 600}}).MessageID
		waitAllHave(t, []*device{d}, normal, 2*hb)
		at, _ := d.receivedAt(normal)
		firstPing := connected.Add(hb)
		t.Logf("normal: received %s after the send, %s after the first PING was due", at.Sub(sent).Round(time.Millisecond), at.Sub(firstPing).Round(time.Millisecond))
		if at.Before(firstPing.Add(-250*time.Millisecond)) || at.After(firstPing.Add(time.Second)) {
			t.Errorf("normal: received %s after connecting, want at the first PING (%s)", at.Sub(connected), hb)
		}
		if at.Sub(sent) < hb/2 {
			t.Errorf("normal: received %s after the send: it did not wait for the heartbeat", at.Sub(sent))
		}

		sent = time.Now()
		high := api.sendOK(t, ap, message{Audience: toDevices("sdk"), Data: map[string]string{"k": "high"}, Options: map[string]any{"priority": "high", "ttl_seconds": 600}}).MessageID
		waitAllHave(t, []*device{d}, high, 2*time.Second)
		if at, _ := d.receivedAt(high); at.Sub(sent) > 500*time.Millisecond {
			t.Errorf("high: received %s after the send, want within 500ms", at.Sub(sent))
		}
	})
}
