package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/pkg/audience"
	"github.com/heraldpush/herald/pkg/envelope/internalv1"
)

// Limits on the fields of a send that the configuration does not set.
const (
	maxCollapseIDLen     = 128
	maxIdempotencyKeyLen = 256
	maxBadgeAdd          = 99 // "badge": "+N"
)

// Audience kinds, as the status store and GET /v1/messages name them.
const (
	audienceDevices = "devices"
	audienceAliases = "aliases"
	audienceTags    = "tags"
	audienceTopic   = "topic"
	audienceAll     = "all"
)

// sendRequest is a send as a client asked for it, whichever protocol
// carried it. Pointers (and slices) are nil when the field was absent.
type sendRequest struct {
	Audience          *audienceRequest
	Notification      *notificationRequest
	Data              map[string]string
	TTLSeconds        *int64
	Priority          string
	CollapseID        string
	IdempotencyKey    string
	SendAt            string // RFC 3339; "" = now
	SpreadOverSeconds int64
}

// audienceRequest is the audience of a send: exactly one of the first five
// fields is set.
type audienceRequest struct {
	DeviceIDs []string
	Aliases   []string
	Tags      *string
	Topic     *string
	All       bool
	Platform  string
}

type notificationRequest struct {
	Title       string
	Body        string
	Badge       *int32
	BadgeAdd    *int32 // "+N"; exclusive with Badge
	Sound       string
	ClickAction string
	Image       string
	Channel     string
}

// sendLimits bound what a send may ask for.
type sendLimits struct {
	MaxTargets      int
	MaxPayloadBytes int
	DefaultTTL      time.Duration
	MaxTTL          time.Duration
	MaxSendAhead    time.Duration
	MaxSpread       time.Duration
}

// validSend is a send that passed validation.
type validSend struct {
	Kind      string   // audienceDevices, audienceAliases, ...
	DeviceIDs []string // devices: deduplicated, in request order
	Aliases   []string // aliases: deduplicated, in request order
	TagExpr   string   // tags: a valid tag expression
	Topic     string   // topic: a valid topic name
	Platform  string   // "" = any

	Notification   *devicev1.Notification // nil when absent; Badge -1 = not set
	BadgeAdd       int32                  // > 0: add to each device's badge counter
	Data           map[string]string
	TTL            time.Duration // 0 = deliver to online devices only
	Priority       internalv1.Priority
	CollapseID     string
	IdempotencyKey string
	SendAt         time.Time     // zero = now
	Spread         time.Duration // group audiences: pace deliveries over this window
}

// group reports whether the send goes to a group audience (tags, topic,
// all): one push-log record, fanned out by the gateways.
func (v validSend) group() bool {
	return v.Kind == audienceTags || v.Kind == audienceTopic || v.Kind == audienceAll
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", herald.ErrInvalidArgument, fmt.Sprintf(format, args...))
}

