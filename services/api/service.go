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

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/pkg/receipt"
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
	receipts  *receipt.Emitter // nil = no receipts
	nextID    func() string    // time-ordered message ids (an ids.Generator)
	now       func() time.Time
	limits    sendLimits
	rates     *rateLimiter
	admin     []byte // SHA-256 of the admin token; nil when admin calls are off
	apps      store.AppCache
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
	Tags     []string // nil = keep the device's tags (none for a new device)
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
	app, err := s.apps.Get(ctx, s.store, key, s.now())
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
	if err := validAlias(r.Alias); err != nil {
		return "", "", err
	}
	var tags []string
	if r.Tags != nil {
		if tags, err = validNames("tags", r.Tags, maxTagsPerDevice); err != nil {
			return "", "", err
		}
	}
	now := s.now().UTC()
	d := store.Device{AppID: app.ID, ID: r.DeviceID, Platform: r.Platform, Alias: r.Alias, Tags: tags, CreatedAt: now, UpdatedAt: now}
	existed := false
	if d.ID == "" {
		d.ID = randomString(24, lowerAlnum)
	} else {
		old, err := s.store.Device(ctx, app.ID, d.ID)
		switch {
		case err == nil:
			existed = true
			d.CreatedAt = old.CreatedAt
			d.Topics = old.Topics
			if r.Tags == nil {
				d.Tags = old.Tags
			}
		case !errors.Is(err, herald.ErrDeviceNotFound):
			return "", "", fmt.Errorf("look up device: %w", err)
		}
	}
	token = randomToken()
	d.TokenHash = TokenHash(token)
	if err := s.store.PutDevice(ctx, d); err != nil {
		return "", "", fmt.Errorf("store device: %w", err)
	}
	if existed {
		s.refresh(ctx, app.ID, d.ID)
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
