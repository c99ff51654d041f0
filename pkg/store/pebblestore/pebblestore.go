// Package pebblestore implements store.Store on the embedded Pebble database
// (pkg/pebbledb): the app and device registry (with the alias index, tags
// and topics), the offline inbox, message status and state, idempotency
// keys, badges, daily quotas, the per-app topic log of group messages,
// scheduled sends and hourly statistics.
//
// Writes use pebble.NoSync: they reach Pebble's write-ahead log in order and
// are durable as soon as any later synced write on the same database is (the
// push log's Append and Commit are), see pkg/pebbledb. Reads see the store's
// own writes immediately.
//
// Read-modify-write operations (collapse, status transitions, idempotency
// claims, counters) are made atomic with striped mutexes: one stripe per
// device for the inbox, registry, badges and quotas, one per (message,
// device) for status, one per key for claims, one per message for its state
// and counters, one per key for broadcasts, schedules and stats. Locks are
// always taken in the order device stripe, then status stripes; the others
// are never held together with another, so they never deadlock.
//
// The key layout is documented in keys.go.
package pebblestore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/store"
)

// Options configure a Store. The zero value is usable.
type Options struct {
	// SweepInterval is how often Run deletes expired inbox entries and
	// idempotency claims. Default 1 minute.
	SweepInterval time.Duration
	// Now is the clock; default time.Now. Tests set it.
	Now func() time.Time
}

const (
	numStripes     = 256
	sweepBatchSize = 512
)

// Store implements store.Store on a Pebble database it does not own.
type Store struct {
	db     *pebble.DB
	opts   Options
	logger *slog.Logger

	// closeMu is held shared by every operation and exclusively by Close,
	// so that once Close returns the database is no longer touched.
	closeMu sync.RWMutex
	closed  bool

	regMu   sync.Mutex // CreateApp: id and key uniqueness
	devices [numStripes]sync.Mutex
	targets [numStripes]sync.Mutex
	claims  [numStripes]sync.Mutex
	msgs    [numStripes]sync.Mutex // message state and counters, by message id
	misc    [numStripes]sync.Mutex // broadcasts, schedules, stats: by their key
}

var _ store.Store = (*Store)(nil)

// New returns a store on db. The caller keeps ownership of db and closes it
// after Close (and after Run has returned).
func New(db *pebble.DB, opts Options, logger *slog.Logger) *Store {
	if opts.SweepInterval <= 0 {
		opts.SweepInterval = time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Store{db: db, opts: opts, logger: logger}
}

// Close waits for running calls and makes every later call fail with
// herald.ErrClosed. It does not close the database.
func (s *Store) Close() error {
	s.closeMu.Lock()
	s.closed = true
	s.closeMu.Unlock()
	return nil
}

// Run sweeps expired entries every Options.SweepInterval until ctx ends,
// then returns nil. Sweep errors are logged and retried at the next tick.
func (s *Store) Run(ctx context.Context) error {
	t := time.NewTicker(s.opts.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		n, err := s.Sweep(ctx, s.opts.Now())
		switch {
		case err != nil && ctx.Err() == nil:
			s.logger.Error("inbox sweep failed", "error", err, "deleted", n)
		case n > 0:
			s.logger.Debug("inbox sweep done", "deleted", n)
		}
	}
}

// enter starts an operation: on success the caller must call
// s.closeMu.RUnlock when done. Operations never enter twice (RWMutex read
// locks must not be taken recursively).
func (s *Store) enter(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("pebblestore: %w", err)
	}
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return fmt.Errorf("pebblestore: %w", herald.ErrClosed)
	}
	return nil
}

// ---- registry ----

type appRecord struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	Key        string    `json:"key"`
	Secret     string    `json:"secret"`
	CreatedAt  time.Time `json:"created_at"`
	WebhookURL string    `json:"webhook_url,omitempty"`
	RateLimit  int       `json:"rate_limit,omitempty"`
	DailyCap   int       `json:"daily_cap,omitempty"`
}

