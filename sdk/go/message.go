package herald

import (
	"fmt"
	"time"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
	"google.golang.org/protobuf/proto"
)

// Message kinds.
const (
	KindNotification = "notification"
	KindData         = "data"
)

// Message is one message pushed to the device.
type Message struct {
	ID          string
	Kind        string // KindNotification or KindData ("" if the server did not say)
	Title, Body string
	Badge       *int // nil when the message does not set a badge
	Sound       string
	ClickAction string
	Image       string // URL of an image to show with the notification
	Channel     string // notification channel (Android) / category to show it in
	Data        map[string]string
	SentAt      time.Time // zero if unknown
	CollapseID  string
	// Group is true for broadcast, tag and topic messages: they advance
	// Client.BroadcastCursor instead of Client.Cursor.
	Group bool
}

// serverFrame is one decoded frame from the server after the handshake.
type serverFrame struct {
	typ        frame.Type
	push       Message     // TypePush
	answer     answer      // TypeUpAck, TypeSubAck
	disconnect *CloseError // TypeDisconnect
}

// answer is the server's answer to a request the client is waiting for
// (UPSTREAM, SUBSCRIBE): empty err means success.
type answer struct {
	requestID string
	err       string
}

// parseServerFrame decodes a frame the server may send once a session is up.
// The bytes are untrusted; every malformed input is an error.
func parseServerFrame(f frame.Frame) (serverFrame, error) {
	sf := serverFrame{typ: f.Type}
	switch f.Type {
	case frame.TypePing, frame.TypePong:
		if len(f.Body) != 0 {
			return sf, fmt.Errorf("herald: %s frame with a body", f.Type)
		}
	case frame.TypePush:
		var p devicev1.Push
		if err := proto.Unmarshal(f.Body, &p); err != nil {
			return sf, fmt.Errorf("herald: decode PUSH: %w", err)
		}
		sf.push = messageFromProto(&p)
	case frame.TypeUpAck:
		var a devicev1.UpAck
		if err := proto.Unmarshal(f.Body, &a); err != nil {
			return sf, fmt.Errorf("herald: decode UPACK: %w", err)
		}
		sf.answer = answer{requestID: a.GetRequestId(), err: a.GetError()}
	case frame.TypeSubAck:
		var a devicev1.SubAck
		if err := proto.Unmarshal(f.Body, &a); err != nil {
			return sf, fmt.Errorf("herald: decode SUBACK: %w", err)
		}
		sf.answer = answer{requestID: a.GetRequestId(), err: a.GetError()}
	case frame.TypeDisconnect:
		ce, err := parseDisconnect(f.Body)
		if err != nil {
			return sf, err
		}
		sf.disconnect = ce
	default:
		return sf, fmt.Errorf("herald: unexpected %s frame from server", f.Type)
	}
	return sf, nil
}

func parseDisconnect(body []byte) (*CloseError, error) {
	var d devicev1.Disconnect
	if err := proto.Unmarshal(body, &d); err != nil {
		return nil, fmt.Errorf("herald: decode DISCONNECT: %w", err)
	}
	return &CloseError{
		Code:       frame.Code(d.GetCode()),
		Reason:     d.GetReason(),
		RetryAfter: time.Duration(d.GetRetryAfterMs()) * time.Millisecond,
		Redirect:   d.GetRedirect(),
	}, nil
}

func messageFromProto(p *devicev1.Push) Message {
	m := Message{
		ID:         p.GetMessageId(),
		Data:       p.GetData(),
		CollapseID: p.GetCollapseId(),
		Group:      p.GetGroup(),
	}
	switch p.GetKind() {
	case devicev1.Kind_KIND_NOTIFICATION:
		m.Kind = KindNotification
	case devicev1.Kind_KIND_DATA:
		m.Kind = KindData
	}
	if n := p.GetNotification(); n != nil {
		m.Title, m.Body = n.GetTitle(), n.GetBody()
		m.Sound, m.ClickAction = n.GetSound(), n.GetClickAction()
		m.Image, m.Channel = n.GetImage(), n.GetChannel()
		if n.GetBadge() >= 0 {
			b := int(n.GetBadge())
			m.Badge = &b
		}
	}
	if ms := p.GetSentAtMs(); ms > 0 {
		m.SentAt = time.UnixMilli(ms)
	}
	return m
}
