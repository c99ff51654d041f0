package api

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/pkg/envelope/internalv1"
	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/pkg/route"
	"github.com/heraldpush/herald/pkg/store"
)

const (
	// idempotencyTTL is how long an idempotency key maps to its message.
	idempotencyTTL = 24 * time.Hour
	maxAppNameLen  = 128
	maxAliasLen    = 128
	maxMessageID   = 64
)

// Platforms a device may register with.
var platforms = map[string]bool{"android": true, "ios": true, "web": true, "other": true}

// service is the business API. REST and gRPC handlers translate onto it;
// it works on plain Go types and returns errors wrapping herald sentinels.
type service struct {
	store  store.Store
	log    pushlog.Appender
	kicker Kicker
	// endpoints answers GET /v1/endpoints; nil when the role has none.
	endpoints Endpoints
	nextID    func() string // time-ordered message ids (an ids.Generator)
	now       func() time.Time
	limits    sendLimits
	admin     []byte // SHA-256 of the admin token; nil when admin calls are off
	apps      appCache
	logger    *slog.Logger
	// accepted is called once per message appended to the push log.
	accepted func(ctx context.Context)
}

// Credentials of a new app.
type appCredentials struct {
	AppID, AppKey, AppSecret string
}

// deviceRegistration is a device registration request.
type deviceRegistration struct {
	DeviceID string // "" = choose a new one
	Platform string
	Alias    string
}

// sendResult is the answer to an accepted send.
type sendResult struct {
	MessageID        string
	InvalidDeviceIDs []string
}

// messageStatus is what GET /v1/messages/{id} returns.
type messageStatus struct {
	MessageID string
	State     string // sending | done
	Counts    store.Counts
}

// authorizeAdmin checks an admin bearer token.
func (s *service) authorizeAdmin(token string) error {
	if s.admin == nil {
		return fmt.Errorf("%w: admin calls are disabled (no admin token configured)", herald.ErrForbidden)
	}
	if token == "" {
		return fmt.Errorf("%w: admin token required", herald.ErrUnauthenticated)
	}
	h := sha256.Sum256([]byte(token))
	if subtle.ConstantTimeCompare(h[:], s.admin) != 1 {
		return fmt.Errorf("%w: wrong admin token", herald.ErrUnauthenticated)
	}
	return nil
}

// authenticateApp returns the app whose key and secret these are.
func (s *service) authenticateApp(ctx context.Context, key, secret string) (store.App, error) {
	if key == "" || secret == "" {
		return store.App{}, fmt.Errorf("%w: app key and secret required", herald.ErrUnauthenticated)
	}
	app, err := s.apps.get(ctx, s.store, key, s.now())
	if errors.Is(err, herald.ErrAppNotFound) {
		return store.App{}, fmt.Errorf("%w: wrong app key or secret", herald.ErrUnauthenticated)
	}
	if err != nil {
		return store.App{}, fmt.Errorf("look up app key: %w", err)
	}
	want := sha256.Sum256([]byte(app.Secret))
	got := sha256.Sum256([]byte(secret))
	if subtle.ConstantTimeCompare(want[:], got[:]) != 1 {
		return store.App{}, fmt.Errorf("%w: wrong app key or secret", herald.ErrUnauthenticated)
	}
	return app, nil
}

// CreateApp creates an app with fresh random credentials.
func (s *service) CreateApp(ctx context.Context, name string) (appCredentials, error) {
	switch {
	case name == "":
		return appCredentials{}, invalid("name is required")
	case len(name) > maxAppNameLen:
		return appCredentials{}, invalid("name is longer than %d bytes", maxAppNameLen)
	case !printable(name):
		return appCredentials{}, invalid("name must be printable UTF-8")
	}
	const attempts = 3 // a collision of random ids is a freak event; retry a little
	var err error
	for range attempts {
		a := store.App{
			ID:        randomString(16, lowerAlnum),
			Name:      name,
			Key:       randomString(20, alnum),
			Secret:    randomToken(),
			CreatedAt: s.now().UTC(),
		}
		err = s.store.CreateApp(ctx, a)
		if err == nil {
			s.logger.InfoContext(ctx, "app created", "app_id", a.ID, "name", a.Name)
			return appCredentials{AppID: a.ID, AppKey: a.Key, AppSecret: a.Secret}, nil
		}
		if !errors.Is(err, herald.ErrConflict) {
			break
		}
	}
	return appCredentials{}, fmt.Errorf("create app: %w", err)
}