// validate checks r against l at time now and normalizes it. It has no
// side effects.
func (r sendRequest) validate(l sendLimits, now time.Time) (validSend, error) {
	var v validSend
	if r.Audience == nil {
		return v, invalid("audience is required")
	}
	if err := r.Audience.validate(l, &v); err != nil {
		return validSend{}, err
	}

	if r.Notification == nil && len(r.Data) == 0 {
		return validSend{}, invalid("notification or data is required")
	}
	if n := r.Notification; n != nil {
		if n.Title == "" && n.Body == "" {
			return validSend{}, invalid("notification needs a title or a body")
		}
		badge := int32(-1)
		switch {
		case n.Badge != nil && n.BadgeAdd != nil:
			return validSend{}, invalid("notification.badge and notification.badge_add are exclusive")
		case n.Badge != nil:
			if *n.Badge < 0 {
				return validSend{}, invalid("notification.badge must not be negative")
			}
			badge = *n.Badge
		case n.BadgeAdd != nil:
			if *n.BadgeAdd < 1 || *n.BadgeAdd > maxBadgeAdd {
				return validSend{}, invalid("notification.badge increment must be between +1 and +%d", maxBadgeAdd)
			}
			v.BadgeAdd = *n.BadgeAdd
		}
		v.Notification = &devicev1.Notification{
			Title:       n.Title,
			Body:        n.Body,
			Badge:       badge,
			Sound:       n.Sound,
			ClickAction: n.ClickAction,
			Image:       n.Image,
			Channel:     n.Channel,
		}
	}
	for k := range r.Data {
		if k == "" {
			return validSend{}, invalid("data keys must not be empty")
		}
	}
	if len(r.Data) > 0 {
		v.Data = r.Data
	}
	if size := proto.Size(&devicev1.Push{Notification: v.Notification, Data: v.Data}); size > l.MaxPayloadBytes {
		return validSend{}, fmt.Errorf("%w: notification and data encode to %d bytes, the limit is %d",
			herald.ErrTooLarge, size, l.MaxPayloadBytes)
	}

	switch {
	case r.TTLSeconds == nil:
		v.TTL = l.DefaultTTL
	case *r.TTLSeconds < 0:
		return validSend{}, invalid("options.ttl_seconds must not be negative")
	case *r.TTLSeconds > int64(l.MaxTTL/time.Second):
		return validSend{}, invalid("options.ttl_seconds is %d, the limit is %d", *r.TTLSeconds, int64(l.MaxTTL/time.Second))
	default:
		v.TTL = time.Duration(*r.TTLSeconds) * time.Second
	}
	switch r.Priority {
	case "", "high":
		v.Priority = internalv1.Priority_PRIORITY_HIGH
	case "normal":
		v.Priority = internalv1.Priority_PRIORITY_NORMAL
	default:
		return validSend{}, invalid("options.priority must be \"high\" or \"normal\"")
	}
	if len(r.CollapseID) > maxCollapseIDLen {
		return validSend{}, invalid("options.collapse_id is longer than %d bytes", maxCollapseIDLen)
	}
	if len(r.IdempotencyKey) > maxIdempotencyKeyLen {
		return validSend{}, invalid("options.idempotency_key is longer than %d bytes", maxIdempotencyKeyLen)
	}
	v.CollapseID = r.CollapseID
	v.IdempotencyKey = r.IdempotencyKey

	if r.SendAt != "" {
		at, err := time.Parse(time.RFC3339, r.SendAt)
		if err != nil {
			return validSend{}, invalid("options.send_at must be an RFC 3339 time such as 2026-01-02T15:04:05Z")
		}
		switch {
		case !at.After(now):
			return validSend{}, invalid("options.send_at %s is not in the future", r.SendAt)
		case at.Sub(now) > l.MaxSendAhead:
			return validSend{}, invalid("options.send_at %s is more than %s ahead", r.SendAt, humanDuration(l.MaxSendAhead))
		}
		v.SendAt = at.UTC()
	}
	switch s := r.SpreadOverSeconds; {
	case s == 0:
	case s < 0:
		return validSend{}, invalid("options.spread_over_seconds must not be negative")
	case !v.group():
		return validSend{}, invalid("options.spread_over_seconds applies only to tags, topic and all audiences")
	case s > int64(l.MaxSpread/time.Second):
		return validSend{}, invalid("options.spread_over_seconds is %d, the limit is %d", s, int64(l.MaxSpread/time.Second))
	case v.TTL > 0 && time.Duration(s)*time.Second > v.TTL:
		return validSend{}, invalid("options.spread_over_seconds (%d) is longer than the message lives (ttl_seconds %d)", s, int64(v.TTL/time.Second))
	default:
		v.Spread = time.Duration(s) * time.Second
	}
	return v, nil
}

