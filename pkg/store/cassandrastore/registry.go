package cassandrastore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"golang.org/x/sync/errgroup"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/store"
)

// readParallelism bounds the single-partition reads one call runs at once
// (DevicesExist, Mark across messages).
const readParallelism = 16

const (
	cqlClaimAppKey   = `INSERT INTO app_keys (app_key, app_id) VALUES (?, ?) IF NOT EXISTS`
	cqlReleaseAppKey = `DELETE FROM app_keys WHERE app_key = ? IF app_id = ?`
	cqlInsertApp     = `INSERT INTO apps (id, name, app_key, secret, created_at, webhook_url, rate_limit, daily_cap)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS`
	cqlSelectApp    = `SELECT name, app_key, secret, created_at, webhook_url, rate_limit, daily_cap FROM apps WHERE id = ?`
	cqlUpdateApp    = `UPDATE apps SET webhook_url = ?, rate_limit = ?, daily_cap = ? WHERE id = ? IF EXISTS`
	cqlSelectAppKey = `SELECT app_id FROM app_keys WHERE app_key = ?`
	cqlInsertDevice = `INSERT INTO devices (app_id, device_id, platform, alias, tags, topics, token_hash, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`
	cqlSelectDevice = `SELECT platform, alias, tags, topics, token_hash, created_at, updated_at FROM devices
		WHERE app_id = ? AND device_id = ?`
	cqlSelectAlias  = `SELECT alias FROM devices WHERE app_id = ? AND device_id = ?`
	cqlDeleteDevice = `DELETE FROM devices WHERE app_id = ? AND device_id = ?`
	cqlUpdateTags   = `UPDATE devices SET tags = tags + ?, tags = tags - ? WHERE app_id = ? AND device_id = ? IF EXISTS`
	cqlUpdateTopics = `UPDATE devices SET topics = topics + ?, topics = topics - ? WHERE app_id = ? AND device_id = ? IF EXISTS`
	cqlInsertAlias  = `INSERT INTO device_aliases (app_id, alias, device_id) VALUES (?, ?, ?)`
	cqlSetAlias     = `UPDATE devices SET alias = ? WHERE app_id = ? AND device_id = ? IF EXISTS`
	cqlDeleteAlias  = `DELETE FROM device_aliases WHERE app_id = ? AND alias = ? AND device_id = ?`
	cqlAliasDevices = `SELECT device_id FROM device_aliases WHERE app_id = ? AND alias = ? AND device_id > ? LIMIT ?`
	cqlInsertTopic  = `INSERT INTO app_topics (app_id, topic) VALUES (?, ?)`
	cqlTopicExists  = `SELECT topic FROM app_topics WHERE app_id = ? AND topic = ?`
	cqlDeleteBadge  = `DELETE FROM badges WHERE app_id = ? AND device_id = ?`
)

// CreateApp stores a new app; an existing id or key is herald.ErrConflict.
//
// The key is claimed first (LWT on app_keys), then the id (LWT on apps);
// when the id is taken the key claim is released again. A claim left by a
// crash in between maps the key to an id whose app does not hold that key:
// AppByKey ignores it, and retrying the same CreateApp completes it.
func (s *Store) CreateApp(ctx context.Context, a store.App) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	op := "create app " + a.ID
	if a.ID == "" || a.Key == "" {
		return fmt.Errorf("cassandrastore: %s: id and key are required: %w", op, herald.ErrInvalidArgument)
	}
	prev := map[string]any{}
	applied, err := s.scanCAS(ctx, s.session.Query(cqlClaimAppKey, a.Key, a.ID), prev)
	if err != nil {
		return fail(op, err)
	}
	if !applied && prev["app_id"] != a.ID {
		return fmt.Errorf("cassandrastore: %s: key taken: %w", op, herald.ErrConflict)
	}
	prev = map[string]any{}
	applied, err = s.scanCAS(ctx, s.session.Query(cqlInsertApp,
		a.ID, a.Name, a.Key, a.Secret, timestampOrNil(a.CreatedAt),
		unsetIfEmpty(a.WebhookURL), unsetIfZero(a.RateLimit), unsetIfZero(a.DailyCap)), prev)
	if err != nil {
		return fail(op, err)
	}
	if applied {
		return nil
	}
	if prev["app_key"] != a.Key {
		// The id belongs to another app: give our key back.
		if _, err := s.scanCAS(ctx, s.session.Query(cqlReleaseAppKey, a.Key, a.ID), map[string]any{}); err != nil {
			s.logger.Warn("release app key failed", "app_id", a.ID, "error", err)
		}
	}
	return fmt.Errorf("cassandrastore: %s: id taken: %w", op, herald.ErrConflict)
}

