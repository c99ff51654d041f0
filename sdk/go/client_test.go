package herald

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
)

func TestNewValidatesConfig(t *testing.T) {
	good := testConfig("127.0.0.1:5222")
	tests := []struct {
		name   string
		modify func(*Config)
	}{
		{"no address", func(c *Config) { c.Addrs = nil }},
		{"address without port", func(c *Config) { c.Addrs = []string{"gateway"} }},
		{"no app key", func(c *Config) { c.AppKey = "" }},
		{"no device id", func(c *Config) { c.DeviceID = "" }},
		{"no token", func(c *Config) { c.Token = "" }},
		{"negative heartbeat", func(c *Config) { c.Heartbeat = -time.Second }},
		{"min backoff above max", func(c *Config) { c.MinBackoff, c.MaxBackoff = time.Second, time.Millisecond }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.modify(&cfg)
			if _, err := New(cfg); !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("New: %v, want ErrInvalidConfig", err)
			}
		})
	}
	if _, err := New(good); err != nil {
		t.Fatalf("New(good config): %v", err)
	}
}

func TestConnectAndReceive(t *testing.T) {
	p := newPeer(t)
	cfg := testConfig(p.addr())
	cfg.ResumeCursor = "01AAAAAAAAAAAAAAAAAAAAAAAA"
	tc := startClient(t, cfg)
	pc := p.accept(t)
	c := pc.handshake(30)

	if c.GetProtocolVersion() != frame.ProtocolVersion || c.GetAppKey() != "ak" || c.GetDeviceId() != "dev-1" ||
		c.GetDeviceToken() != "tok" || c.GetHeartbeatSeconds() != 30 || c.GetResumeCursor() != cfg.ResumeCursor ||
		c.GetClientVersion() == "" {
		t.Fatalf("CONNECT = %v", c)
	}

	pc.send(frame.TypePush, &devicev1.Push{
		MessageId:    "01BBBBBBBBBBBBBBBBBBBBBBBB",
		Kind:         devicev1.Kind_KIND_NOTIFICATION,
		Notification: &devicev1.Notification{Title: "Hi", Body: "there", Badge: 3, Sound: "ding", ClickAction: "open"},
		Data:         map[string]string{"k": "v"},
		SentAtMs:     1700000000000,
		CollapseId:   "c1",
	})
	pc.send(frame.TypePush, &devicev1.Push{
		MessageId:    "01CCCCCCCCCCCCCCCCCCCCCCCC",
		Kind:         devicev1.Kind_KIND_DATA,
		Notification: &devicev1.Notification{Badge: -1},
		Data:         map[string]string{"x": "1"},
	})

	m := tc.message(t)
	if m.ID != "01BBBBBBBBBBBBBBBBBBBBBBBB" || m.Kind != KindNotification || m.Title != "Hi" || m.Body != "there" ||
		m.Badge == nil || *m.Badge != 3 || m.Sound != "ding" || m.ClickAction != "open" || m.Data["k"] != "v" ||
		!m.SentAt.Equal(time.UnixMilli(1700000000000)) || m.CollapseID != "c1" {
		t.Fatalf("first message = %+v", m)
	}
	m = tc.message(t)
	if m.ID != "01CCCCCCCCCCCCCCCCCCCCCCCC" || m.Kind != KindData || m.Badge != nil || m.Data["x"] != "1" || !m.SentAt.IsZero() {
		t.Fatalf("second message = %+v", m)
	}
	ids, _ := pc.acked(2)
	if want := []string{"01BBBBBBBBBBBBBBBBBBBBBBBB", "01CCCCCCCCCCCCCCCCCCCCCCCC"}; !slices.Equal(ids, want) {
		t.Fatalf("acked %v, want %v", ids, want)
	}
	if got := tc.Cursor(); got != "01CCCCCCCCCCCCCCCCCCCCCCCC" {
		t.Fatalf("Cursor() = %q", got)
	}
}

