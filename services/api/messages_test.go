package api

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/envelope/internalv1"
	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/pkg/receipt"
	"github.com/heraldpush/herald/pkg/route"
	"github.com/heraldpush/herald/pkg/store"
)

// audienceApp is an app with three devices:
//
//	d1 android, alias alice, tags vip cn, topic news
//	d2 ios,     alias alice, tags vip hk
//	d3 android, alias bob
func audienceApp(t testing.TB, e *testEnv) testApp {
	t.Helper()
	app := e.createApp(t, "shop")
	e.register(t, app, "d1", "android", `"alias":"alice","tags":["vip","cn"]`)
	e.register(t, app, "d2", "ios", `"alias":"alice","tags":["hk","vip"]`)
	e.register(t, app, "d3", "android", `"alias":"bob"`)
	mustStatus(t, e.do(t, "PUT", "/v1/devices/d1/topics/news", app.auth, ""), http.StatusOK)
	return app
}

func recordDevices(t testing.TB, recs []pushlog.Record) []string {
	t.Helper()
	var out []string
	for _, r := range recs {
		out = append(out, decodeEnvelope(t, r).GetDeviceId())
	}
	slices.Sort(out)
	return out
}

func TestSendUnicastAudiences(t *testing.T) {
	e := newEnv(t)
	app := audienceApp(t, e)
	tests := []struct {
		name        string
		audience    string
		wantDevices []string // sorted
		wantInvalid []string
		wantKind    string
	}{
		{name: "aliases", audience: `{"aliases":["alice","bob","nobody"]}`, wantDevices: []string{"d1", "d2", "d3"}, wantKind: "aliases"},
		{name: "alias with a platform filter", audience: `{"aliases":["alice"],"platform":"ios"}`, wantDevices: []string{"d2"}, wantKind: "aliases"},
		{name: "device ids with a platform filter", audience: `{"device_ids":["d1","d2","d3","ghost"],"platform":"android"}`, wantDevices: []string{"d1", "d3"}, wantInvalid: []string{"ghost"}, wantKind: "devices"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := e.sendOK(t, app, `{"audience":`+tt.audience+`,"data":{"k":"v"}}`)
			if res.State != "accepted" || fmt.Sprint(res.InvalidDeviceIDs) != fmt.Sprint(tt.wantInvalid) {
				t.Errorf("answer %+v, want accepted with invalid %v", res, tt.wantInvalid)
			}
			recs := e.appended(t)
			if got := recordDevices(t, recs); !slices.Equal(got, tt.wantDevices) {
				t.Fatalf("records for %v, want %v", got, tt.wantDevices)
			}
			for _, r := range recs {
				env := decodeEnvelope(t, r)
				if string(r.Key) != route.Key(app.ID, env.GetDeviceId()) || env.GetAudience() != nil || env.GetPush().GetGroup() {
					t.Errorf("unicast record %q is not addressed to its device: %v", r.Key, env)
				}
			}
			m, c, err := e.store.MessageStatus(t.Context(), res.MessageID)
			if err != nil {
				t.Fatal(err)
			}
			// Filtered-out devices are not targets; unknown ids are failed targets.
			want := store.Counts{Targeted: int64(len(tt.wantDevices) + len(tt.wantInvalid)), Pending: int64(len(tt.wantDevices)), Failed: int64(len(tt.wantInvalid))}
			if c != want || m.Audience != tt.wantKind || m.Group {
				t.Errorf("status %+v %+v, want %+v of kind %s", m, c, want, tt.wantKind)
			}
		})
	}

	t.Run("platform filter leaving nobody", func(t *testing.T) {
		mustError(t, e.send(t, app, `{"audience":{"aliases":["bob"],"platform":"ios"},"data":{"k":"v"}}`),
			http.StatusNotFound, "device_not_found", "matches the audience")
		if recs := e.appended(t); len(recs) != 0 {
			t.Fatalf("%d records appended", len(recs))
		}
	})
}

