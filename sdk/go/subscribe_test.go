package herald

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
)

func TestSubscribe(t *testing.T) {
	outer := t
	p := newPeer(t)
	tc := startClient(t, testConfig(p.addr()))
	pc := p.accept(t)
	pc.handshake(30)

	t.Run("waits for SUBACK", func(t *testing.T) {
		done := make(chan error, 1)
		go func() { done <- tc.Subscribe(t.Context(), "news", "sports.eu") }()
		var sub devicev1.Subscribe
		pc.expect(frame.TypeSubscribe, &sub)
		if !slices.Equal(sub.GetTopics(), []string{"news", "sports.eu"}) || sub.GetUnsubscribe() || sub.GetRequestId() == "" {
			t.Fatalf("SUBSCRIBE = %v", &sub)
		}
		select {
		case err := <-done:
			t.Fatalf("Subscribe returned %v before SUBACK", err)
		case <-time.After(20 * time.Millisecond):
		}
		pc.send(frame.TypeSubAck, &devicev1.SubAck{RequestId: "someone-else"})
		pc.send(frame.TypeSubAck, &devicev1.SubAck{RequestId: sub.GetRequestId()})
		if err := <-done; err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
	})

	t.Run("unsubscribe", func(t *testing.T) {
		done := make(chan error, 1)
		go func() { done <- tc.Unsubscribe(t.Context(), "news") }()
		var sub devicev1.Subscribe
		pc.expect(frame.TypeSubscribe, &sub)
		if !slices.Equal(sub.GetTopics(), []string{"news"}) || !sub.GetUnsubscribe() {
			t.Fatalf("SUBSCRIBE = %v, want unsubscribe from news", &sub)
		}
		pc.send(frame.TypeSubAck, &devicev1.SubAck{RequestId: sub.GetRequestId()})
		if err := <-done; err != nil {
			t.Fatalf("Unsubscribe: %v", err)
		}
	})

	t.Run("server error", func(t *testing.T) {
		done := make(chan error, 1)
		go func() { done <- tc.Subscribe(t.Context(), "news") }()
		var sub devicev1.Subscribe
		pc.expect(frame.TypeSubscribe, &sub)
		pc.send(frame.TypeSubAck, &devicev1.SubAck{RequestId: sub.GetRequestId(), Error: "unavailable"})
		var se *SubscribeError
		if err := <-done; !errors.As(err, &se) || se.Code != "unavailable" || se.RequestID != sub.GetRequestId() {
			t.Fatalf("Subscribe = %v, want *SubscribeError unavailable", err)
		}
	})

	t.Run("invalid topics are refused before sending", func(t *testing.T) {
		for _, topics := range [][]string{nil, {""}, {"news", "a b"}, {strings.Repeat("x", 65)}, {"naïve"}, {"a/b"}} {
			if err := tc.Subscribe(t.Context(), topics...); !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("Subscribe(%q) = %v, want ErrInvalidArgument", topics, err)
			}
		}
		// Nothing went out: the next frame is the next valid request.
		done := make(chan error, 1)
		longest := strings.Repeat("x", 64)
		go func() { done <- tc.Subscribe(t.Context(), "A-z_0.9:x", longest) }()
		var sub devicev1.Subscribe
		pc.expect(frame.TypeSubscribe, &sub)
		if !slices.Equal(sub.GetTopics(), []string{"A-z_0.9:x", longest}) {
			t.Fatalf("SUBSCRIBE = %v", &sub)
		}
		pc.send(frame.TypeSubAck, &devicev1.SubAck{RequestId: sub.GetRequestId()})
		if err := <-done; err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
	})

	t.Run("resent after a drop", func(t *testing.T) {
		done := make(chan error, 1)
		go func() { done <- tc.Subscribe(t.Context(), "news") }()
		var first devicev1.Subscribe
		pc.expect(frame.TypeSubscribe, &first)
		_ = pc.conn.Close()

		pc = p.accept(outer)
		pc.handshake(30)
		var second devicev1.Subscribe
		pc.expect(frame.TypeSubscribe, &second)
		if second.GetRequestId() != first.GetRequestId() || !slices.Equal(second.GetTopics(), []string{"news"}) {
			t.Fatalf("resent %v, want the same request as %v", &second, &first)
		}
		pc.send(frame.TypeSubAck, &devicev1.SubAck{RequestId: second.GetRequestId()})
		if err := <-done; err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
	})

	t.Run("context ends", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
		defer cancel()
		if err := tc.Subscribe(ctx, "news"); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Subscribe = %v, want DeadlineExceeded", err)
		}
		pc.expect(frame.TypeSubscribe, nil)
	})

	t.Run("after close", func(t *testing.T) {
		_ = tc.Close()
		tc.result(t)
		if err := tc.Subscribe(t.Context(), "news"); !errors.Is(err, ErrClosed) {
			t.Fatalf("Subscribe after Close = %v, want ErrClosed", err)
		}
	})
}

func TestSubscribeWaitsForConnection(t *testing.T) {
	p := newPeer(t)
	tc := startClient(t, testConfig(p.addr()))
	done := make(chan error, 1)
	go func() { done <- tc.Subscribe(t.Context(), "early") }()

	pc := p.accept(t)
	pc.handshake(30)
	var sub devicev1.Subscribe
	pc.expect(frame.TypeSubscribe, &sub)
	pc.send(frame.TypeSubAck, &devicev1.SubAck{RequestId: sub.GetRequestId()})
	if err := <-done; err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
}
