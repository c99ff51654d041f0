package gateway

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/heraldpush/herald/api/frame"
	"github.com/heraldpush/herald/pkg/delivery"
)

type metrics struct {
	connections metric.Int64UpDownCounter
	framesIn    metric.Int64Counter
	framesOut   metric.Int64Counter
	acked       metric.Int64Counter
	drained     metric.Int64Counter
	upstream    metric.Int64Counter
	closes      metric.Int64Counter
	outcomes    metric.Int64Counter
	replayed    metric.Int64Counter
}

func newMetrics(m metric.Meter) (metrics, error) {
	var x metrics
	var errs [9]error
	x.connections, errs[0] = m.Int64UpDownCounter("herald_gateway_connections", metric.WithDescription("Open device connections."))
	x.framesIn, errs[1] = m.Int64Counter("herald_gateway_frames_in", metric.WithDescription("Frames read from devices."))
	x.framesOut, errs[2] = m.Int64Counter("herald_gateway_frames_out", metric.WithDescription("Writes to devices (one write may carry several frames)."))
	x.acked, errs[3] = m.Int64Counter("herald_messages_delivered", metric.WithDescription("Messages acknowledged by devices."))
	x.drained, errs[4] = m.Int64Counter("herald_gateway_inbox_pushed", metric.WithDescription("Stored messages pushed from device inboxes."))
	x.upstream, errs[5] = m.Int64Counter("herald_gateway_upstream", metric.WithDescription("Upstream messages accepted from devices."))
	x.closes, errs[6] = m.Int64Counter("herald_gateway_disconnects", metric.WithDescription("Sessions closed by the server, by close code."))
	x.outcomes, errs[7] = m.Int64Counter("herald_gateway_deliveries", metric.WithDescription("Live deliveries by outcome."))
	x.replayed, errs[8] = m.Int64Counter("herald_gateway_group_replayed", metric.WithDescription("Group messages pushed from topic logs at connect."))
	for _, err := range errs {
		if err != nil {
			return x, fmt.Errorf("gateway: metrics: %w", err)
		}
	}
	return x, nil
}

func closeCodeAttr(c frame.Code) metric.AddOption {
	return metric.WithAttributes(attribute.Int("code", int(c)))
}

var outcomeAttrs = map[delivery.Outcome]metric.AddOption{
	delivery.Acked:    metric.WithAttributes(attribute.String("outcome", delivery.Acked.String())),
	delivery.NotHere:  metric.WithAttributes(attribute.String("outcome", delivery.NotHere.String())),
	delivery.TimedOut: metric.WithAttributes(attribute.String("outcome", delivery.TimedOut.String())),
}

func (m metrics) record(ctx context.Context, out []delivery.Outcome) {
	var n [4]int64
	for _, o := range out {
		if int(o) < len(n) {
			n[o]++
		}
	}
	for o, attrs := range outcomeAttrs {
		if n[o] > 0 {
			m.outcomes.Add(context.WithoutCancel(ctx), n[o], attrs)
		}
	}
}