// validate checks the audience and records it in v.
func (a *audienceRequest) validate(l sendLimits, v *validSend) error {
	var kinds []string
	if a.DeviceIDs != nil {
		kinds = append(kinds, "device_ids")
	}
	if a.Aliases != nil {
		kinds = append(kinds, "aliases")
	}
	if a.Tags != nil {
		kinds = append(kinds, "tags")
	}
	if a.Topic != nil {
		kinds = append(kinds, "topic")
	}
	if a.All {
		kinds = append(kinds, "all")
	}
	switch len(kinds) {
	case 0:
		return invalid("audience needs one of device_ids, aliases, tags, topic or all")
	case 1:
	default:
		return invalid("audience must have exactly one of device_ids, aliases, tags, topic or all, not %s", strings.Join(kinds, " and "))
	}
	if a.Platform != "" && !platforms[a.Platform] {
		return invalid("audience.platform must be one of android, ios, web, other")
	}
	v.Platform = a.Platform

	switch {
	case a.DeviceIDs != nil:
		v.Kind = audienceDevices
		if len(a.DeviceIDs) == 0 {
			return invalid("audience.device_ids needs at least one device id")
		}
		if len(a.DeviceIDs) > l.MaxTargets {
			return invalid("audience.device_ids has %d device ids, the limit is %d", len(a.DeviceIDs), l.MaxTargets)
		}
		for i, id := range a.DeviceIDs {
			if !validDeviceID(id) {
				return invalid("audience.device_ids[%d] is not a valid device id (1-128 characters of A-Z a-z 0-9 . _ : -)", i)
			}
		}
		v.DeviceIDs = dedup(a.DeviceIDs)
	case a.Aliases != nil:
		v.Kind = audienceAliases
		if len(a.Aliases) == 0 {
			return invalid("audience.aliases needs at least one alias")
		}
		if len(a.Aliases) > l.MaxTargets {
			return invalid("audience.aliases has %d aliases, the limit is %d", len(a.Aliases), l.MaxTargets)
		}
		for i, alias := range a.Aliases {
			if alias == "" || len(alias) > maxAliasLen || !printable(alias) {
				return invalid("audience.aliases[%d] is not a valid alias (1-%d bytes of printable UTF-8)", i, maxAliasLen)
			}
		}
		v.Aliases = dedup(a.Aliases)
	case a.Tags != nil:
		v.Kind = audienceTags
		if *a.Tags == "" {
			return invalid("audience.tags must not be empty")
		}
		if _, err := audience.Parse(*a.Tags); err != nil {
			return invalid("audience.tags: %s", err.Error())
		}
		v.TagExpr = *a.Tags
	case a.Topic != nil:
		v.Kind = audienceTopic
		if !audience.ValidName(*a.Topic) {
			return invalid("audience.topic must be 1-64 characters of A-Z a-z 0-9 _ . : -")
		}
		v.Topic = *a.Topic
	default:
		v.Kind = audienceAll
	}
	return nil
}

// dedup returns ss without repeats, in first-seen order.
func dedup(ss []string) []string {
	seen := make(map[string]struct{}, len(ss))
	out := make([]string, 0, len(ss))
	for _, s := range ss {
		if _, dup := seen[s]; dup {
			continue
		}
		seen[s] = struct{}{}
		out = append(out, s)
	}
	return out
}

// humanDuration writes d as whole days or hours when it is one.
func humanDuration(d time.Duration) string {
	switch {
	case d >= 24*time.Hour && d%(24*time.Hour) == 0:
		return fmt.Sprintf("%d days", d/(24*time.Hour))
	case d >= time.Hour && d%time.Hour == 0:
		return fmt.Sprintf("%d hours", d/time.Hour)
	}
	return d.String()
}

// validDeviceID reports whether id matches [A-Za-z0-9._:-]{1,128}.
func validDeviceID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '.', c == '_', c == ':', c == '-':
		default:
			return false
		}
	}
	return true
}

// JSON bodies of POST /v1/messages.
type sendBody struct {
	Audience     *audienceBody     `json:"audience"`
	Notification *notificationBody `json:"notification"`
	Data         map[string]string `json:"data"`
	Options      *optionsBody      `json:"options"`
}

// audienceBody is "all" or an object with one audience field.
type audienceBody struct {
	DeviceIDs []string `json:"device_ids"`
	Aliases   []string `json:"aliases"`
	Tags      *string  `json:"tags"`
	Topic     *string  `json:"topic"`
	All       bool     `json:"all"`
	Platform  string   `json:"platform"`
}

func (a *audienceBody) UnmarshalJSON(b []byte) error {
	switch {
	case len(b) > 0 && b[0] == '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil || s != "all" {
			return invalid(`audience must be "all" or an object`)
		}
		*a = audienceBody{All: true}
		return nil
	case len(b) > 0 && b[0] == '{':
		type plain audienceBody // without this method
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		var p plain
		if err := dec.Decode(&p); err != nil {
			return err
		}
		*a = audienceBody(p)
		return nil
	}
	return invalid(`audience must be "all" or an object`)
}

