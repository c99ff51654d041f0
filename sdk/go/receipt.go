package herald

import (
	"context"
	"fmt"
	"math"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
)

// ReportClick tells the server the user tapped the notifications of the
// given messages (a "clicked" receipt for the app's statistics and webhook).
// Like ReportOpen and SetBadge it only sends on the current session: it
// returns ErrNotConnected when there is none, ErrClosed after Close, and
// does not wait for an answer (there is none) or resend after a drop.
func (c *Client) ReportClick(ctx context.Context, ids ...string) error {
	return c.report(ctx, devicev1.ReceiptEvent_RECEIPT_EVENT_CLICKED, ids)
}

// ReportOpen tells the server the app was opened from the given messages
// (an "opened" receipt). It works like ReportClick.
func (c *Client) ReportOpen(ctx context.Context, ids ...string) error {
	return c.report(ctx, devicev1.ReceiptEvent_RECEIPT_EVENT_OPENED, ids)
}

// SetBadge sets the device's badge counter on the server to n (0 resets it
// once the user has seen the messages); sends with "badge": "+1" count up
// from it. It works like ReportClick.
func (c *Client) SetBadge(ctx context.Context, n int) error {
	if n < 0 || n > math.MaxInt32 {
		return fmt.Errorf("%w: badge %d out of range", ErrInvalidArgument, n)
	}
	b, err := frame.AppendMessage(nil, frame.TypeSetBadge, &devicev1.SetBadge{Badge: int32(n)})
	if err != nil {
		return fmt.Errorf("herald: set badge: %w", err)
	}
	return c.send(ctx, b)
}

func (c *Client) report(ctx context.Context, event devicev1.ReceiptEvent, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	s, err := c.current(ctx)
	if err != nil {
		return err
	}
	// As many ids per RECEIPT frame as fit in the server's frame size.
	var (
		buf   []byte
		start int
		size  int // body bytes of the frame being filled
	)
	const eventBytes = 2 // field 2, a one-byte enum value
	flush := func(end int) error {
		var err error
		buf, err = frame.AppendMessage(buf, frame.TypeReceipt, &devicev1.Receipt{MessageIds: ids[start:end], Event: event})
		if err != nil {
			return fmt.Errorf("herald: receipt: %w", err)
		}
		start, size = end, 0
		return nil
	}
	for i, id := range ids {
		n := 1 + uvarintLen(len(id)) + len(id) // field 1: tag, length, bytes
		if frame.MaxHeader+eventBytes+n > s.maxFrame {
			return fmt.Errorf("%w: message id of %d bytes", ErrTooLarge, len(id))
		}
		if i > start && frame.MaxHeader+eventBytes+size+n > s.maxFrame {
			if err := flush(i); err != nil {
				return err
			}
		}
		size += n
	}
	if err := flush(len(ids)); err != nil {
		return err
	}
	if err := s.write(buf); err != nil {
		return fmt.Errorf("%w: %w", ErrNotConnected, err)
	}
	return nil
}

// send writes one frame on the current session.
func (c *Client) send(ctx context.Context, b []byte) error {
	s, err := c.current(ctx)
	if err != nil {
		return err
	}
	if len(b) > s.maxFrame {
		return fmt.Errorf("%w: frame of %d bytes, server accepts %d", ErrTooLarge, len(b), s.maxFrame)
	}
	if err := s.write(b); err != nil {
		return fmt.Errorf("%w: %w", ErrNotConnected, err)
	}
	return nil
}

// current returns the live session without waiting for one.
func (c *Client) current(ctx context.Context) (*session, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	s, closed := c.sess, c.closed
	c.mu.Unlock()
	select {
	case <-c.finished:
		closed = true
	default:
	}
	if closed {
		return nil, ErrClosed
	}
	if s == nil {
		return nil, ErrNotConnected
	}
	select {
	case <-s.dead:
		return nil, ErrNotConnected
	default:
		return s, nil
	}
}

func uvarintLen(x int) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}