type deviceRecord struct {
	Platform  string    `json:"platform"`
	Alias     string    `json:"alias"`
	Tags      []string  `json:"tags,omitempty"`
	Topics    []string  `json:"topics,omitempty"`
	TokenHash []byte    `json:"token_hash"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

func (r deviceRecord) device(appID, deviceID string) store.Device {
	return store.Device{
		AppID: appID, ID: deviceID, Platform: r.Platform, Alias: r.Alias,
		Tags: r.Tags, Topics: r.Topics, TokenHash: r.TokenHash,
		CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt,
	}
}

// CreateApp stores a new app; an existing id or key is herald.ErrConflict.
func (s *Store) CreateApp(ctx context.Context, a store.App) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.closeMu.RUnlock()
	if a.ID == "" || a.Key == "" {
		return fmt.Errorf("pebblestore: create app: id and key are required: %w", herald.ErrInvalidArgument)
	}
	s.regMu.Lock()
	defer s.regMu.Unlock()
	for _, k := range [][]byte{appKey(a.ID), appKeyIndex(a.Key)} {
		ok, err := s.exists(k)
		if err != nil {
			return fmt.Errorf("pebblestore: create app %s: %w", a.ID, err)
		}
		if ok {
			return fmt.Errorf("pebblestore: create app %s: id or key taken: %w", a.ID, herald.ErrConflict)
		}
	}
	v, err := marshal(appRecord{
		ID: a.ID, Name: a.Name, Key: a.Key, Secret: a.Secret, CreatedAt: a.CreatedAt,
		WebhookURL: a.WebhookURL, RateLimit: a.RateLimit, DailyCap: a.DailyCap,
	})
	if err != nil {
		return fmt.Errorf("pebblestore: create app %s: %w", a.ID, err)
	}
	b := s.db.NewBatch()
	defer b.Close()
	_ = b.Set(appKey(a.ID), v, nil)
	_ = b.Set(appKeyIndex(a.Key), []byte(a.ID), nil)
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("pebblestore: create app %s: %w", a.ID, err)
	}
	return nil
}

// AppByID returns the app or herald.ErrAppNotFound.
func (s *Store) AppByID(ctx context.Context, id string) (store.App, error) {
	if err := s.enter(ctx); err != nil {
		return store.App{}, err
	}
	defer s.closeMu.RUnlock()
	return s.appByID(id)
}

func (s *Store) appByID(id string) (store.App, error) {
	var r appRecord
	found, err := s.getJSON(appKey(id), &r)
	if err != nil {
		return store.App{}, fmt.Errorf("pebblestore: app %s: %w", id, err)
	}
	if !found {
		return store.App{}, fmt.Errorf("pebblestore: app %s: %w", id, herald.ErrAppNotFound)
	}
	return store.App{
		ID: r.ID, Name: r.Name, Key: r.Key, Secret: r.Secret, CreatedAt: r.CreatedAt,
		WebhookURL: r.WebhookURL, RateLimit: r.RateLimit, DailyCap: r.DailyCap,
	}, nil
}

// AppByKey returns the app with the given public key or herald.ErrAppNotFound.
func (s *Store) AppByKey(ctx context.Context, key string) (store.App, error) {
	if err := s.enter(ctx); err != nil {
		return store.App{}, err
	}
	defer s.closeMu.RUnlock()
	id, found, err := s.get(appKeyIndex(key))
	if err != nil {
		return store.App{}, fmt.Errorf("pebblestore: app by key: %w", err)
	}
	if !found {
		return store.App{}, fmt.Errorf("pebblestore: app by key: %w", herald.ErrAppNotFound)
	}
	return s.appByID(string(id))
}

// PutDevice inserts or replaces the device, keeping the alias index in
// step. Its tags and topics are stored sorted and unique; its topics become
// known to the app (TopicExists).
func (s *Store) PutDevice(ctx context.Context, d store.Device) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.closeMu.RUnlock()
	if d.AppID == "" || d.ID == "" {
		return fmt.Errorf("pebblestore: put device: app id and device id are required: %w", herald.ErrInvalidArgument)
	}
	mu := s.deviceLock(d.AppID, d.ID)
	mu.Lock()
	defer mu.Unlock()
	var old deviceRecord
	found, err := s.getJSON(deviceKey(d.AppID, d.ID), &old)
	if err != nil {
		return fmt.Errorf("pebblestore: put device %s/%s: %w", d.AppID, d.ID, err)
	}
	_ = found // absent: old stays the zero record
	r := deviceRecord{
		Platform: d.Platform, Alias: d.Alias, Tags: sortedSet(d.Tags), Topics: sortedSet(d.Topics),
		TokenHash: d.TokenHash, CreatedAt: d.CreatedAt, UpdatedAt: d.UpdatedAt,
	}
	b := s.db.NewBatch()
	defer b.Close()
	if err := s.writeDevice(b, d.AppID, d.ID, old, r); err != nil {
		return fmt.Errorf("pebblestore: put device %s/%s: %w", d.AppID, d.ID, err)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("pebblestore: put device %s/%s: %w", d.AppID, d.ID, err)
	}
	return nil
}

// writeDevice adds to b the device record r replacing old (the zero record
// when absent): the alias index follows an alias change and every topic of
// r is recorded as known. The caller holds the device lock.
func (s *Store) writeDevice(b *pebble.Batch, appID, deviceID string, old, r deviceRecord) error {
	v, err := marshal(r)
	if err != nil {
		return err
	}
	if old.Alias != r.Alias && old.Alias != "" {
		_ = b.Delete(aliasKey(appID, old.Alias, deviceID), nil)
	}
	if r.Alias != "" {
		_ = b.Set(aliasKey(appID, r.Alias, deviceID), nil, nil)
	}
	for _, t := range r.Topics {
		if !slices.Contains(old.Topics, t) {
			_ = b.Set(topicKey(appID, t), nil, nil)
		}
	}
	_ = b.Set(deviceKey(appID, deviceID), v, nil)
	return nil
}

// Device returns the device or herald.ErrDeviceNotFound.
func (s *Store) Device(ctx context.Context, appID, deviceID string) (store.Device, error) {
	if err := s.enter(ctx); err != nil {
		return store.Device{}, err
	}
	defer s.closeMu.RUnlock()
	var r deviceRecord
	found, err := s.getJSON(deviceKey(appID, deviceID), &r)
	if err != nil {
		return store.Device{}, fmt.Errorf("pebblestore: device %s/%s: %w", appID, deviceID, err)
	}
	if !found {
		return store.Device{}, fmt.Errorf("pebblestore: device %s/%s: %w", appID, deviceID, herald.ErrDeviceNotFound)
	}
	return r.device(appID, deviceID), nil
}

// DevicesExist reports, for every given id, whether the device is registered.
func (s *Store) DevicesExist(ctx context.Context, appID string, deviceIDs []string) (map[string]bool, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	defer s.closeMu.RUnlock()
	out := make(map[string]bool, len(deviceIDs))
	for _, id := range deviceIDs {
		ok, err := s.exists(deviceKey(appID, id))
		if err != nil {
			return nil, fmt.Errorf("pebblestore: devices exist: %w", err)
		}
		out[id] = ok
	}
	return out, nil
}

// DeleteDevice removes the device (its alias index entry and badge too) and
// every inbox entry of it, marking each removed entry's (message, device)
// failed. The topics it subscribed stay known to the app.
func (s *Store) DeleteDevice(ctx context.Context, appID, deviceID string) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.closeMu.RUnlock()
	mu := s.deviceLock(appID, deviceID)
	mu.Lock()
	defer mu.Unlock()
	dk := deviceKey(appID, deviceID)
	var rec deviceRecord
	ok, err := s.getJSON(dk, &rec)
	if err != nil {
		return fmt.Errorf("pebblestore: delete device %s/%s: %w", appID, deviceID, err)
	}
	if !ok {
		return fmt.Errorf("pebblestore: delete device %s/%s: %w", appID, deviceID, herald.ErrDeviceNotFound)
	}
	b := s.db.NewBatch()
	defer b.Close()
	if rec.Alias != "" {
		_ = b.Delete(aliasKey(appID, rec.Alias, deviceID), nil)
	}
	_ = b.Delete(badgeKey(appID, deviceID), nil)
	var marks []store.Transition
	prefix := inboxPrefix(appID, deviceID, 0)
	err = s.scan(prefix, upperBound(prefix), func(k, v []byte) error {
		e, err := decodeEntry(v)
		if err != nil {
			return err
		}
		msgID := string(k[len(prefix):])
		if e.expires != 0 {
			_ = b.Delete(expiryKey(e.expires, appID, deviceID, msgID), nil)
		}
		marks = append(marks, store.Transition{MessageID: msgID, DeviceID: deviceID, State: store.StateFailed})
		return nil
	})
	if err != nil {
		return fmt.Errorf("pebblestore: delete device %s/%s: %w", appID, deviceID, err)
	}
	_ = b.DeleteRange(prefix, upperBound(prefix), nil)
	cp := collapsePrefix(appID, deviceID, 0)
	_ = b.DeleteRange(cp, upperBound(cp), nil)
	_ = b.Delete(dk, nil)
	if err := s.applyWithMarks(b, marks); err != nil {
		return fmt.Errorf("pebblestore: delete device %s/%s: %w", appID, deviceID, err)
	}
	return nil
}

// ---- inbox ----

// entry is the stored form of an inbox entry (the message id is in the key).
type entry struct {
	expires  int64
	collapse string
	body     []byte
}

const entryVersion = 1

func encodeEntry(e store.InboxEntry) []byte {
	b := make([]byte, 0, 1+8+binary.MaxVarintLen64+len(e.CollapseID)+len(e.Body))
	b = append(b, entryVersion)
	b = binary.BigEndian.AppendUint64(b, uint64(nanos(e.ExpiresAt)))
	b = appendComp(b, e.CollapseID)
	return append(b, e.Body...)
}

// decodeEntry parses v; the returned body aliases v.
func decodeEntry(v []byte) (entry, error) {
	if len(v) < 9 || v[0] != entryVersion {
		return entry{}, errors.New("pebblestore: corrupt inbox entry")
	}
	collapse, body, err := readComp(v[9:])
	if err != nil {
		return entry{}, err
	}
	return entry{expires: int64(binary.BigEndian.Uint64(v[1:9])), collapse: collapse, body: body}, nil
}

// Put stores e in the device's inbox, applying the collapse rule: of two
// entries with the same collapse id only the newer (larger message id) is
// kept, and the older one's (message, device) is marked collapsed.
func (s *Store) Put(ctx context.Context, appID, deviceID string, e store.InboxEntry) (string, error) {
	if err := s.enter(ctx); err != nil {
		return "", err
	}
	defer s.closeMu.RUnlock()
	if e.MessageID == "" {
		return "", fmt.Errorf("pebblestore: inbox put: message id is required: %w", herald.ErrInvalidArgument)
	}
	mu := s.deviceLock(appID, deviceID)
	mu.Lock()
	defer mu.Unlock()
	ik := inboxKey(appID, deviceID, e.MessageID)
	ok, err := s.exists(ik)
	if err != nil {
		return "", fmt.Errorf("pebblestore: inbox put %s: %w", e.MessageID, err)
	}
	if ok {
		return "", nil
	}
	b := s.db.NewBatch()
	defer b.Close()
	var collapsed string
	if e.CollapseID != "" {
		ck := collapseKey(appID, deviceID, e.CollapseID)
		old, found, err := s.get(ck)
		if err != nil {
			return "", fmt.Errorf("pebblestore: inbox put %s: %w", e.MessageID, err)
		}
		if found && string(old) > e.MessageID {
			// The stored entry is newer: e is collapsed before being stored.
			err := s.applyWithMarks(b, []store.Transition{{MessageID: e.MessageID, DeviceID: deviceID, State: store.StateCollapsed}})
			if err != nil {
				return "", fmt.Errorf("pebblestore: inbox put %s: %w", e.MessageID, err)
			}
			return e.MessageID, nil
		}
		if found {
			collapsed = string(old)
			if err := s.deleteEntry(b, appID, deviceID, collapsed, false); err != nil {
				return "", fmt.Errorf("pebblestore: inbox put %s: %w", e.MessageID, err)
			}
		}
		_ = b.Set(ck, []byte(e.MessageID), nil)
	}
	_ = b.Set(ik, encodeEntry(e), nil)
	if exp := nanos(e.ExpiresAt); exp != 0 {
		_ = b.Set(expiryKey(exp, appID, deviceID, e.MessageID), nil, nil)
	}
	var marks []store.Transition
	if collapsed != "" {
		marks = []store.Transition{{MessageID: collapsed, DeviceID: deviceID, State: store.StateCollapsed}}
	}
	if err := s.applyWithMarks(b, marks); err != nil {
		return "", fmt.Errorf("pebblestore: inbox put %s: %w", e.MessageID, err)
	}
	return collapsed, nil
}

// List returns up to limit unexpired entries with message id > after, in
// message id order. A limit <= 0 means no limit.
func (s *Store) List(ctx context.Context, appID, deviceID, after string, limit int) ([]store.InboxEntry, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	defer s.closeMu.RUnlock()
	prefix := inboxPrefix(appID, deviceID, 0)
	start := inboxKey(appID, deviceID, after)
	if after != "" {
		start = append(start, 0) // first key > after
	}
	now := nanos(s.opts.Now())
	var out []store.InboxEntry
	err := s.scan(start, upperBound(prefix), func(k, v []byte) error {
		e, err := decodeEntry(v)
		if err != nil {
			return err
		}
		if e.expires != 0 && e.expires <= now {
			return nil
		}
		out = append(out, store.InboxEntry{
			MessageID:  string(k[len(prefix):]),
			CollapseID: e.collapse,
			ExpiresAt:  fromNanos(e.expires),
			Body:       slices.Clone(e.body),
		})
		if limit > 0 && len(out) >= limit {
			return errStop
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("pebblestore: inbox list %s/%s: %w", appID, deviceID, err)
	}
	return out, nil
}

// Delete removes the given entries of the device; absent ids are ignored.
func (s *Store) Delete(ctx context.Context, appID, deviceID string, messageIDs ...string) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.closeMu.RUnlock()
	if len(messageIDs) == 0 {
		return nil
	}
	mu := s.deviceLock(appID, deviceID)
	mu.Lock()
	defer mu.Unlock()
	b := s.db.NewBatch()
	defer b.Close()
	for _, id := range messageIDs {
		if err := s.deleteEntry(b, appID, deviceID, id, true); err != nil {
			return fmt.Errorf("pebblestore: inbox delete %s/%s: %w", appID, deviceID, err)
		}
	}
	if b.Empty() {
		return nil
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("pebblestore: inbox delete %s/%s: %w", appID, deviceID, err)
	}
	return nil
}

// deleteEntry adds the deletion of one entry and its index keys to b, if
// the entry is stored. With dropCollapse the collapse index is removed when
// it points to the entry (Put passes false: it overwrites the index itself).
// The caller holds the device lock.
func (s *Store) deleteEntry(b *pebble.Batch, appID, deviceID, msgID string, dropCollapse bool) error {
	ik := inboxKey(appID, deviceID, msgID)
	v, found, err := s.get(ik)
	if err != nil || !found {
		return err
	}
	e, err := decodeEntry(v)
	if err != nil {
		return err
	}
	_ = b.Delete(ik, nil)
	if e.expires != 0 {
		_ = b.Delete(expiryKey(e.expires, appID, deviceID, msgID), nil)
	}
	if dropCollapse && e.collapse != "" {
		ck := collapseKey(appID, deviceID, e.collapse)
		cur, found, err := s.get(ck)
		if err != nil {
			return err
		}
		if found && string(cur) == msgID {
			_ = b.Delete(ck, nil)
		}
	}
	return nil
}

// Sweep deletes the inbox entries that expired at or before now (marking
// their (message, device) expired), the idempotency claims and topic-log
// broadcasts that expired, and the daily quota counts of dates more than
// two days before now's. It returns the number of inbox entries deleted.
func (s *Store) Sweep(ctx context.Context, now time.Time) (int, error) {
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	defer s.closeMu.RUnlock()
	deleted := 0
	n := nanos(now)
	lower := tableKey(tableExpiry, 8)
	upper := binary.BigEndian.AppendUint64(tableKey(tableExpiry, 8), uint64(n)+1)
	for {
		keys, err := s.collectKeys(lower, upper, sweepBatchSize)
		if err != nil {
			return deleted, fmt.Errorf("pebblestore: sweep: %w", err)
		}
		for _, k := range keys {
			if err := ctx.Err(); err != nil {
				return deleted, err
			}
			ok, err := s.sweepEntry(k)
			if err != nil {
				return deleted, fmt.Errorf("pebblestore: sweep: %w", err)
			}
			if ok {
				deleted++
			}
		}
		if len(keys) < sweepBatchSize {
			break
		}
		lower = append(keys[len(keys)-1], 0)
	}
	if err := s.sweepClaims(ctx, n); err != nil {
		return deleted, fmt.Errorf("pebblestore: sweep claims: %w", err)
	}
	if err := s.sweepBroadcasts(ctx, n); err != nil {
		return deleted, fmt.Errorf("pebblestore: sweep broadcasts: %w", err)
	}
	if err := s.sweepQuotas(now); err != nil {
		return deleted, fmt.Errorf("pebblestore: sweep quotas: %w", err)
	}
	return deleted, nil
}

// sweepEntry deletes the entry an expiry index key points to, and the key.
func (s *Store) sweepEntry(k []byte) (bool, error) {
	exp, appID, deviceID, msgID, err := parseExpiryKey(k)
	if err != nil {
		return false, err
	}
	mu := s.deviceLock(appID, deviceID)
	mu.Lock()
	defer mu.Unlock()
	b := s.db.NewBatch()
	defer b.Close()
	_ = b.Delete(k, nil) // orphaned or not, the index key goes
	ik := inboxKey(appID, deviceID, msgID)
	v, found, err := s.get(ik)
	if err != nil {
		return false, err
	}
	var marks []store.Transition
	if found {
		e, err := decodeEntry(v)
		if err != nil {
			return false, err
		}
		if e.expires == exp {
			if err := s.deleteEntry(b, appID, deviceID, msgID, true); err != nil {
				return false, err
			}
			marks = []store.Transition{{MessageID: msgID, DeviceID: deviceID, State: store.StateExpired}}
		}
	}
	return len(marks) > 0, s.applyWithMarks(b, marks)
}

// ---- status ----

// messageRecord is the stored message meta. The message state is not in
// it (it has its own key, see keys.go): a record written before the
// audience fields existed decodes with them zero.
type messageRecord struct {
	AppID     string    `json:"app_id"`
	Targets   []string  `json:"targets"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	Audience  string    `json:"audience,omitempty"`
	Group     bool      `json:"group,omitempty"`
	SendAt    time.Time `json:"send_at,omitzero"`
}

