package frame

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/heraldpush/herald/api/devicev1"
)

func TestPingIsTwoBytes(t *testing.T) {
	if got := AppendFrame(nil, TypePing, nil); !bytes.Equal(got, Ping) || len(Ping) != 2 {
		t.Fatalf("PING frame = %x, want %x (2 bytes)", got, Ping)
	}
	if got := AppendFrame(nil, TypePong, nil); !bytes.Equal(got, Pong) {
		t.Fatalf("PONG frame = %x, want %x", got, Pong)
	}
}

func TestRoundTrip(t *testing.T) {
	push := &devicev1.Push{MessageId: "01HZY", Kind: devicev1.Kind_KIND_NOTIFICATION,
		Notification: &devicev1.Notification{Title: "t", Body: "b", Badge: -1}, Data: map[string]string{"k": "v"}, SentAtMs: 42}
	var stream []byte
	stream = append(stream, Ping...)
	stream, err := AppendMessage(stream, TypePush, push)
	if err != nil {
		t.Fatal(err)
	}
	stream, err = AppendMessage(stream, TypeAck, &devicev1.Ack{MessageIds: []string{"a", "b"}})
	if err != nil {
		t.Fatal(err)
	}
	stream = append(stream, Pong...)

	wantTypes := []Type{TypePing, TypePush, TypeAck, TypePong}
	// Stream reader.
	r := NewReader(bytes.NewReader(stream), DefaultMaxFrame)
	for i, want := range wantTypes {
		f, err := r.Next()
		if err != nil || f.Type != want {
			t.Fatalf("frame %d: %v %v, want %v", i, f.Type, err, want)
		}
		if want == TypePush {
			var got devicev1.Push
			if err := proto.Unmarshal(f.Body, &got); err != nil || !proto.Equal(&got, push) {
				t.Fatalf("PUSH body round trip: %v %v", &got, err)
			}
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("after the last frame: %v, want io.EOF", err)
	}
	// Slice decoder, fed one byte at a time: partial input is "need more".
	buf := stream
	for i, want := range wantTypes {
		var f Frame
		var n int
		for k := 1; ; k++ {
			if k > len(buf) {
				t.Fatalf("frame %d never completed", i)
			}
			f, n, err = Decode(buf[:k], DefaultMaxFrame)
			if err != nil {
				t.Fatalf("frame %d: %v", i, err)
			}
			if n > 0 {
				break
			}
		}
		if f.Type != want {
			t.Fatalf("frame %d: %v, want %v", i, f.Type, want)
		}
		buf = buf[n:]
	}
}

func TestDecodeErrors(t *testing.T) {
	cases := []struct {
		name string
		in   []byte
		max  int
		want error
	}{
		{"zero length", []byte{0}, DefaultMaxFrame, ErrMalformed},
		{"length prefix over 5 bytes", []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, DefaultMaxFrame, ErrMalformed},
		{"over-long encoding", []byte{0x81, 0x00, 3}, DefaultMaxFrame, ErrMalformed},
		{"too large", binary.AppendUvarint(nil, 100), 50, ErrTooLarge},
		{"unknown type", []byte{1, 99}, DefaultMaxFrame, ErrUnknownType},
		{"unknown type before the body arrives", []byte{50, 'E'}, DefaultMaxFrame, ErrUnknownType},
		{"type zero", []byte{1, 0}, DefaultMaxFrame, ErrUnknownType},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := Decode(tc.in, tc.max); !errors.Is(err, tc.want) {
				t.Errorf("Decode: %v, want %v", err, tc.want)
			}
			if _, err := NewReader(bytes.NewReader(tc.in), tc.max).Next(); !errors.Is(err, tc.want) {
				t.Errorf("Reader: %v, want %v", err, tc.want)
			}
		})
	}
}

func TestTypes(t *testing.T) {
	want := map[Type]string{TypeConnect: "CONNECT", TypePush: "PUSH", TypeDisconnect: "DISCONNECT",
		TypeSubscribe: "SUBSCRIBE", TypeSubAck: "SUBACK", TypeReceipt: "RECEIPT", TypeSetBadge: "SETBADGE"}
	for typ, name := range want {
		if !typ.Valid() || typ.String() != name {
			t.Errorf("type %d: valid %v, name %q, want valid %q", uint8(typ), typ.Valid(), typ.String(), name)
		}
	}
	for _, typ := range []Type{0, TypeSetBadge + 1, 255} {
		if typ.Valid() {
			t.Errorf("type %d is valid, want unknown", uint8(typ))
		}
		if _, _, err := Decode([]byte{1, byte(typ)}, DefaultMaxFrame); !errors.Is(err, ErrUnknownType) {
			t.Errorf("Decode of type %d: %v, want ErrUnknownType", uint8(typ), err)
		}
	}
}

