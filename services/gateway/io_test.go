package gateway

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
	"github.com/heraldpush/herald/pkg/delivery"
	"github.com/heraldpush/herald/pkg/envelope/internalv1"
)

var ioModels = []string{IOGoroutine, IOEventLoop}

// rawDevice is a device speaking the wire protocol by hand, to control how
// bytes are split across writes.
type rawDevice struct {
	c net.Conn
	r *frame.Reader
}

func connectFrame(tb testing.TB, deviceID string) []byte {
	tb.Helper()
	b, err := frame.AppendMessage(nil, frame.TypeConnect, &devicev1.Connect{
		ProtocolVersion: frame.ProtocolVersion, AppKey: "key-rpc", DeviceId: deviceID, DeviceToken: "token-" + deviceID,
	})
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func dialRaw(tb testing.TB, addr string) *rawDevice {
	tb.Helper()
	c, err := net.DialTimeout("tcp", addr, rpcWait)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return &rawDevice{c: c, r: frame.NewReader(c, frame.DefaultMaxFrame)}
}

func (d *rawDevice) send(tb testing.TB, b []byte) {
	tb.Helper()
	if _, err := d.c.Write(b); err != nil {
		tb.Fatal(err)
	}
}

// next reads the next frame, failing after rpcWait.
func (d *rawDevice) next(tb testing.TB) frame.Frame {
	tb.Helper()
	_ = d.c.SetReadDeadline(time.Now().Add(rpcWait))
	f, err := d.r.Next()
	if err != nil {
		tb.Fatalf("read frame: %v", err)
	}
	return f
}

// closedWith reads until DISCONNECT and returns its code.
func (d *rawDevice) closedWith(tb testing.TB) frame.Code {
	tb.Helper()
	for {
		f := d.next(tb)
		if f.Type != frame.TypeDisconnect {
			continue
		}
		var m devicev1.Disconnect
		if err := proto.Unmarshal(f.Body, &m); err != nil {
			tb.Fatal(err)
		}
		return frame.Code(m.GetCode())
	}
}

func TestIOModels(t *testing.T) {
	for _, model := range ioModels {
		t.Run(model, func(t *testing.T) {
			e := startEnv(t, model)
			t.Run("CONNECT one byte at a time, then PING in the same write as an ACK", func(t *testing.T) {
				e.registerDevice(t, "raw-1")
				d := dialRaw(t, e.gw.Addr())
				for _, b := range connectFrame(t, "raw-1") {
					d.send(t, []byte{b})
				}
				if f := d.next(t); f.Type != frame.TypeConnAck {
					t.Fatalf("got %s, want CONNACK", f.Type)
				}
				ack, err := frame.AppendMessage(nil, frame.TypeAck, &devicev1.Ack{MessageIds: []string{"01UNKNOWN"}})
				if err != nil {
					t.Fatal(err)
				}
				d.send(t, append(ack, frame.Ping...))
				if f := d.next(t); f.Type != frame.TypePong {
					t.Fatalf("got %s, want PONG", f.Type)
				}
			})
			t.Run("frames after a bad one are not handled", func(t *testing.T) {
				e.registerDevice(t, "raw-2")
				d := dialRaw(t, e.gw.Addr())
				d.send(t, connectFrame(t, "raw-2"))
				if f := d.next(t); f.Type != frame.TypeConnAck {
					t.Fatalf("got %s, want CONNACK", f.Type)
				}
				d.send(t, append([]byte{1, 0xEE}, frame.Ping...))
				if got := d.closedWith(t); got != frame.CodeBadFrame {
					t.Fatalf("close code %d, want %d", got, frame.CodeBadFrame)
				}
			})
			t.Run("the first frame must be CONNECT", func(t *testing.T) {
				d := dialRaw(t, e.gw.Addr())
				d.send(t, frame.Ping)
				if got := d.closedWith(t); got != frame.CodeExpectedConnect {
					t.Fatalf("close code %d, want %d", got, frame.CodeExpectedConnect)
				}
			})
			t.Run("one push to many sessions is acked by each", func(t *testing.T) {
				const n = 5
				var ds []delivery.Delivery
				devs := make([]*rpcDevice, n)
				env := &internalv1.Envelope{AppId: "app-rpc", Push: &devicev1.Push{MessageId: "01FAN", Kind: devicev1.Kind_KIND_DATA}}
				for i := range devs {
					devs[i] = e.connectDevice(t, "fan-"+string(rune('a'+i)))
					ds = append(ds, delivery.Delivery{Device: devs[i].key, ConnID: devs[i].route.ConnID, Envelope: env})
				}
				out := e.gw.Deliver(t.Context(), ds)
				for i, o := range out {
					if o != delivery.Acked {
						t.Errorf("delivery %d: %s, want acked", i, o)
					}
				}
				for _, d := range devs {
					if m := <-d.msgs; m.ID != "01FAN" {
						t.Errorf("device got %s", m.ID)
					}
				}
			})
			t.Run("upstream is answered", func(t *testing.T) {
				d := e.connectDevice(t, "up-1")
				ctx, cancel := context.WithTimeout(t.Context(), rpcWait)
				defer cancel()
				if err := d.client.Upstream(ctx, "chat", []byte("hi")); err != nil {
					t.Fatalf("Upstream: %v", err)
				}
			})
			t.Run("a closed session's route is removed", func(t *testing.T) {
				d := e.connectDevice(t, "gone-1")
				_ = d.client.Close()
				deadline := time.Now().Add(rpcWait)
				for {
					got, err := e.routes.Lookup(t.Context(), []string{d.key})
					if err != nil {
						t.Fatal(err)
					}
					if _, ok := got[d.key]; !ok {
						return
					}
					if time.Now().After(deadline) {
						t.Fatal("route still bound")
					}
					time.Sleep(10 * time.Millisecond)
				}
			})
		})
	}
}

func TestIOModelUnknown(t *testing.T) {
	_, err := New(Config{IO: "threads"}, Deps{}, nil)
	if err == nil {
		t.Fatal("New accepted io \"threads\"")
	}
}

// readAll drains c until it closes; for bench clients.
// connectIdle registers a device and connects it as a raw device whose
// frames are read and discarded from then on.
func (e *rpcEnv) connectIdle(tb testing.TB, deviceID string) {
	tb.Helper()
	e.registerDevice(tb, deviceID)
	d := dialRaw(tb, e.gw.Addr())
	d.send(tb, connectFrame(tb, deviceID))
	if f := d.next(tb); f.Type != frame.TypeConnAck {
		tb.Fatalf("got %s, want CONNACK", f.Type)
	}
	_ = d.c.SetReadDeadline(time.Time{})
	go readAll(d.c)
}

func readAll(c net.Conn) {
	_, err := io.Copy(io.Discard, c)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return
	}
}
