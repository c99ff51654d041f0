package api

import (
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/heraldv1"
	"github.com/heraldpush/herald/pkg/envelope/internalv1"
)

var testLimits = sendLimits{MaxTargets: 1000, MaxPayloadBytes: 4096, DefaultTTL: 24 * time.Hour, MaxTTL: 240 * time.Hour}

func TestDecodeSendRequest(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		want    func(validSend) bool
		wantErr error
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
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := decodeSendRequest([]byte(tt.body), testLimits)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err %v, want %v", err, tt.wantErr)
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
	fromJSON, err := decodeSendRequest([]byte(`{"audience":{"device_ids":["a","b","a"]},"notification":{"title":"t","badge":2},"data":{"k":"v"},"options":{"ttl_seconds":0,"priority":"normal","collapse_id":"c"}}`), testLimits)
	if err != nil {
		t.Fatal(err)
	}
	fromGRPC, err := sendRequestFromProto(req).validate(testLimits)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(fromJSON.Notification, fromGRPC.Notification) || strings.Join(fromJSON.DeviceIDs, ",") != strings.Join(fromGRPC.DeviceIDs, ",") ||
		fromJSON.TTL != fromGRPC.TTL || fromJSON.Priority != fromGRPC.Priority || fromJSON.CollapseID != fromGRPC.CollapseID || len(fromJSON.Data) != len(fromGRPC.Data) {
		t.Fatalf("JSON %+v and gRPC %+v differ", fromJSON, fromGRPC)
	}
	if _, err := sendRequestFromProto(&heraldv1.SendMessageRequest{Data: map[string]string{"k": "v"}}).validate(testLimits); !errors.Is(err, herald.ErrInvalidArgument) {
		t.Fatalf("gRPC send without audience: %v", err)
	}
}

// FuzzDecodeSendRequest: the parser never panics, rejects only with the
// documented errors, and whatever it accepts is within the limits.
func FuzzDecodeSendRequest(f *testing.F) {
	f.Add([]byte(`{"audience":{"device_ids":["d1"]},"notification":{"title":"t","body":"b"}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		v, err := decodeSendRequest(body, testLimits)
		if err != nil {
			if !errors.Is(err, herald.ErrInvalidArgument) && !errors.Is(err, herald.ErrTooLarge) {
				t.Fatalf("error %v is neither invalid argument nor too large", err)
			}
			return
		}
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
