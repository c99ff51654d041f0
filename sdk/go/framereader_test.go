package herald

import (
	"bytes"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
)

func TestFrameReader(t *testing.T) {
	big, err := frame.AppendMessage(nil, frame.TypePush, &devicev1.Push{MessageId: "big", Data: map[string]string{"k": strings.Repeat("x", 20<<10)}})
	if err != nil {
		t.Fatal(err)
	}
	stream := append(append(append([]byte{}, frame.Ping...), big...), frame.Pong...)
	tests := []struct {
		name    string
		r       io.Reader
		types   []frame.Type
		wantErr error
	}{
		{"whole stream", bytes.NewReader(stream), []frame.Type{frame.TypePing, frame.TypePush, frame.TypePong}, io.EOF},
		{"one byte at a time", iotest.OneByteReader(bytes.NewReader(stream)), []frame.Type{frame.TypePing, frame.TypePush, frame.TypePong}, io.EOF},
		{"data with EOF", iotest.DataErrReader(bytes.NewReader(stream)), []frame.Type{frame.TypePing, frame.TypePush, frame.TypePong}, io.EOF},
		{"cut inside a frame", bytes.NewReader(stream[:len(stream)-1]), []frame.Type{frame.TypePing, frame.TypePush}, io.ErrUnexpectedEOF},
		{"read error kept", io.MultiReader(bytes.NewReader(frame.Ping), iotest.ErrReader(os.ErrDeadlineExceeded)), []frame.Type{frame.TypePing}, os.ErrDeadlineExceeded},
		{"too large", bytes.NewReader(frame.AppendFrame(nil, frame.TypePush, make([]byte, frame.DefaultMaxFrame))), nil, frame.ErrTooLarge},
		{"overflowing length", bytes.NewReader([]byte("\xff\xff\xff\xff\xff\xff\xff\xff\xff\x010")), nil, frame.ErrMalformed},
		{"unknown type", bytes.NewReader([]byte{1, 99}), nil, frame.ErrUnknownType},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fr := newFrameReader(tt.r, frame.DefaultMaxFrame)
			var got []frame.Type
			for {
				f, err := fr.next()
				if err != nil {
					if !errors.Is(err, tt.wantErr) {
						t.Fatalf("error %v, want %v", err, tt.wantErr)
					}
					break
				}
				got = append(got, f.Type)
				if f.Type == frame.TypePush && len(f.Body) != len(big)-4 {
					t.Fatalf("push body %d bytes, want %d", len(f.Body), len(big)-4)
				}
			}
			if !equalTypes(got, tt.types) {
				t.Fatalf("frames %v, want %v", got, tt.types)
			}
		})
	}
}

func equalTypes(a, b []frame.Type) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