// CreateMessage records m with every (deduplicated) target pending.
// Creating a message that exists is a no-op: its states are kept.
func (s *Store) CreateMessage(ctx context.Context, m store.Message) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.closeMu.RUnlock()
	if m.ID == "" {
		return fmt.Errorf("pebblestore: create message: id is required: %w", herald.ErrInvalidArgument)
	}
	mk := messageKey(m.ID)
	ok, err := s.exists(mk)
	if err != nil {
		return fmt.Errorf("pebblestore: create message %s: %w", m.ID, err)
	}
	if ok {
		return nil
	}
	seen := make(map[string]bool, len(m.Targets))
	targets := make([]string, 0, len(m.Targets))
	b := s.db.NewBatch()
	defer b.Close()
	pending := []byte{byte(store.StatePending)}
	for _, d := range m.Targets {
		if seen[d] {
			continue
		}
		seen[d] = true
		targets = append(targets, d)
		_ = b.Set(targetKey(m.ID, d), pending, nil)
	}
	v, err := marshal(messageRecord{
		AppID: m.AppID, Targets: targets, CreatedAt: m.CreatedAt, ExpiresAt: m.ExpiresAt,
		Audience: m.Audience, Group: m.Group, SendAt: m.SendAt,
	})
	if err != nil {
		return fmt.Errorf("pebblestore: create message %s: %w", m.ID, err)
	}
	_ = b.Set(mk, v, nil)
	_ = b.Set(messageStateKey(m.ID), []byte{byte(m.State)}, nil)
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("pebblestore: create message %s: %w", m.ID, err)
	}
	return nil
}

