package cassandrastore

import (
	"context"
	"fmt"
	"time"

	"github.com/heraldpush/herald"
)

const (
	cqlClaim = `INSERT INTO idempotency (app_id, idem_key, message_id) VALUES (?, ?, ?)
		IF NOT EXISTS USING TTL ?`
	cqlRelease = `DELETE FROM idempotency WHERE app_id = ? AND idem_key = ? IF message_id = ?`
)

// Claim maps (appID, key) to messageID unless an unexpired claim exists, in
// which case it returns that claim's message id. A ttl <= 0 never expires;
// otherwise the claim lives ttl rounded up to whole seconds (Cassandra's
// TTL unit). A lightweight transaction decides between racing claims.
func (s *Store) Claim(ctx context.Context, appID, key, messageID string, ttl time.Duration) (string, error) {
	if err := s.enter(ctx); err != nil {
		return "", err
	}
	if key == "" || messageID == "" {
		return "", fmt.Errorf("cassandrastore: claim: key and message id are required: %w", herald.ErrInvalidArgument)
	}
	prev := map[string]any{}
	applied, err := s.scanCAS(ctx, s.session.Query(cqlClaim, appID, key, messageID, ttlFor(ttl)), prev)
	if err != nil {
		return "", fail("claim", err)
	}
	existing, _ := prev["message_id"].(string)
	if applied || existing == messageID {
		// existing == messageID: a retry found the claim its lost first
		// attempt made.
		return "", nil
	}
	return existing, nil
}

// Release removes the claim of (appID, key) if it maps to messageID.
func (s *Store) Release(ctx context.Context, appID, key, messageID string) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	if _, err := s.scanCAS(ctx, s.session.Query(cqlRelease, appID, key, messageID), map[string]any{}); err != nil {
		return fail("release", err)
	}
	return nil
}