// RegisterDevice upserts a device and gives it a fresh token; the
// previous token stops working.
func (s *service) RegisterDevice(ctx context.Context, app store.App, r deviceRegistration) (deviceID, token string, err error) {
	if r.DeviceID != "" && !validDeviceID(r.DeviceID) {
		return "", "", invalid("device_id must be 1-128 characters of A-Z a-z 0-9 . _ : -")
	}
	if !platforms[r.Platform] {
		return "", "", invalid("platform must be one of android, ios, web, other")
	}
	if len(r.Alias) > maxAliasLen {
		return "", "", invalid("alias is longer than %d bytes", maxAliasLen)
	}
	if !printable(r.Alias) {
		return "", "", invalid("alias must be printable UTF-8")
	}
	now := s.now().UTC()
	d := store.Device{AppID: app.ID, ID: r.DeviceID, Platform: r.Platform, Alias: r.Alias, CreatedAt: now, UpdatedAt: now}
	if d.ID == "" {
		d.ID = randomString(24, lowerAlnum)
	} else {
		old, err := s.store.Device(ctx, app.ID, d.ID)
		switch {
		case err == nil:
			d.CreatedAt = old.CreatedAt
		case !errors.Is(err, herald.ErrDeviceNotFound):
			return "", "", fmt.Errorf("look up device: %w", err)
		}
	}
	token = randomToken()
	d.TokenHash = TokenHash(token)
	if err := s.store.PutDevice(ctx, d); err != nil {
		return "", "", fmt.Errorf("store device: %w", err)
	}
	return d.ID, token, nil
}

