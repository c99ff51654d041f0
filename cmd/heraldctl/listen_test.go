package main

import (
	"encoding/json"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
	"google.golang.org/protobuf/proto"
)

// gateway is a scripted device gateway for one connection.
type gateway struct {
	t    testing.TB
	ln   net.Listener
	conn net.Conn
	r    *frame.Reader
}

func newGateway(t testing.TB) *gateway {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return &gateway{t: t, ln: ln}
}

func (g *gateway) accept() {
	g.t.Helper()
	if err := g.ln.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		g.t.Fatal(err)
	}
	c, err := g.ln.Accept()
	if err != nil {
		g.t.Fatalf("accept: %v", err)
	}
	g.t.Cleanup(func() { _ = c.Close() })
	g.conn, g.r = c, frame.NewReader(c, frame.DefaultMaxFrame)
}

// expect reads frames, skipping PINGs, until one of type want arrives.
func (g *gateway) expect(want frame.Type, m proto.Message) {
	g.t.Helper()
	for {
		_ = g.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		f, err := g.r.Next()
		if err != nil {
			g.t.Fatalf("waiting for %s: %v", want, err)
		}
		if f.Type == frame.TypePing {
			continue
		}
		if f.Type != want {
			g.t.Fatalf("got %s, want %s", f.Type, want)
		}
		if m != nil {
			if err := proto.Unmarshal(f.Body, m); err != nil {
				g.t.Fatal(err)
			}
		}
		return
	}
}

func (g *gateway) send(t frame.Type, m proto.Message) {
	g.t.Helper()
	b, err := frame.AppendMessage(nil, t, m)
	if err != nil {
		g.t.Fatal(err)
	}
	if _, err := g.conn.Write(b); err != nil {
		g.t.Fatal(err)
	}
}

type listenResult struct {
	code           int
	stdout, stderr string
}

func startListen(t testing.TB, g *gateway, args ...string) <-chan listenResult {
	t.Helper()
	done := make(chan listenResult, 1)
	go func() {
		code, out, errOut := runCLI(t, map[string]string{"HERALD_GATEWAY": g.ln.Addr().String()}, append([]string{"listen"}, args...)...)
		done <- listenResult{code, out, errOut}
	}()
	return done
}

func waitListen(t testing.TB, done <-chan listenResult) listenResult {
	t.Helper()
	select {
	case r := <-done:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("listen did not exit")
		return listenResult{}
	}
}

func TestListenPrintsMessagesAndExitsAfterCount(t *testing.T) {
	g := newGateway(t)
	done := startListen(t, g, "--app-key", "ak", "--device-id", "d1", "--token", "tok", "--count", "2")
	g.accept()
	var c devicev1.Connect
	g.expect(frame.TypeConnect, &c)
	if c.GetAppKey() != "ak" || c.GetDeviceId() != "d1" || c.GetDeviceToken() != "tok" {
		t.Fatalf("CONNECT %v", &c)
	}
	g.send(frame.TypeConnAck, &devicev1.ConnAck{ProtocolVersion: 1, HeartbeatSeconds: 30, MaxFrameBytes: frame.DefaultMaxFrame})
	g.send(frame.TypePush, &devicev1.Push{
		MessageId: "m1", Kind: devicev1.Kind_KIND_NOTIFICATION,
		Notification: &devicev1.Notification{Title: "Hi", Body: "there", Badge: -1},
		Data:         map[string]string{"k": "v"}, SentAtMs: 1700000000000,
	})
	g.send(frame.TypePush, &devicev1.Push{MessageId: "m1"}) // a duplicate: not printed
	g.send(frame.TypePush, &devicev1.Push{MessageId: "m2", Kind: devicev1.Kind_KIND_DATA, Notification: &devicev1.Notification{Badge: 4}})

	var acked []string
	for len(acked) < 3 {
		var a devicev1.Ack
		g.expect(frame.TypeAck, &a)
		acked = append(acked, a.GetMessageIds()...)
	}
	var d devicev1.Disconnect
	g.expect(frame.TypeDisconnect, &d)
	if d.GetCode() != uint32(frame.CodeNormal) {
		t.Fatalf("DISCONNECT code %d", d.GetCode())
	}

	r := waitListen(t, done)
	if r.code != exitOK {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("stdout %q, want two lines", r.stdout)
	}
	want := []map[string]any{
		{"message_id": "m1", "kind": "notification", "title": "Hi", "body": "there", "data": map[string]any{"k": "v"}, "sent_at_ms": float64(1700000000000)},
		{"message_id": "m2", "kind": "data", "title": "", "body": "", "badge": float64(4)},
	}
	for i, line := range lines {
		var got map[string]any
		if err := json.Unmarshal([]byte(line), &got); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		if !reflect.DeepEqual(got, want[i]) {
			t.Fatalf("line %d = %v, want %v", i, got, want[i])
		}
	}
}