func TestSendGroupAudiences(t *testing.T) {
	e := newEnv(t)
	app := audienceApp(t, e)
	tests := []struct {
		name  string
		body  string
		kind  string
		check func(t *testing.T, env *internalv1.Envelope)
	}{
		{
			name: "tag expression with every group option",
			body: `{"audience":{"tags":"vip && (cn || hk)","platform":"ios"},"notification":{"title":"t","badge":"+1"},
				"options":{"spread_over_seconds":60,"priority":"normal","ttl_seconds":600,"collapse_id":"sale"}}`,
			kind: "tags",
			check: func(t *testing.T, env *internalv1.Envelope) {
				a := env.GetAudience()
				if a.GetTagExpr() != "vip && (cn || hk)" || a.GetPlatform() != "ios" || a.GetAll() || a.GetTopic() != "" {
					t.Errorf("audience %v", a)
				}
				if env.GetSpreadOverMs() != 60000 || env.GetBadgeAdd() != 1 || env.GetPush().GetNotification().GetBadge() != -1 {
					t.Errorf("spread %d badge_add %d badge %d", env.GetSpreadOverMs(), env.GetBadgeAdd(), env.GetPush().GetNotification().GetBadge())
				}
				if env.GetPriority() != internalv1.Priority_PRIORITY_NORMAL || env.GetPush().GetCollapseId() != "sale" {
					t.Errorf("priority %v collapse %q", env.GetPriority(), env.GetPush().GetCollapseId())
				}
				if d := time.UnixMilli(env.GetExpiresAtMs()).Sub(time.Now().Add(10 * time.Minute)); d < -10*time.Second || d > 10*time.Second {
					t.Errorf("expires_at_ms %d, want now+600s", env.GetExpiresAtMs())
				}
			},
		},
		{
			name: "topic",
			body: `{"audience":{"topic":"news"},"data":{"k":"v"}}`,
			kind: "topic",
			check: func(t *testing.T, env *internalv1.Envelope) {
				if env.GetAudience().GetTopic() != "news" {
					t.Errorf("audience %v", env.GetAudience())
				}
			},
		},
		{
			name: "all, online only",
			body: `{"audience":"all","data":{"k":"v"},"options":{"ttl_seconds":0}}`,
			kind: "all",
			check: func(t *testing.T, env *internalv1.Envelope) {
				if !env.GetAudience().GetAll() || !env.GetOnlineOnly() || env.GetExpiresAtMs() != 0 {
					t.Errorf("envelope %v", env)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := e.sendOK(t, app, tt.body)
			if res.State != "accepted" || res.InvalidDeviceIDs != nil {
				t.Errorf("answer %+v", res)
			}
			recs := e.appended(t)
			if len(recs) != 1 {
				t.Fatalf("%d records appended, want one for the whole group", len(recs))
			}
			env := decodeEnvelope(t, recs[0])
			if string(recs[0].Key) != app.ID || env.GetAppId() != app.ID || env.GetDeviceId() != "" ||
				env.GetPush().GetMessageId() != res.MessageID || !env.GetPush().GetGroup() || env.GetScheduled() || env.GetRecall() {
				t.Errorf("group record %q: %v", recs[0].Key, env)
			}
			tt.check(t, env)
			m, c, err := e.store.MessageStatus(t.Context(), res.MessageID)
			if err != nil {
				t.Fatal(err)
			}
			if !m.Group || m.Audience != tt.kind || len(m.Targets) != 0 || c.Targeted != 0 {
				t.Errorf("status %+v %+v: want a group row of kind %s without targets", m, c, tt.kind)
			}
			for _, d := range []string{"d1", "d2", "d3"} {
				if inbox, err := e.store.List(t.Context(), app.ID, d, "", 10); err != nil || len(inbox) != 0 {
					t.Errorf("inbox of %s: %v %v, want empty", d, inbox, err)
				}
			}
		})
	}

	t.Run("idempotency key", func(t *testing.T) {
		body := `{"audience":{"topic":"news"},"data":{"k":"v"},"options":{"idempotency_key":"news-1"}}`
		first, second := e.sendOK(t, app, body), e.sendOK(t, app, body)
		if first.MessageID != second.MessageID {
			t.Fatalf("ids %s and %s for one key", first.MessageID, second.MessageID)
		}
		if recs := e.appended(t); len(recs) != 1 {
			t.Fatalf("%d records, want 1", len(recs))
		}
	})
}

// TestSendBadInput: every bad input of the acceptance item 8 is a
// clear 4xx and leaves nothing behind: no status row, no record, nothing
// scheduled.
func TestSendBadInput(t *testing.T) {
	e := newEnv(t)
	app := audienceApp(t, e)
	at := func(d time.Duration) string { return time.Now().Add(d).UTC().Format(time.RFC3339) }
	tests := []struct {
		name       string
		body       string
		wantStatus int
		wantCode   string
		wantMsg    string
	}{
		{name: "unbalanced parenthesis", body: `{"audience":{"tags":"vip && (cn"},"data":{"k":"v"}}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "at byte 7"},
		{name: "missing operand", body: `{"audience":{"tags":"vip || "},"data":{"k":"v"}}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "at byte 7"},
		{name: "two tags without operator", body: `{"audience":{"tags":"vip cn"},"data":{"k":"v"}}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "at byte 4"},
		{name: "expression too long", body: `{"audience":{"tags":"` + strings.Repeat("ab||", 300) + `ab"},"data":{"k":"v"}}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "tag expression"},
		{name: "unknown topic", body: `{"audience":{"topic":"sports"},"data":{"k":"v"}}`, wantStatus: 404, wantCode: "topic_not_found", wantMsg: `"sports"`},
		{name: "send_at in the past", body: `{"audience":"all","data":{"k":"v"},"options":{"send_at":"` + at(-time.Minute) + `"}}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "not in the future"},
		{name: "send_at 8 days ahead", body: `{"audience":{"device_ids":["d1"]},"data":{"k":"v"},"options":{"send_at":"` + at(8*24*time.Hour) + `"}}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "more than 7 days ahead"},
		{name: "oversized payload", body: `{"audience":"all","data":{"k":"` + strings.Repeat("x", 4096) + `"}}`, wantStatus: 413, wantCode: "payload_too_large", wantMsg: "limit is 4096"},
		{name: "spread on a unicast send", body: `{"audience":{"aliases":["alice"]},"data":{"k":"v"},"options":{"spread_over_seconds":5}}`, wantStatus: 400, wantCode: "invalid_argument", wantMsg: "spread_over_seconds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(e.generatedIDs())
			mustError(t, e.send(t, app, tt.body), tt.wantStatus, tt.wantCode, tt.wantMsg)
			e.requireNothingSent(t, before)
		})
	}

	t.Run("over the rate limit", func(t *testing.T) {
		e.setLimits(t, app, `{"rate_limit_per_second":2}`)
		defer e.setLimits(t, app, `{"rate_limit_per_second":0}`)
		before := len(e.generatedIDs())
		var accepted int
		var limited answer
		for i := range 10 {
			a := e.send(t, app, `{"audience":{"device_ids":["d1"]},"data":{"k":"v"},"options":{"idempotency_key":"rl-`+strconv.Itoa(i)+`"}}`)
			if a.status != http.StatusAccepted {
				limited = a
				break
			}
			accepted++
		}
		if accepted < 2 || limited.status == 0 {
			t.Fatalf("%d sends accepted before a refusal (%d), want at least the burst of 2 then 429", accepted, limited.status)
		}
		mustError(t, limited, http.StatusTooManyRequests, "rate_limited", "2 messages per second")
		if secs, err := strconv.Atoi(limited.header.Get("Retry-After")); err != nil || secs < 1 {
			t.Errorf("Retry-After %q, want whole seconds >= 1", limited.header.Get("Retry-After"))
		}
		// Nothing of the refused send exists: no id, no record, no claim.
		if ids := e.generatedIDs()[before:]; len(ids) != accepted {
			t.Errorf("%d message ids made for %d accepted sends", len(ids), accepted)
		}
		if recs := e.appended(t); len(recs) != accepted {
			t.Errorf("%d records for %d accepted sends", len(recs), accepted)
		}
		key := "rl-" + strconv.Itoa(accepted)
		if existing, err := e.store.Claim(t.Context(), app.ID, key, "probe", time.Hour); err != nil || existing != "" {
			t.Errorf("key of the refused send is claimed by %q (%v)", existing, err)
		}
	})
}

