package e2e

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
)

// rawConn is a device connection driven byte by byte.
type rawConn struct {
	net.Conn
	r *frame.Reader
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{Conn: c, r: frame.NewReader(c, 1<<20)}
}

func connectFrame(t *testing.T, m *devicev1.Connect) []byte {
	t.Helper()
	b, err := frame.AppendMessage(nil, frame.TypeConnect, m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// expectClose reads until the server's DISCONNECT and the end of the stream.
func (c *rawConn) expectClose(t *testing.T, want frame.Code, within time.Duration) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(within))
	for {
		f, err := c.r.Next()
		if err != nil {
			t.Fatalf("connection ended (%v) without DISCONNECT %d (%s)", err, want, want)
		}
		if f.Type != frame.TypeDisconnect {
			continue
		}
		var d devicev1.Disconnect
		if err := proto.Unmarshal(f.Body, &d); err != nil {
			t.Fatalf("undecodable DISCONNECT: %v", err)
		}
		if frame.Code(d.GetCode()) != want {
			t.Fatalf("DISCONNECT code %d (%q), want %d (%s)", d.GetCode(), d.GetReason(), want, want)
		}
		if _, err := c.r.Next(); err == nil {
			t.Fatal("the server kept the connection open after DISCONNECT")
		}
		return
	}
}

