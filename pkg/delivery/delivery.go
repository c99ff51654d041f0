// Package delivery holds the types the dispatcher and the gateways exchange:
// in one process through Go calls, in a cluster through gRPC.
package delivery

import "github.com/heraldpush/herald/pkg/envelope/internalv1"

// Delivery is one message for one live session.
type Delivery struct {
	Device   string // route key "app_id/device_id"
	ConnID   uint64 // the session the routing table points at
	Envelope *internalv1.Envelope
}

// Outcome is what became of one Delivery.
type Outcome uint8

const (
	// Acked: the device acknowledged the message; its status is already
	// marked delivered and any inbox copy removed.
	Acked Outcome = iota + 1
	// NotHere: no such session on this node (it closed, was replaced, or is
	// draining its inbox). The dispatcher stores the message.
	NotHere
	// TimedOut: written, but no ack before the ack deadline. The dispatcher
	// stores the message; a late ack still marks it delivered.
	TimedOut
)

func (o Outcome) String() string {
	switch o {
	case Acked:
		return "acked"
	case NotHere:
		return "not_here"
	case TimedOut:
		return "timed_out"
	}
	return "unknown"
}
