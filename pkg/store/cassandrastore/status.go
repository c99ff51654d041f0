package cassandrastore

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"golang.org/x/sync/errgroup"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/store"
)

const (
	cqlMessageExists = `SELECT id FROM messages WHERE id = ?`
	cqlInsertMessage = `INSERT INTO messages (id, app_id, created_at, expires_at, audience, is_group, state, send_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`
	cqlSelectMessage = `SELECT app_id, created_at, expires_at, audience, is_group, state, send_at FROM messages WHERE id = ?`
	cqlSelectState   = `SELECT state FROM messages WHERE id = ?`
	cqlSetMsgState   = `UPDATE messages SET state = ? WHERE id = ? IF state = ?`
	cqlInsertPending = `INSERT INTO delivery (message_id, device_id, state) VALUES (?, ?, 0)`
	cqlSelectStates  = `SELECT device_id, state FROM delivery WHERE message_id = ? AND device_id IN ?`
	cqlSetState      = `UPDATE delivery SET state = ? WHERE message_id = ? AND device_id = ?`
	cqlScanStates    = `SELECT device_id, state FROM delivery WHERE message_id = ?`
)

// rowsPerBatch bounds the rows of one single-partition batch (and of one
// IN list): about 3 KiB, under Cassandra's 5 KiB batch size warning.
const rowsPerBatch = 100

// writeParallelism bounds the batches CreateMessage writes at once.
const writeParallelism = 4

// pendingTimestamp is the write timestamp of pending delivery rows: older
// than any terminal state, so re-creating a message never resets a state.
const pendingTimestamp = 1

// markEpoch anchors terminal-state write timestamps; see markTimestamp.
var markEpoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro()

// markTimestamp is the write timestamp of a terminal state written at t:
// 2*markEpoch - t in microseconds. It DEcreases as time goes on, so among
// racing terminal writes of one target the earliest one has the largest
// timestamp and wins on every replica (ties go to the larger state value,
// Cassandra's rule, identically everywhere). It stays above
// pendingTimestamp until about 2080, and below the wall clock (so a later
// ordinary delete still removes the row) since mid-2025.
func markTimestamp(t time.Time) int64 {
	ts := 2*markEpoch - t.UnixMicro()
	if ts <= pendingTimestamp {
		return pendingTimestamp + 1
	}
	return ts
}

// CreateMessage records m with every (deduplicated) target pending.
// Creating a message that exists is a no-op: its states are kept.
//
// Pending rows go first (at pendingTimestamp, so rewriting them after a
// crash cannot undo a mark), the messages row last: it makes the message
// visible, and its absence makes a retry write everything again.
func (s *Store) CreateMessage(ctx context.Context, m store.Message) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	op := "create message " + m.ID
	if m.ID == "" {
		return fmt.Errorf("cassandrastore: %s: id is required: %w", op, herald.ErrInvalidArgument)
	}
	var id string
	found, err := s.scan(ctx, s.session.Query(cqlMessageExists, m.ID).Idempotent(true), &id)
	if err != nil {
		return fail(op, err)
	}
	if found {
		return nil
	}
	seen := make(map[string]bool, len(m.Targets))
	targets := make([]string, 0, len(m.Targets))
	for _, d := range m.Targets {
		if !seen[d] {
			seen[d] = true
			targets = append(targets, d)
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(writeParallelism)
	for chunk := range chunks(targets, rowsPerBatch) {
		g.Go(func() error {
			b := s.session.Batch(gocql.UnloggedBatch).WithTimestamp(pendingTimestamp)
			for _, d := range chunk {
				b.Query(cqlInsertPending, m.ID, d)
			}
			return retry(gctx, func() error { return b.ExecContext(gctx) })
		})
	}
	if err := g.Wait(); err != nil {
		return fail(op, err)
	}
	q := s.session.Query(cqlInsertMessage, m.ID, m.AppID, timestampOrNil(m.CreatedAt), timestampOrNil(m.ExpiresAt),
		unsetIfEmpty(m.Audience), m.Group, int8(m.State), timestampOrUnset(m.SendAt)).Idempotent(true)
	if err := s.exec(ctx, q); err != nil {
		return fail(op, err)
	}
	return nil
}

// chunks yields s in consecutive pieces of at most n.
func chunks[T any](s []T, n int) func(yield func([]T) bool) {
	return func(yield func([]T) bool) {
		for len(s) > 0 {
			k := min(n, len(s))
			if !yield(s[:k:k]) {
				return
			}
			s = s[k:]
		}
	}
}

// Mark applies the transitions whose target is pending; the rest are ignored.
func (s *Store) Mark(ctx context.Context, ts ...store.Transition) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	for _, t := range ts {
		if t.State == store.StatePending || t.State > store.StateRecalled {
			return fmt.Errorf("cassandrastore: mark %s/%s: state %d is not terminal: %w",
				t.MessageID, t.DeviceID, t.State, herald.ErrInvalidArgument)
		}
	}
	if err := s.mark(ctx, ts); err != nil {
		return fail("mark", err)
	}
	return nil
}