func TestDuplicatePushIsAckedButNotDelivered(t *testing.T) {
	p := newPeer(t)
	tc := startClient(t, testConfig(p.addr()))
	pc := p.accept(t)
	pc.handshake(30)

	for _, id := range []string{"m1", "m2", "m1", "m3", "m2"} {
		pc.write(pushFrame(t, id))
	}
	ids, _ := pc.acked(5)
	slices.Sort(ids)
	if want := []string{"m1", "m1", "m2", "m2", "m3"}; !slices.Equal(ids, want) {
		t.Fatalf("acked %v, want every copy acked: %v", ids, want)
	}
	var got []string
	for range 3 {
		got = append(got, tc.message(t).ID)
	}
	if want := []string{"m1", "m2", "m3"}; !slices.Equal(got, want) {
		t.Fatalf("delivered %v, want %v", got, want)
	}
	tc.noMessage(t)
}

func TestDedupSurvivesReconnect(t *testing.T) {
	p := newPeer(t)
	tc := startClient(t, testConfig(p.addr()))
	pc := p.accept(t)
	pc.handshake(30)
	pc.write(pushFrame(t, "m1"))
	tc.message(t)
	pc.acked(1)
	_ = pc.conn.Close() // the ack was "lost": the server sends m1 again

	pc = p.accept(t)
	if c := pc.handshake(30); c.GetResumeCursor() != "m1" {
		t.Fatalf("resume cursor %q, want m1", c.GetResumeCursor())
	}
	pc.write(pushFrame(t, "m1"))
	pc.write(pushFrame(t, "m2"))
	if m := tc.message(t); m.ID != "m2" {
		t.Fatalf("delivered %q after reconnect, want m2 only", m.ID)
	}
	if ids, _ := pc.acked(2); !slices.Equal(ids, []string{"m1", "m2"}) {
		t.Fatalf("acked %v", ids)
	}
	tc.noMessage(t)
}

func TestAcksAreBatched(t *testing.T) {
	p := newPeer(t)
	tc := startClient(t, testConfig(p.addr()))
	pc := p.accept(t)
	pc.handshake(30)

	const n = 100
	var burst []byte
	var want []string
	for i := range n {
		id := fmt.Sprintf("m%03d", i)
		want = append(want, id)
		burst = append(burst, pushFrame(t, id)...)
	}
	pc.write(burst)
	ids, frames := pc.acked(n)
	if !slices.Equal(ids, want) {
		t.Fatalf("acked %v, want %v in order", ids, want)
	}
	if frames > n/4 {
		t.Fatalf("%d messages acked in %d ACK frames, want batches", n, frames)
	}
	for i := range n {
		if m := tc.message(t); m.ID != want[i] {
			t.Fatalf("message %d is %q, want %q", i, m.ID, want[i])
		}
	}
}

func TestAckIsNotHeldBackBySlowHandler(t *testing.T) {
	p := newPeer(t)
	release := make(chan struct{})
	cfg := testConfig(p.addr())
	cfg.OnMessage = func(m Message) {
		if m.ID == "slow" {
			<-release
		}
	}
	startClient(t, cfg)
	pc := p.accept(t)
	pc.handshake(30)
	pc.write(append(pushFrame(t, "fast"), pushFrame(t, "slow")...))
	// "fast" is acked while "slow" is still being handled.
	if ids, _ := pc.acked(1); !slices.Equal(ids, []string{"fast"}) {
		t.Fatalf("acked %v, want [fast]", ids)
	}
	close(release)
	if ids, _ := pc.acked(1); !slices.Equal(ids, []string{"slow"}) {
		t.Fatalf("acked %v, want [slow]", ids)
	}
}

