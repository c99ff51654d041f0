package api

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/pkg/envelope/internalv1"
	"github.com/heraldpush/herald/pkg/pebbledb"
	"github.com/heraldpush/herald/pkg/pushlog/pebblelog"
	"github.com/heraldpush/herald/pkg/route"
	"github.com/heraldpush/herald/pkg/store"
)

func TestCreateApp(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name       string
		auth       func(*http.Request)
		body       string
		wantStatus int
		wantCode   string
		wantMsg    string // substring of the error message
	}{
		{name: "created", auth: adminAuth, body: `{"name":"shop"}`, wantStatus: 201},
		{name: "name of 128 bytes", auth: adminAuth, body: `{"name":"` + strings.Repeat("n", 128) + `"}`, wantStatus: 201},
		{name: "no token", auth: noAuth, body: `{"name":"shop"}`, wantStatus: 401, wantCode: "unauthenticated"},
		{name: "wrong token", auth: func(r *http.Request) { r.Header.Set("Authorization", "Bearer nope") }, body: `{"name":"shop"}`, wantStatus: 401, wantCode: "unauthenticated"},
		{name: "basic instead of bearer", auth: func(r *http.Request) { r.SetBasicAuth("admin", testAdminToken) }, body: `{"name":"shop"}`, wantStatus: 401, wantCode: "unauthenticated"},
		{name: "name missing", auth: adminAuth, body: `{}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "name is required"},
		{name: "name too long", auth: adminAuth, body: `{"name":"` + strings.Repeat("n", 129) + `"}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "128"},
		{name: "unknown field", auth: adminAuth, body: `{"name":"shop","owner":"x"}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: `"owner"`},
		{name: "invalid JSON", auth: adminAuth, body: `{"name":}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "at byte 9"},
		{name: "empty body", auth: adminAuth, body: ``, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := e.do(t, "POST", "/v1/apps", tt.auth, tt.body)
			mustStatus(t, a, tt.wantStatus)
			if tt.wantStatus != 201 {
				code, msg := a.errorCode(t)
				if code != tt.wantCode || !strings.Contains(msg, tt.wantMsg) {
					t.Fatalf("error %q %q, want %q containing %q", code, msg, tt.wantCode, tt.wantMsg)
				}
				if tt.wantStatus == 401 && !strings.Contains(a.header.Get("WWW-Authenticate"), `realm="herald"`) {
					t.Errorf("WWW-Authenticate = %q, want a herald challenge", a.header.Get("WWW-Authenticate"))
				}
				return
			}
			var c createAppAnswer
			a.decode(t, &c)
			if len(c.AppKey) != 20 {
				t.Errorf("app_key %q has %d characters, want 20", c.AppKey, len(c.AppKey))
			}
			if secret, err := base64.RawURLEncoding.DecodeString(c.AppSecret); err != nil || len(secret) != 32 {
				t.Errorf("app_secret %q is not 32 bytes of base64url (%v)", c.AppSecret, err)
			}
			got, err := e.store.AppByID(t.Context(), c.AppID)
			if err != nil {
				t.Fatalf("stored app: %v", err)
			}
			if got.Key != c.AppKey || got.Secret != c.AppSecret {
				t.Errorf("stored app %+v does not match the answer %+v", got, c)
			}
		})
	}

	t.Run("every app gets its own credentials", func(t *testing.T) {
		a, b := e.createApp(t, "a"), e.createApp(t, "b")
		if a.ID == b.ID || a.Key == b.Key || a.Secret == b.Secret {
			t.Fatalf("two apps share credentials: %+v %+v", a, b)
		}
	})
}

func TestCreateAppWithoutAdminTokenIsForbidden(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.AdminToken = "" })
	for _, auth := range []func(*http.Request){noAuth, adminAuth, func(r *http.Request) { r.Header.Set("Authorization", "Bearer ") }} {
		a := e.do(t, "POST", "/v1/apps", auth, `{"name":"shop"}`)
		mustStatus(t, a, http.StatusForbidden)
		if code, _ := a.errorCode(t); code != "forbidden" {
			t.Fatalf("code %q, want forbidden", code)
		}
	}
}

