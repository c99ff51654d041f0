package pebblestore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/heraldpush/herald/pkg/store"
)

// ---- badges ----

// AddBadge adds delta to the device's badge and returns the new value
// (saturating at the int32 limits).
func (s *Store) AddBadge(ctx context.Context, appID, deviceID string, delta int32) (int32, error) {
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	defer s.closeMu.RUnlock()
	mu := s.deviceLock(appID, deviceID)
	mu.Lock()
	defer mu.Unlock()
	k := badgeKey(appID, deviceID)
	cur, err := s.badge(k)
	if err != nil {
		return 0, fmt.Errorf("pebblestore: add badge %s/%s: %w", appID, deviceID, err)
	}
	n := int32(max(min(int64(cur)+int64(delta), math.MaxInt32), math.MinInt32))
	if err := s.db.Set(k, binary.BigEndian.AppendUint32(nil, uint32(n)), pebble.NoSync); err != nil {
		return 0, fmt.Errorf("pebblestore: add badge %s/%s: %w", appID, deviceID, err)
	}
	return n, nil
}

// SetBadge sets the device's badge.
func (s *Store) SetBadge(ctx context.Context, appID, deviceID string, n int32) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.closeMu.RUnlock()
	mu := s.deviceLock(appID, deviceID)
	mu.Lock()
	defer mu.Unlock()
	if err := s.db.Set(badgeKey(appID, deviceID), binary.BigEndian.AppendUint32(nil, uint32(n)), pebble.NoSync); err != nil {
		return fmt.Errorf("pebblestore: set badge %s/%s: %w", appID, deviceID, err)
	}
	return nil
}

// Badge returns the device's badge, 0 when never set.
func (s *Store) Badge(ctx context.Context, appID, deviceID string) (int32, error) {
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	defer s.closeMu.RUnlock()
	n, err := s.badge(badgeKey(appID, deviceID))
	if err != nil {
		return 0, fmt.Errorf("pebblestore: badge %s/%s: %w", appID, deviceID, err)
	}
	return n, nil
}

func (s *Store) badge(k []byte) (int32, error) {
	v, found, err := s.get(k)
	if err != nil || !found {
		return 0, err
	}
	if len(v) != 4 {
		return 0, errors.New("pebblestore: corrupt badge")
	}
	return int32(binary.BigEndian.Uint32(v)), nil
}

// ---- quotas ----

// quotaKeepDays is how many UTC dates of quota counts Sweep keeps (today
// and the two before it).
const quotaKeepDays = 3

// CountDaily adds n to the device's count of day's UTC date and returns it.
func (s *Store) CountDaily(ctx context.Context, appID, deviceID string, day time.Time, n int64) (int64, error) {
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	defer s.closeMu.RUnlock()
	mu := s.deviceLock(appID, deviceID)
	mu.Lock()
	defer mu.Unlock()
	k := quotaKey(quotaDate(day), appID, deviceID)
	cur, err := s.getInt64s(k, 1)
	if err != nil {
		return 0, fmt.Errorf("pebblestore: count daily %s/%s: %w", appID, deviceID, err)
	}
	total := cur[0] + n
	if err := s.db.Set(k, binary.BigEndian.AppendUint64(nil, uint64(total)), pebble.NoSync); err != nil {
		return 0, fmt.Errorf("pebblestore: count daily %s/%s: %w", appID, deviceID, err)
	}
	return total, nil
}

// sweepQuotas drops the quota counts of dates before the last quotaKeepDays.
func (s *Store) sweepQuotas(now time.Time) error {
	oldest := quotaDate(now.UTC().AddDate(0, 0, -(quotaKeepDays - 1)))
	lower, upper := quotaDatePrefix(0), quotaDatePrefix(oldest)
	empty := true
	err := s.scan(lower, upper, func(_, _ []byte) error { empty = false; return errStop })
	if err != nil || empty {
		return err
	}
	return s.db.DeleteRange(lower, upper, pebble.NoSync)
}

// ---- stats ----

// AddStats adds d to the app's counters of the hour containing at.
func (s *Store) AddStats(ctx context.Context, appID string, at time.Time, d store.StatCounts) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.closeMu.RUnlock()
	if d == (store.StatCounts{}) {
		return nil
	}
	hour := nanos(at.UTC().Truncate(time.Hour))
	mu := &s.misc[stripe("stats", appID, fmt.Sprint(hour))]
	mu.Lock()
	defer mu.Unlock()
	k := statsKey(appID, hour)
	c, err := s.getInt64s(k, 3)
	if err != nil {
		return fmt.Errorf("pebblestore: add stats %s: %w", appID, err)
	}
	c[0] += d.Sent
	c[1] += d.Delivered
	c[2] += d.Clicked
	if err := s.db.Set(k, encodeInt64s(c...), pebble.NoSync); err != nil {
		return fmt.Errorf("pebblestore: add stats %s: %w", appID, err)
	}
	return nil
}

// Stats returns the app's non-empty hours in [from, to), in order.
func (s *Store) Stats(ctx context.Context, appID string, from, to time.Time) ([]store.StatBucket, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	defer s.closeMu.RUnlock()
	if !to.After(from) {
		return nil, nil
	}
	prefix := statsPrefix(appID)
	var out []store.StatBucket
	err := s.scan(statsKey(appID, nanos(from)), statsKey(appID, nanos(to)), func(k, v []byte) error {
		c, err := decodeInt64s(v, 3)
		if err != nil {
			return err
		}
		if c[0] == 0 && c[1] == 0 && c[2] == 0 {
			return nil
		}
		h := fromNanos(int64(binary.BigEndian.Uint64(k[len(prefix):]))).UTC()
		out = append(out, store.StatBucket{Hour: h, StatCounts: store.StatCounts{Sent: c[0], Delivered: c[1], Clicked: c[2]}})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("pebblestore: stats %s: %w", appID, err)
	}
	return out, nil
}

// ---- fixed-width integer values ----

// getInt64s returns the n big-endian int64s stored at k (zeros if absent).
func (s *Store) getInt64s(k []byte, n int) ([]int64, error) {
	v, found, err := s.get(k)
	if err != nil {
		return nil, err
	}
	if !found {
		return make([]int64, n), nil
	}
	return decodeInt64s(v, n)
}

func decodeInt64s(v []byte, n int) ([]int64, error) {
	if len(v) != 8*n {
		return nil, errors.New("pebblestore: corrupt counter")
	}
	out := make([]int64, n)
	for i := range out {
		out[i] = int64(binary.BigEndian.Uint64(v[8*i:]))
	}
	return out, nil
}

func encodeInt64s(xs ...int64) []byte {
	b := make([]byte, 0, 8*len(xs))
	for _, x := range xs {
		b = binary.BigEndian.AppendUint64(b, uint64(x))
	}
	return b
}
