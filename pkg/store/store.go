// Package store defines Herald's persistent state behind small interfaces:
// the app and device registry, the offline inbox, per-message delivery status
// and idempotency keys. pebblestore implements them on the embedded engine;
// storetest is the contract suite every implementation must pass.
package store

import (
	"context"
	"time"
)

// App is a tenant: one company app with its own devices and credentials.
type App struct {
	ID        string
	Name      string
	Key       string // public, sent by devices in CONNECT and by services in Basic auth
	Secret    string // private, Basic auth password of the app's services
	CreatedAt time.Time
}

// Device is a registered device of an app.
type Device struct {
	AppID     string
	ID        string
	Platform  string // android | ios | web | other
	Alias     string
	TokenHash []byte // SHA-256 of the device token; the token itself is never stored
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Registry stores apps and devices.
type Registry interface {
	// CreateApp stores a new app. Its ID and Key must be unique.
	CreateApp(ctx context.Context, a App) error
	// AppByID and AppByKey return herald.ErrAppNotFound when absent.
	AppByID(ctx context.Context, id string) (App, error)
	AppByKey(ctx context.Context, key string) (App, error)
	// PutDevice inserts or replaces the device (AppID, ID).
	PutDevice(ctx context.Context, d Device) error
	// Device returns herald.ErrDeviceNotFound when absent.
	Device(ctx context.Context, appID, deviceID string) (Device, error)
	// DevicesExist reports which of the given device ids are registered.
	DevicesExist(ctx context.Context, appID string, deviceIDs []string) (map[string]bool, error)
	// DeleteDevice removes the device and its inbox. Deleting an absent
	// device returns herald.ErrDeviceNotFound.
	DeleteDevice(ctx context.Context, appID, deviceID string) error
}

// InboxEntry is one stored message for an offline device.
type InboxEntry struct {
	MessageID  string // time-ordered: the inbox is read in message id order
	CollapseID string
	ExpiresAt  time.Time
	Body       []byte // encoded internalv1.Envelope
}

// Inbox is the per-device offline store.
type Inbox interface {
	// Put stores e for the device. When e.CollapseID is set and another
	// entry with the same collapse id is stored, the older of the two (by
	// message id) is removed and its id returned as collapsed ("" if none).
	// If e itself is the older one, e is not stored and its own id is
	// returned. Putting an entry that is already stored is a no-op.
	Put(ctx context.Context, appID, deviceID string, e InboxEntry) (collapsed string, err error)
	// List returns up to limit entries with message id > after, in order.
	List(ctx context.Context, appID, deviceID, after string, limit int) ([]InboxEntry, error)
	// Delete removes the given entries; absent ids are ignored.
	Delete(ctx context.Context, appID, deviceID string, messageIDs ...string) error
}

// DeliveryState is the state of one message for one target device.
type DeliveryState uint8

const (
	StatePending   DeliveryState = 0
	StateDelivered DeliveryState = 1 // acked by the device
	StateExpired   DeliveryState = 2 // TTL passed, or online-only and the device was offline
	StateFailed    DeliveryState = 3 // invalid or deleted device
	StateCollapsed DeliveryState = 4 // replaced by a newer message with the same collapse id
)

func (s DeliveryState) String() string {
	switch s {
	case StatePending:
		return "pending"
	case StateDelivered:
		return "delivered"
	case StateExpired:
		return "expired"
	case StateFailed:
		return "failed"
	case StateCollapsed:
		return "collapsed"
	}
	return "unknown"
}

// Message is what the status store knows about an accepted message.
type Message struct {
	ID        string
	AppID     string
	Targets   []string // device ids
	CreatedAt time.Time
	ExpiresAt time.Time
}

// Counts are a message's per-state target counts. Pending is
// Targeted minus every terminal state.
type Counts struct {
	Targeted, Delivered, Pending, Expired, Failed, Collapsed int64
}

// Transition is one terminal state change for one (message, device).
type Transition struct {
	MessageID string
	DeviceID  string
	State     DeliveryState
}

// Status tracks every message's per-device delivery state. Transitions are
// idempotent: only a pending target changes state, so redelivery after a
// crash never counts twice.
type Status interface {
	// CreateMessage records an accepted message with all its targets pending.
	CreateMessage(ctx context.Context, m Message) error
	// Mark applies the transitions; those whose target is not pending (or
	// whose message is unknown) are ignored.
	Mark(ctx context.Context, ts ...Transition) error
	// MessageStatus returns the message and its counts, or herald.ErrMessageNotFound.
	MessageStatus(ctx context.Context, messageID string) (Message, Counts, error)
}

// Idempotency maps an app's idempotency keys to the message they created.
type Idempotency interface {
	// Claim stores key -> messageID unless the key is already claimed and
	// unexpired, in which case it returns the message id that claimed it.
	// A fresh claim returns "" .
	Claim(ctx context.Context, appID, key, messageID string, ttl time.Duration) (existing string, err error)
	// Release removes the claim if it still maps to messageID (the send it
	// guarded failed, so a retry with the same key must send again).
	Release(ctx context.Context, appID, key, messageID string) error
}

// Store is everything above; the embedded and Cassandra engines implement it.
type Store interface {
	Registry
	Inbox
	Status
	Idempotency
	Close() error
}