// Mark applies the transitions whose target is pending; the rest are ignored.
func (s *Store) Mark(ctx context.Context, ts ...store.Transition) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.closeMu.RUnlock()
	for _, t := range ts {
		if t.State == store.StatePending || t.State > store.StateRecalled {
			return fmt.Errorf("pebblestore: mark %s/%s: state %d is not terminal: %w",
				t.MessageID, t.DeviceID, t.State, herald.ErrInvalidArgument)
		}
	}
	b := s.db.NewBatch()
	defer b.Close()
	if err := s.applyWithMarks(b, ts); err != nil {
		return fmt.Errorf("pebblestore: mark: %w", err)
	}
	return nil
}

// applyWithMarks adds to b the transitions whose target is pending and
// commits b, holding the status stripes of every transition until then, so
// that of concurrent transitions of one target exactly one applies.
func (s *Store) applyWithMarks(b *pebble.Batch, ts []store.Transition) error {
	_, err := s.applyMarks(b, ts)
	return err
}

// applyMarks is applyWithMarks returning the transitions that applied.
func (s *Store) applyMarks(b *pebble.Batch, ts []store.Transition) ([]store.Transition, error) {
	var done []store.Transition
	if len(ts) > 0 {
		unlock := s.lockTargets(ts)
		defer unlock()
		var applied map[string]bool // only needed when one call marks a target twice
		if len(ts) > 1 {
			applied = make(map[string]bool, len(ts))
		}
		for _, t := range ts {
			k := targetKey(t.MessageID, t.DeviceID)
			if applied != nil && applied[string(k)] {
				continue
			}
			v, found, err := s.get(k)
			if err != nil {
				return nil, err
			}
			if !found || len(v) != 1 || store.DeliveryState(v[0]) != store.StatePending {
				continue
			}
			if applied != nil {
				applied[string(k)] = true
			}
			_ = b.Set(k, []byte{byte(t.State)}, nil)
			done = append(done, t)
		}
	}
	if b.Empty() {
		return done, nil
	}
	return done, b.Commit(pebble.NoSync)
}

