package pebblestore

import (
	"context"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/store"
)

// UpdateApp replaces the settings of the app a.ID (WebhookURL, RateLimit,
// DailyCap); herald.ErrAppNotFound if absent.
func (s *Store) UpdateApp(ctx context.Context, a store.App) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.closeMu.RUnlock()
	s.regMu.Lock()
	defer s.regMu.Unlock()
	k := appKey(a.ID)
	var r appRecord
	found, err := s.getJSON(k, &r)
	if err != nil {
		return fmt.Errorf("pebblestore: update app %s: %w", a.ID, err)
	}
	if !found {
		return fmt.Errorf("pebblestore: update app %s: %w", a.ID, herald.ErrAppNotFound)
	}
	r.WebhookURL, r.RateLimit, r.DailyCap = a.WebhookURL, a.RateLimit, a.DailyCap
	v, err := marshal(r)
	if err != nil {
		return fmt.Errorf("pebblestore: update app %s: %w", a.ID, err)
	}
	if err := s.db.Set(k, v, pebble.NoSync); err != nil {
		return fmt.Errorf("pebblestore: update app %s: %w", a.ID, err)
	}
	return nil
}

// Devices returns the registered devices among ids.
func (s *Store) Devices(ctx context.Context, appID string, ids []string) (map[string]store.Device, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	defer s.closeMu.RUnlock()
	out := make(map[string]store.Device, len(ids))
	for _, id := range ids {
		if _, done := out[id]; done {
			continue
		}
		var r deviceRecord
		found, err := s.getJSON(deviceKey(appID, id), &r)
		if err != nil {
			return nil, fmt.Errorf("pebblestore: devices of %s: %w", appID, err)
		}
		if found {
			out[id] = r.device(appID, id)
		}
	}
	return out, nil
}

// DevicesByAlias returns up to limit ids (in id order) of the app's devices
// with this alias; a limit <= 0 means no limit, "" matches nothing.
func (s *Store) DevicesByAlias(ctx context.Context, appID, alias string, limit int) ([]string, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	defer s.closeMu.RUnlock()
	if alias == "" {
		return nil, nil
	}
	prefix := aliasPrefix(appID, alias, 0)
	var out []string
	err := s.scan(prefix, upperBound(prefix), func(k, _ []byte) error {
		out = append(out, string(k[len(prefix):]))
		if limit > 0 && len(out) >= limit {
			return errStop
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("pebblestore: devices by alias %s: %w", appID, err)
	}
	return out, nil
}

// UpdateTags adds then removes tags and returns the device.
func (s *Store) UpdateTags(ctx context.Context, appID, deviceID string, add, remove []string) (store.Device, error) {
	d, err := s.updateDevice(ctx, appID, deviceID, func(r *deviceRecord) {
		r.Tags = applySet(r.Tags, add, remove)
	})
	if err != nil {
		return store.Device{}, fmt.Errorf("pebblestore: update tags: %w", err)
	}
	return d, nil
}

// SetAlias sets the device's alias (the index follows) and returns it.
func (s *Store) SetAlias(ctx context.Context, appID, deviceID, alias string) (store.Device, error) {
	d, err := s.updateDevice(ctx, appID, deviceID, func(r *deviceRecord) {
		r.Alias = alias
	})
	if err != nil {
		return store.Device{}, fmt.Errorf("pebblestore: set alias: %w", err)
	}
	return d, nil
}

// UpdateTopics subscribes then unsubscribes and returns the device; every
// subscribed topic becomes known to the app.
func (s *Store) UpdateTopics(ctx context.Context, appID, deviceID string, subscribe, unsubscribe []string) (store.Device, error) {
	d, err := s.updateDevice(ctx, appID, deviceID, func(r *deviceRecord) {
		r.Topics = applySet(r.Topics, subscribe, unsubscribe)
	}, subscribe...)
	if err != nil {
		return store.Device{}, fmt.Errorf("pebblestore: update topics: %w", err)
	}
	return d, nil
}

// updateDevice applies change to the stored device under its lock and
// records the topics known as subscribed to the app.
func (s *Store) updateDevice(ctx context.Context, appID, deviceID string, change func(*deviceRecord), known ...string) (store.Device, error) {
	if err := s.enter(ctx); err != nil {
		return store.Device{}, err
	}
	defer s.closeMu.RUnlock()
	mu := s.deviceLock(appID, deviceID)
	mu.Lock()
	defer mu.Unlock()
	var old deviceRecord
	found, err := s.getJSON(deviceKey(appID, deviceID), &old)
	if err != nil {
		return store.Device{}, fmt.Errorf("device %s/%s: %w", appID, deviceID, err)
	}
	if !found {
		return store.Device{}, fmt.Errorf("device %s/%s: %w", appID, deviceID, herald.ErrDeviceNotFound)
	}
	r := old
	r.Tags, r.Topics = slices.Clone(old.Tags), slices.Clone(old.Topics)
	change(&r)
	b := s.db.NewBatch()
	defer b.Close()
	for _, t := range known {
		_ = b.Set(topicKey(appID, t), nil, nil)
	}
	if err := s.writeDevice(b, appID, deviceID, old, r); err != nil {
		return store.Device{}, fmt.Errorf("device %s/%s: %w", appID, deviceID, err)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return store.Device{}, fmt.Errorf("device %s/%s: %w", appID, deviceID, err)
	}
	return r.device(appID, deviceID), nil
}

// TopicExists reports whether a device of the app ever subscribed to topic.
func (s *Store) TopicExists(ctx context.Context, appID, topic string) (bool, error) {
	if err := s.enter(ctx); err != nil {
		return false, err
	}
	defer s.closeMu.RUnlock()
	ok, err := s.exists(topicKey(appID, topic))
	if err != nil {
		return false, fmt.Errorf("pebblestore: topic exists %s/%s: %w", appID, topic, err)
	}
	return ok, nil
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

// applySet returns the sorted set set + add - remove.
func applySet(set, add, remove []string) []string {
	out := sortedSet(append(slices.Clone(set), add...))
	out = slices.DeleteFunc(out, func(x string) bool { return slices.Contains(remove, x) })
	if len(out) == 0 {
		return nil
	}
	return out
}