func TestRegisterDevice(t *testing.T) {
	e := newEnv(t)
	app := e.createApp(t, "shop")
	wrongSecret := testApp{Key: app.Key, Secret: "nope"}
	unknownKey := testApp{Key: "unknown", Secret: app.Secret}
	tests := []struct {
		name       string
		auth       func(*http.Request)
		body       string
		wantStatus int
		wantCode   string
		wantID     string // "" = a generated id
	}{
		{name: "given id", auth: app.auth, body: `{"device_id":"phone-1","platform":"android","alias":"alice"}`, wantStatus: 201, wantID: "phone-1"},
		{name: "generated id", auth: app.auth, body: `{"platform":"ios"}`, wantStatus: 201},
		{name: "every id character", auth: app.auth, body: `{"device_id":"aZ09._:-","platform":"web"}`, wantStatus: 201, wantID: "aZ09._:-"},
		{name: "id of 128 characters", auth: app.auth, body: `{"device_id":"` + strings.Repeat("d", 128) + `","platform":"other"}`, wantStatus: 201, wantID: strings.Repeat("d", 128)},
		{name: "no credentials", auth: noAuth, body: `{"platform":"ios"}`, wantStatus: 401, wantCode: "unauthenticated"},
		{name: "wrong secret", auth: wrongSecret.auth, body: `{"platform":"ios"}`, wantStatus: 401, wantCode: "unauthenticated"},
		{name: "unknown key", auth: unknownKey.auth, body: `{"platform":"ios"}`, wantStatus: 401, wantCode: "unauthenticated"},
		{name: "platform missing", auth: app.auth, body: `{"device_id":"x"}`, wantStatus: 400, wantCode: "invalid_argument"},
		{name: "platform unknown", auth: app.auth, body: `{"platform":"symbian"}`, wantStatus: 400, wantCode: "invalid_argument"},
		{name: "id with a slash", auth: app.auth, body: `{"device_id":"a/b","platform":"ios"}`, wantStatus: 400, wantCode: "invalid_argument"},
		{name: "id too long", auth: app.auth, body: `{"device_id":"` + strings.Repeat("d", 129) + `","platform":"ios"}`, wantStatus: 400, wantCode: "invalid_argument"},
		{name: "alias too long", auth: app.auth, body: `{"platform":"ios","alias":"` + strings.Repeat("a", 129) + `"}`, wantStatus: 400, wantCode: "invalid_argument"},
		{name: "unknown field", auth: app.auth, body: `{"platform":"ios","colour":"x"}`, wantStatus: 400, wantCode: "invalid_argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := e.do(t, "POST", "/v1/devices", tt.auth, tt.body)
			mustStatus(t, a, tt.wantStatus)
			if tt.wantStatus != 201 {
				if code, _ := a.errorCode(t); code != tt.wantCode {
					t.Fatalf("code %q, want %q", code, tt.wantCode)
				}
				if tt.wantStatus == 401 && a.header.Get("WWW-Authenticate") != `Basic realm="herald"` {
					t.Errorf("WWW-Authenticate = %q", a.header.Get("WWW-Authenticate"))
				}
				return
			}
			var d registerDeviceAnswer
			a.decode(t, &d)
			if tt.wantID != "" && d.DeviceID != tt.wantID {
				t.Errorf("device_id %q, want %q", d.DeviceID, tt.wantID)
			}
			if !validDeviceID(d.DeviceID) || d.DeviceToken == "" {
				t.Fatalf("bad answer %+v", d)
			}
			stored, err := e.store.Device(t.Context(), app.ID, d.DeviceID)
			if err != nil {
				t.Fatalf("stored device: %v", err)
			}
			if h := sha256.Sum256([]byte(d.DeviceToken)); !bytes.Equal(stored.TokenHash, h[:]) {
				t.Errorf("stored token hash is not the SHA-256 of the token")
			}
		})
	}
}