// requireNothingSent fails if any message id generated after before has
// a status row, or if anything was appended or scheduled.
func (e *testEnv) requireNothingSent(t testing.TB, before int) {
	t.Helper()
	for _, id := range e.generatedIDs()[before:] {
		if _, _, err := e.store.MessageStatus(t.Context(), id); !errors.Is(err, herald.ErrMessageNotFound) {
			t.Errorf("refused message %s has a status (err %v)", id, err)
		}
	}
	due, err := e.store.DueScheduled(t.Context(), time.Now().Add(30*24*time.Hour), 1000)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range due {
		if slices.Contains(e.generatedIDs()[before:], s.MessageID) {
			t.Errorf("refused message %s is scheduled", s.MessageID)
		}
	}
	if recs := e.appended(t); len(recs) != 0 {
		t.Errorf("a refused send appended %d records", len(recs))
	}
}

// scheduledSend returns the stored schedule entry of a message and its
// decoded records.
func (e *testEnv) scheduledSend(t testing.TB, messageID string) (store.Scheduled, []*internalv1.Envelope, bool) {
	t.Helper()
	due, err := e.store.DueScheduled(t.Context(), time.Now().Add(30*24*time.Hour), 1000)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range due {
		if s.MessageID != messageID {
			continue
		}
		var ss internalv1.ScheduledSend
		if err := proto.Unmarshal(s.Body, &ss); err != nil {
			t.Fatalf("decode scheduled send: %v", err)
		}
		var envs []*internalv1.Envelope
		for _, r := range ss.GetRecords() {
			envs = append(envs, decodeEnvelope(t, pushlog.Record{Key: r.GetKey(), Value: r.GetValue()}))
		}
		return s, envs, true
	}
	return store.Scheduled{}, nil, false
}