// MessageStatus returns the message and its per-state counts. A target
// still pending once the message has expired counts as expired.
func (s *Store) MessageStatus(ctx context.Context, messageID string) (store.Message, store.Counts, error) {
	if err := s.enter(ctx); err != nil {
		return store.Message{}, store.Counts{}, err
	}
	defer s.closeMu.RUnlock()
	var r messageRecord
	found, err := s.getJSON(messageKey(messageID), &r)
	if err != nil {
		return store.Message{}, store.Counts{}, fmt.Errorf("pebblestore: message status %s: %w", messageID, err)
	}
	if !found {
		return store.Message{}, store.Counts{}, fmt.Errorf("pebblestore: message status %s: %w", messageID, herald.ErrMessageNotFound)
	}
	state, err := s.messageState(messageID)
	if err != nil {
		return store.Message{}, store.Counts{}, fmt.Errorf("pebblestore: message status %s: %w", messageID, err)
	}
	m := store.Message{
		ID: messageID, AppID: r.AppID, Targets: r.Targets, CreatedAt: r.CreatedAt, ExpiresAt: r.ExpiresAt,
		Audience: r.Audience, Group: r.Group, State: state, SendAt: r.SendAt,
	}
	ctr, err := s.getInt64s(countersKey(messageID), 3)
	if err != nil {
		return store.Message{}, store.Counts{}, fmt.Errorf("pebblestore: message status %s: %w", messageID, err)
	}
	if m.Group {
		c := store.Counts{Targeted: ctr[0], Delivered: ctr[1], Clicked: ctr[2]}
		c.Pending = max(c.Targeted-c.Delivered, 0)
		return m, c, nil
	}
	expired := !m.ExpiresAt.IsZero() && !s.opts.Now().Before(m.ExpiresAt)
	c := store.Counts{Clicked: ctr[2]}
	prefix := targetPrefix(messageID, 0)
	err = s.scan(prefix, upperBound(prefix), func(_, v []byte) error {
		if len(v) != 1 {
			return errors.New("pebblestore: corrupt status row")
		}
		c.Targeted++
		switch store.DeliveryState(v[0]) {
		case store.StatePending:
			if expired {
				c.Expired++
			}
		case store.StateDelivered:
			c.Delivered++
		case store.StateExpired:
			c.Expired++
		case store.StateFailed:
			c.Failed++
		case store.StateCollapsed:
			c.Collapsed++
		case store.StateRecalled:
			c.Recalled++
		}
		return nil
	})
	if err != nil {
		return store.Message{}, store.Counts{}, fmt.Errorf("pebblestore: message status %s: %w", messageID, err)
	}
	c.Pending = c.Targeted - c.Delivered - c.Expired - c.Failed - c.Collapsed - c.Recalled
	return m, c, nil
}

