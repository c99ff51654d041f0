// Package frame implements the Herald device protocol framing: every frame is
//
//	uvarint(length) | type (1 byte) | body (length-1 bytes, protobuf)
//
// where length counts the type byte and the body. PING and PONG have no body,
// so they are two bytes on the wire. docs/protocol.md is the reference.
package frame

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"
)

// Type is the frame type byte.
type Type uint8

// Frame types of protocol version 1.
const (
	TypeConnect    Type = 1
	TypeConnAck    Type = 2
	TypePing       Type = 3
	TypePong       Type = 4
	TypePush       Type = 5
	TypeAck        Type = 6
	TypeUpstream   Type = 7
	TypeUpAck      Type = 8
	TypeDisconnect Type = 9
	TypeSubscribe  Type = 10 // device -> server: topic (un)subscription
	TypeSubAck     Type = 11 // server -> device: answer to SUBSCRIBE
	TypeReceipt    Type = 12 // device -> server: clicked / opened
	TypeSetBadge   Type = 13 // device -> server: set the badge counter
)

// ProtocolVersion is the device protocol version this package speaks.
const ProtocolVersion = 1

// DefaultMaxFrame is the default largest frame (header included) either side accepts.
const DefaultMaxFrame = 64 << 10

// MaxHeader is the largest header: a 5-byte uvarint length (lengths fit in 32 bits) and the type byte.
const MaxHeader = binary.MaxVarintLen32 + 1

var typeNames = [...]string{"", "CONNECT", "CONNACK", "PING", "PONG", "PUSH", "ACK", "UPSTREAM", "UPACK", "DISCONNECT", "SUBSCRIBE", "SUBACK", "RECEIPT", "SETBADGE"}

func (t Type) String() string {
	if t.Valid() {
		return typeNames[t]
	}
	return fmt.Sprintf("TYPE(%d)", uint8(t))
}

// Valid reports whether t is a frame type of this protocol version.
func (t Type) Valid() bool { return t >= TypeConnect && t <= TypeSetBadge }

// Errors returned by the decoder. They all mean the peer is broken: the
// connection is closed with the matching close code.
var (
	ErrTooLarge    = errors.New("frame: frame larger than the maximum")
	ErrMalformed   = errors.New("frame: malformed frame header")
	ErrUnknownType = errors.New("frame: unknown frame type")
)

// Frame is one decoded frame. Body aliases the decoder's buffer and is valid
// only until the next call that reads a frame.
type Frame struct {
	Type Type
	Body []byte
}

// Decode parses one frame from the front of buf. It returns the frame and the
// number of bytes it used; n == 0 with a nil error means buf holds only part
// of a frame. Decode never allocates.
func Decode(buf []byte, maxFrame int) (f Frame, n int, err error) {
	length, hn := binary.Uvarint(buf)
	switch {
	case hn == 0:
		if len(buf) >= binary.MaxVarintLen32 {
			return Frame{}, 0, ErrMalformed
		}
		return Frame{}, 0, nil
	case hn < 0 || hn > binary.MaxVarintLen32 || (hn > 1 && buf[hn-1] == 0):
		return Frame{}, 0, ErrMalformed
	case length == 0:
		return Frame{}, 0, ErrMalformed
	case length+uint64(hn) > uint64(maxFrame):
		return Frame{}, 0, ErrTooLarge
	}
	if len(buf) > hn && !Type(buf[hn]).Valid() {
		return Frame{}, 0, ErrUnknownType
	}
	total := hn + int(length)
	if len(buf) < total {
		return Frame{}, 0, nil
	}
	t := Type(buf[hn])
	return Frame{Type: t, Body: buf[hn+1 : total : total]}, total, nil
}

// AppendFrame appends a frame with the given body to dst.
func AppendFrame(dst []byte, t Type, body []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(body)+1))
	dst = append(dst, byte(t))
	return append(dst, body...)
}

// AppendMessage appends a frame whose body is the protobuf encoding of m.
func AppendMessage(dst []byte, t Type, m proto.Message) ([]byte, error) {
	size := proto.Size(m)
	dst = binary.AppendUvarint(dst, uint64(size+1))
	dst = append(dst, byte(t))
	out, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(dst, m)
	if err != nil {
		return dst, fmt.Errorf("frame: encode %s: %w", t, err)
	}
	return out, nil
}

// Ping and Pong are the complete two-byte heartbeat frames.
var (
	Ping = []byte{1, byte(TypePing)}
	Pong = []byte{1, byte(TypePong)}
)

// Reader reads frames from a stream, reusing one buffer.
type Reader struct {
	r   *bufio.Reader
	max int
	buf []byte
}

// NewReader returns a Reader that rejects frames larger than maxFrame bytes.
func NewReader(r io.Reader, maxFrame int) *Reader {
	if maxFrame <= 0 {
		maxFrame = DefaultMaxFrame
	}
	return &Reader{r: bufio.NewReaderSize(r, 512), max: maxFrame}
}

// Next reads the next frame. The frame's body is valid until the next call.
// It returns io.EOF at a clean end of stream, and io.ErrUnexpectedEOF when
// the stream ends inside a frame.
func (r *Reader) Next() (Frame, error) {
	length, err := r.readLength()
	if err != nil {
		return Frame{}, err
	}
	if length == 0 {
		return Frame{}, ErrMalformed
	}
	if length+uint64(uvarintLen(length)) > uint64(r.max) {
		return Frame{}, ErrTooLarge
	}
	// Check the type byte before waiting for the body, so garbage (an HTTP
	// request, say) is rejected at once instead of after a stall.
	tb, err := r.r.ReadByte()
	if err != nil {
		return Frame{}, io.ErrUnexpectedEOF
	}
	t := Type(tb)
	if !t.Valid() {
		return Frame{}, ErrUnknownType
	}
	n := int(length) - 1
	if cap(r.buf) < n {
		r.buf = make([]byte, n)
	}
	b := r.buf[:n]
	if _, err := io.ReadFull(r.r, b); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, err
	}
	return Frame{Type: t, Body: b}, nil
}

// readLength reads the uvarint length prefix, at most MaxVarintLen32 bytes.
func (r *Reader) readLength() (uint64, error) {
	var x uint64
	for i := 0; i < binary.MaxVarintLen32; i++ {
		b, err := r.r.ReadByte()
		if err != nil {
			if i == 0 && errors.Is(err, io.EOF) {
				return 0, io.EOF
			}
			if errors.Is(err, io.EOF) {
				return 0, io.ErrUnexpectedEOF
			}
			return 0, err
		}
		x |= uint64(b&0x7f) << (7 * i)
		if b < 0x80 {
			if i > 0 && b == 0 {
				return 0, ErrMalformed // over-long encoding
			}
			return x, nil
		}
	}
	return 0, ErrMalformed
}

// Buffered reports how many bytes are already buffered (for tests and metrics).
func (r *Reader) Buffered() int { return r.r.Buffered() }

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}
