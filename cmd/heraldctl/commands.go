package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"
)

func (c *cli) appCreate(ctx context.Context, args []string) error {
	fs := c.flagSet("app create")
	name := fs.String("name", "", "app name")
	tokenFlag := fs.String("admin-token", "", "admin token (env HERALD_ADMIN_TOKEN, or ./data/admin-token)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if err := noPositional("app create", pos); err != nil {
		return err
	}
	if err := require("app create", [2]string{"name", *name}); err != nil {
		return err
	}
	token, err := c.adminToken(*tokenFlag)
	if err != nil {
		return err
	}
	out, err := c.client().createApp(ctx, token, *name)
	if err != nil {
		return err
	}
	return c.print(out, [][2]string{{"app_id", out.AppID}, {"app_key", out.AppKey}, {"app_secret", out.AppSecret}})
}

func (c *cli) deviceRegister(ctx context.Context, args []string) error {
	fs := c.flagSet("device register")
	key, secret := c.appFlags(fs)
	var req registerDeviceRequest
	fs.StringVar(&req.DeviceID, "device-id", "", "device id (default: the server picks one)")
	fs.StringVar(&req.Platform, "platform", "android", "device platform")
	fs.StringVar(&req.Alias, "alias", "", "device alias")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if err := noPositional("device register", pos); err != nil {
		return err
	}
	if err := require("device register", [2]string{"app-key", *key}, [2]string{"app-secret", *secret}); err != nil {
		return err
	}
	out, err := c.client().registerDevice(ctx, basic(*key, *secret), req)
	if err != nil {
		return err
	}
	return c.print(out, [][2]string{{"device_id", out.DeviceID}, {"device_token", out.DeviceToken}})
}

func (c *cli) deviceDelete(ctx context.Context, args []string) error {
	fs := c.flagSet("device delete")
	key, secret := c.appFlags(fs)
	id := fs.String("device-id", "", "device id")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if err := noPositional("device delete", pos); err != nil {
		return err
	}
	if err := require("device delete", [2]string{"app-key", *key}, [2]string{"app-secret", *secret}, [2]string{"device-id", *id}); err != nil {
		return err
	}
	if err := c.client().deleteDevice(ctx, basic(*key, *secret), *id); err != nil {
		return err
	}
	if c.json {
		return c.print(map[string]any{"device_id": *id, "deleted": true}, nil)
	}
	return nil
}

func (c *cli) send(ctx context.Context, args []string) error {
	fs := c.flagSet("send")
	key, secret := c.appFlags(fs)
	var devices, aliases, data listFlag
	var aud audience
	fs.Var(&devices, "device", "target device id (repeatable)")
	fs.Var(&aliases, "alias", "target alias: every device of a user (repeatable)")
	fs.StringVar(&aud.Tags, "tags", "", "target the devices whose tags match `EXPR`, e.g. 'vip && (cn || hk)'")
	fs.StringVar(&aud.Topic, "topic", "", "target the devices subscribed to `TOPIC`")
	fs.BoolVar(&aud.All, "all", false, "target every device of the app")
	fs.StringVar(&aud.Platform, "platform", "", "only devices of this platform (with any audience)")
	fs.Var(&data, "data", "data entry `key=value` (repeatable)")
	var n notification
	fs.StringVar(&n.Title, "title", "", "notification title")
	fs.StringVar(&n.Body, "body", "", "notification body")
	badge := fs.String("badge", "", "notification badge: a number `N`, or +1 to count up the device's badge")
	fs.StringVar(&n.Sound, "sound", "", "notification sound")
	fs.StringVar(&n.ClickAction, "click-action", "", "notification click action")
	fs.StringVar(&n.Image, "image", "", "notification image `URL`")
	fs.StringVar(&n.Channel, "channel", "", "notification channel (Android) / category")
	ttl := fs.Int64("ttl", 0, "time to live in `seconds` (default: the server's; 0 = online devices only)")
	var opts sendOptions
	fs.StringVar(&opts.Priority, "priority", "", "high, or normal to wait for the device's next heartbeat (default: the server's)")
	fs.StringVar(&opts.CollapseID, "collapse-id", "", "collapse id: a newer message with it replaces an undelivered older one")
	fs.StringVar(&opts.IdempotencyKey, "idempotency-key", "", "idempotency key: a retried send with it is accepted once")
	sendAt := fs.String("send-at", "", "send later: an RFC 3339 `time`, or +DURATION from now (e.g. +10m)")
	fs.Int64Var(&opts.SpreadOverSeconds, "spread", 0, "spread the deliveries of a --tags/--topic/--all send evenly over `seconds`")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if err := noPositional("send", pos); err != nil {
		return err
	}
	if err := require("send", [2]string{"app-key", *key}, [2]string{"app-secret", *secret}); err != nil {
		return err
	}
	set := setFlags(fs)
	aud.DeviceIDs, aud.Aliases = devices, aliases
	kinds := 0
	for _, given := range []bool{len(devices) > 0, len(aliases) > 0, set["tags"], set["topic"], aud.All} {
		if given {
			kinds++
		}
	}
	switch {
	case kinds == 0:
		return usagef("send: an audience is required: --device, --alias, --tags, --topic or --all")
	case kinds > 1:
		return usagef("send: give one audience: --device, --alias, --tags, --topic or --all")
	}
	req := sendRequest{Audience: aud}
	if set["badge"] {
		req.Notification = &n
		if *badge == "+1" {
			n.Badge = "+1"
		} else {
			b, err := strconv.Atoi(*badge)
			if err != nil || b < 0 || strings.HasPrefix(*badge, "+") { // "+2" is not an increment the API knows
				return usagef("send: --badge %q: want a number >= 0 or +1", *badge)
			}
			n.Badge = b
		}
	}
	if n.Title != "" || n.Body != "" || n.Sound != "" || n.ClickAction != "" || n.Image != "" || n.Channel != "" {
		req.Notification = &n
	}
	if len(data) > 0 {
		req.Data = make(map[string]string, len(data))
		for _, kv := range data {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return usagef("send: --data %q: want key=value", kv)
			}
			req.Data[k] = v
		}
	}
	if req.Notification == nil && req.Data == nil {
		return usagef("send: nothing to send: give --title/--body or --data")
	}
	switch opts.Priority {
	case "", "high", "normal":
	default:
		return usagef("send: --priority %q: want high or normal", opts.Priority)
	}
	if set["ttl"] {
		if *ttl < 0 {
			return usagef("send: --ttl must not be negative")
		}
		opts.TTLSeconds = ttl
	}
	if opts.SpreadOverSeconds < 0 {
		return usagef("send: --spread must not be negative")
	}
	if *sendAt != "" {
		at, err := c.parseSendAt(*sendAt)
		if err != nil {
			return usagef("send: --send-at %q: %v", *sendAt, err)
		}
		opts.SendAt = at
	}
	if opts != (sendOptions{}) {
		req.Options = &opts
	}
	out, err := c.client().send(ctx, basic(*key, *secret), req)
	if err != nil {
		return err
	}
	if c.json {
		return c.print(out, nil)
	}
	if len(out.InvalidDeviceIDs) > 0 {
		fmt.Fprintf(c.stderr, "heraldctl: warning: unknown devices not targeted: %s\n", strings.Join(out.InvalidDeviceIDs, ", "))
	}
	if len(out.CappedDeviceIDs) > 0 {
		fmt.Fprintf(c.stderr, "heraldctl: warning: devices over the daily cap not targeted: %s\n", strings.Join(out.CappedDeviceIDs, ", "))
	}
	if out.State == "scheduled" {
		fmt.Fprintf(c.stderr, "heraldctl: scheduled for %s\n", opts.SendAt)
	}
	_, err = fmt.Fprintln(c.stdout, out.MessageID)
	return err
}

