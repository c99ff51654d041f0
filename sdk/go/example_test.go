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