// mark applies ts: per message, one read of the targets' states (skipping
// unknown and terminal targets), then one single-partition write of the
// pending ones at markTimestamp. Within one call the first transition of a
// target wins; across calls the earliest write does (see markTimestamp).
func (s *Store) mark(ctx context.Context, ts []store.Transition) error {
	if len(ts) == 0 {
		return nil
	}
	type target struct{ msg, dev string }
	seen := make(map[target]bool, len(ts))
	var order []string
	byMsg := make(map[string][]store.Transition)
	for _, t := range ts {
		k := target{t.MessageID, t.DeviceID}
		if seen[k] {
			continue
		}
		seen[k] = true
		if _, ok := byMsg[t.MessageID]; !ok {
			order = append(order, t.MessageID)
		}
		byMsg[t.MessageID] = append(byMsg[t.MessageID], t)
	}
	if len(order) == 1 {
		return s.markMessage(ctx, order[0], byMsg[order[0]])
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(readParallelism)
	for _, msgID := range order {
		g.Go(func() error { return s.markMessage(gctx, msgID, byMsg[msgID]) })
	}
	return g.Wait()
}

// markMessage applies ts, all of message msgID with distinct devices.
func (s *Store) markMessage(ctx context.Context, msgID string, ts []store.Transition) error {
	for chunk := range chunks(ts, rowsPerBatch) {
		devs := make([]string, len(chunk))
		for i, t := range chunk {
			devs[i] = t.DeviceID
		}
		pending := make(map[string]bool, len(chunk))
		err := retry(ctx, func() error {
			clear(pending)
			iter := s.session.Query(cqlSelectStates, msgID, devs).Idempotent(true).IterContext(ctx)
			var (
				dev   string
				state int8
			)
			for iter.Scan(&dev, &state) {
				if store.DeliveryState(state) == store.StatePending {
					pending[dev] = true
				}
			}
			return iter.Close()
		})
		if err != nil {
			return err
		}
		if len(pending) == 0 {
			continue
		}
		wts := markTimestamp(time.Now())
		if len(pending) == 1 {
			for _, t := range chunk {
				if pending[t.DeviceID] {
					q := s.session.Query(cqlSetState, int8(t.State), msgID, t.DeviceID).WithTimestamp(wts).Idempotent(true)
					if err := s.exec(ctx, q); err != nil {
						return err
					}
				}
			}
			continue
		}
		b := s.session.Batch(gocql.UnloggedBatch).WithTimestamp(wts)
		for _, t := range chunk {
			if pending[t.DeviceID] {
				b.Query(cqlSetState, int8(t.State), msgID, t.DeviceID)
			}
		}
		if err := retry(ctx, func() error { return b.ExecContext(ctx) }); err != nil {
			return err
		}
	}
	return nil
}

// MessageStatus returns the message and its counts. A unicast message's
// counts come from its delivery partition (a target still pending once
// the message has expired counts as expired) plus the clicked counter; a
// group message's Targeted, Delivered and Clicked come from its counters,
// and Pending is Targeted minus Delivered.
func (s *Store) MessageStatus(ctx context.Context, messageID string) (store.Message, store.Counts, error) {
	if err := s.enter(ctx); err != nil {
		return store.Message{}, store.Counts{}, err
	}
	op := "message status " + messageID
	m := store.Message{ID: messageID}
	var state *int8
	found, err := s.scan(ctx, s.session.Query(cqlSelectMessage, messageID).Idempotent(true),
		&m.AppID, &m.CreatedAt, &m.ExpiresAt, &m.Audience, &m.Group, &state, &m.SendAt)
	if err != nil {
		return store.Message{}, store.Counts{}, fail(op, err)
	}
	if !found {
		return store.Message{}, store.Counts{}, fmt.Errorf("cassandrastore: %s: %w", op, herald.ErrMessageNotFound)
	}
	m.State = stateOf(state)
	ctr, err := s.counters(ctx, messageID)
	if err != nil {
		return store.Message{}, store.Counts{}, fail(op, err)
	}
	if m.Group {
		c := store.Counts{Targeted: ctr.Targeted, Delivered: ctr.Delivered, Clicked: ctr.Clicked}
		c.Pending = max(c.Targeted-c.Delivered, 0)
		return m, c, nil
	}
	expired := !m.ExpiresAt.IsZero() && !s.now().Before(m.ExpiresAt)
	var c store.Counts
	err = retry(ctx, func() error {
		c, m.Targets = store.Counts{Clicked: ctr.Clicked}, m.Targets[:0]
		iter := s.session.Query(cqlScanStates, messageID).Idempotent(true).IterContext(ctx)
		var (
			dev   string
			state int8
		)
		for iter.Scan(&dev, &state) {
			m.Targets = append(m.Targets, dev)
			c.Targeted++
			switch store.DeliveryState(state) {
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
		}
		return iter.Close()
	})
	if err != nil {
		return store.Message{}, store.Counts{}, fail(op, err)
	}
	c.Pending = c.Targeted - c.Delivered - c.Expired - c.Failed - c.Collapsed - c.Recalled
	return m, c, nil
}

// stateOf reads a messages.state cell: null (a row written before
// message states existed) is active.
func stateOf(state *int8) store.MessageState {
	if state == nil {
		return store.MessageActive
	}
	return store.MessageState(*state)
}

// SetMessageState moves the message to `to` if its state is one of from,
// with a lightweight transaction conditioned on the state it read (so of
// racing moves exactly one applies); it returns the state afterwards and
// whether it moved. herald.ErrMessageNotFound if absent.
func (s *Store) SetMessageState(ctx context.Context, messageID string, from []store.MessageState, to store.MessageState) (store.MessageState, bool, error) {
	if err := s.enter(ctx); err != nil {
		return 0, false, err
	}
	op := "set message state " + messageID
	var state *int8
	found, err := s.scan(ctx, s.session.Query(cqlSelectState, messageID).Idempotent(true), &state)
	if err != nil {
		return 0, false, fail(op, err)
	}
	if !found {
		return 0, false, fmt.Errorf("cassandrastore: %s: %w", op, herald.ErrMessageNotFound)
	}
	for range maxCASRounds {
		cur := stateOf(state)
		if !slices.Contains(from, cur) {
			return cur, false, nil
		}
		var cond any // null: a row without a state
		if state != nil {
			cond = *state
		}
		prev := map[string]any{}
		applied, err := s.scanCAS(ctx, s.session.Query(cqlSetMsgState, int8(to), messageID, cond), prev)
		if err != nil {
			return 0, false, fail(op, err)
		}
		if applied {
			return to, true, nil
		}
		v, ok := prev["state"]
		if !ok {
			return 0, false, fmt.Errorf("cassandrastore: %s: %w", op, herald.ErrMessageNotFound)
		}
		state = nil
		if n, isInt := v.(int8); isInt {
			state = &n
		}
	}
	return 0, false, fail(op, errContention)
}

// MessageStates returns the states of the known messages among ids, read
// as parallel single-partition reads.
func (s *Store) MessageStates(ctx context.Context, messageIDs []string) (map[string]store.MessageState, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	out := make(map[string]store.MessageState, len(messageIDs))
	var mu sync.Mutex
	seen := make(map[string]bool, len(messageIDs))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(readParallelism)
	for _, id := range messageIDs {
		if seen[id] {
			continue
		}
		seen[id] = true
		g.Go(func() error {
			var state *int8
			found, err := s.scan(gctx, s.session.Query(cqlSelectState, id).Idempotent(true), &state)
			if found {
				mu.Lock()
				out[id] = stateOf(state)
				mu.Unlock()
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, fail("message states", err)
	}
	return out, nil
}

// RecallPending marks every pending target of the message recalled and
// returns those device ids (none for an unknown or group message). It
// reads the delivery partition and marks the pending targets like Mark
// does: a target acked at the same moment may win the race (its state
// then stays delivered) and still be returned; the caller only deletes
// inbox entries with the ids, which the ack deleted already.
func (s *Store) RecallPending(ctx context.Context, messageID string) ([]string, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	op := "recall pending " + messageID
	var devs []string
	err := retry(ctx, func() error {
		devs = devs[:0]
		iter := s.session.Query(cqlScanStates, messageID).Idempotent(true).IterContext(ctx)
		var (
			dev   string
			state int8
		)
		for iter.Scan(&dev, &state) {
			if store.DeliveryState(state) == store.StatePending {
				devs = append(devs, dev)
			}
		}
		return iter.Close()
	})
	if err != nil {
		return nil, fail(op, err)
	}
	ts := make([]store.Transition, len(devs))
	for i, d := range devs {
		ts[i] = store.Transition{MessageID: messageID, DeviceID: d, State: store.StateRecalled}
	}
	if err := s.mark(ctx, ts); err != nil {
		return nil, fail(op, err)
	}
	return devs, nil
}
