package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	herald "github.com/heraldpush/herald/sdk/go"
)

// listenLine is one received message as printed by listen.
type listenLine struct {
	MessageID   string            `json:"message_id"`
	Kind        string            `json:"kind"`
	Title       string            `json:"title"`
	Body        string            `json:"body"`
	Badge       *int              `json:"badge,omitempty"`
	Sound       string            `json:"sound,omitempty"`
	ClickAction string            `json:"click_action,omitempty"`
	Image       string            `json:"image,omitempty"`
	Channel     string            `json:"channel,omitempty"`
	Group       bool              `json:"group,omitempty"`
	Data        map[string]string `json:"data,omitempty"`
	SentAtMS    int64             `json:"sent_at_ms,omitempty"`
	CollapseID  string            `json:"collapse_id,omitempty"`
}

func (c *cli) listen(ctx context.Context, args []string) error {
	fs := c.flagSet("listen")
	key := fs.String("app-key", c.getenv("HERALD_APP_KEY"), "app key (env HERALD_APP_KEY)")
	device := fs.String("device-id", c.getenv("HERALD_DEVICE_ID"), "device id (env HERALD_DEVICE_ID)")
	token := fs.String("token", c.getenv("HERALD_DEVICE_TOKEN"), "device token (env HERALD_DEVICE_TOKEN)")
	limit := fs.Int("count", 0, "exit after this many messages (0 = run until interrupted)")
	var topics listFlag
	fs.Var(&topics, "topic", "subscribe the device to this topic once connected (repeatable)")
	endpoints := fs.String("endpoints", "", "API base `URL` to fetch the gateway list from (default: the --api URL, unless --gateway is given; \"none\": --gateway only)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	listURL := c.endpointsURL(*endpoints)
	if err := noPositional("listen", pos); err != nil {
		return err
	}
	if err := require("listen", [2]string{"app-key", *key}, [2]string{"device-id", *device}, [2]string{"token", *token}); err != nil {
		return err
	}
	if *limit < 0 {
		return usagef("listen: --count must not be negative")
	}

	var (
		client   *herald.Client
		received int
		mu       sync.Mutex // guards writeErr, set from OnMessage, and stderr
		writeErr error
	)
	note := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(c.stderr, "heraldctl: "+format+"\n", args...)
	}
	enc := json.NewEncoder(c.stdout)
	client, err = herald.New(herald.Config{
		Addrs:        []string{c.gateway},
		EndpointsURL: listURL,
		AppKey:       *key,
		DeviceID:     *device,
		Token:        *token,
		OnMessage: func(m herald.Message) {
			line := listenLine{
				MessageID: m.ID, Kind: m.Kind, Title: m.Title, Body: m.Body, Badge: m.Badge,
				Sound: m.Sound, ClickAction: m.ClickAction, Image: m.Image, Channel: m.Channel, Group: m.Group,
				Data: m.Data, CollapseID: m.CollapseID,
			}
			if !m.SentAt.IsZero() {
				line.SentAtMS = m.SentAt.UnixMilli()
			}
			if err := enc.Encode(line); err != nil {
				mu.Lock()
				writeErr = err
				mu.Unlock()
				_ = client.Close()
				return
			}
			received++
			if *limit > 0 && received >= *limit {
				_ = client.Close() // acknowledges this message, then disconnects
			}
		},
		OnState: func(s herald.State, err error) {
			switch {
			case s == herald.Connected && listURL != "":
				note("connected (gateway list from %s, fallback %s)", listURL, c.gateway)
			case s == herald.Connected:
				note("connected to %s", c.gateway)
			case s == herald.Disconnected && err != nil:
				note("disconnected: %v", err)
			}
		},
	})
	if err != nil {
		return usagef("listen: %v", err)
	}
	var (
		wg     sync.WaitGroup
		subErr error // set by the subscriber before wg.Wait returns
	)
	if len(topics) > 0 {
		wg.Go(func() {
			// Waits for the connection; ends with ErrClosed when Run returns first.
			if err := client.Subscribe(ctx, topics...); err != nil {
				if !errors.Is(err, herald.ErrClosed) && ctx.Err() == nil {
					subErr = fmt.Errorf("subscribe: %w", err)
					_ = client.Close()
				}
				return
			}
			note("subscribed to %s", topics.String())
		})
	}
	err = client.Run(ctx)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if writeErr != nil {
		return fmt.Errorf("write message: %w", writeErr)
	}
	if errors.Is(subErr, herald.ErrInvalidArgument) {
		return usagef("listen: --topic: %v", subErr)
	}
	if subErr != nil {
		return subErr
	}
	if errors.Is(err, context.Canceled) {
		return nil // interrupted
	}
	return err
}

// defaultGateway is the --gateway default (cli.go).
const defaultGateway = "127.0.0.1:5222"

// endpointsURL is where listen fetches its gateway list: --endpoints, else
// the --api URL unless a gateway was named (--gateway or HERALD_GATEWAY),
// which is then used alone. "none" turns the list off.
func (c *cli) endpointsURL(flagValue string) string {
	switch {
	case flagValue == "none":
		return ""
	case flagValue != "":
		return flagValue
	case c.getenv("HERALD_GATEWAY") != "" || c.gateway != defaultGateway:
		return ""
	}
	return c.api
}
