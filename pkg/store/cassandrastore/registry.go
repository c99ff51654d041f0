package cassandrastore

import (
	"context"
	"fmt"
	"sync"

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
	cqlInsertApp     = `INSERT INTO apps (id, name, app_key, secret, created_at) VALUES (?, ?, ?, ?, ?) IF NOT EXISTS`
	cqlSelectApp     = `SELECT name, app_key, secret, created_at FROM apps WHERE id = ?`
	cqlSelectAppKey  = `SELECT app_id FROM app_keys WHERE app_key = ?`
	cqlInsertDevice  = `INSERT INTO devices (app_id, device_id, platform, alias, token_hash, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?, ?)`
	cqlSelectDevice = `SELECT platform, alias, token_hash, created_at, updated_at FROM devices
		WHERE app_id = ? AND device_id = ?`
	cqlDeviceExists = `SELECT device_id FROM devices WHERE app_id = ? AND device_id = ?`
	cqlDeleteDevice = `DELETE FROM devices WHERE app_id = ? AND device_id = ?`
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
		a.ID, a.Name, a.Key, a.Secret, timestampOrNil(a.CreatedAt)), prev)
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
		&a.Name, &a.Key, &a.Secret, &a.CreatedAt)
	return a, found, err
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

// PutDevice inserts or replaces the device.
func (s *Store) PutDevice(ctx context.Context, d store.Device) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	op := "put device " + d.AppID + "/" + d.ID
	if d.AppID == "" || d.ID == "" {
		return fmt.Errorf("cassandrastore: %s: app id and device id are required: %w", op, herald.ErrInvalidArgument)
	}
	q := s.session.Query(cqlInsertDevice, d.AppID, d.ID, d.Platform, d.Alias, d.TokenHash,
		timestampOrNil(d.CreatedAt), timestampOrNil(d.UpdatedAt)).Idempotent(true)
	if err := s.exec(ctx, q); err != nil {
		return fail(op, err)
	}
	return nil
}

// Device returns the device or herald.ErrDeviceNotFound.
func (s *Store) Device(ctx context.Context, appID, deviceID string) (store.Device, error) {
	if err := s.enter(ctx); err != nil {
		return store.Device{}, err
	}
	op := "device " + appID + "/" + deviceID
	d := store.Device{AppID: appID, ID: deviceID}
	found, err := s.scan(ctx, s.session.Query(cqlSelectDevice, appID, deviceID).Idempotent(true),
		&d.Platform, &d.Alias, &d.TokenHash, &d.CreatedAt, &d.UpdatedAt)
	if err != nil {
		return store.Device{}, fail(op, err)
	}
	if !found {
		return store.Device{}, fmt.Errorf("cassandrastore: %s: %w", op, herald.ErrDeviceNotFound)
	}
	return d, nil
}

func (s *Store) deviceExists(ctx context.Context, appID, deviceID string) (bool, error) {
	var id string
	return s.scan(ctx, s.session.Query(cqlDeviceExists, appID, deviceID).Idempotent(true), &id)
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
// inbox partition (entries and collapse index at once) and then the
// device. The device row goes last, so a call cut short is completed by
// calling again.
func (s *Store) DeleteDevice(ctx context.Context, appID, deviceID string) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	op := "delete device " + appID + "/" + deviceID
	ok, err := s.deviceExists(ctx, appID, deviceID)
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
	if err := s.exec(ctx, s.session.Query(cqlDeleteDevice, appID, deviceID).Idempotent(true)); err != nil {
		return fail(op, err)
	}
	return nil
}