func TestRegisterDeviceAgainReplacesTokenAndAlias(t *testing.T) {
	e := newEnv(t)
	app := e.createApp(t, "shop")
	first := e.do(t, "POST", "/v1/devices", app.auth, `{"device_id":"d1","platform":"android","alias":"old"}`)
	mustStatus(t, first, 201)
	before, err := e.store.Device(t.Context(), app.ID, "d1")
	if err != nil {
		t.Fatal(err)
	}
	second := e.do(t, "POST", "/v1/devices", app.auth, `{"device_id":"d1","platform":"ios","alias":"new"}`)
	mustStatus(t, second, 201)
	var a1, a2 registerDeviceAnswer
	first.decode(t, &a1)
	second.decode(t, &a2)
	if a1.DeviceToken == a2.DeviceToken {
		t.Fatal("re-registering returned the same token")
	}
	after, err := e.store.Device(t.Context(), app.ID, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(after.TokenHash, TokenHash(a2.DeviceToken)) || bytes.Equal(after.TokenHash, TokenHash(a1.DeviceToken)) {
		t.Error("the stored hash must be the new token's, not the old one's")
	}
	if after.Platform != "ios" || after.Alias != "new" {
		t.Errorf("device not replaced: %+v", after)
	}
	if !after.CreatedAt.Equal(before.CreatedAt) {
		t.Errorf("CreatedAt changed from %v to %v", before.CreatedAt, after.CreatedAt)
	}
}

func TestDeleteDevice(t *testing.T) {
	e := newEnv(t)
	app, other := e.createApp(t, "shop"), e.createApp(t, "other")
	e.registerDevice(t, app, "d1")
	e.registerDevice(t, other, "theirs")

	tests := []struct {
		name       string
		auth       func(*http.Request)
		device     string
		wantStatus int
		wantCode   string
	}{
		{name: "deleted", auth: app.auth, device: "d1", wantStatus: 204},
		{name: "deleted again", auth: app.auth, device: "d1", wantStatus: 404, wantCode: "device_not_found"},
		{name: "never registered", auth: app.auth, device: "ghost", wantStatus: 404, wantCode: "device_not_found"},
		{name: "another app's device", auth: app.auth, device: "theirs", wantStatus: 404, wantCode: "device_not_found"},
		{name: "no credentials", auth: noAuth, device: "theirs", wantStatus: 401, wantCode: "unauthenticated"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := e.do(t, "DELETE", "/v1/devices/"+tt.device, tt.auth, "")
			mustStatus(t, a, tt.wantStatus)
			if tt.wantStatus != 204 {
				if code, _ := a.errorCode(t); code != tt.wantCode {
					t.Fatalf("code %q, want %q", code, tt.wantCode)
				}
			}
		})
	}
	if _, err := e.store.Device(t.Context(), app.ID, "d1"); !errors.Is(err, herald.ErrDeviceNotFound) {
		t.Errorf("deleted device still there: %v", err)
	}
	if _, err := e.store.Device(t.Context(), other.ID, "theirs"); err != nil {
		t.Errorf("another app's device was touched: %v", err)
	}
	if got, want := fmt.Sprint(e.kicked), fmt.Sprint([]string{route.Key(app.ID, "d1")}); got != want {
		t.Errorf("kicked %s, want %s", got, want)
	}
}

