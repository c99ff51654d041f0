package cassandrastore

import (
	"context"
	"fmt"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/store"
)

const (
	cqlInsertEntry = `INSERT INTO inbox (app_id, device_id, message_id, collapse_id, expires_at, body, replaced)
		VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ?`
	cqlSelectCollapse = `SELECT collapse FROM inbox WHERE app_id = ? AND device_id = ? LIMIT 1`
	cqlEntryExists    = `SELECT message_id FROM inbox WHERE app_id = ? AND device_id = ? AND message_id = ?`
	cqlEntryReplaced  = `SELECT replaced FROM inbox WHERE app_id = ? AND device_id = ? AND message_id = ?`
	cqlMoveCollapse   = `UPDATE inbox USING TTL ? SET collapse[?] = ? WHERE app_id = ? AND device_id = ? IF collapse[?] = ?`
	cqlDeleteEntry    = `DELETE FROM inbox WHERE app_id = ? AND device_id = ? AND message_id = ?`
	cqlListEntries    = `SELECT message_id, collapse_id, expires_at, body FROM inbox
		WHERE app_id = ? AND device_id = ? AND message_id > ?`
	cqlSelectDeleted = `SELECT message_id, collapse_id, collapse FROM inbox
		WHERE app_id = ? AND device_id = ? AND message_id IN ?`
	cqlDeleteEntries = `DELETE FROM inbox WHERE app_id = ? AND device_id = ? AND message_id IN ?`
	cqlDropCollapse  = `DELETE collapse[?] FROM inbox WHERE app_id = ? AND device_id = ? IF collapse[?] = ?`
	cqlInboxIDs      = `SELECT message_id FROM inbox WHERE app_id = ? AND device_id = ?`
	cqlDeleteInbox   = `DELETE FROM inbox WHERE app_id = ? AND device_id = ?`
)

// maxCollapseRounds bounds how often Put retries its conditional batch
// when concurrent Puts to the same device and collapse id keep winning.
const maxCollapseRounds = 10

// listPageSize caps the rows fetched per page by List.
const listPageSize = 1000

// unsetIfEmpty leaves a column untouched (no tombstone) for "".
func unsetIfEmpty(s string) any {
	if s == "" {
		return gocql.UnsetValue
	}
	return s
}

// Put stores e in the device's inbox with a TTL of its remaining lifetime.
// With a collapse id it applies the collapse rule in one conditional batch
// on the device's partition: the newer entry (larger message id) is stored,
// the older one deleted, the index moved, and the older one's (message,
// device) is then marked collapsed.
func (s *Store) Put(ctx context.Context, appID, deviceID string, e store.InboxEntry) (string, error) {
	if err := s.enter(ctx); err != nil {
		return "", err
	}
	op := "inbox put " + appID + "/" + deviceID + "/" + e.MessageID
	if e.MessageID == "" {
		return "", fmt.Errorf("cassandrastore: %s: message id is required: %w", op, herald.ErrInvalidArgument)
	}
	ttl := ttlSeconds(e.ExpiresAt, s.now())
	if e.CollapseID == "" {
		// Idempotent: putting the same entry again rewrites the same row.
		q := s.session.Query(cqlInsertEntry, appID, deviceID, e.MessageID, gocql.UnsetValue,
			timestampOrUnset(e.ExpiresAt), e.Body, gocql.UnsetValue, ttl).Idempotent(true)
		if err := s.exec(ctx, q); err != nil {
			return "", fail(op, err)
		}
		return "", nil
	}
	collapsed, err := s.putCollapse(ctx, appID, deviceID, e, ttl)
	if err != nil {
		return "", fail(op, err)
	}
	return collapsed, nil
}

func timestampOrUnset(t time.Time) any {
	if t.IsZero() {
		return gocql.UnsetValue
	}
	return t
}

func (s *Store) putCollapse(ctx context.Context, appID, deviceID string, e store.InboxEntry, ttl int) (string, error) {
	for range maxCollapseRounds {
		holder, err := s.collapseHolder(ctx, appID, deviceID, e.CollapseID)
		if err != nil {
			return "", err
		}
		if holder == e.MessageID {
			// Stored by an earlier call (maybe one whose answer was lost):
			// make the status mark that call may not have got to.
			return "", s.finishReplace(ctx, appID, deviceID, e.MessageID)
		}
		live := false
		if holder != "" {
			if live, err = s.entryExists(ctx, appID, deviceID, holder); err != nil {
				return "", err
			}
		}
		if live && holder > e.MessageID {
			// A newer entry holds the collapse id: e is collapsed unstored.
			err := s.mark(ctx, []store.Transition{{MessageID: e.MessageID, DeviceID: deviceID, State: store.StateCollapsed}})
			return e.MessageID, err
		}
		// Store e and move the index to it, on condition that the index
		// still points where we read it (a dead holder's index entry is
		// replaced too).
		var cond any // null: no holder
		if holder != "" {
			cond = holder
		}
		replaced := any(gocql.UnsetValue)
		if live {
			replaced = holder
		}
		b := s.session.Batch(gocql.LoggedBatch)
		b.Query(cqlMoveCollapse, ttl, e.CollapseID, e.MessageID, appID, deviceID, e.CollapseID, cond)
		b.Query(cqlInsertEntry, appID, deviceID, e.MessageID, e.CollapseID,
			timestampOrUnset(e.ExpiresAt), e.Body, replaced, ttl)
		if live {
			b.Query(cqlDeleteEntry, appID, deviceID, holder)
		}
		applied, err := s.execBatchCAS(ctx, b)
		if err != nil {
			return "", err
		}
		if !applied {
			continue // the index moved under us: read it again
		}
		if !live {
			return "", nil
		}
		err = s.mark(ctx, []store.Transition{{MessageID: holder, DeviceID: deviceID, State: store.StateCollapsed}})
		return holder, err
	}
	return "", fmt.Errorf("collapse id %q: too much contention: %w", e.CollapseID, herald.ErrUnavailable)
}