type notificationBody struct {
	Title       string     `json:"title"`
	Body        string     `json:"body"`
	Badge       *badgeBody `json:"badge"`
	Sound       string     `json:"sound"`
	ClickAction string     `json:"click_action"`
	Image       string     `json:"image"`
	Channel     string     `json:"channel"`
}

// badgeBody is a badge number (5) or an increment ("+1").
type badgeBody struct {
	set *int32
	add *int32
}

func (bb *badgeBody) UnmarshalJSON(b []byte) error {
	const rule = `notification.badge must be a number from 0 to 2147483647 or a string "+1" to "+%d"`
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil || len(s) < 2 || len(s) > 3 || s[0] != '+' {
			return invalid(rule, maxBadgeAdd)
		}
		n := 0
		for _, c := range []byte(s[1:]) {
			if c < '0' || c > '9' {
				return invalid(rule, maxBadgeAdd)
			}
			n = n*10 + int(c-'0')
		}
		if n < 1 || n > maxBadgeAdd {
			return invalid(rule, maxBadgeAdd)
		}
		add := int32(n)
		bb.add = &add
		return nil
	}
	n, err := strconv.ParseInt(string(b), 10, 32)
	if err != nil {
		return invalid(rule, maxBadgeAdd)
	}
	set := int32(n)
	bb.set = &set
	return nil
}

type optionsBody struct {
	TTLSeconds        *int64 `json:"ttl_seconds"`
	Priority          string `json:"priority"`
	CollapseID        string `json:"collapse_id"`
	IdempotencyKey    string `json:"idempotency_key"`
	SendAt            string `json:"send_at"`
	SpreadOverSeconds int64  `json:"spread_over_seconds"`
}

// decodeSendRequest parses and validates the JSON body of a send.
func decodeSendRequest(body []byte, l sendLimits, now time.Time) (validSend, error) {
	var b sendBody
	if err := decodeJSON(body, &b); err != nil {
		return validSend{}, err
	}
	r := sendRequest{Data: b.Data}
	if a := b.Audience; a != nil {
		r.Audience = &audienceRequest{
			DeviceIDs: a.DeviceIDs, Aliases: a.Aliases, Tags: a.Tags, Topic: a.Topic, All: a.All, Platform: a.Platform,
		}
	}
	if n := b.Notification; n != nil {
		r.Notification = &notificationRequest{
			Title: n.Title, Body: n.Body, Sound: n.Sound, ClickAction: n.ClickAction, Image: n.Image, Channel: n.Channel,
		}
		if n.Badge != nil {
			r.Notification.Badge, r.Notification.BadgeAdd = n.Badge.set, n.Badge.add
		}
	}
	if o := b.Options; o != nil {
		r.TTLSeconds = o.TTLSeconds
		r.Priority = o.Priority
		r.CollapseID = o.CollapseID
		r.IdempotencyKey = o.IdempotencyKey
		r.SendAt = o.SendAt
		r.SpreadOverSeconds = o.SpreadOverSeconds
	}
	return r.validate(l, now)
}

// decodeJSON decodes exactly one JSON object from body into v, rejecting
// unknown fields, and describes syntax errors with their byte offset.
func decodeJSON(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return invalid("request body is empty, expected a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return invalidJSON(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return invalid("invalid JSON at byte %d: unexpected data after the object", dec.InputOffset())
	}
	return nil
}

func invalidJSON(err error) error {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.Is(err, herald.ErrInvalidArgument):
		return err // a field's own decoder said what is wrong
	case errors.As(err, &syntax):
		return invalid("invalid JSON at byte %d: %s", syntax.Offset, syntax.Error())
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			field = "the body"
		}
		return invalid("invalid JSON at byte %d: %s must be %s, not %s", typ.Offset, field, jsonKind(typ.Type), typ.Value)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return invalid("invalid JSON: unexpected end of the body")
	}
	return invalid("invalid JSON: %s", err.Error())
}

// jsonKind names the JSON value a Go type decodes from.
func jsonKind(t reflect.Type) string {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil {
		return "a value"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return fmt.Sprintf("an integer (%s)", t.Kind())
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return "a value"
}
