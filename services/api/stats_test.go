package api

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/heraldpush/herald/pkg/store"
)

func TestStats(t *testing.T) {
	e := newEnv(t)
	app, other := e.createApp(t, "shop"), e.createApp(t, "other")
	day := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	for _, s := range []struct {
		at time.Time
		c  store.StatCounts
	}{
		{day.Add(23*time.Hour + 10*time.Minute), store.StatCounts{Sent: 10, Delivered: 8, Clicked: 1}},
		{day.Add(23*time.Hour + 50*time.Minute), store.StatCounts{Sent: 10, Delivered: 2}},
		{day.Add(24*time.Hour + 30*time.Minute), store.StatCounts{Sent: 5, Delivered: 5, Clicked: 5}},
		{day.Add(50 * time.Hour), store.StatCounts{Sent: 100, Delivered: 100}}, // outside every range below
	} {
		if err := e.store.AddStats(t.Context(), app.ID, s.at, s.c); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.store.AddStats(t.Context(), other.ID, day.Add(23*time.Hour), store.StatCounts{Sent: 1000}); err != nil {
		t.Fatal(err)
	}
	get := func(t *testing.T, from, to, gran string) answer {
		q := url.Values{"from": {from}, "to": {to}}
		if gran != "" {
			q.Set("granularity", gran)
		}
		return e.do(t, "GET", "/v1/stats?"+q.Encode(), app.auth, "")
	}

	t.Run("hours, empty ones included, to rounded up", func(t *testing.T) {
		a := get(t, "2026-03-01T22:30:00Z", "2026-03-02T00:01:00Z", "hour")
		mustStatus(t, a, 200)
		var s statsAnswer
		a.decode(t, &s)
		want := statsAnswer{Granularity: "hour", Buckets: []statsBucketAnswer{
			{Start: "2026-03-01T22:00:00Z"},
			{Start: "2026-03-01T23:00:00Z", Sent: 20, Delivered: 10, Clicked: 1, ArrivalRate: 0.5},
			{Start: "2026-03-02T00:00:00Z", Sent: 5, Delivered: 5, Clicked: 5, ArrivalRate: 1},
		}, Total: statsBucketAnswer{Start: "2026-03-01T22:00:00Z", Sent: 25, Delivered: 15, Clicked: 6, ArrivalRate: 0.6}}
		if !equalStats(s, want) {
			t.Fatalf("got %+v\nwant %+v", s, want)
		}
	})
	t.Run("UTC days from another zone", func(t *testing.T) {
		a := get(t, "2026-03-01T05:00:00+05:00", "2026-03-03T00:00:00Z", "day")
		mustStatus(t, a, 200)
		var s statsAnswer
		a.decode(t, &s)
		// 05:00+05:00 is midnight UTC: the range is exactly March 1 and 2.
		want := statsAnswer{Granularity: "day", Buckets: []statsBucketAnswer{
			{Start: "2026-03-01T00:00:00Z", Sent: 20, Delivered: 10, Clicked: 1, ArrivalRate: 0.5},
			{Start: "2026-03-02T00:00:00Z", Sent: 5, Delivered: 5, Clicked: 5, ArrivalRate: 1},
		}, Total: statsBucketAnswer{Start: "2026-03-01T00:00:00Z", Sent: 25, Delivered: 15, Clicked: 6, ArrivalRate: 0.6}}
		if !equalStats(s, want) {
			t.Fatalf("got %+v\nwant %+v", s, want)
		}
	})

	for _, tt := range []struct{ name, from, to, gran, wantMsg string }{
		{"to before from", "2026-03-02T00:00:00Z", "2026-03-01T00:00:00Z", "hour", "to must be after from"},
		{"empty range", "2026-03-01T00:00:00Z", "2026-03-01T00:00:00Z", "day", "to must be after from"},
		{"32 days of hours", "2026-03-01T00:00:00Z", "2026-04-02T00:00:00Z", "hour", "limit is 744"},
		{"367 days", "2026-01-01T00:00:00Z", "2027-01-03T00:00:00Z", "day", "limit is 366"},
		{"unknown granularity", "2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z", "week", "granularity"},
		{"no from", "", "2026-03-02T00:00:00Z", "day", "from is required"},
		{"not RFC 3339", "2026-03-01", "2026-03-02T00:00:00Z", "day", "RFC 3339"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			mustError(t, get(t, tt.from, tt.to, tt.gran), http.StatusBadRequest, "invalid_argument", tt.wantMsg)
		})
	}
	t.Run("31 days of hours is fine", func(t *testing.T) {
		mustStatus(t, get(t, "2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z", ""), 200)
	})
}