func TestSendAccepted(t *testing.T) {
	e := newEnv(t)
	app := e.createApp(t, "shop")
	for _, d := range []string{"d1", "d2", "d3"} {
		e.registerDevice(t, app, d)
	}
	// Wide enough for a slow machine, narrow enough to tell 60s from 24h.
	const slack = 10 * time.Second
	near := func(gotMS int64, want time.Time) bool {
		d := time.UnixMilli(gotMS).Sub(want)
		return d > -slack && d < slack
	}
	oneThousand := make([]string, 1000)
	oneThousand[0] = `"d1"`
	for i := 1; i < len(oneThousand); i++ {
		oneThousand[i] = fmt.Sprintf(`"ghost-%d"`, i)
	}

	tests := []struct {
		name        string
		body        string
		wantDevices []string // one record each, in this order
		wantInvalid []string
		check       func(t *testing.T, env *internalv1.Envelope)
	}{
		{
			name:        "notification with defaults",
			body:        `{"audience":{"device_ids":["d1","d2"]},"notification":{"title":"Hi","body":"there"}}`,
			wantDevices: []string{"d1", "d2"},
			check: func(t *testing.T, env *internalv1.Envelope) {
				p := env.GetPush()
				if p.GetKind() != devicev1.Kind_KIND_NOTIFICATION || p.GetNotification().GetTitle() != "Hi" || p.GetNotification().GetBody() != "there" {
					t.Errorf("push %v", p)
				}
				if p.GetNotification().GetBadge() != -1 {
					t.Errorf("badge %d, want -1 (not set)", p.GetNotification().GetBadge())
				}
				if !near(p.GetSentAtMs(), time.Now()) {
					t.Errorf("sent_at_ms %d is not now", p.GetSentAtMs())
				}
				if env.GetOnlineOnly() || !near(env.GetExpiresAtMs(), time.Now().Add(24*time.Hour)) {
					t.Errorf("expiry %d online_only %v, want now+24h", env.GetExpiresAtMs(), env.GetOnlineOnly())
				}
				if env.GetPriority() != internalv1.Priority_PRIORITY_HIGH {
					t.Errorf("priority %v, want high", env.GetPriority())
				}
			},
		},
		{
			name:        "data only",
			body:        `{"audience":{"device_ids":["d3"]},"data":{"order":"42","state":"shipped"}}`,
			wantDevices: []string{"d3"},
			check: func(t *testing.T, env *internalv1.Envelope) {
				p := env.GetPush()
				if p.GetKind() != devicev1.Kind_KIND_DATA || p.GetNotification() != nil || p.GetData()["order"] != "42" || p.GetData()["state"] != "shipped" {
					t.Errorf("push %v", p)
				}
			},
		},
		{
			name:        "every option",
			body:        `{"audience":{"device_ids":["d1"]},"notification":{"title":"t","body":"b","badge":0,"sound":"ding","click_action":"open"},"data":{"k":"v"},"options":{"ttl_seconds":60,"priority":"normal","collapse_id":"score"}}`,
			wantDevices: []string{"d1"},
			check: func(t *testing.T, env *internalv1.Envelope) {
				p := env.GetPush()
				n := p.GetNotification()
				if n.GetBadge() != 0 || n.GetSound() != "ding" || n.GetClickAction() != "open" || p.GetData()["k"] != "v" || p.GetCollapseId() != "score" {
					t.Errorf("push %v", p)
				}
				if env.GetPriority() != internalv1.Priority_PRIORITY_NORMAL {
					t.Errorf("priority %v, want normal", env.GetPriority())
				}
				if !near(env.GetExpiresAtMs(), time.Now().Add(time.Minute)) {
					t.Errorf("expires_at_ms %d, want now+60s", env.GetExpiresAtMs())
				}
			},
		},
		{
			name:        "ttl 0 is online only",
			body:        `{"audience":{"device_ids":["d1"]},"data":{"k":"v"},"options":{"ttl_seconds":0}}`,
			wantDevices: []string{"d1"},
			check: func(t *testing.T, env *internalv1.Envelope) {
				if !env.GetOnlineOnly() || env.GetExpiresAtMs() != 0 {
					t.Errorf("online_only %v expires_at_ms %d, want true and 0", env.GetOnlineOnly(), env.GetExpiresAtMs())
				}
			},
		},
		{
			name:        "largest ttl",
			body:        `{"audience":{"device_ids":["d1"]},"data":{"k":"v"},"options":{"ttl_seconds":864000}}`,
			wantDevices: []string{"d1"},
			check: func(t *testing.T, env *internalv1.Envelope) {
				if !near(env.GetExpiresAtMs(), time.Now().Add(240*time.Hour)) {
					t.Errorf("expires_at_ms %d, want now+10 days", env.GetExpiresAtMs())
				}
			},
		},
		{
			name:        "duplicates sent once",
			body:        `{"audience":{"device_ids":["d2","d1","d2","d1"]},"data":{"k":"v"}}`,
			wantDevices: []string{"d2", "d1"},
		},
		{
			name:        "unknown targets reported",
			body:        `{"audience":{"device_ids":["ghost","d1","phantom"]},"data":{"k":"v"}}`,
			wantDevices: []string{"d1"},
			wantInvalid: []string{"ghost", "phantom"},
		},
		{
			name:        "1000 targets",
			body:        `{"audience":{"device_ids":[` + strings.Join(oneThousand, ",") + `]},"data":{"k":"v"}}`,
			wantDevices: []string{"d1"},
			wantInvalid: func() []string {
				var ids []string
				for i := 1; i < 1000; i++ {
					ids = append(ids, fmt.Sprintf("ghost-%d", i))
				}
				return ids
			}(),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := e.send(t, app, tt.body)
			mustStatus(t, a, http.StatusAccepted)
			var res sendAnswer
			a.decode(t, &res)
			if fmt.Sprint(res.InvalidDeviceIDs) != fmt.Sprint(tt.wantInvalid) {
				t.Errorf("invalid_device_ids %v, want %v", res.InvalidDeviceIDs, tt.wantInvalid)
			}
			recs := e.appended(t)
			if len(recs) != len(tt.wantDevices) {
				t.Fatalf("%d records appended, want %d", len(recs), len(tt.wantDevices))
			}
			for i, r := range recs {
				if string(r.Key) != route.Key(app.ID, tt.wantDevices[i]) {
					t.Errorf("record %d key %q, want %q", i, r.Key, route.Key(app.ID, tt.wantDevices[i]))
				}
				env := decodeEnvelope(t, r)
				if env.GetAppId() != app.ID || env.GetDeviceId() != tt.wantDevices[i] || env.GetPush().GetMessageId() != res.MessageID {
					t.Errorf("record %d is addressed to %s/%s message %s", i, env.GetAppId(), env.GetDeviceId(), env.GetPush().GetMessageId())
				}
				if tt.check != nil {
					tt.check(t, env)
				}
			}
			msg, counts, err := e.store.MessageStatus(t.Context(), res.MessageID)
			if err != nil {
				t.Fatalf("message status: %v", err)
			}
			want := store.Counts{
				Targeted: int64(len(tt.wantDevices) + len(tt.wantInvalid)),
				Pending:  int64(len(tt.wantDevices)),
				Failed:   int64(len(tt.wantInvalid)),
			}
			if counts != want || msg.AppID != app.ID {
				t.Errorf("status of %s: app %s counts %+v, want %+v", res.MessageID, msg.AppID, counts, want)
			}
		})
	}

	t.Run("message ids are time-ordered", func(t *testing.T) {
		var prev string
		for range 3 {
			var res sendAnswer
			a := e.send(t, app, `{"audience":{"device_ids":["d1"]},"data":{"k":"v"}}`)
			mustStatus(t, a, http.StatusAccepted)
			a.decode(t, &res)
			if res.MessageID <= prev {
				t.Fatalf("message id %q is not after %q", res.MessageID, prev)
			}
			prev = res.MessageID
		}
		e.appended(t)
	})
}

