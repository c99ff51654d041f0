package dispatcher

import (
	"errors"
	"fmt"

	"go.opentelemetry.io/otel/metric"
)

type metrics struct {
	processed  metric.Int64Counter
	acked      metric.Int64Counter
	stored     metric.Int64Counter
	expired    metric.Int64Counter
	recalled   metric.Int64Counter
	broadcasts metric.Int64Counter
	matched    metric.Int64Counter
	skipped    metric.Int64Counter
	latency    metric.Float64Histogram
}

func newMetrics(m metric.Meter) (metrics, error) {
	var x metrics
	var errs [9]error
	x.processed, errs[0] = m.Int64Counter("herald_dispatcher_records", metric.WithDescription("Push log records processed."))
	x.acked, errs[1] = m.Int64Counter("herald_dispatcher_acked", metric.WithDescription("Messages delivered live and acked."))
	x.stored, errs[2] = m.Int64Counter("herald_messages_stored", metric.WithDescription("Messages stored in device inboxes."))
	x.expired, errs[3] = m.Int64Counter("herald_messages_expired", metric.WithDescription("Messages expired before delivery (TTL, or online-only to an offline device)."))
	x.recalled, errs[4] = m.Int64Counter("herald_dispatcher_recalled", metric.WithDescription("Unicast messages not delivered or stored because the app recalled or cancelled them."))
	x.broadcasts, errs[5] = m.Int64Counter("herald_dispatcher_broadcasts", metric.WithDescription("Group messages (and recalls of them) handed to the gateways."))
	x.matched, errs[6] = m.Int64Counter("herald_dispatcher_broadcast_matched", metric.WithDescription("Sessions the gateways matched for group messages."))
	x.skipped, errs[7] = m.Int64Counter("herald_dispatcher_broadcast_skipped", metric.WithDescription("Group messages a failing or departed gateway did not get live (its devices replay them on reconnect)."))
	x.latency, errs[8] = m.Float64Histogram("herald_dispatch_latency", metric.WithUnit("s"),
		metric.WithDescription("Time to settle one fetched batch (deliver, ack, or store)."),
		metric.WithExplicitBucketBoundaries(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
	if err := errors.Join(errs[:]...); err != nil {
		return x, fmt.Errorf("dispatcher: metrics: %w", err)
	}
	return x, nil
}