func equalStats(a, b statsAnswer) bool {
	near := func(x, y statsBucketAnswer) bool {
		d := x.ArrivalRate - y.ArrivalRate
		x.ArrivalRate, y.ArrivalRate = 0, 0
		return x == y && d < 1e-9 && d > -1e-9
	}
	if a.Granularity != b.Granularity || len(a.Buckets) != len(b.Buckets) || !near(a.Total, b.Total) {
		return false
	}
	for i := range a.Buckets {
		if !near(a.Buckets[i], b.Buckets[i]) {
			return false
		}
	}
	return true
}

func TestAppSettings(t *testing.T) {
	e := newEnv(t)
	app, other := e.createApp(t, "shop"), e.createApp(t, "other")
	settings := func(t *testing.T, a answer) appSettingsAnswer {
		t.Helper()
		mustStatus(t, a, 200)
		var s appSettingsAnswer
		a.decode(t, &s)
		return s
	}

	got := settings(t, e.do(t, "PATCH", "/v1/app", app.auth, `{"webhook_url":"https://hooks.example.com/herald?x=1"}`))
	if got != (appSettingsAnswer{AppID: app.ID, WebhookURL: "https://hooks.example.com/herald?x=1"}) {
		t.Errorf("PATCH /v1/app answered %+v", got)
	}
	got = settings(t, e.do(t, "PATCH", "/v1/apps/"+app.ID, adminAuth, `{"rate_limit_per_second":50,"daily_notification_cap":3}`))
	if got != (appSettingsAnswer{AppID: app.ID, WebhookURL: "https://hooks.example.com/herald?x=1", RateLimit: 50, DailyCap: 3}) {
		t.Errorf("PATCH /v1/apps answered %+v", got)
	}
	stored, err := e.store.AppByID(t.Context(), app.ID)
	if err != nil || stored.WebhookURL != "https://hooks.example.com/herald?x=1" || stored.RateLimit != 50 || stored.DailyCap != 3 {
		t.Errorf("stored app %+v (%v)", stored, err)
	}
	got = settings(t, e.do(t, "PATCH", "/v1/app", app.auth, `{"webhook_url":""}`))
	if got.WebhookURL != "" || got.RateLimit != 50 {
		t.Errorf("clearing the webhook answered %+v", got)
	}
	if o, err := e.store.AppByID(t.Context(), other.ID); err != nil || o.WebhookURL != "" || o.RateLimit != 0 {
		t.Errorf("another app changed: %+v (%v)", o, err)
	}

	for _, tt := range []struct {
		name, method, path string
		auth               func(*http.Request)
		body               string
		wantStatus         int
		wantCode, wantMsg  string
	}{
		{"relative webhook", "PATCH", "/v1/app", app.auth, `{"webhook_url":"/hook"}`, 400, "invalid_argument", "webhook_url"},
		{"ftp webhook", "PATCH", "/v1/app", app.auth, `{"webhook_url":"ftp://x.example.com/"}`, 400, "invalid_argument", "http or https"},
		{"webhook too long", "PATCH", "/v1/app", app.auth, `{"webhook_url":"https://x.example.com/` + strings.Repeat("a", 2048) + `"}`, 400, "invalid_argument", "2048"},
		{"app may not set its limits", "PATCH", "/v1/app", app.auth, `{"rate_limit_per_second":1}`, 400, "invalid_argument", "rate_limit_per_second"},
		{"limits need the admin token", "PATCH", "/v1/apps/" + app.ID, app.auth, `{"rate_limit_per_second":1}`, 401, "unauthenticated", ""},
		{"negative rate", "PATCH", "/v1/apps/" + app.ID, adminAuth, `{"rate_limit_per_second":-1}`, 400, "invalid_argument", "rate_limit_per_second"},
		{"huge cap", "PATCH", "/v1/apps/" + app.ID, adminAuth, `{"daily_notification_cap":1000001}`, 400, "invalid_argument", "daily_notification_cap"},
		{"unknown app", "PATCH", "/v1/apps/nope", adminAuth, `{"daily_notification_cap":1}`, 404, "app_not_found", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			mustError(t, e.do(t, tt.method, tt.path, tt.auth, tt.body), tt.wantStatus, tt.wantCode, tt.wantMsg)
		})
	}
}