// ---- idempotency ----

// Claim maps (appID, key) to messageID unless an unexpired claim exists, in
// which case it returns that claim's message id. A ttl <= 0 never expires.
func (s *Store) Claim(ctx context.Context, appID, key, messageID string, ttl time.Duration) (string, error) {
	if err := s.enter(ctx); err != nil {
		return "", err
	}
	defer s.closeMu.RUnlock()
	if key == "" || messageID == "" {
		return "", fmt.Errorf("pebblestore: claim: key and message id are required: %w", herald.ErrInvalidArgument)
	}
	mu := s.claimLock(appID, key)
	mu.Lock()
	defer mu.Unlock()
	now := s.opts.Now()
	ck := claimKey(appID, key)
	v, found, err := s.get(ck)
	if err != nil {
		return "", fmt.Errorf("pebblestore: claim: %w", err)
	}
	b := s.db.NewBatch()
	defer b.Close()
	if found {
		exp, existing, err := decodeClaim(v)
		if err != nil {
			return "", fmt.Errorf("pebblestore: claim: %w", err)
		}
		if exp == 0 || nanos(now) < exp {
			return existing, nil
		}
		_ = b.Delete(claimIndexKey(exp, appID, key), nil)
	}
	var exp int64
	if ttl > 0 {
		exp = nanos(now.Add(ttl))
		_ = b.Set(claimIndexKey(exp, appID, key), nil, nil)
	}
	_ = b.Set(ck, encodeClaim(exp, messageID), nil)
	if err := b.Commit(pebble.NoSync); err != nil {
		return "", fmt.Errorf("pebblestore: claim: %w", err)
	}
	return "", nil
}

