package herald_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"

	herald "github.com/heraldpush/herald/sdk/go"
)

// A device connects with the credentials it got at registration and prints
// every message until interrupted.
func Example() {
	c, err := herald.New(herald.Config{
		Addrs:    []string{"127.0.0.1:5222"},
		AppKey:   os.Getenv("HERALD_APP_KEY"),
		DeviceID: os.Getenv("HERALD_DEVICE_ID"),
		Token:    os.Getenv("HERALD_DEVICE_TOKEN"),
		OnMessage: func(m herald.Message) {
			fmt.Printf("%s: %s\n", m.Title, m.Body) // acknowledged when this returns
		},
		OnState: func(s herald.State, err error) {
			slog.Info("herald state", "state", s, "err", err)
		},
	})
	if err != nil {
		slog.Error("bad config", "err", err)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	err = c.Run(ctx)
	var ce *herald.CloseError
	switch {
	case errors.As(err, &ce):
		slog.Error("server refused the device", "code", uint32(ce.Code), "reason", ce.Reason)
	case err != nil && !errors.Is(err, context.Canceled):
		slog.Error("herald", "err", err)
	}
}

func ExampleClient_Upstream() {
	var c *herald.Client // from herald.New, with Run running
	if c == nil {
		return
	}
	err := c.Upstream(context.Background(), "chat", []byte(`{"text":"hi"}`))
	var ue *herald.UpstreamError
	if errors.As(err, &ue) {
		fmt.Println("refused:", ue.Code)
	}
}

// A topic subscription is stored by the server once Subscribe returns.
func ExampleClient_Subscribe() {
	var c *herald.Client // from herald.New, with Run running
	if c == nil {
		return
	}
	err := c.Subscribe(context.Background(), "news", "sports.eu")
	var se *herald.SubscribeError
	if errors.As(err, &se) {
		fmt.Println("refused:", se.Code)
	}
}

// The cursors and the recent group message ids are what an app persists to
// resume where it left off after a restart.
func ExampleClient_BroadcastCursor() {
	type saved struct {
		Cursor, BroadcastCursor string
		GroupIDs                []string
	}
	var s saved // loaded from the app's storage
	c, err := herald.New(herald.Config{
		Addrs: []string{"127.0.0.1:5222"}, AppKey: "ak", DeviceID: "d1", Token: "tk",
		ResumeCursor:    s.Cursor,
		BroadcastCursor: s.BroadcastCursor,
		HandledGroupIDs: s.GroupIDs,
		OnMessage:       func(m herald.Message) {},
	})
	if err != nil {
		return
	}
	// ... c.Run(ctx) until the app stops, then:
	s = saved{Cursor: c.Cursor(), BroadcastCursor: c.BroadcastCursor(), GroupIDs: c.HandledGroupIDs()}
	_ = s // written back to the app's storage
}

// Reporting what the user did feeds the message's clicked count, the
// app's statistics and its webhook.
func ExampleClient_ReportClick() {
	var c *herald.Client // from herald.New, with Run running
	var m herald.Message // the message whose notification was tapped
	if c == nil {
		return
	}
	var later []string // reported once connected again
	if err := c.ReportClick(context.Background(), m.ID); errors.Is(err, herald.ErrNotConnected) {
		later = append(later, m.ID)
	}
	_ = c.SetBadge(context.Background(), 0) // the user has seen everything
	_ = later
}