// parseSendAt accepts an RFC 3339 time or +DURATION from now and returns
// it as RFC 3339 (UTC, whole seconds kept as given).
func (c *cli) parseSendAt(v string) (string, error) {
	if rest, ok := strings.CutPrefix(v, "+"); ok {
		d, err := time.ParseDuration(rest)
		if err != nil || d <= 0 {
			return "", errors.New("want an RFC 3339 time or +DURATION (e.g. +10m)")
		}
		return c.now().Add(d).UTC().Format(time.RFC3339), nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return "", errors.New("want an RFC 3339 time (2006-01-02T15:04:05Z) or +DURATION")
	}
	return t.Format(time.RFC3339Nano), nil
}

func (c *cli) cancel(ctx context.Context, args []string) error {
	fs := c.flagSet("cancel")
	key, secret := c.appFlags(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("cancel: want exactly one message id, got %d", len(pos))
	}
	if err := require("cancel", [2]string{"app-key", *key}, [2]string{"app-secret", *secret}); err != nil {
		return err
	}
	out, err := c.client().cancel(ctx, basic(*key, *secret), pos[0])
	if err != nil {
		return err
	}
	return c.print(out, [][2]string{{"message_id", out.MessageID}, {"state", out.State}})
}

func (c *cli) status(ctx context.Context, args []string) error {
	fs := c.flagSet("status")
	key, secret := c.appFlags(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("status: want exactly one message id, got %d", len(pos))
	}
	if err := require("status", [2]string{"app-key", *key}, [2]string{"app-secret", *secret}); err != nil {
		return err
	}
	out, err := c.client().status(ctx, basic(*key, *secret), pos[0])
	if err != nil {
		return err
	}
	n := out.Counts
	itoa := func(v count) string { return strconv.FormatInt(int64(v), 10) }
	fields := [][2]string{{"message_id", out.MessageID}, {"state", out.State}}
	if out.Audience != "" {
		fields = append(fields, [2]string{"audience", out.Audience})
	}
	if out.SendAt != "" {
		fields = append(fields, [2]string{"send_at", out.SendAt})
	}
	return c.print(out, append(fields, [][2]string{
		{"targeted", itoa(n.Targeted)},
		{"delivered", itoa(n.Delivered)},
		{"clicked", itoa(n.Clicked)},
		{"pending", itoa(n.Pending)},
		{"expired", itoa(n.Expired)},
		{"failed", itoa(n.Failed)},
		{"collapsed", itoa(n.Collapsed)},
		{"recalled", itoa(n.Recalled)},
	}...))
}

// print writes v as JSON with --json, else the fields as aligned lines.
func (c *cli) print(v any, fields [][2]string) error {
	if c.json {
		enc := json.NewEncoder(c.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	for _, f := range fields {
		if _, err := fmt.Fprintf(c.stdout, "%-13s %s\n", f[0]+":", f[1]); err != nil {
			return err
		}
	}
	return nil
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	*l = append(*l, v)
	return nil
}

// setFlags returns the names of the flags given on the command line.
func setFlags(fs *flag.FlagSet) map[string]bool {
	set := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}
