package api

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/heraldv1"
	"github.com/heraldpush/herald/pkg/audience"
	"github.com/heraldpush/herald/pkg/envelope/internalv1"
)

var testLimits = sendLimits{MaxTargets: 1000, MaxPayloadBytes: 4096, DefaultTTL: 24 * time.Hour, MaxTTL: 240 * time.Hour,
	MaxSendAhead: 168 * time.Hour, MaxSpread: time.Hour}

// testNow is the clock of validation tests.
var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func TestDecodeSendRequest(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		want    func(validSend) bool
		wantErr error
		wantMsg string // substring of the error
	}{
		{
			name: "defaults",
			body: `{"audience":{"device_ids":["a","b","a"]},"notification":{"title":"t"}}`,
			want: func(v validSend) bool {
				return len(v.DeviceIDs) == 2 && v.TTL == 24*time.Hour && v.Priority == internalv1.Priority_PRIORITY_HIGH &&
					v.Notification.GetBadge() == -1 && v.Data == nil
			},
		},
		{
			name: "unicode survives",
			body: `{"audience":{"device_ids":["a"]},"notification":{"title":"你好 👋","body":"\u00e9"},"data":{"ключ":"値"}}`,
			want: func(v validSend) bool {
				return v.Notification.GetTitle() == "你好 👋" && v.Notification.GetBody() == "é" && v.Data["ключ"] == "値"
			},
		},
		{
			name: "nulls are absent",
			body: `{"audience":{"device_ids":["a"]},"notification":null,"data":{"k":null},"options":null}`,
			want: func(v validSend) bool { return v.Notification == nil && v.Data["k"] == "" && v.TTL == 24*time.Hour },
		},
		{name: "empty data key", body: `{"audience":{"device_ids":["a"]},"data":{"":"v"}}`, wantErr: herald.ErrInvalidArgument},
		{name: "collapse id too long", body: `{"audience":{"device_ids":["a"]},"data":{"k":"v"},"options":{"collapse_id":"` + strings.Repeat("c", 129) + `"}}`, wantErr: herald.ErrInvalidArgument},
		{name: "idempotency key too long", body: `{"audience":{"device_ids":["a"]},"data":{"k":"v"},"options":{"idempotency_key":"` + strings.Repeat("k", 257) + `"}}`, wantErr: herald.ErrInvalidArgument},
		{name: "payload just too large", body: `{"audience":{"device_ids":["a"]},"data":{"k":"` + strings.Repeat("x", 4090) + `"}}`, wantErr: herald.ErrTooLarge},
		{
			name: "audience all as a string",
			body: `{"audience":"all","data":{"k":"v"}}`,
			want: func(v validSend) bool { return v.Kind == audienceAll && v.group() && v.Platform == "" },
		},
		{
			name: "audience all as an object with a platform",
			body: `{"audience":{"all":true,"platform":"ios"},"data":{"k":"v"}}`,
			want: func(v validSend) bool { return v.Kind == audienceAll && v.Platform == "ios" },
		},
		{
			name: "aliases deduplicated",
			body: `{"audience":{"aliases":["alice","bob","alice"]},"data":{"k":"v"}}`,
			want: func(v validSend) bool {
				return v.Kind == audienceAliases && strings.Join(v.Aliases, ",") == "alice,bob" && !v.group()
			},
		},
		{
			name: "tags",
			body: `{"audience":{"tags":"vip && (cn || hk) && !churned"},"data":{"k":"v"},"options":{"spread_over_seconds":3600}}`,
			want: func(v validSend) bool {
				return v.Kind == audienceTags && v.TagExpr == "vip && (cn || hk) && !churned" && v.Spread == time.Hour
			},
		},
		{
			name: "topic",
			body: `{"audience":{"topic":"news.sports"},"data":{"k":"v"}}`,
			want: func(v validSend) bool { return v.Kind == audienceTopic && v.Topic == "news.sports" },
		},
		{
			name: "badge increment",
			body: `{"audience":{"device_ids":["a"]},"notification":{"title":"t","badge":"+12"}}`,
			want: func(v validSend) bool { return v.BadgeAdd == 12 && v.Notification.GetBadge() == -1 },
		},
		{
			name: "image and channel",
			body: `{"audience":{"device_ids":["a"]},"notification":{"title":"t","image":"https://x/i.png","channel":"promo"}}`,
			want: func(v validSend) bool {
				return v.Notification.GetImage() == "https://x/i.png" && v.Notification.GetChannel() == "promo"
			},
		},
		{
			name: "send_at in another zone",
			body: `{"audience":"all","data":{"k":"v"},"options":{"send_at":"2026-03-01T14:00:00+01:00"}}`,
			want: func(v validSend) bool {
				return v.SendAt.Equal(testNow.Add(time.Hour)) && v.SendAt.Location() == time.UTC
			},
		},
		{
			name: "send_at exactly 7 days ahead",
			body: `{"audience":{"device_ids":["a"]},"data":{"k":"v"},"options":{"send_at":"2026-03-08T12:00:00Z"}}`,
			want: func(v validSend) bool { return v.SendAt.Equal(testNow.Add(168 * time.Hour)) },
		},
		{name: "audience neither all nor object", body: `{"audience":"everyone","data":{"k":"v"}}`, wantErr: herald.ErrInvalidArgument, wantMsg: `"all" or an object`},
		{name: "audience a number", body: `{"audience":7,"data":{"k":"v"}}`, wantErr: herald.ErrInvalidArgument, wantMsg: `"all" or an object`},
		{name: "audience empty", body: `{"audience":{},"data":{"k":"v"}}`, wantErr: herald.ErrInvalidArgument, wantMsg: "needs one of"},
		{name: "audience all false", body: `{"audience":{"all":false},"data":{"k":"v"}}`, wantErr: herald.ErrInvalidArgument, wantMsg: "needs one of"},
		{name: "two audiences", body: `{"audience":{"device_ids":["a"],"topic":"news"},"data":{"k":"v"}}`, wantErr: herald.ErrInvalidArgument, wantMsg: "device_ids and topic"},
		{name: "unknown audience field", body: `{"audience":{"segment":"x"},"data":{"k":"v"}}`, wantErr: herald.ErrInvalidArgument, wantMsg: `"segment"`},
		{name: "unknown platform", body: `{"audience":{"all":true,"platform":"symbian"},"data":{"k":"v"}}`, wantErr: herald.ErrInvalidArgument, wantMsg: "platform"},
		{name: "empty alias", body: `{"audience":{"aliases":["alice",""]},"data":{"k":"v"}}`, wantErr: herald.ErrInvalidArgument, wantMsg: "aliases[1]"},
		{name: "no aliases", body: `{"audience":{"aliases":[]},"data":{"k":"v"}}`, wantErr: herald.ErrInvalidArgument, wantMsg: "at least one alias"},
		{name: "empty tag expression", body: `{"audience":{"tags":""},"data":{"k":"v"}}`, wantErr: herald.ErrInvalidArgument, wantMsg: "must not be empty"},
		{name: "unclosed parenthesis", body: `{"audience":{"tags":"vip && (cn || hk"},"data":{"k":"v"}}`, wantErr: herald.ErrInvalidArgument, wantMsg: "unbalanced '(' at byte 7"},
		{name: "dangling operator", body: `{"audience":{"tags":"vip &&"},"data":{"k":"v"}}`, wantErr: herald.ErrInvalidArgument, wantMsg: "at byte 6"},
		{name: "bad character in expression", body: `{"audience":{"tags":"vip & cn"},"data":{"k":"v"}}`, wantErr: herald.ErrInvalidArgument, wantMsg: "at byte 4"},
		{name: "expression too long", body: `{"audience":{"tags":"` + strings.Repeat("a||", 400) + `a"},"data":{"k":"v"}}`, wantErr: herald.ErrInvalidArgument, wantMsg: "tag expression"},
		{name: "expression nested too deep", body: `{"audience":{"tags":"` + strings.Repeat("(", 17) + "a" + strings.Repeat(")", 17) + `"},"data":{"k":"v"}}`, wantErr: herald.ErrInvalidArgument, wantMsg: "tag expression"},
		{name: "bad topic name", body: `{"audience":{"topic":"news sports"},"data":{"k":"v"}}`, wantErr: herald.ErrInvalidArgument, wantMsg: "audience.topic"},
		{name: "badge and increment", body: `{"audience":{"device_ids":["a"]},"notification":{"title":"t","badge":"5"}}`, wantErr: herald.ErrInvalidArgument, wantMsg: "notification.badge"},
		{name: "badge +0", body: `{"audience":{"device_ids":["a"]},"notification":{"title":"t","badge":"+0"}}`, wantErr: herald.ErrInvalidArgument, wantMsg: "notification.badge"},
		{name: "badge +100", body: `{"audience":{"device_ids":["a"]},"notification":{"title":"t","badge":"+100"}}`, wantErr: herald.ErrInvalidArgument, wantMsg: "notification.badge"},
		{name: "badge ++1", body: `{"audience":{"device_ids":["a"]},"notification":{"title":"t","badge":"++1"}}`, wantErr: herald.ErrInvalidArgument, wantMsg: "notification.badge"},
		{name: "badge fraction", body: `{"audience":{"device_ids":["a"]},"notification":{"title":"t","badge":1.5}}`, wantErr: herald.ErrInvalidArgument, wantMsg: "notification.badge"},
		{name: "send_at not RFC 3339", body: `{"audience":"all","data":{"k":"v"},"options":{"send_at":"tomorrow 9am"}}`, wantErr: herald.ErrInvalidArgument, wantMsg: "RFC 3339"},
		{name: "send_at now", body: `{"audience":"all","data":{"k":"v"},"options":{"send_at":"2026-03-01T12:00:00Z"}}`, wantErr: herald.ErrInvalidArgument, wantMsg: "not in the future"},
		{name: "send_at in the past", body: `{"audience":"all","data":{"k":"v"},"options":{"send_at":"2026-02-28T12:00:00Z"}}`, wantErr: herald.ErrInvalidArgument, wantMsg: "not in the future"},
		{name: "send_at over 7 days ahead", body: `{"audience":"all","data":{"k":"v"},"options":{"send_at":"2026-03-08T12:00:01Z"}}`, wantErr: herald.ErrInvalidArgument, wantMsg: "more than 7 days ahead"},
		{name: "spread for device ids", body: `{"audience":{"device_ids":["a"]},"data":{"k":"v"},"options":{"spread_over_seconds":10}}`, wantErr: herald.ErrInvalidArgument, wantMsg: "only to tags, topic and all"},
		{name: "spread over an hour", body: `{"audience":"all","data":{"k":"v"},"options":{"spread_over_seconds":3601}}`, wantErr: herald.ErrInvalidArgument, wantMsg: "limit is 3600"},
		{name: "negative spread", body: `{"audience":"all","data":{"k":"v"},"options":{"spread_over_seconds":-1}}`, wantErr: herald.ErrInvalidArgument, wantMsg: "negative"},
		{name: "spread longer than ttl", body: `{"audience":"all","data":{"k":"v"},"options":{"spread_over_seconds":120,"ttl_seconds":60}}`, wantErr: herald.ErrInvalidArgument, wantMsg: "longer than the message lives"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := decodeSendRequest([]byte(tt.body), testLimits, testNow)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || !strings.Contains(fmt.Sprint(err), tt.wantMsg) {
					t.Fatalf("err %v, want %v containing %q", err, tt.wantErr, tt.wantMsg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.want(v) {
				t.Fatalf("unexpected result %+v", v)
			}
		})
	}
}

