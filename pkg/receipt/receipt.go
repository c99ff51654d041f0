// Package receipt defines the events of the receipts log (topic
// pushlog.TopicReceipts: JSON values keyed by app id) and the Emitter that
// every role uses to append them without ever blocking delivery.
package receipt

import (
	"encoding/json"
	"fmt"

	herald "github.com/heraldpush/herald"
)

// Events.
const (
	EventSent      = "sent"      // Count = devices targeted (group: matched or replayed)
	EventDelivered = "delivered" // the device acked the push
	EventClicked   = "clicked"   // the user clicked the notification
	EventOpened    = "opened"    // the app was opened from the notification
	EventExpired   = "expired"   // the TTL ran out before delivery
	EventFailed    = "failed"    // invalid, capped or otherwise undeliverable target
	EventRecalled  = "recalled"  // the message was recalled before delivery
)

// Receipt is one event about a message.
type Receipt struct {
	AppID     string `json:"app_id"`
	MessageID string `json:"message_id"`
	DeviceID  string `json:"device_id"` // "" for aggregate events (group "sent")
	Event     string `json:"event"`
	Count     int64  `json:"count"` // 0 means 1
	Group     bool   `json:"group"` // a tag, topic or "all" message
	AtMS      int64  `json:"at_ms"` // unix milliseconds
}

// N returns the number of events the receipt stands for (Count, or 1).
func (r Receipt) N() int64 {
	if r.Count <= 0 {
		return 1
	}
	return r.Count
}

// Encode returns the receipt's log value.
func Encode(r Receipt) []byte {
	b, err := json.Marshal(r)
	if err != nil { // a struct of strings, ints and bools always marshals
		return nil
	}
	return b
}

// Decode parses a log value. It rejects bad JSON, a missing app_id, event
// or message_id, and a negative count; a missing count becomes 1. Events it
// does not know are accepted (consumers ignore them), so that older
// consumers can read what newer emitters write.
func Decode(b []byte) (Receipt, error) {
	var r Receipt
	if err := json.Unmarshal(b, &r); err != nil {
		return Receipt{}, fmt.Errorf("receipt: decode: %w: %w", herald.ErrInvalidArgument, err)
	}
	switch {
	case r.AppID == "":
		return Receipt{}, fmt.Errorf("receipt: decode: %w: no app_id", herald.ErrInvalidArgument)
	case r.MessageID == "":
		return Receipt{}, fmt.Errorf("receipt: decode: %w: no message_id", herald.ErrInvalidArgument)
	case r.Event == "":
		return Receipt{}, fmt.Errorf("receipt: decode: %w: no event", herald.ErrInvalidArgument)
	case r.Count < 0:
		return Receipt{}, fmt.Errorf("receipt: decode: %w: negative count", herald.ErrInvalidArgument)
	}
	r.Count = r.N()
	return r, nil
}