// Acceptance 5: bad input gets its documented error or close code; other
// sessions and the server are unaffected, and nothing is sent.
func TestBadInput(t *testing.T) {
	cfg := testConfig(t)
	cfg.Gateway.HandshakeTimeout = 700 * time.Millisecond
	p := startPlatform(t, cfg)
	api := newAPI(p.api)
	ap := api.createApp(t, "bad-input")
	other := api.createApp(t, "someone-else")

	// A healthy device stays connected through everything below.
	healthy := newDevice(ap, "healthy", api.registerDevice(t, ap, "healthy"), p.gw)
	healthy.connect(t)
	defer healthy.disconnect(t)
	victimToken := api.registerDevice(t, ap, "victim")

	good := &devicev1.Connect{ProtocolVersion: 1, AppKey: ap.Key, DeviceId: "victim", DeviceToken: victimToken}
	with := func(f func(*devicev1.Connect)) *devicev1.Connect {
		m := proto.Clone(good).(*devicev1.Connect)
		f(m)
		return m
	}

	t.Run("device protocol", func(t *testing.T) {
		cases := []struct {
			name string
			send func(t *testing.T) []byte
			want frame.Code
		}{
			{"garbage bytes", func(*testing.T) []byte { return []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n") }, frame.CodeBadFrame},
			{"over-long length prefix", func(*testing.T) []byte { return []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff} }, frame.CodeBadFrame},
			{"frame over the maximum", func(*testing.T) []byte {
				return binary.AppendUvarint(nil, 1<<20)
			}, frame.CodeFrameTooLarge},
			{"PING before CONNECT", func(*testing.T) []byte { return frame.Ping }, frame.CodeExpectedConnect},
			{"ACK before CONNECT", func(t *testing.T) []byte {
				b, _ := frame.AppendMessage(nil, frame.TypeAck, &devicev1.Ack{MessageIds: []string{"x"}})
				return b
			}, frame.CodeExpectedConnect},
			{"undecodable CONNECT body", func(*testing.T) []byte { return frame.AppendFrame(nil, frame.TypeConnect, []byte{0xff, 0xff, 0xff}) }, frame.CodeBadFrame},
			{"bad token", func(t *testing.T) []byte {
				return connectFrame(t, with(func(m *devicev1.Connect) { m.DeviceToken = "not-the-token" }))
			}, frame.CodeUnauthorized},
			{"unknown app key", func(t *testing.T) []byte {
				return connectFrame(t, with(func(m *devicev1.Connect) { m.AppKey = "no-such-app" }))
			}, frame.CodeUnauthorized},
			{"another app's key", func(t *testing.T) []byte {
				return connectFrame(t, with(func(m *devicev1.Connect) { m.AppKey = other.Key }))
			}, frame.CodeUnauthorized},
			{"unknown device", func(t *testing.T) []byte {
				return connectFrame(t, with(func(m *devicev1.Connect) { m.DeviceId = "nobody" }))
			}, frame.CodeUnauthorized},
			{"unsupported protocol version", func(t *testing.T) []byte {
				return connectFrame(t, with(func(m *devicev1.Connect) { m.ProtocolVersion = 9 }))
			}, frame.CodeUnsupportedVersion},
			{"slow handshake: nothing sent", func(*testing.T) []byte { return nil }, frame.CodeHandshakeTimeout},
			{"slow handshake: half a CONNECT", func(t *testing.T) []byte {
				b := connectFrame(t, good)
				return b[:len(b)/2]
			}, frame.CodeHandshakeTimeout},
			{"server frame from a device after CONNECT", func(t *testing.T) []byte {
				b := connectFrame(t, good)
				push, _ := frame.AppendMessage(nil, frame.TypePush, &devicev1.Push{MessageId: "x"})
				return append(b, push...)
			}, frame.CodeBadFrame},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				c := dialRaw(t, p.gw)
				if b := tc.send(t); len(b) > 0 {
					if _, err := c.Write(b); err != nil {
						t.Fatal(err)
					}
				}
				c.expectClose(t, tc.want, 5*time.Second)
			})
		}
	})

	t.Run("REST", func(t *testing.T) {
		valid := `{"audience":{"device_ids":["healthy"]},"data":{"k":"v"}}`
		many := make([]string, 1001)
		for i := range many {
			many[i] = fmt.Sprintf(`"d%d"`, i)
		}
		cases := []struct {
			name     string
			method   string
			path     string
			auth     func(*http.Request)
			body     string
			wantCode int
			wantErr  string
		}{
			{"invalid JSON", "POST", "/v1/messages", ap.auth, `{"audience":`, 400, "invalid_argument"},
			{"not JSON at all", "POST", "/v1/messages", ap.auth, `hello`, 400, "invalid_argument"},
			{"unknown field", "POST", "/v1/messages", ap.auth, `{"audience":{"device_ids":["healthy"]},"data":{"k":"v"},"colour":1}`, 400, "invalid_argument"},
			{"no credentials", "POST", "/v1/messages", nil, valid, 401, "unauthenticated"},
			{"wrong app secret", "POST", "/v1/messages", func(r *http.Request) { r.SetBasicAuth(ap.Key, "wrong") }, valid, 401, "unauthenticated"},
			{"unknown app key", "POST", "/v1/messages", func(r *http.Request) { r.SetBasicAuth("nope", ap.Secret) }, valid, 401, "unauthenticated"},
			{"1,001 targets", "POST", "/v1/messages", ap.auth, `{"audience":{"device_ids":[` + strings.Join(many, ",") + `]},"data":{"k":"v"}}`, 400, "invalid_argument"},
			{"no targets", "POST", "/v1/messages", ap.auth, `{"audience":{"device_ids":[]},"data":{"k":"v"}}`, 400, "invalid_argument"},
			{"unknown device", "POST", "/v1/messages", ap.auth, `{"audience":{"device_ids":["nobody"]},"data":{"k":"v"}}`, 404, "device_not_found"},
			{"another app's device", "POST", "/v1/messages", other.auth, valid, 404, "device_not_found"},
			{"no content", "POST", "/v1/messages", ap.auth, `{"audience":{"device_ids":["healthy"]}}`, 400, "invalid_argument"},
			{"negative ttl", "POST", "/v1/messages", ap.auth, `{"audience":{"device_ids":["healthy"]},"data":{"k":"v"},"options":{"ttl_seconds":-1}}`, 400, "invalid_argument"},
			{"ttl over the maximum", "POST", "/v1/messages", ap.auth, `{"audience":{"device_ids":["healthy"]},"data":{"k":"v"},"options":{"ttl_seconds":99999999}}`, 400, "invalid_argument"},
			{"bad priority", "POST", "/v1/messages", ap.auth, `{"audience":{"device_ids":["healthy"]},"data":{"k":"v"},"options":{"priority":"urgent"}}`, 400, "invalid_argument"},
			{"payload over the limit", "POST", "/v1/messages", ap.auth, `{"audience":{"device_ids":["healthy"]},"data":{"k":"` + strings.Repeat("x", 5000) + `"}}`, 413, "payload_too_large"},
			{"create app without admin token", "POST", "/v1/apps", nil, `{"name":"x"}`, 401, "unauthenticated"},
			{"create app with an app's credentials", "POST", "/v1/apps", ap.auth, `{"name":"x"}`, 401, "unauthenticated"},
			{"register device with a bad platform", "POST", "/v1/devices", ap.auth, `{"device_id":"p","platform":"toaster"}`, 400, "invalid_argument"},
			{"delete unknown device", "DELETE", "/v1/devices/nobody", ap.auth, ``, 404, "device_not_found"},
			{"status of an unknown message", "GET", "/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV", ap.auth, ``, 404, "message_not_found"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				code, raw := api.do(t, tc.method, tc.path, tc.auth, tc.body, nil)
				if code != tc.wantCode {
					t.Fatalf("status %d, want %d: %s", code, tc.wantCode, raw)
				}
				if !strings.Contains(string(raw), `"code":"`+tc.wantErr+`"`) {
					t.Fatalf("body %s does not carry error code %q", raw, tc.wantErr)
				}
			})
		}
	})

	// Nothing above sent anything: the healthy device got no message; and
	// it, the server and new sessions all still work.
	if n := healthy.count(); n != 0 {
		t.Fatalf("the healthy device received %d messages from rejected sends", n)
	}
	id := api.send(t, ap, sendReq{Audience: toDevices("healthy"), Data: map[string]string{"after": "bad input"}})
	eventually(t, 10*time.Second, "healthy device still served", func() (bool, string) {
		return healthy.count() == 1, fmt.Sprint(healthy.count())
	})
	if got := healthy.received()[0]; got.ID != id {
		t.Fatalf("healthy device got %s, want %s", got.ID, id)
	}
	victim := newDevice(ap, "victim", victimToken, p.gw)
	victim.connect(t)
	victim.disconnect(t)
}
