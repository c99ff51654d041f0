package herald

import (
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
	"google.golang.org/protobuf/proto"
)

// waitFor is how long a test waits for something that should happen at once.
const waitFor = 5 * time.Second

// peer is a scripted gateway: the test accepts connections and speaks the
// frames itself, one step at a time.
type peer struct {
	ln    net.Listener
	conns chan net.Conn
}

func newPeer(t testing.TB) *peer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &peer{ln: ln, conns: make(chan net.Conn, 16)}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.conns <- c
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
		close(p.conns)
		for c := range p.conns {
			_ = c.Close()
		}
	})
	return p
}

func (p *peer) addr() string { return p.ln.Addr().String() }

// accept waits for the next connection.
func (p *peer) accept(t testing.TB) *peerConn {
	t.Helper()
	select {
	case c := <-p.conns:
		t.Cleanup(func() { _ = c.Close() })
		return &peerConn{t: t, conn: c, r: frame.NewReader(c, frame.DefaultMaxFrame)}
	case <-time.After(waitFor):
		t.Fatal("no connection from the client")
		return nil
	}
}

// noConnection asserts that the client does not connect within d.
func (p *peer) noConnection(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case c := <-p.conns:
		_ = c.Close()
		t.Fatal("client connected again")
	case <-time.After(d):
	}
}

type peerConn struct {
	t    testing.TB
	conn net.Conn
	r    *frame.Reader
}

// next reads the next frame (copying its body); io.EOF when the client closed.
func (pc *peerConn) next() (frame.Type, []byte, error) {
	pc.t.Helper()
	if err := pc.conn.SetReadDeadline(time.Now().Add(waitFor)); err != nil {
		return 0, nil, err
	}
	f, err := pc.r.Next()
	if err != nil {
		return 0, nil, err
	}
	return f.Type, append([]byte(nil), f.Body...), nil
}

// expect reads frames, skipping PINGs, until one arrives; it must be of type want.
func (pc *peerConn) expect(want frame.Type, m proto.Message) {
	pc.t.Helper()
	for {
		typ, body, err := pc.next()
		if err != nil {
			pc.t.Fatalf("waiting for %s: %v", want, err)
		}
		if typ == frame.TypePing && want != frame.TypePing {
			continue
		}
		if typ != want {
			pc.t.Fatalf("got %s, want %s", typ, want)
		}
		if m != nil {
			if err := proto.Unmarshal(body, m); err != nil {
				pc.t.Fatalf("decode %s: %v", typ, err)
			}
		}
		return
	}
}

// expectEOF reads until the client closes the connection, failing on
// anything but PING.
func (pc *peerConn) expectEOF() {
	pc.t.Helper()
	for {
		typ, _, err := pc.next()
		if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			// A reset is also a close.
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				pc.t.Fatal("client did not close the connection")
			}
			return
		}
		if typ != frame.TypePing {
			pc.t.Fatalf("got %s, want the connection closed", typ)
		}
	}
}

func (pc *peerConn) send(t frame.Type, m proto.Message) {
	pc.t.Helper()
	b, err := frame.AppendMessage(nil, t, m)
	if err != nil {
		pc.t.Fatal(err)
	}
	pc.write(b)
}

func (pc *peerConn) write(b []byte) {
	pc.t.Helper()
	if _, err := pc.conn.Write(b); err != nil {
		pc.t.Fatalf("write: %v", err)
	}
}

// handshake reads CONNECT and answers CONNACK with the given heartbeat.
func (pc *peerConn) handshake(hbSeconds uint32) *devicev1.Connect {
	pc.t.Helper()
	var c devicev1.Connect
	pc.expect(frame.TypeConnect, &c)
	pc.send(frame.TypeConnAck, &devicev1.ConnAck{
		ProtocolVersion:  frame.ProtocolVersion,
		HeartbeatSeconds: hbSeconds,
		SessionId:        "s1",
		MaxFrameBytes:    frame.DefaultMaxFrame,
	})
	return &c
}

func (pc *peerConn) disconnect(code frame.Code, retryAfterMs uint32, redirect string) {
	pc.t.Helper()
	pc.send(frame.TypeDisconnect, &devicev1.Disconnect{Code: uint32(code), Reason: "test", RetryAfterMs: retryAfterMs, Redirect: redirect})
	_ = pc.conn.Close()
}

func pushFrame(t testing.TB, id string) []byte {
	t.Helper()
	b, err := frame.AppendMessage(nil, frame.TypePush, &devicev1.Push{
		MessageId:    id,
		Kind:         devicev1.Kind_KIND_NOTIFICATION,
		Notification: &devicev1.Notification{Title: "t-" + id, Body: "b", Badge: -1},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// acked reads ACK frames (skipping PINGs) until n ids arrived; it returns
// the ids in order and how many ACK frames carried them.
func (pc *peerConn) acked(n int) (ids []string, frames int) {
	pc.t.Helper()
	for len(ids) < n {
		var a devicev1.Ack
		pc.expect(frame.TypeAck, &a)
		ids = append(ids, a.GetMessageIds()...)
		frames++
	}
	return ids, frames
}

// testClient runs a Client against addrs and collects what it hands over.
type testClient struct {
	*Client
	msgs chan Message
	done chan error
}

func testConfig(addrs ...string) Config {
	return Config{
		Addrs:       addrs,
		AppKey:      "ak",
		DeviceID:    "dev-1",
		Token:       "tok",
		Heartbeat:   30 * time.Second,
		DialTimeout: 2 * time.Second,
		MinBackoff:  10 * time.Millisecond,
		MaxBackoff:  50 * time.Millisecond,
	}
}

// startClient starts Run; on cleanup it closes the client, waits for Run
// and checks that no goroutine outlived it.
func startClient(t testing.TB, cfg Config) *testClient {
	t.Helper()
	tc := &testClient{msgs: make(chan Message, 1000), done: make(chan error, 1)}
	if cfg.OnMessage == nil {
		cfg.OnMessage = func(m Message) { tc.msgs <- m }
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tc.Client = c
	before := runtime.NumGoroutine()
	go func() { tc.done <- c.Run(t.Context()) }()
	t.Cleanup(func() {
		_ = c.Close()
		select {
		case <-tc.done:
		case <-time.After(waitFor):
			t.Error("Run did not return after Close")
			return
		}
		checkGoroutines(t, before)
	})
	return tc
}

// checkGoroutines polls until at most n goroutines run.
func checkGoroutines(t testing.TB, n int) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Errorf("%d goroutines after Run returned, want <= %d:\n%s", runtime.NumGoroutine(), n, buf[:runtime.Stack(buf, true)])
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (tc *testClient) message(t testing.TB) Message {
	t.Helper()
	select {
	case m := <-tc.msgs:
		return m
	case <-time.After(waitFor):
		t.Fatal("no message handed to OnMessage")
		return Message{}
	}
}

func (tc *testClient) noMessage(t testing.TB) {
	t.Helper()
	select {
	case m := <-tc.msgs:
		t.Fatalf("unexpected message %q", m.ID)
	default:
	}
}

func (tc *testClient) result(t testing.TB) error {
	t.Helper()
	select {
	case err := <-tc.done:
		tc.done <- err // for the cleanup
		return err
	case <-time.After(waitFor):
		t.Fatal("Run did not return")
		return nil
	}
}

// checkpoint returns the goroutine count to compare against after Run.
func checkpoint() int { return runtime.NumGoroutine() }