func TestReconnectAfterDrop(t *testing.T) {
	p := newPeer(t)
	var states []State
	stateCh := make(chan State, 100)
	cfg := testConfig(p.addr())
	cfg.OnState = func(s State, _ error) { stateCh <- s }
	tc := startClient(t, cfg)

	for round := range 3 {
		pc := p.accept(t)
		c := pc.handshake(30)
		if round > 0 && c.GetResumeCursor() != fmt.Sprintf("m%d", round-1) {
			t.Fatalf("round %d: resume cursor %q", round, c.GetResumeCursor())
		}
		id := fmt.Sprintf("m%d", round)
		pc.write(pushFrame(t, id))
		if m := tc.message(t); m.ID != id {
			t.Fatalf("got %q, want %q", m.ID, id)
		}
		pc.acked(1)
		_ = pc.conn.Close()
	}
	p.accept(t) // a fourth connection: the client keeps coming back
	for len(states) < 9 {
		select {
		case s := <-stateCh:
			states = append(states, s)
		case <-time.After(waitFor):
			t.Fatalf("states so far %v", states)
		}
	}
	want := []State{Connecting, Connected, Disconnected, Connecting, Connected, Disconnected, Connecting, Connected, Disconnected}
	if !slices.Equal(states, want) {
		t.Fatalf("states %v, want %v", states, want)
	}
}

func TestFailoverToNextAddress(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	_ = dead.Close()

	p := newPeer(t)
	tc := startClient(t, testConfig(deadAddr, p.addr()))
	pc := p.accept(t)
	pc.handshake(30)
	pc.write(pushFrame(t, "m1"))
	if m := tc.message(t); m.ID != "m1" {
		t.Fatalf("got %q", m.ID)
	}
}

func TestPermanentCloseStopsRun(t *testing.T) {
	tests := []struct {
		name      string
		code      frame.Code
		handshake bool // DISCONNECT after CONNACK rather than instead of it
	}{
		{"unauthorized at connect", frame.CodeUnauthorized, false},
		{"replaced in session", frame.CodeReplaced, true},
		{"device deleted in session", frame.CodeDeviceDeleted, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPeer(t)
			tc := startClient(t, testConfig(p.addr()))
			pc := p.accept(t)
			if tt.handshake {
				pc.handshake(30)
			} else {
				pc.expect(frame.TypeConnect, nil)
			}
			pc.disconnect(tt.code, 0, "")

			var ce *CloseError
			if err := tc.result(t); !errors.As(err, &ce) || ce.Code != tt.code {
				t.Fatalf("Run = %v, want *CloseError with code %d", err, tt.code)
			}
			p.noConnection(t, 100*time.Millisecond)
			if err := tc.Upstream(t.Context(), "c", nil); !errors.Is(err, ErrClosed) {
				t.Fatalf("Upstream after Run returned: %v, want ErrClosed", err)
			}
		})
	}
}

func TestRetryAfterAndRedirect(t *testing.T) {
	a, b := newPeer(t), newPeer(t)
	tc := startClient(t, testConfig(a.addr()))
	pc := a.accept(t)
	pc.handshake(30)

	const retryAfter = 300 * time.Millisecond
	start := time.Now()
	pc.disconnect(frame.CodeShutdown, uint32(retryAfter/time.Millisecond), b.addr())

	pc = b.accept(t)
	if elapsed := time.Since(start); elapsed < retryAfter {
		t.Fatalf("reconnected after %s, want >= retry-after %s", elapsed, retryAfter)
	}
	pc.handshake(30)
	pc.write(pushFrame(t, "m1"))
	if m := tc.message(t); m.ID != "m1" {
		t.Fatalf("got %q", m.ID)
	}
	a.noConnection(t, 50*time.Millisecond)
}

func TestRetryableCloseAtConnectReconnects(t *testing.T) {
	p := newPeer(t)
	tc := startClient(t, testConfig(p.addr()))
	pc := p.accept(t)
	pc.expect(frame.TypeConnect, nil)
	pc.disconnect(frame.CodeServerError, 0, "")

	pc = p.accept(t)
	pc.handshake(30)
	pc.write(pushFrame(t, "m1"))
	if m := tc.message(t); m.ID != "m1" {
		t.Fatalf("got %q", m.ID)
	}
}