func TestCloseCodesRetry(t *testing.T) {
	for _, c := range []Code{CodeNormal, CodeShutdown, CodeHeartbeatTimeout, CodeServerError, CodeSlowConsumer, CodeHandshakeTimeout} {
		if !c.Retry() {
			t.Errorf("%d (%s) should retry", c, c)
		}
	}
	for _, c := range []Code{CodeBadFrame, CodeUnauthorized, CodeUnsupportedVersion, CodeFrameTooLarge, CodeExpectedConnect, CodeReplaced, CodeDeviceDeleted} {
		if c.Retry() {
			t.Errorf("%d (%s) should not retry", c, c)
		}
		if c.String() == "unknown" {
			t.Errorf("%d has no name", c)
		}
	}
}

// FuzzDecode feeds arbitrary bytes to both decoders: they never panic, they
// agree, and what they accept re-encodes to the same bytes.
func FuzzDecode(f *testing.F) {
	f.Add(Ping)
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	if b, err := AppendMessage(nil, TypeConnect, &devicev1.Connect{ProtocolVersion: 1, AppKey: "k", DeviceId: "d", DeviceToken: "t"}); err == nil {
		f.Add(b)
	}
	if b, err := AppendMessage(nil, TypeSubscribe, &devicev1.Subscribe{RequestId: "r", Topics: []string{"news"}}); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		const max = 4096
		f1, n, err1 := Decode(in, max)
		r := NewReader(bytes.NewReader(in), max)
		f2, err2 := r.Next()
		if err1 == nil && n > 0 {
			if err2 != nil || f1.Type != f2.Type || !bytes.Equal(f1.Body, f2.Body) {
				t.Fatalf("Decode accepted %v/%x but Reader said %v/%x %v", f1.Type, f1.Body, f2.Type, f2.Body, err2)
			}
			if re := AppendFrame(nil, f1.Type, f1.Body); !bytes.Equal(re, in[:n]) {
				t.Fatalf("re-encoding %x gave %x", in[:n], re)
			}
			// Bodies that decode as protobuf must not crash the messages either.
			_ = proto.Unmarshal(f1.Body, &devicev1.Connect{})
		}
		if err1 != nil && err2 == nil {
			t.Fatalf("Decode rejected (%v) what Reader accepted", err1)
		}
	})
}

// hotFrames are the frames every session exchanges: heartbeats, pushes
// and acks. Their encode and decode must not allocate.
func hotFrames() []struct {
	name string
	t    Type
	msg  proto.Message // nil: no body
} {
	return []struct {
		name string
		t    Type
		msg  proto.Message
	}{
		{"PING", TypePing, nil},
		{"PUSH", TypePush, &devicev1.Push{MessageId: "01HZYABCDEFGHJKMNPQRSTVWXY", Kind: devicev1.Kind_KIND_NOTIFICATION,
			Notification: &devicev1.Notification{Title: "Hello", Body: "A message body of a typical size", Badge: -1}, SentAtMs: 1}},
		{"ACK", TypeAck, &devicev1.Ack{MessageIds: []string{"01HZYABCDEFGHJKMNPQRSTVWXY", "01HZYABCDEFGHJKMNPQRSTVWXZ"}}},
	}
}

// encodeInto encodes one hot frame into buf (reused).
func encodeInto(buf []byte, t Type, msg proto.Message) ([]byte, error) {
	if msg == nil {
		return AppendFrame(buf[:0], t, nil), nil
	}
	return AppendMessage(buf[:0], t, msg)
}

func TestHotPathsDoNotAllocate(t *testing.T) {
	for _, hf := range hotFrames() {
		t.Run(hf.name, func(t *testing.T) {
			buf := make([]byte, 0, 512)
			var err error
			if n := testing.AllocsPerRun(100, func() { buf, err = encodeInto(buf, hf.t, hf.msg) }); n != 0 || err != nil {
				t.Errorf("encode: %v allocs per frame (err %v), want 0", n, err)
			}
			if n := testing.AllocsPerRun(100, func() { _, _, err = Decode(buf, DefaultMaxFrame) }); n != 0 || err != nil {
				t.Errorf("Decode: %v allocs per frame (err %v), want 0", n, err)
			}
			stream := bytes.Repeat(buf, 102) // one to size the buffer, one warm-up run, 100 measured
			r := NewReader(bytes.NewReader(stream), DefaultMaxFrame)
			if _, err := r.Next(); err != nil { // sizes the reader's buffer
				t.Fatal(err)
			}
			if n := testing.AllocsPerRun(100, func() { _, err = r.Next() }); n != 0 || err != nil {
				t.Errorf("Reader.Next: %v allocs per frame (err %v), want 0", n, err)
			}
		})
	}
}

func BenchmarkEncode(b *testing.B) {
	for _, hf := range hotFrames() {
		b.Run(hf.name, func(b *testing.B) {
			buf := make([]byte, 0, 512)
			b.ReportAllocs()
			for b.Loop() {
				var err error
				if buf, err = encodeInto(buf, hf.t, hf.msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkDecode(b *testing.B) {
	for _, hf := range hotFrames() {
		b.Run(hf.name, func(b *testing.B) {
			in, err := encodeInto(nil, hf.t, hf.msg)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(in)))
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := Decode(in, DefaultMaxFrame); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
