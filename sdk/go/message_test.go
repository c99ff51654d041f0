package herald

import (
	"bytes"
	"testing"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
)

func TestParseServerFrame(t *testing.T) {
	push, _ := frame.AppendMessage(nil, frame.TypePush, &devicev1.Push{MessageId: "m1", Kind: devicev1.Kind_KIND_DATA})
	group, _ := frame.AppendMessage(nil, frame.TypePush, &devicev1.Push{MessageId: "g1", Group: true,
		Notification: &devicev1.Notification{Badge: -1, Image: "https://img.example/x.png", Channel: "promo"}})
	upack, _ := frame.AppendMessage(nil, frame.TypeUpAck, &devicev1.UpAck{RequestId: "r1", Error: "e"})
	suback, _ := frame.AppendMessage(nil, frame.TypeSubAck, &devicev1.SubAck{RequestId: "r2", Error: "invalid_topic"})
	disc, _ := frame.AppendMessage(nil, frame.TypeDisconnect, &devicev1.Disconnect{Code: 3001, RetryAfterMs: 1500, Redirect: "h:1"})
	tests := []struct {
		name    string
		wire    []byte
		wantErr bool
		check   func(serverFrame) bool
	}{
		{"pong", frame.Pong, false, func(f serverFrame) bool { return f.typ == frame.TypePong }},
		{"push", push, false, func(f serverFrame) bool { return f.push.ID == "m1" && f.push.Kind == KindData }},
		{"group push", group, false, func(f serverFrame) bool {
			m := f.push
			return m.ID == "g1" && m.Group && m.Image == "https://img.example/x.png" && m.Channel == "promo" && m.Badge == nil
		}},
		{"upack", upack, false, func(f serverFrame) bool { return f.answer == answer{requestID: "r1", err: "e"} }},
		{"suback", suback, false, func(f serverFrame) bool { return f.answer == answer{requestID: "r2", err: "invalid_topic"} }},
		{"disconnect", disc, false, func(f serverFrame) bool {
			d := f.disconnect
			return d.Code == frame.CodeShutdown && d.RetryAfter.Milliseconds() == 1500 && d.Redirect == "h:1"
		}},
		{"pong with body", frame.AppendFrame(nil, frame.TypePong, []byte{1}), true, nil},
		{"connect from server", frame.AppendFrame(nil, frame.TypeConnect, nil), true, nil},
		{"subscribe from server", frame.AppendFrame(nil, frame.TypeSubscribe, nil), true, nil},
		{"garbage suback", frame.AppendFrame(nil, frame.TypeSubAck, []byte{0xff}), true, nil},
		{"garbage push", frame.AppendFrame(nil, frame.TypePush, []byte{0xff}), true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, n, err := frame.Decode(tt.wire, frame.DefaultMaxFrame)
			if err != nil || n != len(tt.wire) {
				t.Fatalf("Decode: n=%d err=%v", n, err)
			}
			sf, err := parseServerFrame(f)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err == nil && !tt.check(sf) {
				t.Fatalf("parsed %+v", sf)
			}
		})
	}
}

// FuzzParseServerFrames feeds arbitrary server bytes through the SDK's frame
// reader and decoding: it must never panic.
func FuzzParseServerFrames(f *testing.F) {
	push, _ := frame.AppendMessage(nil, frame.TypePush, &devicev1.Push{
		MessageId: "m1", Kind: devicev1.Kind_KIND_NOTIFICATION,
		Notification: &devicev1.Notification{Title: "t", Badge: -1}, Data: map[string]string{"a": "b"},
	})
	disc, _ := frame.AppendMessage(nil, frame.TypeDisconnect, &devicev1.Disconnect{Code: 4001, Reason: "no"})
	f.Add(push)
	f.Add(append(append([]byte{}, frame.Pong...), disc...))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := newFrameReader(bytes.NewReader(data), frame.DefaultMaxFrame)
		for {
			fr, err := r.next()
			if err != nil {
				return
			}
			sf, err := parseServerFrame(fr)
			if err == nil && sf.typ == frame.TypeDisconnect && sf.disconnect == nil {
				t.Fatal("DISCONNECT parsed without a close error")
			}
		}
	})
}
