// Package echo is an example business service: it consumes the upstream
// messages devices send (the upstream.<channel> log) and answers each
// device with a data message through the Herald send API.
//
// It shows the pattern every upstream consumer follows:
//   - read a batch, answer every record, commit only after the answers are
//     accepted (a crash replays the batch: at-least-once);
//   - make the answer idempotent (options.idempotency_key derived from the
//     device and the request id), so a replayed record, or an UPSTREAM the
//     device resent after a lost UPACK, is answered once;
//   - retry what the API says is temporary (Unavailable, rate limited), skip
//     what it rejects for good, and stop on bad credentials.
package echo

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/heraldpush/herald/api/heraldv1"
	"github.com/heraldpush/herald/pkg/pushlog"
)

// Sender sends messages through the Herald API; heraldv1.HeraldClient
// satisfies it. Credentials travel with the connection (per-RPC Basic
// auth with the app key and secret).
type Sender interface {
	SendMessage(ctx context.Context, in *heraldv1.SendMessageRequest, opts ...grpc.CallOption) (*heraldv1.SendMessageResponse, error)
}

// Record is the JSON value of an upstream log record (the gateway writes
// it; see docs/protocol.md, Upstream).
type Record struct {
	AppID        string `json:"app_id"`
	DeviceID     string `json:"device_id"`
	RequestID    string `json:"request_id"`
	Channel      string `json:"channel"`
	Payload      []byte `json:"payload"`
	ReceivedAtMS int64  `json:"received_at_ms"`
}

// Config tunes Run.
type Config struct {
	// AppID answers only the records of this app; "" answers every record.
	// Upstream logs are per channel, shared by the apps of a Herald
	// deployment, and the Sender's credentials are one app's.
	AppID string
	// Parallel bounds the sends in flight; default 16.
	Parallel int
	// MaxBackoff bounds the wait between retries of a send; default 5s.
	MaxBackoff time.Duration
	// Logger; nil discards.
	Logger *slog.Logger
}

// ErrRejected wraps send errors that retrying cannot fix and that concern
// the whole service (bad credentials): Run stops with it.
var ErrRejected = errors.New("echo: the API rejected our credentials")

// Run answers the upstream records cons delivers until ctx ends (then it
// returns nil) or the API rejects the service's credentials. Each record
// gets one data message to its device: {"reply_to": request_id, "echo":
// payload}. A batch is committed once every answer is accepted, or
// rejected for good (logged and skipped).
func Run(ctx context.Context, cons pushlog.Consumer, send Sender, cfg Config) error {
	if cfg.Parallel <= 0 {
		cfg.Parallel = 16
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 5 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for {
		recs, err := cons.Fetch(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("echo: fetch: %w", err)
		}
		if len(recs) == 0 {
			continue
		}
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(cfg.Parallel)
		for _, rec := range recs {
			var r Record
			if err := json.Unmarshal(rec.Value, &r); err != nil || r.AppID == "" || r.DeviceID == "" {
				log.Warn("skipping bad upstream record", "partition", rec.Partition, "offset", rec.Offset, "err", err)
				continue
			}
			if cfg.AppID != "" && r.AppID != cfg.AppID {
				continue
			}
			g.Go(func() error { return answer(gctx, send, r, cfg.MaxBackoff, log) })
		}
		if err := g.Wait(); err != nil {
			if ctx.Err() != nil {
				return nil // shutting down: the batch is answered again after a restart
			}
			return err
		}
		if err := cons.Commit(context.WithoutCancel(ctx), recs...); err != nil {
			// The next commit covers these records; a crash first replays them.
			log.Warn("commit upstream records", "err", err)
		}
	}
}

// Reply is the data message Run sends for r.
func Reply(r Record) *heraldv1.SendMessageRequest {
	key := sha256.Sum256([]byte(r.AppID + "\x00" + r.DeviceID + "\x00" + r.RequestID))
	return &heraldv1.SendMessageRequest{
		Audience: &heraldv1.Audience{DeviceIds: []string{r.DeviceID}},
		Data: map[string]string{
			"reply_to": r.RequestID,
			"echo":     strings.ToValidUTF8(string(r.Payload), "\uFFFD"),
		},
		Options: &heraldv1.Options{IdempotencyKey: "echo:" + hex.EncodeToString(key[:16])},
	}
}

// answer sends the reply to r, retrying temporary failures until ctx ends.
func answer(ctx context.Context, send Sender, r Record, maxBackoff time.Duration, log *slog.Logger) error {
	req := Reply(r)
	backoff := 100 * time.Millisecond
	for {
		var hdr metadata.MD
		resp, err := send.SendMessage(ctx, req, grpc.Header(&hdr))
		if err == nil {
			if len(resp.GetInvalidDeviceIds()) > 0 {
				log.Info("device no longer registered, not answered", "device", r.DeviceID, "request", r.RequestID)
			}
			return nil
		}
		wait, retry := retryable(err, hdr)
		switch {
		case retry:
			wait = max(wait, backoff)
			backoff = min(2*backoff, maxBackoff)
			log.Info("send failed, retrying", "device", r.DeviceID, "request", r.RequestID, "err", err, "in", wait)
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
		case status.Code(err) == codes.Unauthenticated || status.Code(err) == codes.PermissionDenied:
			return fmt.Errorf("%w: %w", ErrRejected, err)
		case ctx.Err() != nil:
			return ctx.Err()
		default:
			log.Warn("send rejected, record skipped", "device", r.DeviceID, "request", r.RequestID, "err", err)
			return nil
		}
	}
}

// retryable reports whether a send error is temporary, and how long the
// API asked us to wait (rate limiting sets a retry-after header).
func retryable(err error, hdr metadata.MD) (time.Duration, bool) {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return 0, true
	case codes.ResourceExhausted:
		// Rate limited (retry-after) is temporary; payload too large is not.
		if v := hdr.Get("retry-after"); len(v) > 0 {
			if secs, err := strconv.Atoi(v[0]); err == nil && secs >= 0 {
				return time.Duration(secs) * time.Second, true
			}
		}
	}
	return 0, false
}
