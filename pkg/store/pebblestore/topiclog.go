package pebblestore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/store"
)

// ---- topic log ----

const broadcastVersion = 1

// encodeBroadcast is version, be64(expires), flags (1 = recalled), body.
func encodeBroadcast(expires int64, recalled bool, body []byte) []byte {
	v := make([]byte, 0, 10+len(body))
	v = append(v, broadcastVersion)
	v = binary.BigEndian.AppendUint64(v, uint64(expires))
	var flags byte
	if recalled {
		flags = 1
	}
	return append(append(v, flags), body...)
}

// decodeBroadcast parses v; the body aliases v.
func decodeBroadcast(v []byte) (expires int64, recalled bool, body []byte, err error) {
	if len(v) < 10 || v[0] != broadcastVersion {
		return 0, false, nil, errors.New("pebblestore: corrupt broadcast")
	}
	return int64(binary.BigEndian.Uint64(v[1:9])), v[9]&1 != 0, v[10:], nil
}

func (s *Store) broadcastLock(appID, msgID string) func() {
	mu := &s.misc[stripe("broadcast", appID, msgID)]
	mu.Lock()
	return mu.Unlock
}

// PutBroadcast stores b in the app's topic log unless its id is stored.
func (s *Store) PutBroadcast(ctx context.Context, appID string, b store.Broadcast) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.closeMu.RUnlock()
	if b.MessageID == "" {
		return fmt.Errorf("pebblestore: put broadcast: message id is required: %w", herald.ErrInvalidArgument)
	}
	defer s.broadcastLock(appID, b.MessageID)()
	k := broadcastKey(appID, b.MessageID)
	ok, err := s.exists(k)
	if err != nil {
		return fmt.Errorf("pebblestore: put broadcast %s: %w", b.MessageID, err)
	}
	if ok {
		return nil
	}
	exp := nanos(b.ExpiresAt)
	batch := s.db.NewBatch()
	defer batch.Close()
	_ = batch.Set(k, encodeBroadcast(exp, b.Recalled, b.Body), nil)
	if exp != 0 {
		_ = batch.Set(broadcastIndexKey(exp, appID, b.MessageID), nil, nil)
	}
	if err := batch.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("pebblestore: put broadcast %s: %w", b.MessageID, err)
	}
	return nil
}

// ListBroadcasts returns up to limit broadcasts unexpired at now with id >
// after, in id order (recalled ones flagged). A limit <= 0 means no limit.
func (s *Store) ListBroadcasts(ctx context.Context, appID, after string, now time.Time, limit int) ([]store.Broadcast, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	defer s.closeMu.RUnlock()
	prefix := broadcastPrefix(appID, 0)
	start := broadcastKey(appID, after)
	if after != "" {
		start = append(start, 0)
	}
	n := nanos(now)
	var out []store.Broadcast
	err := s.scan(start, upperBound(prefix), func(k, v []byte) error {
		exp, recalled, body, err := decodeBroadcast(v)
		if err != nil {
			return err
		}
		if exp != 0 && exp <= n {
			return nil
		}
		out = append(out, store.Broadcast{
			MessageID: string(k[len(prefix):]),
			ExpiresAt: fromNanos(exp),
			Body:      slices.Clone(body),
			Recalled:  recalled,
		})
		if limit > 0 && len(out) >= limit {
			return errStop
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("pebblestore: list broadcasts %s: %w", appID, err)
	}
	return out, nil
}

// RecallBroadcast flags the broadcast recalled; absent, it does nothing.
func (s *Store) RecallBroadcast(ctx context.Context, appID, messageID string) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.closeMu.RUnlock()
	defer s.broadcastLock(appID, messageID)()
	k := broadcastKey(appID, messageID)
	v, found, err := s.get(k)
	if err != nil {
		return fmt.Errorf("pebblestore: recall broadcast %s: %w", messageID, err)
	}
	if !found {
		return nil
	}
	exp, recalled, body, err := decodeBroadcast(v)
	if err != nil {
		return fmt.Errorf("pebblestore: recall broadcast %s: %w", messageID, err)
	}
	if recalled {
		return nil
	}
	if err := s.db.Set(k, encodeBroadcast(exp, true, body), pebble.NoSync); err != nil {
		return fmt.Errorf("pebblestore: recall broadcast %s: %w", messageID, err)
	}
	return nil
}

// sweepBroadcasts deletes the broadcasts that expired at or before now.
func (s *Store) sweepBroadcasts(ctx context.Context, now int64) error {
	lower := tableKey(tableBroadcastIndex, 8)
	upper := binary.BigEndian.AppendUint64(tableKey(tableBroadcastIndex, 8), uint64(now)+1)
	for {
		keys, err := s.collectKeys(lower, upper, sweepBatchSize)
		if err != nil {
			return err
		}
		for _, k := range keys {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := s.sweepBroadcast(k); err != nil {
				return err
			}
		}
		if len(keys) < sweepBatchSize {
			return nil
		}
		lower = append(keys[len(keys)-1], 0)
	}
}

func (s *Store) sweepBroadcast(ik []byte) error {
	exp, appID, msgID, err := parseBroadcastIndexKey(ik)
	if err != nil {
		return err
	}
	defer s.broadcastLock(appID, msgID)()
	b := s.db.NewBatch()
	defer b.Close()
	_ = b.Delete(ik, nil)
	k := broadcastKey(appID, msgID)
	v, found, err := s.get(k)
	if err != nil {
		return err
	}
	if found {
		if e, _, _, err := decodeBroadcast(v); err == nil && e == exp {
			_ = b.Delete(k, nil)
		}
	}
	return b.Commit(pebble.NoSync)
}

// ---- schedules ----

func (s *Store) scheduleLock(msgID string) func() {
	mu := &s.misc[stripe("schedule", msgID)]
	mu.Lock()
	return mu.Unlock
}

// PutScheduled stores s, replacing the entry of the same message id.
func (s *Store) PutScheduled(ctx context.Context, sc store.Scheduled) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.closeMu.RUnlock()
	if sc.MessageID == "" {
		return fmt.Errorf("pebblestore: put scheduled: message id is required: %w", herald.ErrInvalidArgument)
	}
	defer s.scheduleLock(sc.MessageID)()
	b := s.db.NewBatch()
	defer b.Close()
	if err := s.deleteScheduled(b, sc.MessageID); err != nil {
		return fmt.Errorf("pebblestore: put scheduled %s: %w", sc.MessageID, err)
	}
	due := nanos(sc.Due)
	v := appendComp(make([]byte, 0, 2+len(sc.AppID)+len(sc.Body)), sc.AppID)
	_ = b.Set(scheduleKey(due, sc.MessageID), append(v, sc.Body...), nil)
	_ = b.Set(scheduleByIDKey(sc.MessageID), binary.BigEndian.AppendUint64(nil, uint64(due)), nil)
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("pebblestore: put scheduled %s: %w", sc.MessageID, err)
	}
	return nil
}

