// Package telemetry gives every Herald role its metrics and its operations
// endpoint: OpenTelemetry meters exported in the Prometheus text format from
// a registry of their own (never the global one), Go runtime and process
// metrics on the same registry, liveness and readiness checks, and a small
// HTTP server for /healthz, /readyz and /metrics.
package telemetry

import (
	"context"
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/otlptranslator"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// Telemetry owns one meter provider and the Prometheus registry it exports to.
type Telemetry struct {
	registry *prometheus.Registry
	provider *sdkmetric.MeterProvider
	handler  http.Handler
}

// New returns the telemetry of one process; service becomes the
// service.name resource attribute (exported in target_info).
// OpenTelemetry instrument names are exported with dots turned into
// underscores and the Prometheus suffixes added: a counter
// "herald.gateway.pushes" with unit "{push}" becomes herald_gateway_pushes_total.
func New(service string) (*Telemetry, error) {
	reg := prometheus.NewRegistry()
	if err := reg.Register(collectors.NewGoCollector()); err != nil {
		return nil, fmt.Errorf("telemetry: register go collector: %w", err)
	}
	if err := reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return nil, fmt.Errorf("telemetry: register process collector: %w", err)
	}
	exporter, err := otelprom.New(
		otelprom.WithRegisterer(reg),
		otelprom.WithTranslationStrategy(otlptranslator.UnderscoreEscapingWithSuffixes),
	)
	if err != nil {
		return nil, fmt.Errorf("telemetry: prometheus exporter: %w", err)
	}
	provider := sdkmetric.NewMeterProvider(
		sdkmetric.WithReader(exporter),
		sdkmetric.WithResource(resource.NewWithAttributes(semconv.SchemaURL, semconv.ServiceName(service))),
	)
	return &Telemetry{
		registry: reg,
		provider: provider,
		handler:  promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}),
	}, nil
}

// Meter returns the named meter (by convention the instrumented package's
// import path) to create instruments from.
func (t *Telemetry) Meter(name string) metric.Meter {
	return t.provider.Meter(name)
}

// MeterProvider returns the provider, for libraries that take one.
func (t *Telemetry) MeterProvider() metric.MeterProvider {
	return t.provider
}

// Registry returns the Prometheus registry the metrics are exported to, for
// components that bring their own Prometheus collectors (etcd, gRPC).
func (t *Telemetry) Registry() *prometheus.Registry {
	return t.registry
}

// MetricsHandler serves every metric in the Prometheus exposition format.
func (t *Telemetry) MetricsHandler() http.Handler {
	return t.handler
}

// Shutdown flushes and stops the meter provider; instruments become no-ops.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	if err := t.provider.Shutdown(ctx); err != nil {
		return fmt.Errorf("telemetry: shutdown: %w", err)
	}
	return nil
}