func TestSendScheduled(t *testing.T) {
	e := newEnv(t)
	app := audienceApp(t, e)
	sendAt := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	opts := `"options":{"send_at":"` + sendAt.Format(time.RFC3339) + `","ttl_seconds":60,"idempotency_key":"K"}`

	for _, tt := range []struct {
		name, audience string
		wantKeys       []string
		wantInvalid    []string
		group          bool
	}{
		{name: "device ids", audience: `{"device_ids":["d1","ghost"]}`, wantKeys: []string{route.Key(app.ID, "d1")}, wantInvalid: []string{"ghost"}},
		{name: "tags", audience: `{"tags":"vip"}`, wantKeys: []string{app.ID}, group: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			body := `{"audience":` + tt.audience + `,"notification":{"title":"later"},` + strings.Replace(opts, `"K"`, `"`+tt.name+`"`, 1) + `}`
			res := e.sendOK(t, app, body)
			if res.State != "scheduled" || fmt.Sprint(res.InvalidDeviceIDs) != fmt.Sprint(tt.wantInvalid) {
				t.Fatalf("answer %+v", res)
			}
			if recs := e.appended(t); len(recs) != 0 {
				t.Fatalf("a scheduled send appended %d records now", len(recs))
			}
			s, envs, ok := e.scheduledSend(t, res.MessageID)
			if !ok || !s.Due.Equal(sendAt) || s.AppID != app.ID {
				t.Fatalf("schedule entry %+v (found %v), want due %v", s, ok, sendAt)
			}
			if len(envs) != len(tt.wantKeys) {
				t.Fatalf("%d scheduled records, want %d", len(envs), len(tt.wantKeys))
			}
			for _, env := range envs {
				if !env.GetScheduled() || env.GetPush().GetMessageId() != res.MessageID || env.GetPush().GetGroup() != tt.group {
					t.Errorf("scheduled envelope %v", env)
				}
				// The TTL runs from send_at, not from now.
				if env.GetExpiresAtMs() != sendAt.Add(time.Minute).UnixMilli() || env.GetPush().GetSentAtMs() != sendAt.UnixMilli() {
					t.Errorf("expires_at_ms %d sent_at_ms %d, want send_at+60s and send_at", env.GetExpiresAtMs(), env.GetPush().GetSentAtMs())
				}
			}

			var m messageAnswer
			a := e.do(t, "GET", "/v1/messages/"+res.MessageID, app.auth, "")
			mustStatus(t, a, 200)
			a.decode(t, &m)
			if m.State != "scheduled" || m.SendAt != sendAt.Format(time.RFC3339) {
				t.Errorf("GET answered %+v, want scheduled at %s", m, sendAt.Format(time.RFC3339))
			}
			if again := e.sendOK(t, app, body); again.MessageID != res.MessageID || again.State != "scheduled" {
				t.Errorf("repeated send answered %+v", again)
			}
		})
	}
}