func TestListenUnauthorized(t *testing.T) {
	g := newGateway(t)
	done := startListen(t, g, "--app-key", "ak", "--device-id", "d1", "--token", "wrong")
	g.accept()
	g.expect(frame.TypeConnect, nil)
	g.send(frame.TypeDisconnect, &devicev1.Disconnect{Code: uint32(frame.CodeUnauthorized), Reason: "bad device token"})
	_ = g.conn.Close()

	r := waitListen(t, done)
	if r.code != exitError || !strings.Contains(r.stderr, "heraldctl: unauthorized: bad device token") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestListenStopsOnInterrupt(t *testing.T) {
	g := newGateway(t)
	ctx, cancel := contextWithCancel(t)
	done := make(chan listenResult, 1)
	go func() {
		code, out, errOut := runCLIContext(ctx, t, map[string]string{"HERALD_GATEWAY": g.ln.Addr().String()},
			"listen", "--app-key", "ak", "--device-id", "d1", "--token", "tok")
		done <- listenResult{code, out, errOut}
	}()
	g.accept()
	g.expect(frame.TypeConnect, nil)
	g.send(frame.TypeConnAck, &devicev1.ConnAck{ProtocolVersion: 1, HeartbeatSeconds: 30})
	g.send(frame.TypePush, &devicev1.Push{MessageId: "m1"})
	g.expect(frame.TypeAck, nil)
	cancel() // what SIGINT does
	g.expect(frame.TypeDisconnect, nil)
	if r := waitListen(t, done); r.code != exitOK || r.stdout == "" {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestListenSubscribesToTopics(t *testing.T) {
	tests := []struct {
		name     string
		subErr   string // the SUBACK error
		wantCode int
		want     string // in stderr
	}{
		{"subscribed", "", exitOK, "heraldctl: subscribed to news,sports"},
		{"refused", "invalid_topic", exitError, "rejected: invalid_topic"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newGateway(t)
			done := startListen(t, g, "--app-key", "ak", "--device-id", "d1", "--token", "tok", "--count", "1", "--topic", "news", "--topic", "sports")
			g.accept()
			g.expect(frame.TypeConnect, nil)
			g.send(frame.TypeConnAck, &devicev1.ConnAck{ProtocolVersion: 1, HeartbeatSeconds: 30, MaxFrameBytes: frame.DefaultMaxFrame})
			var sub devicev1.Subscribe
			g.expect(frame.TypeSubscribe, &sub)
			if !reflect.DeepEqual(sub.GetTopics(), []string{"news", "sports"}) || sub.GetUnsubscribe() {
				t.Fatalf("SUBSCRIBE %v", &sub)
			}
			g.send(frame.TypeSubAck, &devicev1.SubAck{RequestId: sub.GetRequestId(), Error: tt.subErr})
			if tt.subErr == "" {
				g.send(frame.TypePush, &devicev1.Push{MessageId: "g1", Kind: devicev1.Kind_KIND_NOTIFICATION, Group: true,
					Notification: &devicev1.Notification{Title: "News", Badge: -1, Image: "https://i.example/n.png", Channel: "headlines"}})
				g.expect(frame.TypeAck, nil)
			}
			g.expect(frame.TypeDisconnect, nil)

			r := waitListen(t, done)
			if r.code != tt.wantCode || !strings.Contains(r.stderr, tt.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d and %q", r.code, r.stderr, tt.wantCode, tt.want)
			}
			if tt.subErr != "" {
				return
			}
			var got map[string]any
			if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
				t.Fatalf("stdout %q: %v", r.stdout, err)
			}
			want := map[string]any{"message_id": "g1", "kind": "notification", "title": "News", "body": "",
				"image": "https://i.example/n.png", "channel": "headlines", "group": true}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("printed %v, want %v", got, want)
			}
		})
	}
}