// AppByID returns the app or herald.ErrAppNotFound.
func (s *Store) AppByID(ctx context.Context, id string) (store.App, error) {
	if err := s.enter(ctx); err != nil {
		return store.App{}, err
	}
	a, found, err := s.appByID(ctx, id)
	if err != nil {
		return store.App{}, fail("app "+id, err)
	}
	if !found {
		return store.App{}, fmt.Errorf("cassandrastore: app %s: %w", id, herald.ErrAppNotFound)
	}
	return a, nil
}

func (s *Store) appByID(ctx context.Context, id string) (store.App, bool, error) {
	a := store.App{ID: id}
	found, err := s.scan(ctx, s.session.Query(cqlSelectApp, id).Idempotent(true),
		&a.Name, &a.Key, &a.Secret, &a.CreatedAt, &a.WebhookURL, &a.RateLimit, &a.DailyCap)
	return a, found, err
}

// UpdateApp replaces the settings of the app a.ID (WebhookURL, RateLimit,
// DailyCap); herald.ErrAppNotFound if absent. The update is conditional
// (IF EXISTS), so it never creates a partial app row.
func (s *Store) UpdateApp(ctx context.Context, a store.App) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	op := "update app " + a.ID
	q := s.session.Query(cqlUpdateApp, a.WebhookURL, a.RateLimit, a.DailyCap, a.ID)
	applied, err := s.scanCAS(ctx, q, map[string]any{})
	if err != nil {
		return fail(op, err)
	}
	if !applied {
		return fmt.Errorf("cassandrastore: %s: %w", op, herald.ErrAppNotFound)
	}
	return nil
}

// AppByKey returns the app with the given public key or herald.ErrAppNotFound.
func (s *Store) AppByKey(ctx context.Context, key string) (store.App, error) {
	if err := s.enter(ctx); err != nil {
		return store.App{}, err
	}
	var id string
	found, err := s.scan(ctx, s.session.Query(cqlSelectAppKey, key).Idempotent(true), &id)
	if err != nil {
		return store.App{}, fail("app by key", err)
	}
	if !found {
		return store.App{}, fmt.Errorf("cassandrastore: app by key: %w", herald.ErrAppNotFound)
	}
	a, found, err := s.appByID(ctx, id)
	if err != nil {
		return store.App{}, fail("app by key", err)
	}
	if !found || a.Key != key { // a claim left by an interrupted CreateApp
		return store.App{}, fmt.Errorf("cassandrastore: app by key: %w", herald.ErrAppNotFound)
	}
	return a, nil
}

// PutDevice inserts or replaces the device (tags and topics stored sorted
// and unique) and keeps the alias index in step: it reads the stored
// alias, then writes the device, the index row of its alias and the
// removal of the previous alias's row in one logged batch, so all of them
// happen or (after a retry) none is missing. Racing PutDevices of one
// device can leave a stale index row behind; DevicesByAlias skips rows
// whose device no longer has the alias. The device's topics become known
// to the app (TopicExists).
func (s *Store) PutDevice(ctx context.Context, d store.Device) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	op := "put device " + d.AppID + "/" + d.ID
	if d.AppID == "" || d.ID == "" {
		return fmt.Errorf("cassandrastore: %s: app id and device id are required: %w", op, herald.ErrInvalidArgument)
	}
	var old string
	if _, err := s.scan(ctx, s.session.Query(cqlSelectAlias, d.AppID, d.ID).Idempotent(true), &old); err != nil {
		return fail(op, err)
	}
	topics := sortedSet(d.Topics)
	if err := s.knowTopics(ctx, d.AppID, topics); err != nil {
		return fail(op, err)
	}
	row := []any{d.AppID, d.ID, d.Platform, d.Alias, sortedSet(d.Tags), topics, d.TokenHash,
		timestampOrNil(d.CreatedAt), timestampOrNil(d.UpdatedAt)}
	if d.Alias == "" && old == "" {
		if err := s.exec(ctx, s.session.Query(cqlInsertDevice, row...).Idempotent(true)); err != nil {
			return fail(op, err)
		}
		return nil
	}
	b := s.session.Batch(gocql.LoggedBatch)
	b.Query(cqlInsertDevice, row...)
	if d.Alias != "" {
		b.Query(cqlInsertAlias, d.AppID, d.Alias, d.ID)
	}
	if old != "" && old != d.Alias {
		b.Query(cqlDeleteAlias, d.AppID, old, d.ID)
	}
	if err := retry(ctx, func() error { return b.ExecContext(ctx) }); err != nil {
		return fail(op, err)
	}
	return nil
}