// execBatchCAS runs a conditional batch. A retry after a lost answer may
// find its own earlier write and report "not applied": callers re-read
// and recognise that case.
func (s *Store) execBatchCAS(ctx context.Context, b *gocql.Batch) (bool, error) {
	var applied bool
	err := retry(ctx, func() error {
		var (
			iter *gocql.Iter
			err  error
		)
		applied, iter, err = b.MapExecCASContext(ctx, map[string]any{})
		if iter != nil {
			if cerr := iter.Close(); err == nil {
				err = cerr
			}
		}
		return err
	})
	return applied, err
}

// collapseHolder returns the message id the collapse index maps
// collapseID to, "" if none.
func (s *Store) collapseHolder(ctx context.Context, appID, deviceID, collapseID string) (string, error) {
	var m map[string]string
	if _, err := s.scan(ctx, s.session.Query(cqlSelectCollapse, appID, deviceID).Idempotent(true), &m); err != nil {
		return "", err
	}
	return m[collapseID], nil
}

func (s *Store) entryExists(ctx context.Context, appID, deviceID, msgID string) (bool, error) {
	var id string
	return s.scan(ctx, s.session.Query(cqlEntryExists, appID, deviceID, msgID).Idempotent(true), &id)
}

// finishReplace marks collapsed the entry msgID's row says it replaced.
func (s *Store) finishReplace(ctx context.Context, appID, deviceID, msgID string) error {
	var replaced string
	found, err := s.scan(ctx, s.session.Query(cqlEntryReplaced, appID, deviceID, msgID).Idempotent(true), &replaced)
	if err != nil || !found || replaced == "" {
		return err
	}
	return s.mark(ctx, []store.Transition{{MessageID: replaced, DeviceID: deviceID, State: store.StateCollapsed}})
}

// List returns up to limit unexpired entries with message id > after, in
// message id order. A limit <= 0 means no limit. Rows whose TTL has not
// yet removed them are filtered on their exact expiry.
func (s *Store) List(ctx context.Context, appID, deviceID, after string, limit int) ([]store.InboxEntry, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	pageSize := listPageSize
	if limit > 0 && limit < pageSize {
		pageSize = limit
	}
	var out []store.InboxEntry
	err := retry(ctx, func() error {
		out = out[:0]
		now := s.now()
		iter := s.session.Query(cqlListEntries, appID, deviceID, after).
			Idempotent(true).PageSize(pageSize).IterContext(ctx)
		var (
			id, collapse string
			expires      time.Time
			body         []byte
		)
		for iter.Scan(&id, &collapse, &expires, &body) {
			if id == "" || (!expires.IsZero() && !now.Before(expires)) {
				continue
			}
			out = append(out, store.InboxEntry{MessageID: id, CollapseID: collapse, ExpiresAt: expires, Body: body})
			body = nil // Scan appends into the slice it is given: each entry needs its own
			if limit > 0 && len(out) >= limit {
				break
			}
		}
		return iter.Close()
	})
	if err != nil {
		return nil, fail("inbox list "+appID+"/"+deviceID, err)
	}
	return out, nil
}

// Delete removes the given entries of the device; absent ids are ignored.
// The collapse index entries of deleted entries are removed afterwards,
// each on condition that it still points to the deleted entry (a newer
// entry may have taken it meanwhile).
func (s *Store) Delete(ctx context.Context, appID, deviceID string, messageIDs ...string) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	if len(messageIDs) == 0 {
		return nil
	}
	op := "inbox delete " + appID + "/" + deviceID
	type held struct{ collapse, msgID string }
	var (
		found []string
		drop  []held
	)
	err := retry(ctx, func() error {
		found, drop = found[:0], drop[:0]
		iter := s.session.Query(cqlSelectDeleted, appID, deviceID, messageIDs).Idempotent(true).IterContext(ctx)
		var (
			id, collapse string
			index        map[string]string
		)
		for iter.Scan(&id, &collapse, &index) {
			found = append(found, id)
			if collapse != "" && index[collapse] == id {
				drop = append(drop, held{collapse, id})
			}
		}
		return iter.Close()
	})
	if err != nil {
		return fail(op, err)
	}
	if len(found) == 0 {
		return nil
	}
	if err := s.exec(ctx, s.session.Query(cqlDeleteEntries, appID, deviceID, found).Idempotent(true)); err != nil {
		return fail(op, err)
	}
	for _, h := range drop {
		q := s.session.Query(cqlDropCollapse, h.collapse, appID, deviceID, h.collapse, h.msgID)
		if _, err := s.scanCAS(ctx, q, map[string]any{}); err != nil {
			// The entry is gone; a stale index entry only costs the next
			// Put with this collapse id one read (it checks the holder).
			return fail(op, err)
		}
	}
	return nil
}

// inboxIDs returns the message ids of every row of the device's inbox,
// expired or not.
func (s *Store) inboxIDs(ctx context.Context, appID, deviceID string) ([]string, error) {
	var ids []string
	err := retry(ctx, func() error {
		ids = ids[:0]
		iter := s.session.Query(cqlInboxIDs, appID, deviceID).Idempotent(true).IterContext(ctx)
		var id string
		for iter.Scan(&id) {
			if id != "" { // a partition holding only the static collapse index
				ids = append(ids, id)
			}
		}
		return iter.Close()
	})
	return ids, err
}
