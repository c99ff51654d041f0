package api

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/heraldpush/herald/api/heraldv1"
	"github.com/heraldpush/herald/pkg/store"
)

// Longest ranges of GET /v1/stats, in buckets.
const (
	maxHourBuckets = 31 * 24
	maxDayBuckets  = 366
)

// statsBucket is one bucket of an app's statistics.
type statsBucket struct {
	Start time.Time
	store.StatCounts
}

// arrivalRate is delivered / sent (0 when nothing was sent).
func (b statsBucket) arrivalRate() float64 {
	if b.Sent == 0 {
		return 0
	}
	return float64(b.Delivered) / float64(b.Sent)
}

// statsResult is the answer of GET /v1/stats.
type statsResult struct {
	Granularity string
	Buckets     []statsBucket // every bucket of the range, empty ones included
	Total       statsBucket   // Start = the range's start
}

// Stats returns the app's counters per hour or per UTC day over [from,
// to): from is rounded down and to up to the granularity.
func (s *service) Stats(ctx context.Context, app store.App, fromS, toS, granularity string) (statsResult, error) {
	var step time.Duration
	var limit int
	switch granularity {
	case "", "hour":
		granularity, step, limit = "hour", time.Hour, maxHourBuckets
	case "day":
		step, limit = 24*time.Hour, maxDayBuckets
	default:
		return statsResult{}, invalid(`granularity must be "hour" or "day"`)
	}
	from, err := parseTime("from", fromS)
	if err != nil {
		return statsResult{}, err
	}
	to, err := parseTime("to", toS)
	if err != nil {
		return statsResult{}, err
	}
	if !to.After(from) {
		return statsResult{}, invalid("to must be after from")
	}
	// UTC days and hours start at multiples of the step since the epoch.
	from = from.Truncate(step)
	if t := to.Truncate(step); !t.Equal(to) {
		to = t.Add(step)
	}
	n := int(to.Sub(from) / step)
	if n > limit {
		return statsResult{}, invalid("the range has %d %ss, the limit is %d (%s)", n, granularity, limit, humanDuration(time.Duration(limit)*step))
	}

	hours, err := s.store.Stats(ctx, app.ID, from, to)
	if err != nil {
		return statsResult{}, fmt.Errorf("read stats: %w", err)
	}
	res := statsResult{Granularity: granularity, Buckets: make([]statsBucket, n), Total: statsBucket{Start: from}}
	for i := range res.Buckets {
		res.Buckets[i].Start = from.Add(time.Duration(i) * step)
	}
	for _, h := range hours {
		i := int(h.Hour.UTC().Sub(from) / step)
		if h.Hour.Before(from) || i >= n {
			continue
		}
		b := &res.Buckets[i]
		b.Sent += h.Sent
		b.Delivered += h.Delivered
		b.Clicked += h.Clicked
		res.Total.Sent += h.Sent
		res.Total.Delivered += h.Delivered
		res.Total.Clicked += h.Clicked
	}
	return res, nil
}

func parseTime(field, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, invalid("%s is required (RFC 3339, e.g. 2026-01-02T00:00:00Z)", field)
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, invalid("%s must be an RFC 3339 time such as 2026-01-02T00:00:00Z", field)
	}
	return t.UTC(), nil
}

func rfc3339(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// REST.

type (
	statsBucketAnswer struct {
		Start       string  `json:"start"`
		Sent        int64   `json:"sent"`
		Delivered   int64   `json:"delivered"`
		Clicked     int64   `json:"clicked"`
		ArrivalRate float64 `json:"arrival_rate"`
	}
	statsAnswer struct {
		Granularity string              `json:"granularity"`
		Buckets     []statsBucketAnswer `json:"buckets"`
		Total       statsBucketAnswer   `json:"total"`
	}
)

func newStatsBucketAnswer(b statsBucket) statsBucketAnswer {
	return statsBucketAnswer{Start: rfc3339(b.Start), Sent: b.Sent, Delivered: b.Delivered, Clicked: b.Clicked, ArrivalRate: b.arrivalRate()}
}

func (h *rest) getStats(w http.ResponseWriter, r *http.Request) {
	app, ok := h.authApp(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	res, err := h.svc.Stats(r.Context(), app, q.Get("from"), q.Get("to"), q.Get("granularity"))
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	a := statsAnswer{Granularity: res.Granularity, Buckets: make([]statsBucketAnswer, len(res.Buckets)), Total: newStatsBucketAnswer(res.Total)}
	for i, b := range res.Buckets {
		a.Buckets[i] = newStatsBucketAnswer(b)
	}
	writeJSON(w, http.StatusOK, a)
}

// gRPC.

func statsBucketProto(b statsBucket) *heraldv1.StatsBucket {
	return &heraldv1.StatsBucket{Start: rfc3339(b.Start), Sent: b.Sent, Delivered: b.Delivered, Clicked: b.Clicked, ArrivalRate: b.arrivalRate()}
}

func (g *grpcAPI) GetStats(ctx context.Context, req *heraldv1.GetStatsRequest) (*heraldv1.GetStatsResponse, error) {
	app, err := g.authApp(ctx)
	if err != nil {
		return nil, err
	}
	res, err := g.svc.Stats(ctx, app, req.GetFrom(), req.GetTo(), req.GetGranularity())
	if err != nil {
		return nil, err
	}
	out := &heraldv1.GetStatsResponse{Granularity: res.Granularity, Buckets: make([]*heraldv1.StatsBucket, len(res.Buckets)), Total: statsBucketProto(res.Total)}
	for i, b := range res.Buckets {
		out.Buckets[i] = statsBucketProto(b)
	}
	return out, nil
}