func TestCancelAndRecall(t *testing.T) {
	e := newEnv(t)
	app, other := audienceApp(t, e), e.createApp(t, "other")
	cancel := func(t *testing.T, id string) answer { return e.do(t, "DELETE", "/v1/messages/"+id, app.auth, "") }
	state := func(t *testing.T, id string) messageAnswer {
		t.Helper()
		a := e.do(t, "GET", "/v1/messages/"+id, app.auth, "")
		mustStatus(t, a, 200)
		var m messageAnswer
		a.decode(t, &m)
		return m
	}
	mustState := func(t *testing.T, a answer, want string) {
		t.Helper()
		mustStatus(t, a, http.StatusOK)
		var c cancelAnswer
		a.decode(t, &c)
		if c.State != want {
			t.Fatalf("DELETE answered %+v, want %s", c, want)
		}
	}

	t.Run("scheduled is cancelled once", func(t *testing.T) {
		at := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
		res := e.sendOK(t, app, `{"audience":{"device_ids":["d1"]},"data":{"k":"v"},"options":{"send_at":"`+at+`"}}`)
		mustStatus(t, e.do(t, "DELETE", "/v1/messages/"+res.MessageID, other.auth, ""), http.StatusNotFound)
		mustState(t, cancel(t, res.MessageID), "cancelled")
		if got := state(t, res.MessageID); got.State != "cancelled" {
			t.Errorf("state %q after cancel", got.State)
		}
		if _, _, ok := e.scheduledSend(t, res.MessageID); ok {
			t.Error("a cancelled message is still scheduled")
		}
		mustError(t, cancel(t, res.MessageID), http.StatusConflict, "conflict", "cancelled already")
	})

	t.Run("unicast recall takes what is not delivered", func(t *testing.T) {
		res := e.sendOK(t, app, `{"audience":{"device_ids":["d1","d2","d3"]},"data":{"k":"v"}}`)
		e.appended(t)
		// d1 got it; d2 is offline with it in its inbox; d3 is in flight.
		if err := e.store.Mark(t.Context(), store.Transition{MessageID: res.MessageID, DeviceID: "d1", State: store.StateDelivered}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.store.Put(t.Context(), app.ID, "d2", store.InboxEntry{MessageID: res.MessageID, ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		mustState(t, cancel(t, res.MessageID), "recalled")
		m := state(t, res.MessageID)
		if m.State != "recalled" || m.Counts.Delivered != 1 || m.Counts.Recalled != 2 || m.Counts.Pending != 0 {
			t.Errorf("status %+v, want recalled with 1 delivered and 2 recalled", m)
		}
		if inbox, err := e.store.List(t.Context(), app.ID, "d2", "", 10); err != nil || len(inbox) != 0 {
			t.Errorf("inbox of d2 after recall: %v %v", inbox, err)
		}
		var recalled []string
		for _, r := range e.receiptsOf(t, res.MessageID, 3) {
			if r.Event == receipt.EventRecalled {
				recalled = append(recalled, r.DeviceID)
			}
		}
		slices.Sort(recalled)
		if fmt.Sprint(recalled) != "[d2 d3]" {
			t.Errorf("recalled receipts for %v, want [d2 d3]", recalled)
		}
		mustError(t, cancel(t, res.MessageID), http.StatusConflict, "conflict", "recalled already")
	})

	t.Run("done unicast cannot be recalled", func(t *testing.T) {
		res := e.sendOK(t, app, `{"audience":{"device_ids":["d1"]},"data":{"k":"v"}}`)
		e.appended(t)
		if err := e.store.Mark(t.Context(), store.Transition{MessageID: res.MessageID, DeviceID: "d1", State: store.StateDelivered}); err != nil {
			t.Fatal(err)
		}
		mustError(t, cancel(t, res.MessageID), http.StatusConflict, "conflict", "done")
	})

	t.Run("group recall", func(t *testing.T) {
		res := e.sendOK(t, app, `{"audience":{"tags":"vip"},"data":{"k":"v"},"options":{"ttl_seconds":60}}`)
		e.appended(t)
		// What the dispatcher does with it: the topic log entry.
		if err := e.store.PutBroadcast(t.Context(), app.ID, store.Broadcast{MessageID: res.MessageID, ExpiresAt: time.Now().Add(time.Minute), Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		if got := state(t, res.MessageID); got.State != "sending" || got.Audience != "tags" {
			t.Fatalf("group message %+v, want sending", got)
		}
		mustState(t, cancel(t, res.MessageID), "recalled")
		recs := e.appended(t)
		if len(recs) != 1 {
			t.Fatalf("%d records appended, want the recall record", len(recs))
		}
		env := decodeEnvelope(t, recs[0])
		if string(recs[0].Key) != app.ID || !env.GetRecall() || env.GetAudience() == nil || env.GetPush().GetMessageId() != res.MessageID {
			t.Errorf("recall record %v", env)
		}
		bs, err := e.store.ListBroadcasts(t.Context(), app.ID, "", time.Now(), 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range bs {
			if b.MessageID == res.MessageID && !b.Recalled {
				t.Error("the topic log entry is not flagged recalled")
			}
		}
		if got := state(t, res.MessageID); got.State != "recalled" {
			t.Errorf("state %q", got.State)
		}
	})

	t.Run("expired group message is done", func(t *testing.T) {
		res := e.sendOK(t, app, `{"audience":"all","data":{"k":"v"},"options":{"ttl_seconds":60}}`)
		e.appended(t)
		e.skew.Store(int64(2 * time.Minute))
		defer e.skew.Store(0)
		if got := state(t, res.MessageID); got.State != "done" {
			t.Errorf("state %q after expiry, want done", got.State)
		}
		mustError(t, cancel(t, res.MessageID), http.StatusConflict, "conflict", "done")
	})

	t.Run("unknown", func(t *testing.T) {
		mustError(t, cancel(t, "01ARZ3NDEKTSV4RRFFQ69G5FAV"), http.StatusNotFound, "message_not_found", "")
	})
}

func TestDailyCapAndBadge(t *testing.T) {
	e := newEnv(t)
	app := audienceApp(t, e)

	t.Run("daily cap", func(t *testing.T) {
		e.setLimits(t, app, `{"daily_notification_cap":2}`)
		defer e.setLimits(t, app, `{"daily_notification_cap":0}`)
		const toD1 = `{"audience":{"device_ids":["d1"]},"notification":{"title":"t"}}`
		e.sendOK(t, app, toD1)
		e.sendOK(t, app, toD1)
		e.appended(t)
		res := e.sendOK(t, app, `{"audience":{"device_ids":["d1","d3"]},"notification":{"title":"t"}}`)
		if fmt.Sprint(res.CappedDeviceIDs) != "[d1]" || res.InvalidDeviceIDs != nil {
			t.Fatalf("answer %+v, want d1 capped", res)
		}
		if got := recordDevices(t, e.appended(t)); fmt.Sprint(got) != "[d3]" {
			t.Errorf("records for %v, want [d3]", got)
		}
		_, c, err := e.store.MessageStatus(t.Context(), res.MessageID)
		if err != nil {
			t.Fatal(err)
		}
		if want := (store.Counts{Targeted: 2, Pending: 1, Failed: 1}); c != want {
			t.Errorf("counts %+v, want %+v", c, want)
		}
		var failed []string
		for _, r := range e.receiptsOf(t, res.MessageID, 2) {
			if r.Event == receipt.EventFailed {
				failed = append(failed, r.DeviceID)
			}
		}
		if fmt.Sprint(failed) != "[d1]" {
			t.Errorf("failed receipts for %v, want [d1]", failed)
		}
		// Every target capped: accepted, nothing to send.
		res = e.sendOK(t, app, toD1)
		if fmt.Sprint(res.CappedDeviceIDs) != "[d1]" {
			t.Fatalf("answer %+v, want d1 capped", res)
		}
		if recs := e.appended(t); len(recs) != 0 {
			t.Errorf("%d records for a fully capped send", len(recs))
		}
		// Data messages do not count against the cap.
		if res := e.sendOK(t, app, `{"audience":{"device_ids":["d1","d2"]},"data":{"k":"v"}}`); res.CappedDeviceIDs != nil {
			t.Errorf("a data message was capped: %v", res.CappedDeviceIDs)
		}
		e.appended(t)
	})

	t.Run("badge increments", func(t *testing.T) {
		badges := func() map[string]int32 {
			out := map[string]int32{}
			for _, r := range e.appended(t) {
				env := decodeEnvelope(t, r)
				out[env.GetDeviceId()] = env.GetPush().GetNotification().GetBadge()
			}
			return out
		}
		const plusOne = `{"audience":{"device_ids":["d1","d2"]},"notification":{"title":"t","badge":"+1"}}`
		e.sendOK(t, app, plusOne)
		if got := badges(); got["d1"] != 1 || got["d2"] != 1 {
			t.Fatalf("badges %v, want 1 each", got)
		}
		e.sendOK(t, app, `{"audience":{"device_ids":["d1"]},"notification":{"title":"t","badge":"+3"}}`)
		if got := badges(); got["d1"] != 4 {
			t.Fatalf("badges %v, want d1 at 4", got)
		}
		mustStatus(t, e.do(t, "PUT", "/v1/devices/d1/badge", app.auth, `{"badge":0}`), http.StatusOK)
		e.sendOK(t, app, plusOne)
		if got := badges(); got["d1"] != 1 || got["d2"] != 2 {
			t.Fatalf("badges %v after d1's reset, want d1 1 and d2 2", got)
		}
	})
}

func TestSendReceipts(t *testing.T) {
	e := newEnv(t)
	app := audienceApp(t, e)
	res := e.sendOK(t, app, `{"audience":{"device_ids":["d1","d2","ghost"]},"data":{"k":"v"}}`)
	e.appended(t)
	got := e.receiptsOf(t, res.MessageID, 2)
	var sent, failed []receipt.Receipt
	for _, r := range got {
		switch r.Event {
		case receipt.EventSent:
			sent = append(sent, r)
		case receipt.EventFailed:
			failed = append(failed, r)
		}
	}
	if len(sent) != 1 || sent[0].N() != 2 || sent[0].DeviceID != "" || sent[0].AppID != app.ID || sent[0].Group {
		t.Errorf("sent receipts %+v, want one with count 2", sent)
	}
	if len(failed) != 1 || failed[0].DeviceID != "ghost" {
		t.Errorf("failed receipts %+v, want one for ghost", failed)
	}
}