// Release removes the claim of (appID, key) if it maps to messageID.
func (s *Store) Release(ctx context.Context, appID, key, messageID string) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.closeMu.RUnlock()
	mu := s.claimLock(appID, key)
	mu.Lock()
	defer mu.Unlock()
	if err := s.releaseLocked(appID, key, func(_ int64, id string) bool { return id == messageID }); err != nil {
		return fmt.Errorf("pebblestore: release: %w", err)
	}
	return nil
}

// releaseLocked deletes the claim and its index key if match approves it.
func (s *Store) releaseLocked(appID, key string, match func(exp int64, msgID string) bool) error {
	ck := claimKey(appID, key)
	v, found, err := s.get(ck)
	if err != nil || !found {
		return err
	}
	exp, id, err := decodeClaim(v)
	if err != nil {
		return err
	}
	if !match(exp, id) {
		return nil
	}
	b := s.db.NewBatch()
	defer b.Close()
	_ = b.Delete(ck, nil)
	if exp != 0 {
		_ = b.Delete(claimIndexKey(exp, appID, key), nil)
	}
	return b.Commit(pebble.NoSync)
}

func (s *Store) sweepClaims(ctx context.Context, now int64) error {
	lower := tableKey(tableClaimIndex, 8)
	upper := binary.BigEndian.AppendUint64(tableKey(tableClaimIndex, 8), uint64(now)+1)
	for {
		keys, err := s.collectKeys(lower, upper, sweepBatchSize)
		if err != nil {
			return err
		}
		for _, k := range keys {
			if err := ctx.Err(); err != nil {
				return err
			}
			exp, appID, key, err := parseClaimIndexKey(k)
			if err != nil {
				return err
			}
			mu := s.claimLock(appID, key)
			mu.Lock()
			err = s.releaseLocked(appID, key, func(e int64, _ string) bool { return e == exp })
			if err == nil {
				err = s.db.Delete(k, pebble.NoSync) // in case the claim was replaced
			}
			mu.Unlock()
			if err != nil {
				return err
			}
		}
		if len(keys) < sweepBatchSize {
			return nil
		}
		lower = append(keys[len(keys)-1], 0)
	}
}

