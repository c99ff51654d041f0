package herald

import (
	"errors"
	"fmt"
	"io"

	"github.com/heraldpush/herald/api/frame"
)

// initialReadBuffer is the read buffer of a new connection; it grows up to
// the largest frame accepted when a bigger frame arrives.
const initialReadBuffer = 4 << 10

// frameReader reads frames with frame.Decode from one growing buffer. Unlike
// frame.Reader it reports the underlying read errors as they are (a timeout
// stays a timeout) and tells how much is buffered.
type frameReader struct {
	r          io.Reader
	max        int
	buf        []byte
	start, end int // unread bytes are buf[start:end]
}

func newFrameReader(r io.Reader, maxFrame int) *frameReader {
	return &frameReader{r: r, max: maxFrame, buf: make([]byte, min(initialReadBuffer, maxFrame))}
}

// next returns the next frame; its body is valid until the next call. It
// returns io.EOF at a clean end of stream and io.ErrUnexpectedEOF inside a frame.
func (fr *frameReader) next() (frame.Frame, error) {
	for {
		f, n, err := frame.Decode(fr.buf[fr.start:fr.end], fr.max)
		if err != nil {
			return frame.Frame{}, err
		}
		if n > 0 {
			fr.start += n
			return f, nil
		}
		if fr.start > 0 {
			fr.end = copy(fr.buf, fr.buf[fr.start:fr.end])
			fr.start = 0
		}
		if fr.end == len(fr.buf) {
			if len(fr.buf) >= fr.max {
				return frame.Frame{}, fmt.Errorf("herald: partial frame fills the %d-byte buffer: %w", len(fr.buf), frame.ErrMalformed)
			}
			grown := make([]byte, min(2*len(fr.buf), fr.max))
			copy(grown, fr.buf[:fr.end])
			fr.buf = grown
		}
		m, err := fr.r.Read(fr.buf[fr.end:])
		fr.end += m
		if err != nil && m == 0 {
			if errors.Is(err, io.EOF) && fr.end > 0 {
				return frame.Frame{}, io.ErrUnexpectedEOF
			}
			return frame.Frame{}, err
		}
	}
}

// buffered reports how many received bytes are not yet returned as frames.
func (fr *frameReader) buffered() int { return fr.end - fr.start }