func TestHeartbeat(t *testing.T) {
	p := newPeer(t)
	startClient(t, testConfig(p.addr()))
	pc := p.accept(t)
	pc.handshake(1) // negotiated down to one second

	// PINGs arrive about every second; answering keeps the session up.
	for range 2 {
		pc.expect(frame.TypePing, nil)
		pc.write(frame.Pong)
	}
	// Silence: the client gives up after 2x the interval and reconnects.
	start := time.Now()
	pc.expectEOF()
	if elapsed := time.Since(start); elapsed < time.Second {
		t.Fatalf("client dropped a session silent for only %s", elapsed)
	}
	p.accept(t).handshake(30)
}

func TestServerPingIsAnswered(t *testing.T) {
	p := newPeer(t)
	startClient(t, testConfig(p.addr()))
	pc := p.accept(t)
	pc.handshake(30)
	pc.write(frame.Ping)
	pc.expect(frame.TypePong, nil)
}

func TestUpstream(t *testing.T) {
	outer := t
	p := newPeer(t)
	tc := startClient(t, testConfig(p.addr()))
	pc := p.accept(t)
	pc.handshake(30)

	t.Run("waits for UPACK", func(t *testing.T) {
		done := make(chan error, 1)
		go func() { done <- tc.Upstream(t.Context(), "chat", []byte("hello")) }()
		var up devicev1.Upstream
		pc.expect(frame.TypeUpstream, &up)
		if up.GetChannel() != "chat" || string(up.GetPayload()) != "hello" || up.GetRequestId() == "" {
			t.Fatalf("UPSTREAM = %v", &up)
		}
		select {
		case err := <-done:
			t.Fatalf("Upstream returned %v before UPACK", err)
		case <-time.After(20 * time.Millisecond):
		}
		pc.send(frame.TypeUpAck, &devicev1.UpAck{RequestId: "someone-else"})
		pc.send(frame.TypeUpAck, &devicev1.UpAck{RequestId: up.GetRequestId()})
		if err := <-done; err != nil {
			t.Fatalf("Upstream: %v", err)
		}
	})

	t.Run("server error", func(t *testing.T) {
		done := make(chan error, 1)
		go func() { done <- tc.Upstream(t.Context(), "chat", []byte("x")) }()
		var up devicev1.Upstream
		pc.expect(frame.TypeUpstream, &up)
		pc.send(frame.TypeUpAck, &devicev1.UpAck{RequestId: up.GetRequestId(), Error: "rate limited"})
		var ue *UpstreamError
		if err := <-done; !errors.As(err, &ue) || ue.Code != "rate limited" {
			t.Fatalf("Upstream = %v, want *UpstreamError", err)
		}
	})

	t.Run("too large", func(t *testing.T) {
		err := tc.Upstream(t.Context(), "chat", make([]byte, frame.DefaultMaxFrame))
		if !errors.Is(err, ErrTooLarge) {
			t.Fatalf("Upstream = %v, want ErrTooLarge", err)
		}
	})

	t.Run("resent after a drop", func(t *testing.T) {
		done := make(chan error, 1)
		go func() { done <- tc.Upstream(t.Context(), "chat", []byte("again")) }()
		var first devicev1.Upstream
		pc.expect(frame.TypeUpstream, &first)
		_ = pc.conn.Close()

		pc = p.accept(outer)
		pc.handshake(30)
		var second devicev1.Upstream
		pc.expect(frame.TypeUpstream, &second)
		if second.GetRequestId() != first.GetRequestId() || string(second.GetPayload()) != "again" {
			t.Fatalf("resent %v, want the same request as %v", &second, &first)
		}
		pc.send(frame.TypeUpAck, &devicev1.UpAck{RequestId: second.GetRequestId()})
		if err := <-done; err != nil {
			t.Fatalf("Upstream: %v", err)
		}
	})

	t.Run("context ends", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
		defer cancel()
		if err := tc.Upstream(ctx, "chat", nil); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Upstream = %v, want DeadlineExceeded", err)
		}
		pc.expect(frame.TypeUpstream, nil)
	})
}

