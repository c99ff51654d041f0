package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/services/gateway"
)

// connectRaw performs a CONNECT and returns the session with its CONNACK.
func connectRaw(t *testing.T, addr string, m *devicev1.Connect) (*rawConn, *devicev1.ConnAck) {
	t.Helper()
	c := dialRaw(t, addr)
	if _, err := c.Write(connectFrame(t, m)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := c.r.Next()
	if err != nil {
		t.Fatalf("no CONNACK: %v", err)
	}
	if f.Type != frame.TypeConnAck {
		t.Fatalf("got %s, want CONNACK", f.Type)
	}
	var ack devicev1.ConnAck
	if err := proto.Unmarshal(f.Body, &ack); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Time{})
	return c, &ack
}

// readFrame reads the next frame of the wanted type, skipping others.
func (c *rawConn) readFrame(t *testing.T, want frame.Type, within time.Duration) frame.Frame {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(within))
	defer c.SetReadDeadline(time.Time{})
	for {
		f, err := c.r.Next()
		if err != nil {
			t.Fatalf("waiting for %s: %v", want, err)
		}
		if f.Type == want {
			return f
		}
	}
}

// Sessions: heartbeat negotiation and timeout, newest connection wins,
// deleted devices are cut off, upstream messages reach the upstream log.
func TestSessions(t *testing.T) {
	cfg := testConfig(t)
	cfg.Gateway.HeartbeatMin = time.Second
	cfg.Gateway.Heartbeat = 30 * time.Second
	p := startPlatform(t, cfg)
	api := newAPI(p.api)
	ap := api.createApp(t, "sessions")
	hello := func(id string) *devicev1.Connect {
		return &devicev1.Connect{ProtocolVersion: 1, AppKey: ap.Key, DeviceId: id, DeviceToken: api.registerDevice(t, ap, id), HeartbeatSeconds: 1}
	}

	t.Run("heartbeat is negotiated, answered, and timed out", func(t *testing.T) {
		m := hello("hb")
		m.HeartbeatSeconds = 1
		c, ack := connectRaw(t, p.gw, m)
		if ack.GetHeartbeatSeconds() != 1 || ack.GetProtocolVersion() != 1 || ack.GetMaxFrameBytes() == 0 {
			t.Fatalf("CONNACK %v: want heartbeat 1s, version 1, a frame limit", ack)
		}
		// Asking below the minimum is clamped up; above the maximum, down.
		m2 := hello("hb-clamp")
		m2.HeartbeatSeconds = 100000
		_, ack2 := connectRaw(t, p.gw, m2)
		if want := uint32(cfg.Gateway.HeartbeatMax / time.Second); ack2.GetHeartbeatSeconds() != want {
			t.Fatalf("asked 100000s, negotiated %ds, want the maximum %ds", ack2.GetHeartbeatSeconds(), want)
		}
		// PING is answered with the 2-byte PONG, and keeps the session alive past 1.5 intervals.
		for i := 0; i < 3; i++ {
			if _, err := c.Write(frame.Ping); err != nil {
				t.Fatal(err)
			}
			c.readFrame(t, frame.TypePong, 2*time.Second)
			time.Sleep(700 * time.Millisecond)
		}
		// Silence: closed with 3002 within about 1.5 intervals (plus a wheel tick).
		start := time.Now()
		c.expectClose(t, frame.CodeHeartbeatTimeout, 5*time.Second)
		if took := time.Since(start); took > 3*time.Second {
			t.Fatalf("silent session closed after %s, want about 1.5s", took)
		}
	})

	t.Run("newest connection of a device wins", func(t *testing.T) {
		m := hello("twice")
		m.HeartbeatSeconds = 60
		old, _ := connectRaw(t, p.gw, m)
		newer, _ := connectRaw(t, p.gw, m)
		old.expectClose(t, frame.CodeReplaced, 5*time.Second)
		// Messages go to the newer session.
		id := api.send(t, ap, sendReq{Audience: toDevices("twice"), Data: map[string]string{"k": "v"}})
		f := newer.readFrame(t, frame.TypePush, 5*time.Second)
		var push devicev1.Push
		if err := proto.Unmarshal(f.Body, &push); err != nil || push.GetMessageId() != id {
			t.Fatalf("newer session got %v (%v), want %s", &push, err, id)
		}
		ackB, _ := frame.AppendMessage(nil, frame.TypeAck, &devicev1.Ack{MessageIds: []string{id}})
		if _, err := newer.Write(ackB); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "delivered", func() (bool, string) {
			st := api.status(t, ap, id)
			return st.Counts.Delivered == 1, fmt.Sprintf("%+v", st.Counts)
		})
	})

	t.Run("a deleted device is disconnected and gets nothing more", func(t *testing.T) {
		m := hello("leaving")
		m.HeartbeatSeconds = 60
		c, _ := connectRaw(t, p.gw, m)
		if code, raw := api.do(t, "DELETE", "/v1/devices/leaving", ap.auth, nil, nil); code != http.StatusNoContent {
			t.Fatalf("delete: %d %s", code, raw)
		}
		c.expectClose(t, frame.CodeDeviceDeleted, 5*time.Second)
		code, raw := api.do(t, "POST", "/v1/messages", ap.auth, sendReq{Audience: toDevices("leaving"), Data: map[string]string{"k": "v"}}, nil)
		if code != http.StatusNotFound {
			t.Fatalf("send to a deleted device: %d %s", code, raw)
		}
		// Its old token no longer connects.
		bad := dialRaw(t, p.gw)
		if _, err := bad.Write(connectFrame(t, m)); err != nil {
			t.Fatal(err)
		}
		bad.expectClose(t, frame.CodeUnauthorized, 5*time.Second)
	})

	t.Run("upstream reaches the upstream log once durable", func(t *testing.T) {
		m := hello("talker")
		m.HeartbeatSeconds = 60
		c, _ := connectRaw(t, p.gw, m)
		cases := []struct {
			channel, wantErr string
		}{
			{"chat", ""},
			{"Bad Channel!", "invalid_channel"},
			{"", "invalid_channel"},
		}
		for i, tc := range cases {
			up, _ := frame.AppendMessage(nil, frame.TypeUpstream, &devicev1.Upstream{RequestId: fmt.Sprint(i), Channel: tc.channel, Payload: []byte("hi")})
			if _, err := c.Write(up); err != nil {
				t.Fatal(err)
			}
			f := c.readFrame(t, frame.TypeUpAck, 5*time.Second)
			var ua devicev1.UpAck
			if err := proto.Unmarshal(f.Body, &ua); err != nil {
				t.Fatal(err)
			}
			if ua.GetRequestId() != fmt.Sprint(i) || ua.GetError() != tc.wantErr {
				t.Fatalf("channel %q: UPACK %v, want error %q", tc.channel, &ua, tc.wantErr)
			}
		}
		cons, err := p.srv.Log().Consume(t.Context(), pushlog.UpstreamTopic("chat"), "e2e")
		if err != nil {
			t.Fatal(err)
		}
		defer cons.Close()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		recs, err := cons.Fetch(ctx)
		if err != nil || len(recs) != 1 {
			t.Fatalf("upstream log: %d records, %v", len(recs), err)
		}
		var rec gateway.UpstreamRecord
		if err := json.Unmarshal(recs[0].Value, &rec); err != nil {
			t.Fatal(err)
		}
		if rec.AppID != ap.ID || rec.DeviceID != "talker" || string(rec.Payload) != "hi" || rec.Channel != "chat" {
			t.Fatalf("upstream record %+v", rec)
		}
	})

	t.Run("a drain the device did not ack is retried while it stays online", func(t *testing.T) {
		m := hello("slow-acker")
		m.HeartbeatSeconds = 60
		id := api.send(t, ap, sendReq{Audience: toDevices("slow-acker"), Data: map[string]string{"k": "stored"}})
		eventually(t, 10*time.Second, "stored", func() (bool, string) {
			left, err := p.srv.Store().List(t.Context(), ap.ID, "slow-acker", "", 0)
			return err == nil && len(left) == 1, fmt.Sprint(len(left), err)
		})
		c, _ := connectRaw(t, p.gw, m)
		// First drain: the device takes the PUSH but never acks it.
		var push devicev1.Push
		if err := proto.Unmarshal(c.readFrame(t, frame.TypePush, 5*time.Second).Body, &push); err != nil || push.GetMessageId() != id {
			t.Fatalf("first push %v %v", &push, err)
		}
		// No new message arrives to trigger anything; the gateway tries again
		// after the ack timeout (2 s here) on its own.
		start := time.Now()
		if err := proto.Unmarshal(c.readFrame(t, frame.TypePush, 10*time.Second).Body, &push); err != nil || push.GetMessageId() != id {
			t.Fatalf("retried push %v %v", &push, err)
		}
		t.Logf("drain retried %s after the unacked page", time.Since(start))
		ackB, _ := frame.AppendMessage(nil, frame.TypeAck, &devicev1.Ack{MessageIds: []string{id}})
		if _, err := c.Write(ackB); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "delivered", func() (bool, string) {
			st := api.status(t, ap, id)
			return st.Counts == counts{Targeted: 1, Delivered: 1}, fmt.Sprintf("%+v", st.Counts)
		})
	})

	t.Run("metrics count what happened", func(t *testing.T) {
		resp, err := http.Get("http://" + p.srv.OpsAddr() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, name := range []string{"herald_gateway_connections", "herald_messages_delivered", "herald_gateway_disconnects", "herald_dispatch_latency"} {
			if !strings.Contains(string(body), name) {
				t.Errorf("/metrics lacks %s", name)
			}
		}
	})
}

