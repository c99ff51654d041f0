package api

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// metrics are the api role's instruments.
type metrics struct {
	requests metric.Int64Counter
	accepted metric.Int64Counter
	duration metric.Float64Histogram
}

func newMetrics(m metric.Meter) (*metrics, error) {
	if m == nil {
		m = noop.NewMeterProvider().Meter("")
	}
	requests, err := m.Int64Counter("herald_api_requests_total",
		metric.WithDescription("API requests by route and result code (HTTP status, or gRPC code name)."),
		metric.WithUnit("{request}"))
	if err != nil {
		return nil, err
	}
	accepted, err := m.Int64Counter("herald_messages_accepted_total",
		metric.WithDescription("Messages accepted: durable in the push log (or, for send_at, in the schedule)."),
		metric.WithUnit("{message}"))
	if err != nil {
		return nil, err
	}
	duration, err := m.Float64Histogram("herald_api_request_duration_seconds",
		metric.WithDescription("API request latency by route."),
		metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
	if err != nil {
		return nil, err
	}
	return &metrics{requests: requests, accepted: accepted, duration: duration}, nil
}

// request records one finished request.
func (m *metrics) request(ctx context.Context, route, code string, took time.Duration) {
	r := attribute.String("route", route)
	m.requests.Add(ctx, 1, metric.WithAttributes(r, attribute.String("code", code)))
	m.duration.Record(ctx, took.Seconds(), metric.WithAttributes(r))
}

func (m *metrics) messageAccepted(ctx context.Context) { m.accepted.Add(ctx, 1) }