// DueScheduled returns up to limit entries due at or before until, by due
// time then message id. A limit <= 0 means no limit.
func (s *Store) DueScheduled(ctx context.Context, until time.Time, limit int) ([]store.Scheduled, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	defer s.closeMu.RUnlock()
	lower := tableKey(tableSchedule, 0)
	upper := binary.BigEndian.AppendUint64(tableKey(tableSchedule, 8), uint64(nanos(until))+1)
	var out []store.Scheduled
	err := s.scan(lower, upper, func(k, v []byte) error {
		if len(k) < 10 {
			return errors.New("pebblestore: corrupt schedule key")
		}
		appID, body, err := readComp(v)
		if err != nil {
			return err
		}
		out = append(out, store.Scheduled{
			MessageID: string(k[10:]),
			AppID:     appID,
			Due:       fromNanos(int64(binary.BigEndian.Uint64(k[2:10]))),
			Body:      slices.Clone(body),
		})
		if limit > 0 && len(out) >= limit {
			return errStop
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("pebblestore: due scheduled: %w", err)
	}
	return out, nil
}

// DeleteScheduled removes the entry of sc.MessageID (whatever its due time).
func (s *Store) DeleteScheduled(ctx context.Context, sc store.Scheduled) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.closeMu.RUnlock()
	defer s.scheduleLock(sc.MessageID)()
	b := s.db.NewBatch()
	defer b.Close()
	if err := s.deleteScheduled(b, sc.MessageID); err != nil {
		return fmt.Errorf("pebblestore: delete scheduled %s: %w", sc.MessageID, err)
	}
	if b.Empty() {
		return nil
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("pebblestore: delete scheduled %s: %w", sc.MessageID, err)
	}
	return nil
}

// deleteScheduled adds to b the deletion of msgID's entry, if stored. The
// caller holds the schedule lock.
func (s *Store) deleteScheduled(b *pebble.Batch, msgID string) error {
	ik := scheduleByIDKey(msgID)
	v, found, err := s.get(ik)
	if err != nil || !found {
		return err
	}
	if len(v) != 8 {
		return errors.New("pebblestore: corrupt schedule index")
	}
	_ = b.Delete(scheduleKey(int64(binary.BigEndian.Uint64(v)), msgID), nil)
	_ = b.Delete(ik, nil)
	return nil
}