func TestSendRejected(t *testing.T) {
	e := newEnv(t)
	app := e.createApp(t, "shop")
	e.registerDevice(t, app, "d1")
	ids1001 := make([]string, 1001)
	for i := range ids1001 {
		ids1001[i] = fmt.Sprintf(`"d%d"`, i)
	}
	const to = `"audience":{"device_ids":["d1"]}`

	tests := []struct {
		name       string
		auth       func(*http.Request)
		body       string
		wantStatus int
		wantCode   string
		wantMsg    string
	}{
		{name: "no credentials", auth: noAuth, body: `{` + to + `,"data":{"k":"v"}}`, wantStatus: 401, wantCode: "unauthenticated"},
		{name: "truncated JSON", body: `{"audience":`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "invalid JSON"},
		{name: "JSON syntax error", body: `{"audience" {}}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "at byte 13"},
		{name: "wrong JSON type", body: `{"audience":{"device_ids":"d1"},"data":{"k":"v"}}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "audience.device_ids must be an array"},
		{name: "not an object", body: `[]`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "invalid JSON"},
		{name: "two objects", body: `{` + to + `,"data":{"k":"v"}} {}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "after the object"},
		{name: "unknown field", body: `{` + to + `,"data":{"k":"v"},"extra":1}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: `"extra"`},
		{name: "unknown option", body: `{` + to + `,"data":{"k":"v"},"options":{"ttl":5}}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: `"ttl"`},
		{name: "no audience", body: `{"data":{"k":"v"}}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "audience is required"},
		{name: "null audience", body: `{"audience":null,"data":{"k":"v"}}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "audience is required"},
		{name: "no device ids", body: `{"audience":{"device_ids":[]},"data":{"k":"v"}}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "at least one"},
		{name: "1001 device ids", body: `{"audience":{"device_ids":[` + strings.Join(ids1001, ",") + `]},"data":{"k":"v"}}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "limit is 1000"},
		{name: "malformed device id", body: `{"audience":{"device_ids":["d1","a/b"]},"data":{"k":"v"}}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "device_ids[1]"},
		{name: "nothing to send", body: `{` + to + `}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "notification or data"},
		{name: "empty data", body: `{` + to + `,"data":{}}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "notification or data"},
		{name: "empty notification", body: `{` + to + `,"notification":{}}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "title or a body"},
		{name: "negative badge", body: `{` + to + `,"notification":{"title":"t","badge":-1}}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "badge"},
		{name: "badge overflows int32", body: `{` + to + `,"notification":{"title":"t","badge":4294967296}}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "badge"},
		{name: "negative ttl", body: `{` + to + `,"data":{"k":"v"},"options":{"ttl_seconds":-1}}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "ttl_seconds"},
		{name: "ttl over the limit", body: `{` + to + `,"data":{"k":"v"},"options":{"ttl_seconds":864001}}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "limit is 864000"},
		{name: "huge ttl", body: `{` + to + `,"data":{"k":"v"},"options":{"ttl_seconds":9223372036854775807}}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "ttl_seconds"},
		{name: "unknown priority", body: `{` + to + `,"data":{"k":"v"},"options":{"priority":"low"}}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "priority"},
		{name: "payload too large", body: `{` + to + `,"data":{"k":"` + strings.Repeat("x", 4096) + `"}}`, wantStatus: 413, wantCode: "payload_too_large", wantMsg: "limit is 4096"},
		{name: "no registered target", body: `{"audience":{"device_ids":["ghost","phantom"]},"data":{"k":"v"},"options":{"idempotency_key":"k-404"}}`, wantStatus: 404, wantCode: "device_not_found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(e.generatedIDs())
			auth := tt.auth
			if auth == nil {
				auth = app.auth
			}
			a := e.do(t, "POST", "/v1/messages", auth, tt.body)
			mustStatus(t, a, tt.wantStatus)
			code, msg := a.errorCode(t)
			if code != tt.wantCode || !strings.Contains(msg, tt.wantMsg) {
				t.Fatalf("error %q %q, want %q containing %q", code, msg, tt.wantCode, tt.wantMsg)
			}
			for _, id := range e.generatedIDs()[before:] {
				if _, _, err := e.store.MessageStatus(t.Context(), id); !errors.Is(err, herald.ErrMessageNotFound) {
					t.Errorf("rejected message %s has a status (err %v)", id, err)
				}
			}
			if recs := e.appended(t); len(recs) != 0 {
				t.Errorf("a rejected send appended %d records", len(recs))
			}
		})
	}

	t.Run("rejected idempotency key is released", func(t *testing.T) {
		existing, err := e.store.Claim(t.Context(), app.ID, "k-404", "probe", time.Hour)
		if err != nil || existing != "" {
			t.Fatalf("claim after a 404 send: existing %q err %v, want a fresh claim", existing, err)
		}
	})
}

func TestSendBodyLimit(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxBodyBytes = 1024 })
	app := e.createApp(t, "shop")
	e.registerDevice(t, app, "d1")
	body := `{"audience":{"device_ids":["d1"]},"data":{"k":"` + strings.Repeat("x", 1024) + `"}}`
	a := e.send(t, app, body)
	mustStatus(t, a, http.StatusRequestEntityTooLarge)
	if code, msg := a.errorCode(t); code != "payload_too_large" || !strings.Contains(msg, "1024") {
		t.Fatalf("error %q %q", code, msg)
	}
	if recs := e.appended(t); len(recs) != 0 {
		t.Errorf("%d records appended", len(recs))
	}
}

func TestSendIdempotency(t *testing.T) {
	e := newEnv(t)
	app, other := e.createApp(t, "shop"), e.createApp(t, "other")
	e.registerDevice(t, app, "d1")
	e.registerDevice(t, app, "d2")
	e.registerDevice(t, other, "d1")
	body := `{"audience":{"device_ids":["d1","d2","ghost"]},"data":{"k":"v"},"options":{"idempotency_key":"order-42"}}`

	send := func(app testApp, body string) sendAnswer {
		t.Helper()
		a := e.send(t, app, body)
		mustStatus(t, a, http.StatusAccepted)
		var res sendAnswer
		a.decode(t, &res)
		return res
	}
	first := send(app, body)
	second := send(app, body)
	if first.MessageID != second.MessageID {
		t.Fatalf("same key gave ids %s and %s", first.MessageID, second.MessageID)
	}
	if len(first.InvalidDeviceIDs) != 1 || second.InvalidDeviceIDs != nil {
		t.Errorf("invalid ids: first %v, repeat %v (want [ghost] and none)", first.InvalidDeviceIDs, second.InvalidDeviceIDs)
	}
	if recs := e.appended(t); len(recs) != 2 {
		t.Fatalf("%d records appended for a send made twice, want 2", len(recs))
	}

	otherKey := send(app, strings.Replace(body, "order-42", "order-43", 1))
	otherApp := send(other, `{"audience":{"device_ids":["d1"]},"data":{"k":"v"},"options":{"idempotency_key":"order-42"}}`)
	if otherKey.MessageID == first.MessageID || otherApp.MessageID == first.MessageID {
		t.Fatal("a different key, or the same key of another app, reused the message")
	}
	if recs := e.appended(t); len(recs) != 3 {
		t.Fatalf("%d records appended, want 3", len(recs))
	}
}

func TestSendAppendFailure(t *testing.T) {
	e := newEnv(t)
	app := e.createApp(t, "shop")
	e.registerDevice(t, app, "d1")
	e.registerDevice(t, app, "d2")

	brokenDB, err := pebbledb.Open(t.TempDir(), testLogger(t, slog.LevelWarn))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = brokenDB.Close() })
	broken, err := pebblelog.New(brokenDB, pebblelog.Options{}, testLogger(t, slog.LevelWarn))
	if err != nil {
		t.Fatal(err)
	}
	if err := broken.Close(); err != nil {
		t.Fatal(err)
	}
	e.srv.svc.log = broken

	body := `{"audience":{"device_ids":["d1","d2","ghost"]},"data":{"k":"v"},"options":{"idempotency_key":"retry-me"}}`
	before := len(e.generatedIDs())
	a := e.send(t, app, body)
	mustStatus(t, a, http.StatusServiceUnavailable)
	if code, _ := a.errorCode(t); code != "unavailable" {
		t.Fatalf("code %q, want unavailable", code)
	}
	failedIDs := e.generatedIDs()[before:]
	if len(failedIDs) != 1 {
		t.Fatalf("%d ids generated, want 1", len(failedIDs))
	}
	_, counts, err := e.store.MessageStatus(t.Context(), failedIDs[0])
	if err != nil {
		t.Fatalf("status of the failed message: %v", err)
	}
	if want := (store.Counts{Targeted: 3, Failed: 3}); counts != want {
		t.Errorf("counts %+v, want every target failed %+v", counts, want)
	}

	// The key was released: once the log works again, a retry sends.
	e.srv.svc.log = e.log
	a = e.send(t, app, body)
	mustStatus(t, a, http.StatusAccepted)
	var res sendAnswer
	a.decode(t, &res)
	if res.MessageID == failedIDs[0] {
		t.Fatal("the retry got the failed message's id")
	}
	recs := e.appended(t)
	if len(recs) != 2 {
		t.Fatalf("%d records appended, want 2 (only the retry's)", len(recs))
	}
	for _, r := range recs {
		if id := decodeEnvelope(t, r).GetPush().GetMessageId(); id != res.MessageID {
			t.Errorf("record of message %s, want %s", id, res.MessageID)
		}
	}
}

func TestGetMessage(t *testing.T) {
	e := newEnv(t)
	app, other := e.createApp(t, "shop"), e.createApp(t, "other")
	e.registerDevice(t, app, "d1")
	e.registerDevice(t, app, "d2")
	a := e.send(t, app, `{"audience":{"device_ids":["d1","d2","ghost"]},"data":{"k":"v"}}`)
	mustStatus(t, a, http.StatusAccepted)
	var sent sendAnswer
	a.decode(t, &sent)

	get := func(t *testing.T, app testApp, id string) answer {
		return e.do(t, "GET", "/v1/messages/"+id, app.auth, "")
	}
	t.Run("sending", func(t *testing.T) {
		a := get(t, app, sent.MessageID)
		mustStatus(t, a, 200)
		var m messageAnswer
		a.decode(t, &m)
		want := messageAnswer{MessageID: sent.MessageID, State: "sending", Audience: "devices", Counts: countsAnswer{Targeted: 3, Pending: 2, Failed: 1}}
		if m != want {
			t.Fatalf("got %+v, want %+v", m, want)
		}
	})
	t.Run("done", func(t *testing.T) {
		err := e.store.Mark(t.Context(),
			store.Transition{MessageID: sent.MessageID, DeviceID: "d1", State: store.StateDelivered},
			store.Transition{MessageID: sent.MessageID, DeviceID: "d2", State: store.StateDelivered})
		if err != nil {
			t.Fatal(err)
		}
		a := get(t, app, sent.MessageID)
		mustStatus(t, a, 200)
		var m messageAnswer
		a.decode(t, &m)
		want := messageAnswer{MessageID: sent.MessageID, State: "done", Audience: "devices", Counts: countsAnswer{Targeted: 3, Delivered: 2, Failed: 1}}
		if m != want {
			t.Fatalf("got %+v, want %+v", m, want)
		}
	})
	for _, tt := range []struct {
		name, id   string
		app        testApp
		wantStatus int
		wantCode   string
	}{
		{name: "another app's message", id: sent.MessageID, app: other, wantStatus: 404, wantCode: "message_not_found"},
		{name: "unknown id", id: "01ARZ3NDEKTSV4RRFFQ69G5FAV", app: app, wantStatus: 404, wantCode: "message_not_found"},
		{name: "absurd id", id: strings.Repeat("x", 300), app: app, wantStatus: 404, wantCode: "message_not_found"},
		{name: "wrong secret", id: sent.MessageID, app: testApp{Key: app.Key, Secret: "x"}, wantStatus: 401, wantCode: "unauthenticated"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := get(t, tt.app, tt.id)
			mustStatus(t, a, tt.wantStatus)
			if code, _ := a.errorCode(t); code != tt.wantCode {
				t.Fatalf("code %q, want %q", code, tt.wantCode)
			}
		})
	}
}

func TestRouting(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.Mount = func(mux *http.ServeMux) {
			mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
		}
	})
	tests := []struct {
		method, path string
		wantStatus   int
		wantCode     string
		wantAllow    string
	}{
		{method: "GET", path: "/v1/apps", wantStatus: 405, wantCode: "method_not_allowed", wantAllow: "POST"},
		{method: "PUT", path: "/v1/messages/abc", wantStatus: 405, wantCode: "method_not_allowed", wantAllow: "GET, HEAD, DELETE"},
		{method: "GET", path: "/v1/nothing", wantStatus: 404, wantCode: "not_found"},
		{method: "GET", path: "/", wantStatus: 404, wantCode: "not_found"},
		{method: "GET", path: "/healthz", wantStatus: 200},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			a := e.do(t, tt.method, tt.path, noAuth, "")
			mustStatus(t, a, tt.wantStatus)
			if tt.wantCode == "" {
				return
			}
			if ct := a.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			if code, _ := a.errorCode(t); code != tt.wantCode {
				t.Errorf("code %q, want %q", code, tt.wantCode)
			}
			if a.header.Get("Allow") != tt.wantAllow {
				t.Errorf("Allow %q, want %q", a.header.Get("Allow"), tt.wantAllow)
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	e := newEnv(t)
	app := e.createApp(t, "shop")
	e.registerDevice(t, app, "d1")
	mustStatus(t, e.send(t, app, `{"audience":{"device_ids":["d1"]},"data":{"k":"v"}}`), 202)
	mustStatus(t, e.send(t, app, `{}`), 400)

	if got := e.metricPoints(t, "herald_messages_accepted_total"); got[""] != 1 {
		t.Errorf("herald_messages_accepted_total %v, want 1", got)
	}
	reqs := e.metricPoints(t, "herald_api_requests_total")
	for _, k := range []string{"code=201,route=POST /v1/apps", "code=202,route=POST /v1/messages", "code=400,route=POST /v1/messages"} {
		if reqs[k] != 1 {
			t.Errorf("herald_api_requests_total{%s} = %d, want 1 (all: %v)", k, reqs[k], reqs)
		}
	}
	if got := e.metricPoints(t, "herald_api_request_duration_seconds"); got["route=POST /v1/messages"] != 2 {
		t.Errorf("duration histogram counts %v, want 2 for POST /v1/messages", got)
	}
}