// knowTopics records topics as known to the app (TopicExists).
func (s *Store) knowTopics(ctx context.Context, appID string, topics []string) error {
	if len(topics) == 0 {
		return nil
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(readParallelism)
	for _, t := range topics {
		g.Go(func() error {
			return s.exec(gctx, s.session.Query(cqlInsertTopic, appID, t).Idempotent(true))
		})
	}
	return g.Wait()
}

// Device returns the device or herald.ErrDeviceNotFound.
func (s *Store) Device(ctx context.Context, appID, deviceID string) (store.Device, error) {
	if err := s.enter(ctx); err != nil {
		return store.Device{}, err
	}
	op := "device " + appID + "/" + deviceID
	d, found, err := s.device(ctx, appID, deviceID)
	if err != nil {
		return store.Device{}, fail(op, err)
	}
	if !found {
		return store.Device{}, fmt.Errorf("cassandrastore: %s: %w", op, herald.ErrDeviceNotFound)
	}
	return d, nil
}

func (s *Store) device(ctx context.Context, appID, deviceID string) (store.Device, bool, error) {
	d := store.Device{AppID: appID, ID: deviceID}
	found, err := s.scan(ctx, s.session.Query(cqlSelectDevice, appID, deviceID).Idempotent(true),
		&d.Platform, &d.Alias, &d.Tags, &d.Topics, &d.TokenHash, &d.CreatedAt, &d.UpdatedAt)
	if !found || err != nil {
		return store.Device{}, found, err
	}
	// Sets come back sorted (by their UTF-8 bytes) and unique; an empty
	// set reads as nil.
	if len(d.Tags) == 0 {
		d.Tags = nil
	}
	if len(d.Topics) == 0 {
		d.Topics = nil
	}
	return d, true, nil
}

// Devices returns the registered devices among ids, read as parallel
// single-partition reads like DevicesExist.
func (s *Store) Devices(ctx context.Context, appID string, ids []string) (map[string]store.Device, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	out, err := s.devices(ctx, appID, ids)
	if err != nil {
		return nil, fail("devices of "+appID, err)
	}
	return out, nil
}

func (s *Store) devices(ctx context.Context, appID string, ids []string) (map[string]store.Device, error) {
	out := make(map[string]store.Device, len(ids))
	var mu sync.Mutex
	seen := make(map[string]bool, len(ids))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(readParallelism)
	for _, id := range ids {
		if seen[id] {
			continue
		}
		seen[id] = true
		g.Go(func() error {
			d, found, err := s.device(gctx, appID, id)
			if found {
				mu.Lock()
				out[id] = d
				mu.Unlock()
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return out, nil
}

// aliasPage is how many alias index rows DevicesByAlias checks at once.
const aliasPage = 100

// DevicesByAlias returns up to limit ids (in id order) of the app's
// devices with this alias; a limit <= 0 means no limit, "" matches
// nothing. Each index row is checked against the device's current alias,
// so rows left by racing alias changes are skipped.
func (s *Store) DevicesByAlias(ctx context.Context, appID, alias string, limit int) ([]string, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	if alias == "" {
		return nil, nil
	}
	op := "devices by alias " + appID
	var out []string
	after := ""
	for {
		var cands []string
		err := retry(ctx, func() error {
			cands = cands[:0]
			iter := s.session.Query(cqlAliasDevices, appID, alias, after, aliasPage).Idempotent(true).IterContext(ctx)
			var id string
			for iter.Scan(&id) {
				cands = append(cands, id)
			}
			return iter.Close()
		})
		if err != nil {
			return nil, fail(op, err)
		}
		ds, err := s.devices(ctx, appID, cands)
		if err != nil {
			return nil, fail(op, err)
		}
		for _, id := range cands {
			if d, ok := ds[id]; ok && d.Alias == alias {
				out = append(out, id)
				if limit > 0 && len(out) >= limit {
					return out, nil
				}
			}
		}
		if len(cands) < aliasPage {
			return out, nil
		}
		after = cands[len(cands)-1]
	}
}

// UpdateTags adds then removes tags (a tag in both ends up removed) and
// returns the device. Tags are a set column, so concurrent updates of
// different tags never lose one another; the update is conditional (IF
// EXISTS) so it never creates a partial device row.
func (s *Store) UpdateTags(ctx context.Context, appID, deviceID string, add, remove []string) (store.Device, error) {
	if err := s.enter(ctx); err != nil {
		return store.Device{}, err
	}
	d, err := s.updateSet(ctx, cqlUpdateTags, appID, deviceID, add, remove)
	if err != nil {
		return store.Device{}, wrap("update tags "+appID+"/"+deviceID, err)
	}
	return d, nil
}

// SetAlias sets the device's alias and nothing else of it (a conditional
// update, so a tag change at the same moment is not lost), keeping the
// alias index in step: the new index row is written before the device
// and the old one removed after, so a crash in between leaves at most a
// stale row, which DevicesByAlias checks against the device.
func (s *Store) SetAlias(ctx context.Context, appID, deviceID, alias string) (store.Device, error) {
	if err := s.enter(ctx); err != nil {
		return store.Device{}, err
	}
	op := "set alias " + appID + "/" + deviceID
	var old string
	found, err := s.scan(ctx, s.session.Query(cqlSelectAlias, appID, deviceID).Idempotent(true), &old)
	if err != nil {
		return store.Device{}, fail(op, err)
	}
	if !found {
		return store.Device{}, fmt.Errorf("cassandrastore: %s: %w", op, herald.ErrDeviceNotFound)
	}
	if alias != "" && alias != old {
		if err := s.exec(ctx, s.session.Query(cqlInsertAlias, appID, alias, deviceID).Idempotent(true)); err != nil {
			return store.Device{}, fail(op, err)
		}
	}
	applied, err := s.scanCAS(ctx, s.session.Query(cqlSetAlias, alias, appID, deviceID), map[string]any{})
	if err != nil {
		return store.Device{}, fail(op, err)
	}
	if !applied {
		return store.Device{}, fmt.Errorf("cassandrastore: %s: %w", op, herald.ErrDeviceNotFound)
	}
	if old != "" && old != alias {
		if err := s.exec(ctx, s.session.Query(cqlDeleteAlias, appID, old, deviceID).Idempotent(true)); err != nil {
			return store.Device{}, fail(op, err)
		}
	}
	d, found, err := s.device(ctx, appID, deviceID)
	if err != nil {
		return store.Device{}, fail(op, err)
	}
	if !found {
		return store.Device{}, fmt.Errorf("cassandrastore: %s: %w", op, herald.ErrDeviceNotFound)
	}
	return d, nil
}

// UpdateTopics subscribes then unsubscribes the device and returns it.
// Subscribed topics are recorded as known to the app first (after
// checking that the device exists), so a subscribed topic is always
// known; a device deleted in between leaves its topics known.
func (s *Store) UpdateTopics(ctx context.Context, appID, deviceID string, subscribe, unsubscribe []string) (store.Device, error) {
	if err := s.enter(ctx); err != nil {
		return store.Device{}, err
	}
	op := "update topics " + appID + "/" + deviceID
	if len(subscribe) > 0 {
		ok, err := s.deviceExists(ctx, appID, deviceID)
		if err != nil {
			return store.Device{}, fail(op, err)
		}
		if !ok {
			return store.Device{}, fmt.Errorf("cassandrastore: %s: %w", op, herald.ErrDeviceNotFound)
		}
		if err := s.knowTopics(ctx, appID, sortedSet(subscribe)); err != nil {
			return store.Device{}, fail(op, err)
		}
	}
	d, err := s.updateSet(ctx, cqlUpdateTopics, appID, deviceID, subscribe, unsubscribe)
	if err != nil {
		return store.Device{}, wrap(op, err)
	}
	return d, nil
}

// errNoDevice is updateSet's "the device does not exist".
var errNoDevice = errors.New("no such device")

// updateSet runs the conditional set update cql (add, then remove) and
// reads the device back.
func (s *Store) updateSet(ctx context.Context, cql, appID, deviceID string, add, remove []string) (store.Device, error) {
	add, remove = sortedSet(add), sortedSet(remove)
	if len(add) > 0 || len(remove) > 0 {
		applied, err := s.scanCAS(ctx, s.session.Query(cql, add, remove, appID, deviceID), map[string]any{})
		if err != nil {
			return store.Device{}, err
		}
		if !applied {
			return store.Device{}, errNoDevice
		}
	}
	d, found, err := s.device(ctx, appID, deviceID)
	if err != nil {
		return store.Device{}, err
	}
	if !found {
		return store.Device{}, errNoDevice
	}
	return d, nil
}

// wrap is fail, with errNoDevice as herald.ErrDeviceNotFound.
func wrap(op string, err error) error {
	if errors.Is(err, errNoDevice) {
		return fmt.Errorf("cassandrastore: %s: %w", op, herald.ErrDeviceNotFound)
	}
	return fail(op, err)
}

// TopicExists reports whether any device of the app ever subscribed to topic.
func (s *Store) TopicExists(ctx context.Context, appID, topic string) (bool, error) {
	if err := s.enter(ctx); err != nil {
		return false, err
	}
	var t string
	found, err := s.scan(ctx, s.session.Query(cqlTopicExists, appID, topic).Idempotent(true), &t)
	if err != nil {
		return false, fail("topic exists "+appID+"/"+topic, err)
	}
	return found, nil
}

// sortedSet returns the sorted unique elements of xs (nil when empty).
func sortedSet(xs []string) []string {
	if len(xs) == 0 {
		return nil
	}
	out := slices.Clone(xs)
	slices.Sort(out)
	return slices.Compact(out)
}

func (s *Store) deviceExists(ctx context.Context, appID, deviceID string) (bool, error) {
	var alias string
	return s.scan(ctx, s.session.Query(cqlSelectAlias, appID, deviceID).Idempotent(true), &alias)
}

// DevicesExist reports, for every given id, whether the device is
// registered. Each device is its own partition: the lookups run as
// parallel token-aware single-partition reads.
func (s *Store) DevicesExist(ctx context.Context, appID string, deviceIDs []string) (map[string]bool, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	out := make(map[string]bool, len(deviceIDs))
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(readParallelism)
	for _, id := range deviceIDs {
		if _, dup := out[id]; dup {
			continue
		}
		out[id] = false
		g.Go(func() error {
			ok, err := s.deviceExists(gctx, appID, id)
			if ok {
				mu.Lock()
				out[id] = true
				mu.Unlock()
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, fail("devices exist", err)
	}
	return out, nil
}

// DeleteDevice marks every inbox entry of the device failed, deletes the
// inbox partition (entries and collapse index at once), its alias index
// row and its badge, and then the device (its topics stay known to the
// app). The device row goes last, so a call cut short is completed by
// calling again.
func (s *Store) DeleteDevice(ctx context.Context, appID, deviceID string) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	op := "delete device " + appID + "/" + deviceID
	var alias string
	ok, err := s.scan(ctx, s.session.Query(cqlSelectAlias, appID, deviceID).Idempotent(true), &alias)
	if err != nil {
		return fail(op, err)
	}
	if !ok {
		return fmt.Errorf("cassandrastore: %s: %w", op, herald.ErrDeviceNotFound)
	}
	msgIDs, err := s.inboxIDs(ctx, appID, deviceID)
	if err != nil {
		return fail(op, err)
	}
	marks := make([]store.Transition, 0, len(msgIDs))
	for _, id := range msgIDs {
		marks = append(marks, store.Transition{MessageID: id, DeviceID: deviceID, State: store.StateFailed})
	}
	if err := s.mark(ctx, marks); err != nil {
		return fail(op, err)
	}
	if err := s.exec(ctx, s.session.Query(cqlDeleteInbox, appID, deviceID).Idempotent(true)); err != nil {
		return fail(op, err)
	}
	if alias != "" {
		if err := s.exec(ctx, s.session.Query(cqlDeleteAlias, appID, alias, deviceID).Idempotent(true)); err != nil {
			return fail(op, err)
		}
	}
	if err := s.exec(ctx, s.session.Query(cqlDeleteBadge, appID, deviceID).Idempotent(true)); err != nil {
		return fail(op, err)
	}
	if err := s.exec(ctx, s.session.Query(cqlDeleteDevice, appID, deviceID).Idempotent(true)); err != nil {
		return fail(op, err)
	}
	return nil
}