// TestGRPCAndJSONValidateAlike checks that a gRPC send is held to the same
// rules as the same send in JSON.
func TestGRPCAndJSONValidateAlike(t *testing.T) {
	req := &heraldv1.SendMessageRequest{
		Audience:     &heraldv1.Audience{DeviceIds: []string{"a", "b", "a"}},
		Notification: &heraldv1.Notification{Title: "t", Badge: proto.Int32(2)},
		Data:         map[string]string{"k": "v"},
		Options:      &heraldv1.Options{TtlSeconds: proto.Int64(0), Priority: "normal", CollapseId: "c"},
	}
	fromJSON, err := decodeSendRequest([]byte(`{"audience":{"device_ids":["a","b","a"]},"notification":{"title":"t","badge":2},"data":{"k":"v"},"options":{"ttl_seconds":0,"priority":"normal","collapse_id":"c"}}`), testLimits, testNow)
	if err != nil {
		t.Fatal(err)
	}
	fromGRPC, err := sendRequestFromProto(req).validate(testLimits, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(fromJSON.Notification, fromGRPC.Notification) || strings.Join(fromJSON.DeviceIDs, ",") != strings.Join(fromGRPC.DeviceIDs, ",") ||
		fromJSON.TTL != fromGRPC.TTL || fromJSON.Priority != fromGRPC.Priority || fromJSON.CollapseID != fromGRPC.CollapseID || len(fromJSON.Data) != len(fromGRPC.Data) {
		t.Fatalf("JSON %+v and gRPC %+v differ", fromJSON, fromGRPC)
	}
	if _, err := sendRequestFromProto(&heraldv1.SendMessageRequest{Data: map[string]string{"k": "v"}}).validate(testLimits, testNow); !errors.Is(err, herald.ErrInvalidArgument) {
		t.Fatalf("gRPC send without audience: %v", err)
	}
}

// FuzzDecodeSendRequest: the parser never panics, rejects only with the
// documented errors, and whatever it accepts is within the limits.
func FuzzDecodeSendRequest(f *testing.F) {
	f.Add([]byte(`{"audience":{"device_ids":["d1"]},"notification":{"title":"t","body":"b"}}`))
	f.Add([]byte(`{"audience":{"tags":"vip && (cn || !hk)","platform":"ios"},"notification":{"title":"t","badge":"+1"},"options":{"spread_over_seconds":60,"send_at":"2026-03-02T00:00:00Z"}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		v, err := decodeSendRequest(body, testLimits, testNow)
		if err != nil {
			if !errors.Is(err, herald.ErrInvalidArgument) && !errors.Is(err, herald.ErrTooLarge) {
				t.Fatalf("error %v is neither invalid argument nor too large", err)
			}
			return
		}
		switch v.Kind {
		case audienceDevices:
			if n := len(v.DeviceIDs); n < 1 || n > testLimits.MaxTargets {
				t.Fatalf("accepted %d targets", n)
			}
			seen := map[string]bool{}
			for _, id := range v.DeviceIDs {
				if !validDeviceID(id) || seen[id] {
					t.Fatalf("accepted bad or repeated device id %q", id)
				}
				seen[id] = true
			}
		case audienceAliases:
			if n := len(v.Aliases); n < 1 || n > testLimits.MaxTargets {
				t.Fatalf("accepted %d aliases", n)
			}
		case audienceTags:
			if _, err := audience.Parse(v.TagExpr); err != nil {
				t.Fatalf("accepted tag expression %q: %v", v.TagExpr, err)
			}
		case audienceTopic:
			if !audience.ValidName(v.Topic) {
				t.Fatalf("accepted topic %q", v.Topic)
			}
		case audienceAll:
		default:
			t.Fatalf("accepted audience kind %q", v.Kind)
		}
		if v.Platform != "" && !platforms[v.Platform] {
			t.Fatalf("accepted platform %q", v.Platform)
		}
		if v.Spread < 0 || v.Spread > testLimits.MaxSpread || (v.Spread > 0 && !v.group()) {
			t.Fatalf("accepted spread %s for a %s audience", v.Spread, v.Kind)
		}
		if !v.SendAt.IsZero() && (!v.SendAt.After(testNow) || v.SendAt.Sub(testNow) > testLimits.MaxSendAhead) {
			t.Fatalf("accepted send_at %s", v.SendAt)
		}
		if v.BadgeAdd < 0 || v.BadgeAdd > maxBadgeAdd || (v.BadgeAdd > 0 && v.Notification.GetBadge() != -1) {
			t.Fatalf("accepted badge %d with increment %d", v.Notification.GetBadge(), v.BadgeAdd)
		}
		if v.Notification == nil && len(v.Data) == 0 {
			t.Fatal("accepted a send with nothing to send")
		}
		if v.Notification != nil && v.Notification.GetBadge() < -1 {
			t.Fatalf("accepted badge %d", v.Notification.GetBadge())
		}
		if size := proto.Size(&devicev1.Push{Notification: v.Notification, Data: v.Data}); size > testLimits.MaxPayloadBytes {
			t.Fatalf("accepted a payload of %d bytes", size)
		}
		if v.TTL < 0 || v.TTL > testLimits.MaxTTL {
			t.Fatalf("accepted ttl %s", v.TTL)
		}
		if v.Priority != internalv1.Priority_PRIORITY_HIGH && v.Priority != internalv1.Priority_PRIORITY_NORMAL {
			t.Fatalf("accepted priority %v", v.Priority)
		}
		if len(v.CollapseID) > maxCollapseIDLen || len(v.IdempotencyKey) > maxIdempotencyKeyLen {
			t.Fatal("accepted an over-long collapse id or idempotency key")
		}
		// What is accepted must encode: the envelope is built from it.
		if _, err := proto.Marshal(&devicev1.Push{Notification: v.Notification, Data: v.Data, CollapseId: v.CollapseID}); err != nil {
			t.Fatalf("accepted a payload that does not encode: %v", err)
		}
	})
}

// TestGRPCAndJSONValidateAlikeForAudiences extends the check to the
// send API's audiences and options.
func TestGRPCAndJSONValidateAlikeForAudiences(t *testing.T) {
	at := testNow.Add(time.Hour).Format(time.RFC3339)
	pairs := []struct {
		json string
		grpc *heraldv1.SendMessageRequest
	}{
		{
			json: `{"audience":{"tags":"vip && !cn","platform":"ios"},"notification":{"title":"t","badge":"+2","image":"i","channel":"c"},"options":{"send_at":"` + at + `","spread_over_seconds":60}}`,
			grpc: &heraldv1.SendMessageRequest{
				Audience:     &heraldv1.Audience{Tags: "vip && !cn", Platform: "ios"},
				Notification: &heraldv1.Notification{Title: "t", BadgeAdd: proto.Int32(2), Image: "i", Channel: "c"},
				Options:      &heraldv1.Options{SendAt: at, SpreadOverSeconds: 60},
			},
		},
		{
			json: `{"audience":{"aliases":["a","b","a"]},"data":{"k":"v"}}`,
			grpc: &heraldv1.SendMessageRequest{Audience: &heraldv1.Audience{Aliases: []string{"a", "b", "a"}}, Data: map[string]string{"k": "v"}},
		},
		{
			json: `{"audience":"all","data":{"k":"v"}}`,
			grpc: &heraldv1.SendMessageRequest{Audience: &heraldv1.Audience{All: true}, Data: map[string]string{"k": "v"}},
		},
		{
			json: `{"audience":{"topic":"news"},"data":{"k":"v"}}`,
			grpc: &heraldv1.SendMessageRequest{Audience: &heraldv1.Audience{Topic: "news"}, Data: map[string]string{"k": "v"}},
		},
	}
	for _, p := range pairs {
		fromJSON, err := decodeSendRequest([]byte(p.json), testLimits, testNow)
		if err != nil {
			t.Fatalf("%s: %v", p.json, err)
		}
		fromGRPC, err := sendRequestFromProto(p.grpc).validate(testLimits, testNow)
		if err != nil {
			t.Fatalf("%v: %v", p.grpc, err)
		}
		if !proto.Equal(fromJSON.Notification, fromGRPC.Notification) {
			t.Errorf("%s: notifications %v and %v differ", p.json, fromJSON.Notification, fromGRPC.Notification)
		}
		fromJSON.Notification, fromGRPC.Notification = nil, nil
		if !reflect.DeepEqual(fromJSON, fromGRPC) {
			t.Errorf("%s:\nJSON %+v\ngRPC %+v", p.json, fromJSON, fromGRPC)
		}
	}
}
