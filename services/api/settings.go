package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/api/heraldv1"
	"github.com/heraldpush/herald/pkg/store"
)

// Bounds of an app's settings.
const (
	maxWebhookURLLen = 2048
	maxAppLimit      = 1_000_000 // rate limit and daily cap
)

// appSettings is a change of an app's settings; nil fields stay as they are.
type appSettings struct {
	WebhookURL *string
	RateLimit  *int64
	DailyCap   *int64
}

func (c appSettings) validate() error {
	if u := c.WebhookURL; u != nil && *u != "" {
		if len(*u) > maxWebhookURLLen {
			return invalid("webhook_url is longer than %d bytes", maxWebhookURLLen)
		}
		p, err := url.Parse(*u)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" || p.Opaque != "" {
			return invalid("webhook_url must be an absolute http or https URL")
		}
	}
	if r := c.RateLimit; r != nil && (*r < 0 || *r > maxAppLimit) {
		return invalid("rate_limit_per_second must be between 0 (the server default) and %d", maxAppLimit)
	}
	if d := c.DailyCap; d != nil && (*d < 0 || *d > maxAppLimit) {
		return invalid("daily_notification_cap must be between 0 (no cap) and %d", maxAppLimit)
	}
	return nil
}

// updateApp applies c to the app appID and returns the app as stored.
func (s *service) updateApp(ctx context.Context, appID string, c appSettings) (store.App, error) {
	if err := c.validate(); err != nil {
		return store.App{}, err
	}
	a, err := s.store.AppByID(ctx, appID)
	if errors.Is(err, herald.ErrAppNotFound) {
		return store.App{}, fmt.Errorf("%w: %q", herald.ErrAppNotFound, appID)
	}
	if err != nil {
		return store.App{}, fmt.Errorf("look up app: %w", err)
	}
	if c.WebhookURL != nil {
		a.WebhookURL = *c.WebhookURL
	}
	if c.RateLimit != nil {
		a.RateLimit = int(*c.RateLimit)
	}
	if c.DailyCap != nil {
		a.DailyCap = int(*c.DailyCap)
	}
	if err := s.store.UpdateApp(ctx, a); err != nil {
		return store.App{}, fmt.Errorf("update app: %w", err)
	}
	s.apps.Forget(a.Key) // this instance sees the change at once, others within store.AppCacheTTL
	s.logger.InfoContext(ctx, "app settings changed", "app_id", a.ID,
		"rate_limit", a.RateLimit, "daily_cap", a.DailyCap, "webhook", a.WebhookURL != "")
	return a, nil
}

// UpdateSettings changes the settings an app may change itself.
func (s *service) UpdateSettings(ctx context.Context, app store.App, webhookURL *string) (store.App, error) {
	return s.updateApp(ctx, app.ID, appSettings{WebhookURL: webhookURL})
}

// UpdateApp changes any app's limits and settings (admin).
func (s *service) UpdateApp(ctx context.Context, appID string, c appSettings) (store.App, error) {
	if appID == "" {
		return store.App{}, invalid("app_id is required")
	}
	return s.updateApp(ctx, appID, c)
}

// REST.

type (
	updateSettingsBody struct {
		WebhookURL *string `json:"webhook_url"`
	}
	updateAppBody struct {
		RateLimit  *int64  `json:"rate_limit_per_second"`
		DailyCap   *int64  `json:"daily_notification_cap"`
		WebhookURL *string `json:"webhook_url"`
	}
	appSettingsAnswer struct {
		AppID      string `json:"app_id"`
		WebhookURL string `json:"webhook_url"`
		RateLimit  int    `json:"rate_limit_per_second"`
		DailyCap   int    `json:"daily_notification_cap"`
	}
)

func newAppSettingsAnswer(a store.App) appSettingsAnswer {
	return appSettingsAnswer{AppID: a.ID, WebhookURL: a.WebhookURL, RateLimit: a.RateLimit, DailyCap: a.DailyCap}
}

func (h *rest) updateSettings(w http.ResponseWriter, r *http.Request) {
	app, ok := h.authApp(w, r)
	if !ok {
		return
	}
	var b updateSettingsBody
	if err := h.readJSON(w, r, &b); err != nil {
		h.writeError(w, r, err)
		return
	}
	a, err := h.svc.UpdateSettings(r.Context(), app, b.WebhookURL)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, newAppSettingsAnswer(a))
}

func (h *rest) updateApp(w http.ResponseWriter, r *http.Request) {
	if err := h.svc.authorizeAdmin(bearerToken(r.Header.Get("Authorization"))); err != nil {
		w.Header().Set("WWW-Authenticate", challengeBearer)
		h.writeError(w, r, err)
		return
	}
	var b updateAppBody
	if err := h.readJSON(w, r, &b); err != nil {
		h.writeError(w, r, err)
		return
	}
	a, err := h.svc.UpdateApp(r.Context(), r.PathValue("app_id"), appSettings{WebhookURL: b.WebhookURL, RateLimit: b.RateLimit, DailyCap: b.DailyCap})
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, newAppSettingsAnswer(a))
}

// gRPC.

func appSettingsProto(a store.App) *heraldv1.AppSettings {
	return &heraldv1.AppSettings{
		AppId: a.ID, WebhookUrl: a.WebhookURL, RateLimitPerSecond: int32(a.RateLimit), DailyNotificationCap: int32(a.DailyCap),
	}
}

func (g *grpcAPI) UpdateSettings(ctx context.Context, req *heraldv1.UpdateSettingsRequest) (*heraldv1.AppSettings, error) {
	app, err := g.authApp(ctx)
	if err != nil {
		return nil, err
	}
	a, err := g.svc.UpdateSettings(ctx, app, req.WebhookUrl)
	if err != nil {
		return nil, err
	}
	return appSettingsProto(a), nil
}

func (g *grpcAPI) UpdateApp(ctx context.Context, req *heraldv1.UpdateAppRequest) (*heraldv1.AppSettings, error) {
	if err := g.svc.authorizeAdmin(bearerToken(authorization(ctx))); err != nil {
		return nil, err
	}
	c := appSettings{WebhookURL: req.WebhookUrl}
	if req.RateLimitPerSecond != nil {
		c.RateLimit = new(int64(req.GetRateLimitPerSecond()))
	}
	if req.DailyNotificationCap != nil {
		c.DailyCap = new(int64(req.GetDailyNotificationCap()))
	}
	a, err := g.svc.UpdateApp(ctx, req.GetAppId(), c)
	if err != nil {
		return nil, err
	}
	return appSettingsProto(a), nil
}
