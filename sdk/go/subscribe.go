package herald

import (
	"context"
	"crypto/rand"
	"fmt"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
)

// maxTopicName is the longest topic name the server accepts.
const maxTopicName = 64

// Subscribe subscribes the device to topics (names of 1-64 characters of
// A-Z a-z 0-9 _ . : -). It returns once the server has stored the change,
// or with a *SubscribeError if the server refused it; subscribing to a topic
// the device already has is not an error. Like Upstream it waits for a
// connection and resends on the next one if the connection drops before
// the answer (a subscription change is idempotent); it gives up when ctx
// ends or the client closes. Topic messages sent from then on reach the
// device, and so do those of the topic still within their TTL that the
// server replays on the next connect.
func (c *Client) Subscribe(ctx context.Context, topics ...string) error {
	return c.subscribe(ctx, topics, false)
}

// Unsubscribe removes the device from topics; it works like Subscribe.
// Unsubscribing from a topic the device does not have is not an error.
func (c *Client) Unsubscribe(ctx context.Context, topics ...string) error {
	return c.subscribe(ctx, topics, true)
}

func (c *Client) subscribe(ctx context.Context, topics []string, unsubscribe bool) error {
	if len(topics) == 0 {
		return fmt.Errorf("%w: no topic", ErrInvalidArgument)
	}
	for _, t := range topics {
		if !validTopic(t) {
			return fmt.Errorf("%w: topic %q: want 1-%d characters of A-Z a-z 0-9 _ . : -", ErrInvalidArgument, t, maxTopicName)
		}
	}
	id := rand.Text()
	b, err := frame.AppendMessage(nil, frame.TypeSubscribe, &devicev1.Subscribe{RequestId: id, Topics: topics, Unsubscribe: unsubscribe})
	if err != nil {
		return fmt.Errorf("herald: subscribe: %w", err)
	}
	code, err := c.request(ctx, id, frame.TypeSubscribe, b)
	if err != nil {
		return err
	}
	if code != "" {
		return &SubscribeError{RequestID: id, Code: code}
	}
	return nil
}

// validTopic reports whether s is a topic name the server accepts:
// [A-Za-z0-9_.:-]{1,64}.
func validTopic(s string) bool {
	if len(s) == 0 || len(s) > maxTopicName {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch b := s[i]; {
		case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9', b == '_', b == '.', b == ':', b == '-':
		default:
			return false
		}
	}
	return true
}