func TestUpstreamWaitsForConnection(t *testing.T) {
	p := newPeer(t)
	tc := startClient(t, testConfig(p.addr()))
	done := make(chan error, 1)
	go func() { done <- tc.Upstream(t.Context(), "chat", []byte("early")) }()

	pc := p.accept(t)
	pc.handshake(30)
	var up devicev1.Upstream
	pc.expect(frame.TypeUpstream, &up)
	pc.send(frame.TypeUpAck, &devicev1.UpAck{RequestId: up.GetRequestId()})
	if err := <-done; err != nil {
		t.Fatalf("Upstream: %v", err)
	}
}

func TestCloseIsGraceful(t *testing.T) {
	p := newPeer(t)
	var tc *testClient
	cfg := testConfig(p.addr())
	cfg.OnMessage = func(m Message) {
		if m.ID == "last" {
			_ = tc.Close() // from inside the callback, like `heraldctl listen --count`
		}
	}
	tc = startClient(t, cfg)
	pc := p.accept(t)
	pc.handshake(30)
	pc.write(append(pushFrame(t, "m1"), pushFrame(t, "last")...))

	ids, _ := pc.acked(2)
	if !slices.Equal(ids, []string{"m1", "last"}) {
		t.Fatalf("acked %v before closing", ids)
	}
	var d devicev1.Disconnect
	pc.expect(frame.TypeDisconnect, &d)
	if frame.Code(d.GetCode()) != frame.CodeNormal {
		t.Fatalf("DISCONNECT code %d, want %d", d.GetCode(), frame.CodeNormal)
	}
	pc.expectEOF()
	if err := tc.result(t); err != nil {
		t.Fatalf("Run after Close = %v, want nil", err)
	}
	if err := tc.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := tc.Run(t.Context()); !errors.Is(err, ErrAlreadyRunning) {
		t.Fatalf("second Run = %v", err)
	}
	p.noConnection(t, 50*time.Millisecond)
}

func TestContextEndStopsRun(t *testing.T) {
	tests := []struct {
		name      string
		connected bool
	}{
		{"while connected", true},
		{"while connecting", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPeer(t)
			cfg := testConfig(p.addr())
			connected := make(chan struct{}, 1)
			cfg.OnState = func(s State, _ error) {
				if s == Connected {
					connected <- struct{}{}
				}
			}
			c, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			before := checkpoint()
			done := make(chan error, 1)
			go func() { done <- c.Run(ctx) }()
			pc := p.accept(t)
			if tt.connected {
				pc.handshake(30)
				<-connected
			} else {
				pc.expect(frame.TypeConnect, nil) // and never answer
			}
			cancel()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("Run = %v, want context.Canceled", err)
				}
			case <-time.After(waitFor):
				t.Fatal("Run did not return after the context ended")
			}
			if tt.connected {
				var d devicev1.Disconnect
				pc.expect(frame.TypeDisconnect, &d)
			}
			pc.expectEOF()
			checkGoroutines(t, before)
		})
	}
}

func TestCloseBeforeRun(t *testing.T) {
	c, err := New(testConfig("127.0.0.1:1"))
	if err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	if err := c.Run(t.Context()); err != nil {
		t.Fatalf("Run after Close = %v, want nil", err)
	}
	if err := c.Upstream(t.Context(), "c", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Upstream = %v, want ErrClosed", err)
	}
}

func TestBadServerFrameReconnects(t *testing.T) {
	p := newPeer(t)
	tc := startClient(t, testConfig(p.addr()))
	pc := p.accept(t)
	pc.handshake(30)
	pc.write(frame.AppendFrame(nil, frame.TypePush, []byte{0xff, 0xff})) // not protobuf
	pc.expectEOF()

	pc = p.accept(t)
	pc.handshake(30)
	pc.write(pushFrame(t, "m1"))
	if m := tc.message(t); m.ID != "m1" {
		t.Fatalf("got %q", m.ID)
	}
}