func encodeClaim(exp int64, msgID string) []byte {
	return append(binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(msgID)), uint64(exp)), msgID...)
}

func decodeClaim(v []byte) (int64, string, error) {
	if len(v) < 8 {
		return 0, "", errors.New("pebblestore: corrupt claim")
	}
	return int64(binary.BigEndian.Uint64(v[:8])), string(v[8:]), nil
}

// ---- locks ----

func stripe(parts ...string) uint32 {
	h := fnv.New32a()
	for _, p := range parts {
		_, _ = h.Write([]byte(p))
		_, _ = h.Write([]byte{0})
	}
	return h.Sum32() % numStripes
}

func (s *Store) deviceLock(appID, deviceID string) *sync.Mutex {
	return &s.devices[stripe(appID, deviceID)]
}

func (s *Store) claimLock(appID, key string) *sync.Mutex {
	return &s.claims[stripe(appID, key)]
}

// lockTargets locks the status stripes of ts in index order and returns
// the function that unlocks them.
func (s *Store) lockTargets(ts []store.Transition) func() {
	if len(ts) == 1 {
		mu := &s.targets[stripe(ts[0].MessageID, ts[0].DeviceID)]
		mu.Lock()
		return mu.Unlock
	}
	idx := make([]uint32, 0, len(ts))
	for _, t := range ts {
		idx = append(idx, stripe(t.MessageID, t.DeviceID))
	}
	slices.Sort(idx)
	idx = slices.Compact(idx)
	for _, i := range idx {
		s.targets[i].Lock()
	}
	return func() {
		for _, i := range idx {
			s.targets[i].Unlock()
		}
	}
}
