package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/pkg/envelope/internalv1"
)

// Limits on the fields of a send that the configuration does not set.
const (
	maxCollapseIDLen     = 128
	maxIdempotencyKeyLen = 256
)

// sendRequest is a send as a client asked for it, whichever protocol
// carried it. Pointers are nil when the field was absent.
type sendRequest struct {
	DeviceIDs      []string
	HasAudience    bool
	Notification   *notificationRequest
	Data           map[string]string
	TTLSeconds     *int64
	Priority       string
	CollapseID     string
	IdempotencyKey string
}

type notificationRequest struct {
	Title       string
	Body        string
	Badge       *int32
	Sound       string
	ClickAction string
}

// sendLimits bound what a send may ask for.
type sendLimits struct {
	MaxTargets      int
	MaxPayloadBytes int
	DefaultTTL      time.Duration
	MaxTTL          time.Duration
}

// validSend is a send that passed validation.
type validSend struct {
	DeviceIDs      []string               // deduplicated, in request order
	Notification   *devicev1.Notification // nil when absent; Badge -1 = not set
	Data           map[string]string
	TTL            time.Duration // 0 = deliver to online devices only
	Priority       internalv1.Priority
	CollapseID     string
	IdempotencyKey string
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", herald.ErrInvalidArgument, fmt.Sprintf(format, args...))
}

// validate checks r against l and normalizes it. It has no side effects.
func (r sendRequest) validate(l sendLimits) (validSend, error) {
	var v validSend
	if !r.HasAudience {
		return v, invalid("audience is required")
	}
	if len(r.DeviceIDs) == 0 {
		return v, invalid("audience.device_ids needs at least one device id")
	}
	if len(r.DeviceIDs) > l.MaxTargets {
		return v, invalid("audience.device_ids has %d device ids, the limit is %d", len(r.DeviceIDs), l.MaxTargets)
	}
	seen := make(map[string]struct{}, len(r.DeviceIDs))
	v.DeviceIDs = make([]string, 0, len(r.DeviceIDs))
	for i, id := range r.DeviceIDs {
		if !validDeviceID(id) {
			return validSend{}, invalid("audience.device_ids[%d] is not a valid device id (1-128 characters of A-Z a-z 0-9 . _ : -)", i)
		}
		if _, dup := seen[id]; dup {
			continue
		}
		seen[id] = struct{}{}
		v.DeviceIDs = append(v.DeviceIDs, id)
	}

	if r.Notification == nil && len(r.Data) == 0 {
		return validSend{}, invalid("notification or data is required")
	}
	if n := r.Notification; n != nil {
		if n.Title == "" && n.Body == "" {
			return validSend{}, invalid("notification needs a title or a body")
		}
		badge := int32(-1)
		if n.Badge != nil {
			if *n.Badge < 0 {
				return validSend{}, invalid("notification.badge must not be negative")
			}
			badge = *n.Badge
		}
		v.Notification = &devicev1.Notification{
			Title:       n.Title,
			Body:        n.Body,
			Badge:       badge,
			Sound:       n.Sound,
			ClickAction: n.ClickAction,
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
	return v, nil
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

type audienceBody struct {
	DeviceIDs []string `json:"device_ids"`
}

type notificationBody struct {
	Title       string `json:"title"`
	Body        string `json:"body"`
	Badge       *int32 `json:"badge"`
	Sound       string `json:"sound"`
	ClickAction string `json:"click_action"`
}

type optionsBody struct {
	TTLSeconds     *int64 `json:"ttl_seconds"`
	Priority       string `json:"priority"`
	CollapseID     string `json:"collapse_id"`
	IdempotencyKey string `json:"idempotency_key"`
}

// decodeSendRequest parses and validates the JSON body of a send.
func decodeSendRequest(body []byte, l sendLimits) (validSend, error) {
	var b sendBody
	if err := decodeJSON(body, &b); err != nil {
		return validSend{}, err
	}
	r := sendRequest{Data: b.Data}
	if b.Audience != nil {
		r.HasAudience = true
		r.DeviceIDs = b.Audience.DeviceIDs
	}
	if n := b.Notification; n != nil {
		r.Notification = &notificationRequest{
			Title: n.Title, Body: n.Body, Badge: n.Badge, Sound: n.Sound, ClickAction: n.ClickAction,
		}
	}
	if o := b.Options; o != nil {
		r.TTLSeconds = o.TTLSeconds
		r.Priority = o.Priority
		r.CollapseID = o.CollapseID
		r.IdempotencyKey = o.IdempotencyKey
	}
	return r.validate(l)
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