// TokenHash is what the store keeps of a device token (store.Device.TokenHash):
// its SHA-256. Gateways compare the hash of the token a device presents.
func TokenHash(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

// DeleteDevice removes a device and, if a Kicker is set, closes its session.
func (s *service) DeleteDevice(ctx context.Context, app store.App, deviceID string) error {
	if !validDeviceID(deviceID) {
		return fmt.Errorf("%w: %q", herald.ErrDeviceNotFound, deviceID)
	}
	err := s.store.DeleteDevice(ctx, app.ID, deviceID)
	if errors.Is(err, herald.ErrDeviceNotFound) {
		return fmt.Errorf("%w: %q", herald.ErrDeviceNotFound, deviceID)
	}
	if err != nil {
		return fmt.Errorf("delete device: %w", err)
	}
	if s.kicker != nil {
		// The device is gone either way; a failed kick only delays the
		// session's end until the gateway next checks the registry.
		if err := s.kicker.Kick(context.WithoutCancel(ctx), app.ID, deviceID); err != nil {
			s.logger.WarnContext(ctx, "kick deleted device", "app_id", app.ID, "device_id", deviceID, "err", err)
		}
	}
	return nil
}

// Send accepts a validated message: it answers only once the message is in
// the push log, and leaves nothing behind that would send it when it fails.
func (s *service) Send(ctx context.Context, app store.App, v validSend) (sendResult, error) {
	id := s.nextID()
	now := s.now()

	if v.IdempotencyKey != "" {
		existing, err := s.store.Claim(ctx, app.ID, v.IdempotencyKey, id, idempotencyTTL)
		if err != nil {
			return sendResult{}, fmt.Errorf("claim idempotency key: %w", err)
		}
		if existing != "" {
			return sendResult{MessageID: existing}, nil
		}
	}
	// From here on, a failure must release the claim so a retry sends. The
	// cleanup runs even when the caller has gone away.
	cleanup := context.WithoutCancel(ctx)
	release := func() {
		if v.IdempotencyKey == "" {
			return
		}
		if err := s.store.Release(cleanup, app.ID, v.IdempotencyKey, id); err != nil {
			s.logger.ErrorContext(ctx, "release idempotency key", "app_id", app.ID, "message_id", id, "err", err)
		}
	}

	exist, err := s.store.DevicesExist(ctx, app.ID, v.DeviceIDs)
	if err != nil {
		release()
		return sendResult{}, fmt.Errorf("look up targets: %w", err)
	}
	var valid, invalidIDs []string
	for _, d := range v.DeviceIDs {
		if exist[d] {
			valid = append(valid, d)
		} else {
			invalidIDs = append(invalidIDs, d)
		}
	}
	if len(valid) == 0 {
		release()
		return sendResult{}, fmt.Errorf("%w: none of the targets is a registered device of the app", herald.ErrDeviceNotFound)
	}

	msg := store.Message{ID: id, AppID: app.ID, Targets: v.DeviceIDs, CreatedAt: now.UTC()}
	var expiresAtMS int64
	if v.TTL > 0 {
		msg.ExpiresAt = now.Add(v.TTL).UTC()
		expiresAtMS = msg.ExpiresAt.UnixMilli()
	}
	if err := s.store.CreateMessage(ctx, msg); err != nil {
		release()
		return sendResult{}, fmt.Errorf("create message status: %w", err)
	}
	if err := s.store.Mark(ctx, transitions(id, invalidIDs, store.StateFailed)...); err != nil {
		s.fail(cleanup, app, id, valid)
		release()
		return sendResult{}, fmt.Errorf("mark invalid targets: %w", err)
	}

	kind := devicev1.Kind_KIND_DATA
	if v.Notification != nil {
		kind = devicev1.Kind_KIND_NOTIFICATION
	}
	recs := make([]pushlog.Record, 0, len(valid))
	for _, d := range valid {
		env := &internalv1.Envelope{
			AppId:    app.ID,
			DeviceId: d,
			Push: &devicev1.Push{
				MessageId:    id,
				Kind:         kind,
				Notification: v.Notification,
				Data:         v.Data,
				SentAtMs:     now.UnixMilli(),
				CollapseId:   v.CollapseID,
			},
			ExpiresAtMs: expiresAtMS,
			OnlineOnly:  v.TTL == 0,
			Priority:    v.Priority,
		}
		b, err := proto.Marshal(env)
		if err != nil {
			s.fail(cleanup, app, id, valid)
			release()
			return sendResult{}, fmt.Errorf("encode envelope: %w", err)
		}
		recs = append(recs, pushlog.Record{Key: []byte(route.Key(app.ID, d)), Value: b})
	}
	// The append is not cut short when the caller goes away: an append
	// abandoned halfway could still become durable after we had reported
	// the message as failed and released its idempotency key.
	if err := s.log.Append(cleanup, pushlog.TopicPush, recs...); err != nil {
		s.fail(cleanup, app, id, valid)
		release()
		s.logger.ErrorContext(ctx, "append to push log", "app_id", app.ID, "message_id", id, "err", err)
		if errors.Is(err, herald.ErrUnavailable) {
			return sendResult{}, fmt.Errorf("append to push log: %w", err)
		}
		return sendResult{}, fmt.Errorf("%w: append to push log: %w", herald.ErrUnavailable, err)
	}
	if s.accepted != nil {
		s.accepted(ctx)
	}
	return sendResult{MessageID: id, InvalidDeviceIDs: invalidIDs}, nil
}

// fail marks the targets of a message that will not be sent as failed.
func (s *service) fail(ctx context.Context, app store.App, id string, targets []string) {
	if err := s.store.Mark(ctx, transitions(id, targets, store.StateFailed)...); err != nil {
		s.logger.ErrorContext(ctx, "mark unsent targets failed", "app_id", app.ID, "message_id", id, "err", err)
	}
}

func transitions(messageID string, devices []string, st store.DeliveryState) []store.Transition {
	ts := make([]store.Transition, len(devices))
	for i, d := range devices {
		ts[i] = store.Transition{MessageID: messageID, DeviceID: d, State: st}
	}
	return ts
}

// MessageStatus returns the delivery status of one of the app's messages.
func (s *service) MessageStatus(ctx context.Context, app store.App, messageID string) (messageStatus, error) {
	if messageID == "" {
		return messageStatus{}, invalid("message_id is required")
	}
	notFound := fmt.Errorf("%w: %q", herald.ErrMessageNotFound, messageID)
	if len(messageID) > maxMessageID {
		return messageStatus{}, notFound
	}
	m, c, err := s.store.MessageStatus(ctx, messageID)
	if errors.Is(err, herald.ErrMessageNotFound) {
		return messageStatus{}, notFound
	}
	if err != nil {
		return messageStatus{}, fmt.Errorf("read message status: %w", err)
	}
	if m.AppID != app.ID {
		return messageStatus{}, notFound
	}
	st := messageStatus{MessageID: m.ID, State: "done", Counts: c}
	if c.Pending > 0 {
		st.State = "sending"
	}
	return st, nil
}

const (
	lowerAlnum = "abcdefghijklmnopqrstuvwxyz0123456789"
	alnum      = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
)

// randomString returns n characters drawn uniformly from chars (len < 256).
func randomString(n int, chars string) string {
	out := make([]byte, n)
	limit := 256 - 256%len(chars) // reject bytes that would bias the draw
	var buf [64]byte
	for i := 0; i < n; {
		_, _ = rand.Read(buf[:]) // crypto/rand.Read never fails
		for _, b := range buf {
			if int(b) >= limit {
				continue
			}
			out[i] = chars[int(b)%len(chars)]
			i++
			if i == n {
				break
			}
		}
	}
	return string(out)
}

// randomToken returns 32 random bytes in unpadded base64url (43 characters).
func randomToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// printable reports whether s is valid UTF-8 without control characters.
func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}
