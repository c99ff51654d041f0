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
	// Settings, changed with UpdateApp.
	WebhookURL string // receipts are POSTed here; "" = none
	RateLimit  int    // sends per second; 0 = the server default
	DailyCap   int    // notifications per device per UTC day; 0 = no cap
}

// Device is a registered device of an app.
type Device struct {
	AppID     string
	ID        string
	Platform  string // android | ios | web | other
	Alias     string
	Tags      []string // sorted, unique
	Topics    []string // sorted, unique
	TokenHash []byte   // SHA-256 of the device token; the token itself is never stored
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

	// UpdateApp replaces the settings (WebhookURL, RateLimit, DailyCap) of
	// the app a.ID; other fields are ignored. herald.ErrAppNotFound if absent.
	UpdateApp(ctx context.Context, a App) error
	// Devices returns the registered devices among ids (absent ones are
	// missing from the map).
	Devices(ctx context.Context, appID string, ids []string) (map[string]Device, error)
	// DevicesByAlias returns up to limit device ids with this alias
	// (PutDevice maintains the alias index; "" matches nothing).
	DevicesByAlias(ctx context.Context, appID, alias string, limit int) ([]string, error)
	// SetAlias sets (or, with "", clears) the device's alias, changing
	// nothing else of it, and returns it. The alias index follows.
	// herald.ErrDeviceNotFound if absent.
	SetAlias(ctx context.Context, appID, deviceID, alias string) (Device, error)
	// UpdateTags adds then removes tags on the device and returns it.
	// herald.ErrDeviceNotFound if absent.
	UpdateTags(ctx context.Context, appID, deviceID string, add, remove []string) (Device, error)
	// UpdateTopics subscribes then unsubscribes the device and returns it.
	// Subscribing records the topic as known to the app (TopicExists).
	UpdateTopics(ctx context.Context, appID, deviceID string, subscribe, unsubscribe []string) (Device, error)
	// TopicExists reports whether any device of the app ever subscribed to topic.
	TopicExists(ctx context.Context, appID, topic string) (bool, error)
}

// Badges keeps each device's badge counter (the base of "badge": "+1").
type Badges interface {
	// AddBadge adds delta to the device's counter and returns the new value.
	AddBadge(ctx context.Context, appID, deviceID string, delta int32) (int32, error)
	// SetBadge sets the counter (0 resets it).
	SetBadge(ctx context.Context, appID, deviceID string, n int32) error
	// Badge returns the counter (0 when never set).
	Badge(ctx context.Context, appID, deviceID string) (int32, error)
}

// Quotas counts notifications per device per UTC day (the app's DailyCap).
type Quotas interface {
	// CountDaily adds n to the device's count for day's UTC date and
	// returns the new count. Counts are kept at least 2 days.
	CountDaily(ctx context.Context, appID, deviceID string, day time.Time, n int64) (int64, error)
}

// Broadcast is one group (broadcast / tag / topic) message in the app's
// topic log: stored once, replayed to devices that connect later.
type Broadcast struct {
	MessageID string // time-ordered; the log is read in id order
	ExpiresAt time.Time
	Body      []byte // encoded internalv1.Envelope (with its audience)
	Recalled  bool
}

// TopicLog is each app's log of group messages.
type TopicLog interface {
	// PutBroadcast stores b; storing the same id again is a no-op.
	PutBroadcast(ctx context.Context, appID string, b Broadcast) error
	// ListBroadcasts returns up to limit unexpired broadcasts (as of now)
	// with id > after, in id order; recalled ones are included, flagged.
	ListBroadcasts(ctx context.Context, appID, after string, now time.Time, limit int) ([]Broadcast, error)
	// RecallBroadcast flags the broadcast recalled (absent: no-op).
	RecallBroadcast(ctx context.Context, appID, messageID string) error
}

// Scheduled is a send_at message waiting for its time.
type Scheduled struct {
	MessageID string
	AppID     string
	Due       time.Time
	Body      []byte // encoded internalv1.ScheduledSend
}

// Schedules holds send_at messages until the scheduler fires them.
type Schedules interface {
	PutScheduled(ctx context.Context, s Scheduled) error
	// DueScheduled returns up to limit entries with Due <= until, oldest first.
	DueScheduled(ctx context.Context, until time.Time, limit int) ([]Scheduled, error)
	// DeleteScheduled removes the entry (absent: no-op).
	DeleteScheduled(ctx context.Context, s Scheduled) error
}

// StatCounts are per-app counters of one hour.
type StatCounts struct {
	Sent, Delivered, Clicked int64
}

// StatBucket is one hour of an app's statistics.
type StatBucket struct {
	Hour time.Time // UTC, truncated to the hour
	StatCounts
}

// Stats keeps per-app hourly counters.
type Stats interface {
	// AddStats adds d to the app's counters of the hour containing at.
	AddStats(ctx context.Context, appID string, at time.Time, d StatCounts) error
	// Stats returns the non-empty hours in [from, to), in order.
	Stats(ctx context.Context, appID string, from, to time.Time) ([]StatBucket, error)
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
	StateRecalled  DeliveryState = 5 // recalled by the app before delivery
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
	case StateRecalled:
		return "recalled"
	}
	return "unknown"
}

// MessageState is the lifecycle state of a message (not of a target).
type MessageState uint8

const (
	MessageActive    MessageState = 0 // accepted and being delivered (or done)
	MessageScheduled MessageState = 1 // waiting for send_at
	MessageCancelled MessageState = 2 // cancelled before send_at
	MessageRecalled  MessageState = 3 // recalled after sending
)

func (s MessageState) String() string {
	switch s {
	case MessageActive:
		return "active"
	case MessageScheduled:
		return "scheduled"
	case MessageCancelled:
		return "cancelled"
	case MessageRecalled:
		return "recalled"
	}
	return "unknown"
}

// Message is what the status store knows about an accepted message.
type Message struct {
	ID        string
	AppID     string
	Targets   []string // device ids; empty for group messages
	CreatedAt time.Time
	ExpiresAt time.Time
	// Audience kind: devices | aliases | tags | topic | all.
	Audience string
	// Group: a broadcast/tag/topic message (counts come from counters).
	Group  bool
	State  MessageState
	SendAt time.Time // zero unless scheduled
}

// Counts are a message's per-state target counts. Pending is
// Targeted minus every terminal state. For group messages Targeted,
// Delivered and Clicked come from counters (AddCounters) and Pending is
// Targeted minus Delivered.
type Counts struct {
	Targeted, Delivered, Pending, Expired, Failed, Collapsed, Recalled, Clicked int64
}

// Counters are increments of a message's counters (receipts feed them).
type Counters struct {
	Targeted, Delivered, Clicked int64
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
	// AddCounters adds to the message's counters (unknown message: no-op).
	AddCounters(ctx context.Context, messageID string, d Counters) error
	// SetMessageState moves the message from one of the states in from to
	// to. It returns the state the message is in afterwards and whether it
	// moved; herald.ErrMessageNotFound if absent.
	SetMessageState(ctx context.Context, messageID string, from []MessageState, to MessageState) (MessageState, bool, error)
	// MessageStates returns the states of the given messages (absent ones
	// are missing from the map).
	MessageStates(ctx context.Context, messageIDs []string) (map[string]MessageState, error)
	// RecallPending marks every pending target of the message recalled and
	// returns those device ids.
	RecallPending(ctx context.Context, messageID string) ([]string, error)
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
	Badges
	Quotas
	TopicLog
	Schedules
	Stats
	Close() error
}