// Graceful shutdown: readiness goes false, devices are told to reconnect
// (3001) with a retry-after inside the drain window.
func TestGracefulShutdown(t *testing.T) {
	cfg := testConfig(t)
	cfg.Gateway.DrainTimeout = 2 * time.Second
	p := startPlatform(t, cfg)
	api := newAPI(p.api)
	ap := api.createApp(t, "drain")
	var conns []*rawConn
	for i := 0; i < 20; i++ {
		id := fmt.Sprintf("d%d", i)
		c, _ := connectRaw(t, p.gw, &devicev1.Connect{ProtocolVersion: 1, AppKey: ap.Key, DeviceId: id, DeviceToken: api.registerDevice(t, ap, id), HeartbeatSeconds: 60})
		conns = append(conns, c)
	}
	go p.stop()
	retries := map[uint32]bool{}
	for _, c := range conns {
		f := c.readFrame(t, frame.TypeDisconnect, 10*time.Second)
		var d devicev1.Disconnect
		if err := proto.Unmarshal(f.Body, &d); err != nil {
			t.Fatal(err)
		}
		if frame.Code(d.GetCode()) != frame.CodeShutdown {
			t.Fatalf("DISCONNECT %v, want %d", &d, frame.CodeShutdown)
		}
		if d.GetRetryAfterMs() > uint32(cfg.Gateway.DrainTimeout/time.Millisecond) {
			t.Fatalf("retry after %dms is past the %s drain window", d.GetRetryAfterMs(), cfg.Gateway.DrainTimeout)
		}
		retries[d.GetRetryAfterMs()] = true
	}
	if len(retries) < 5 {
		t.Fatalf("20 devices were given only %d distinct retry-after values: reconnects are not spread", len(retries))
	}
}
