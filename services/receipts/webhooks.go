package receipts

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"golang.org/x/sync/errgroup"

	herald "github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/receipt"
	"github.com/heraldpush/herald/pkg/store"
)

// SignatureHeader carries "sha256=" + hex(HMAC-SHA256(body, app secret)).
const SignatureHeader = "X-Herald-Signature"

// Sign returns the SignatureHeader value of body for an app secret.
func Sign(body []byte, secret string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Verify reports whether signature (a SignatureHeader value) is body's
// signature under secret, in constant time. Receivers use it.
func Verify(body []byte, secret, signature string) bool {
	return hmac.Equal([]byte(Sign(body, secret)), []byte(signature))
}

// Payload is the body of a webhook POST.
type Payload struct {
	Receipts []receipt.Receipt `json:"receipts"`
}

// webhookEvents are the events apps receive ("sent" is not one: it is an
// aggregate the app already knows from its send).
var webhookEvents = map[string]bool{
	receipt.EventDelivered: true,
	receipt.EventClicked:   true,
	receipt.EventOpened:    true,
	receipt.EventExpired:   true,
	receipt.EventFailed:    true,
	receipt.EventRecalled:  true,
}

// Apps looks apps up (store.Registry satisfies it).
type Apps interface {
	AppByID(ctx context.Context, id string) (store.App, error)
}

// WebhooksConfig tunes Webhooks.
type WebhooksConfig struct {
	Group    string        // consumer group, default "webhooks"
	Timeout  time.Duration // one POST, default 5s (receipts.webhook_timeout)
	AppCache time.Duration // how long an app's webhook URL and secret are cached, default 5s
	// Backoff are the waits before each retry of a failed POST; default
	// 0.5s, 1s, 2s, 4s. After the last retry fails the receipts are dropped.
	Backoff []time.Duration
	// Parallel bounds the apps posted at once; default 32.
	Parallel int
	// Client sends the POSTs; default an http.Client with Timeout that does
	// not follow redirects.
	Client *http.Client
}

// WebhooksDeps are Webhooks' collaborators.
type WebhooksDeps struct {
	Log   Log
	Apps  Apps
	Meter metric.Meter // nil = no metrics
}

// Webhooks is the webhook consumer of the receipts log. Per fetched batch
// it groups the receipts by app and POSTs {"receipts": [...]} to each app
// that has a WebhookURL, apps concurrently; a non-2xx answer or a network
// error is retried with backoff, then the app's receipts of that batch are
// dropped with a warning and a metric. It then commits the batch. A dead
// endpoint slows only this consumer: delivery and statistics never wait
// for it.
type Webhooks struct {
	cfg  WebhooksConfig
	deps WebhooksDeps
	log  *slog.Logger

	posts    metric.Int64Counter
	dropped  metric.Int64Counter
	bad      metric.Int64Counter
	cacheMu  sync.Mutex
	appCache map[string]cachedApp
	now      func() time.Time
}

type cachedApp struct {
	app     store.App
	missing bool // herald.ErrAppNotFound
	until   time.Time
}

// NewWebhooks returns the webhook consumer; Run starts it.
func NewWebhooks(cfg WebhooksConfig, deps WebhooksDeps, logger *slog.Logger) (*Webhooks, error) {
	if cfg.Group == "" {
		cfg.Group = "webhooks"
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.AppCache <= 0 {
		cfg.AppCache = 5 * time.Second
	}
	if cfg.Backoff == nil {
		cfg.Backoff = []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second}
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = 32
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{
			Timeout: cfg.Timeout,
			// A webhook answers; it does not send us elsewhere (and a
			// redirected POST would lose its body or its meaning).
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	if deps.Log == nil || deps.Apps == nil {
		return nil, errors.New("receipts: webhooks: log and apps are required")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	meter := deps.Meter
	if meter == nil {
		meter = noop.NewMeterProvider().Meter("herald/receipts")
	}
	w := &Webhooks{cfg: cfg, deps: deps, log: logger.With("role", "receipts-webhooks"), appCache: map[string]cachedApp{}, now: time.Now}
	var errs [3]error
	w.posts, errs[0] = meter.Int64Counter("herald_webhook_posts", metric.WithDescription("Webhook POSTs by outcome (ok, error)."))
	w.dropped, errs[1] = meter.Int64Counter("herald_webhook_receipts_dropped", metric.WithDescription("Receipts dropped after every webhook retry failed."))
	w.bad, errs[2] = meter.Int64Counter("herald_receipts_bad", metric.WithDescription("Receipts log values that do not decode, skipped."))
	if err := errors.Join(errs[:]...); err != nil {
		return nil, fmt.Errorf("receipts: webhook metrics: %w", err)
	}
	return w, nil
}

// Run consumes until ctx ends, then returns nil. A batch in hand when ctx
// ends is not committed: it is posted again after a restart.
func (w *Webhooks) Run(ctx context.Context) error {
	return consume(ctx, w.deps.Log, w.cfg.Group, w.log, func() { w.bad.Add(ctx, 1) }, w.handle)
}

var (
	outcomeOK    = metric.WithAttributes(attribute.String("outcome", "ok"))
	outcomeError = metric.WithAttributes(attribute.String("outcome", "error"))
)

func (w *Webhooks) handle(ctx context.Context, rs []receipt.Receipt) bool {
	byApp := map[string][]receipt.Receipt{}
	var apps []string
	for _, r := range rs {
		if !webhookEvents[r.Event] {
			continue
		}
		if _, ok := byApp[r.AppID]; !ok {
			apps = append(apps, r.AppID)
		}
		byApp[r.AppID] = append(byApp[r.AppID], r)
	}
	var g errgroup.Group
	g.SetLimit(w.cfg.Parallel)
	for _, app := range apps {
		g.Go(func() error {
			w.deliver(ctx, app, byApp[app])
			return nil
		})
	}
	_ = g.Wait()
	return ctx.Err() == nil
}

// deliver posts one app's receipts, retrying, and drops them when every
// attempt fails.
func (w *Webhooks) deliver(ctx context.Context, appID string, rs []receipt.Receipt) {
	body, err := json.Marshal(Payload{Receipts: rs})
	if err != nil { // receipts are plain values: cannot happen
		w.log.Error("encode webhook", "app", appID, "err", err)
		return
	}
	for attempt := 0; ; attempt++ {
		app, found, err := w.app(ctx, appID)
		if err == nil {
			if !found || app.WebhookURL == "" {
				return
			}
			if err = w.post(ctx, app, body); err == nil {
				w.posts.Add(ctx, 1, outcomeOK)
				return
			}
			w.posts.Add(ctx, 1, outcomeError)
		}
		if ctx.Err() != nil {
			return // shutting down: the batch is not committed
		}
		if attempt == len(w.cfg.Backoff) {
			w.dropped.Add(ctx, int64(len(rs)))
			w.log.Warn("webhook failed, dropping receipts", "app", appID, "receipts", len(rs), "attempts", attempt+1, "err", err)
			return
		}
		w.log.Info("webhook failed, retrying", "app", appID, "attempt", attempt+1, "err", err)
		if !sleep(ctx, w.cfg.Backoff[attempt]) {
			return
		}
	}
}

// app returns the app (cached for cfg.AppCache) and whether it exists.
func (w *Webhooks) app(ctx context.Context, id string) (store.App, bool, error) {
	now := w.now()
	w.cacheMu.Lock()
	c, ok := w.appCache[id]
	w.cacheMu.Unlock()
	if ok && now.Before(c.until) {
		return c.app, !c.missing, nil
	}
	app, err := w.deps.Apps.AppByID(ctx, id)
	switch {
	case errors.Is(err, herald.ErrAppNotFound):
		c = cachedApp{missing: true, until: now.Add(w.cfg.AppCache)}
	case err != nil:
		return store.App{}, false, fmt.Errorf("look up app %s: %w", id, err)
	default:
		c = cachedApp{app: app, until: now.Add(w.cfg.AppCache)}
	}
	w.cacheMu.Lock()
	if len(w.appCache) > 100000 { // bound memory: apps come and go
		clear(w.appCache)
	}
	w.appCache[id] = c
	w.cacheMu.Unlock()
	return c.app, !c.missing, nil
}

func (w *Webhooks) post(ctx context.Context, app store.App, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, app.WebhookURL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("webhook request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "Herald-Webhook/1")
	req.Header.Set(SignatureHeader, Sign(body, app.Secret))
	resp, err := w.cfg.Client.Do(req)
	if err != nil {
		return fmt.Errorf("webhook post: %w", err)
	}
	// Drain a little so the connection is reused; ignore the rest.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("webhook post: status %d", resp.StatusCode)
	}
	return nil
}
