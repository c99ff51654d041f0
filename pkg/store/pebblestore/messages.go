package pebblestore

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/store"
)

func (s *Store) messageLock(msgID string) func() {
	mu := &s.msgs[stripe(msgID)]
	mu.Lock()
	return mu.Unlock
}

// messageState reads the state key of a message known to exist; a message
// stored before states existed has none and is active.
func (s *Store) messageState(msgID string) (store.MessageState, error) {
	v, found, err := s.get(messageStateKey(msgID))
	if err != nil || !found {
		return store.MessageActive, err
	}
	if len(v) != 1 {
		return 0, errors.New("pebblestore: corrupt message state")
	}
	return store.MessageState(v[0]), nil
}

// AddCounters adds d to the message's counters; unknown messages are ignored.
func (s *Store) AddCounters(ctx context.Context, messageID string, d store.Counters) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.closeMu.RUnlock()
	if d == (store.Counters{}) {
		return nil
	}
	defer s.messageLock(messageID)()
	ok, err := s.exists(messageKey(messageID))
	if err != nil {
		return fmt.Errorf("pebblestore: add counters %s: %w", messageID, err)
	}
	if !ok {
		return nil
	}
	k := countersKey(messageID)
	c, err := s.getInt64s(k, 3)
	if err != nil {
		return fmt.Errorf("pebblestore: add counters %s: %w", messageID, err)
	}
	c[0] += d.Targeted
	c[1] += d.Delivered
	c[2] += d.Clicked
	if err := s.db.Set(k, encodeInt64s(c...), pebble.NoSync); err != nil {
		return fmt.Errorf("pebblestore: add counters %s: %w", messageID, err)
	}
	return nil
}

// SetMessageState moves the message to `to` if its state is one of from,
// atomically; it returns the state afterwards and whether it moved.
func (s *Store) SetMessageState(ctx context.Context, messageID string, from []store.MessageState, to store.MessageState) (store.MessageState, bool, error) {
	if err := s.enter(ctx); err != nil {
		return 0, false, err
	}
	defer s.closeMu.RUnlock()
	defer s.messageLock(messageID)()
	ok, err := s.exists(messageKey(messageID))
	if err != nil {
		return 0, false, fmt.Errorf("pebblestore: set message state %s: %w", messageID, err)
	}
	if !ok {
		return 0, false, fmt.Errorf("pebblestore: set message state %s: %w", messageID, herald.ErrMessageNotFound)
	}
	cur, err := s.messageState(messageID)
	if err != nil {
		return 0, false, fmt.Errorf("pebblestore: set message state %s: %w", messageID, err)
	}
	if !slices.Contains(from, cur) {
		return cur, false, nil
	}
	if err := s.db.Set(messageStateKey(messageID), []byte{byte(to)}, pebble.NoSync); err != nil {
		return 0, false, fmt.Errorf("pebblestore: set message state %s: %w", messageID, err)
	}
	return to, true, nil
}

// MessageStates returns the states of the known messages among ids.
func (s *Store) MessageStates(ctx context.Context, messageIDs []string) (map[string]store.MessageState, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	defer s.closeMu.RUnlock()
	out := make(map[string]store.MessageState, len(messageIDs))
	for _, id := range messageIDs {
		if _, done := out[id]; done {
			continue
		}
		v, found, err := s.get(messageStateKey(id))
		if err != nil {
			return nil, fmt.Errorf("pebblestore: message states: %w", err)
		}
		if found {
			if len(v) != 1 {
				return nil, fmt.Errorf("pebblestore: message states %s: corrupt state", id)
			}
			out[id] = store.MessageState(v[0])
			continue
		}
		ok, err := s.exists(messageKey(id)) // stored before message states existed
		if err != nil {
			return nil, fmt.Errorf("pebblestore: message states: %w", err)
		}
		if ok {
			out[id] = store.MessageActive
		}
	}
	return out, nil
}

// RecallPending marks every pending target of the message recalled and
// returns those device ids (none for an unknown or group message).
func (s *Store) RecallPending(ctx context.Context, messageID string) ([]string, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	defer s.closeMu.RUnlock()
	var ts []store.Transition
	prefix := targetPrefix(messageID, 0)
	err := s.scan(prefix, upperBound(prefix), func(k, v []byte) error {
		if len(v) == 1 && store.DeliveryState(v[0]) == store.StatePending {
			ts = append(ts, store.Transition{MessageID: messageID, DeviceID: string(k[len(prefix):]), State: store.StateRecalled})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("pebblestore: recall pending %s: %w", messageID, err)
	}
	b := s.db.NewBatch()
	defer b.Close()
	done, err := s.applyMarks(b, ts) // re-checks each target under its lock
	if err != nil {
		return nil, fmt.Errorf("pebblestore: recall pending %s: %w", messageID, err)
	}
	out := make([]string, len(done))
	for i, t := range done {
		out[i] = t.DeviceID
	}
	return out, nil
}
