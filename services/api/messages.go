package api

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/pkg/envelope/internalv1"
	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/pkg/receipt"
	"github.com/heraldpush/herald/pkg/route"
	"github.com/heraldpush/herald/pkg/store"
)

// maxDevicesPerAlias is how many devices one alias of a send reaches.
const maxDevicesPerAlias = 100

// Answer states of a send.
const (
	sendAccepted  = "accepted"
	sendScheduled = "scheduled"
)

// errTopicNotFound: a topic send to a topic no device of the app ever
// subscribed to.
var errTopicNotFound = errors.New("herald: topic not found")

// sendResult is the answer to an accepted send.
type sendResult struct {
	MessageID        string
	State            string // accepted | scheduled
	InvalidDeviceIDs []string
	CappedDeviceIDs  []string
}

// messageStatus is what GET /v1/messages/{id} returns.
type messageStatus struct {
	MessageID string
	State     string // scheduled | sending | done | cancelled | recalled
	Audience  string
	SendAt    time.Time // zero unless scheduled
	Counts    store.Counts
}

// outgoing is a send on its way to the push log (or the schedule).
type outgoing struct {
	app   store.App
	v     validSend
	id    string
	now   time.Time
	start time.Time // when it goes out: now, or send_at
	msg   store.Message
}

// Send accepts a validated message: it answers only once the message is
// durable (in the push log, or in the schedule for send_at), and leaves
// nothing behind that would send it when it fails.
func (s *service) Send(ctx context.Context, app store.App, v validSend) (sendResult, error) {
	now := s.now()
	if v.Kind == audienceTopic {
		ok, err := s.store.TopicExists(ctx, app.ID, v.Topic)
		if err != nil {
			return sendResult{}, fmt.Errorf("look up topic: %w", err)
		}
		if !ok {
			return sendResult{}, fmt.Errorf("%w: no device of the app ever subscribed to %q", errTopicNotFound, v.Topic)
		}
	}
	// The rate limit comes before every write: a refused send leaves nothing.
	if wait := s.rates.allow(app.ID, app.RateLimit, now); wait > 0 {
		return sendResult{}, &rateLimitedError{limit: s.rates.limit(app.RateLimit), retryAfter: wait}
	}

	o := &outgoing{app: app, v: v, id: s.nextID(), now: now, start: now}
	if !v.SendAt.IsZero() {
		o.start = v.SendAt
	}
	if v.IdempotencyKey != "" {
		existing, err := s.store.Claim(ctx, app.ID, v.IdempotencyKey, o.id, idempotencyTTL)
		if err != nil {
			return sendResult{}, fmt.Errorf("claim idempotency key: %w", err)
		}
		if existing != "" {
			return s.repeated(ctx, existing), nil
		}
	}
	o.msg = store.Message{
		ID:        o.id,
		AppID:     app.ID,
		CreatedAt: now.UTC(),
		Audience:  v.Kind,
		Group:     v.group(),
	}
	if v.TTL > 0 {
		o.msg.ExpiresAt = o.start.Add(v.TTL).UTC()
	}
	if !v.SendAt.IsZero() {
		o.msg.State = store.MessageScheduled
		o.msg.SendAt = v.SendAt
	}

	var res sendResult
	var err error
	if v.group() {
		res, err = s.sendGroup(ctx, o)
	} else {
		res, err = s.sendUnicast(ctx, o)
	}
	if err != nil {
		if v.IdempotencyKey != "" {
			// A failed send must not block its retry; the release runs
			// even when the caller has gone away.
			if rerr := s.store.Release(context.WithoutCancel(ctx), app.ID, v.IdempotencyKey, o.id); rerr != nil {
				s.logger.ErrorContext(ctx, "release idempotency key", "app_id", app.ID, "message_id", o.id, "err", rerr)
			}
		}
		return sendResult{}, err
	}
	if s.accepted != nil {
		s.accepted(ctx)
	}
	return res, nil
}

// repeated answers a send whose idempotency key was used before.
func (s *service) repeated(ctx context.Context, id string) sendResult {
	res := sendResult{MessageID: id, State: sendAccepted}
	states, err := s.store.MessageStates(ctx, []string{id})
	if err == nil && states[id] == store.MessageScheduled {
		res.State = sendScheduled
	}
	return res
}

// sendUnicast sends to device ids or aliases: one record per device.
func (s *service) sendUnicast(ctx context.Context, o *outgoing) (sendResult, error) {
	app, v := o.app, o.v
	targets, valid, invalidIDs, err := s.resolveTargets(ctx, app.ID, v)
	if err != nil {
		return sendResult{}, err
	}
	if len(valid) == 0 {
		if v.Kind == audienceDevices && v.Platform == "" {
			return sendResult{}, fmt.Errorf("%w: none of the targets is a registered device of the app", herald.ErrDeviceNotFound)
		}
		return sendResult{}, fmt.Errorf("%w: no registered device of the app matches the audience", herald.ErrDeviceNotFound)
	}

	// The daily cap counts notifications on the day they go out.
	var capped []string
	if v.Notification != nil && o.app.DailyCap > 0 {
		kept := valid[:0:0]
		for _, d := range valid {
			n, err := s.store.CountDaily(ctx, app.ID, d, o.start.UTC(), 1)
			if err != nil {
				return sendResult{}, fmt.Errorf("count daily notifications: %w", err)
			}
			if n > int64(app.DailyCap) {
				capped = append(capped, d)
			} else {
				kept = append(kept, d)
			}
		}
		valid = kept
	}
	var badges map[string]int32
	if v.Notification != nil && v.BadgeAdd > 0 {
		badges = make(map[string]int32, len(valid))
		for _, d := range valid {
			n, err := s.store.AddBadge(ctx, app.ID, d, v.BadgeAdd)
			if err != nil {
				return sendResult{}, fmt.Errorf("add to badge: %w", err)
			}
			badges[d] = n
		}
	}

	o.msg.Targets = targets
	if err := s.store.CreateMessage(ctx, o.msg); err != nil {
		return sendResult{}, fmt.Errorf("create message status: %w", err)
	}
	cleanup := context.WithoutCancel(ctx)
	failed := append(append([]string(nil), invalidIDs...), capped...)
	if err := s.store.Mark(ctx, transitions(o.id, failed, store.StateFailed)...); err != nil {
		s.abandon(cleanup, o, valid)
		return sendResult{}, fmt.Errorf("mark invalid targets: %w", err)
	}

	recs := make([]pushlog.Record, 0, len(valid))
	for _, d := range valid {
		env := o.envelope(d)
		if n, ok := badges[d]; ok {
			env.Push.Notification = proto.CloneOf(v.Notification)
			env.Push.Notification.Badge = n
		}
		b, err := proto.Marshal(env)
		if err != nil {
			s.abandon(cleanup, o, valid)
			return sendResult{}, fmt.Errorf("encode envelope: %w", err)
		}
		recs = append(recs, pushlog.Record{Key: []byte(route.Key(app.ID, d)), Value: b})
	}
	if err := s.deliver(ctx, o, recs); err != nil {
		s.abandon(cleanup, o, valid)
		return sendResult{}, err
	}

	if len(valid) > 0 {
		s.emit(receipt.Receipt{AppID: app.ID, MessageID: o.id, Event: receipt.EventSent, Count: int64(len(valid)), AtMS: o.start.UnixMilli()})
	}
	for _, d := range failed {
		s.emit(receipt.Receipt{AppID: app.ID, MessageID: o.id, DeviceID: d, Event: receipt.EventFailed, Count: 1, AtMS: o.now.UnixMilli()})
	}
	return sendResult{MessageID: o.id, State: o.state(), InvalidDeviceIDs: invalidIDs, CappedDeviceIDs: capped}, nil
}

// resolveTargets returns the targets of a unicast send (every device id it
// names, after the platform filter), the registered ones among them, and
// the device ids that are not registered.
func (s *service) resolveTargets(ctx context.Context, appID string, v validSend) (targets, valid, invalidIDs []string, err error) {
	candidates := v.DeviceIDs
	if v.Kind == audienceAliases {
		seen := make(map[string]bool)
		for _, alias := range v.Aliases {
			ids, err := s.store.DevicesByAlias(ctx, appID, alias, maxDevicesPerAlias)
			if err != nil {
				return nil, nil, nil, fmt.Errorf("look up alias: %w", err)
			}
			for _, id := range ids {
				if !seen[id] {
					seen[id] = true
					candidates = append(candidates, id)
				}
			}
		}
	}
	if len(candidates) == 0 {
		return nil, nil, nil, nil
	}
	devs, err := s.store.Devices(ctx, appID, candidates)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("look up targets: %w", err)
	}
	for _, id := range candidates {
		d, ok := devs[id]
		switch {
		case !ok && v.Kind == audienceAliases:
			// The alias index is ahead of a deletion: not a target.
		case !ok:
			targets = append(targets, id)
			invalidIDs = append(invalidIDs, id)
		case v.Platform != "" && d.Platform != v.Platform:
			// Filtered out: not targeted at all.
		default:
			targets = append(targets, id)
			valid = append(valid, id)
		}
	}
	return targets, valid, invalidIDs, nil
}

// sendGroup sends to tags, a topic or all: one record, keyed by the app,
// that every gateway fans out to its matching sessions.
func (s *service) sendGroup(ctx context.Context, o *outgoing) (sendResult, error) {
	if err := s.store.CreateMessage(ctx, o.msg); err != nil {
		return sendResult{}, fmt.Errorf("create message status: %w", err)
	}
	env := o.envelope("")
	env.Push.Group = true
	env.Audience = o.audience()
	env.SpreadOverMs = o.v.Spread.Milliseconds()
	env.BadgeAdd = o.v.BadgeAdd
	b, err := proto.Marshal(env)
	if err == nil {
		err = s.deliver(ctx, o, []pushlog.Record{{Key: []byte(o.app.ID), Value: b}})
	}
	if err != nil {
		s.abandon(context.WithoutCancel(ctx), o, nil)
		return sendResult{}, err
	}
	return sendResult{MessageID: o.id, State: o.state()}, nil
}

// envelope is the record of the send for one device ("" for a group).
func (o *outgoing) envelope(deviceID string) *internalv1.Envelope {
	kind := devicev1.Kind_KIND_DATA
	if o.v.Notification != nil {
		kind = devicev1.Kind_KIND_NOTIFICATION
	}
	env := &internalv1.Envelope{
		AppId:    o.app.ID,
		DeviceId: deviceID,
		Push: &devicev1.Push{
			MessageId:    o.id,
			Kind:         kind,
			Notification: o.v.Notification,
			Data:         o.v.Data,
			SentAtMs:     o.start.UnixMilli(),
			CollapseId:   o.v.CollapseID,
		},
		OnlineOnly: o.v.TTL == 0,
		Priority:   o.v.Priority,
		Scheduled:  !o.v.SendAt.IsZero(),
	}
	if !o.msg.ExpiresAt.IsZero() {
		env.ExpiresAtMs = o.msg.ExpiresAt.UnixMilli()
	}
	return env
}

// audience is the group audience of the send.
func (o *outgoing) audience() *internalv1.Audience {
	a := &internalv1.Audience{Platform: o.v.Platform}
	switch o.v.Kind {
	case audienceTags:
		a.TagExpr = o.v.TagExpr
	case audienceTopic:
		a.Topic = o.v.Topic
	default:
		a.All = true
	}
	return a
}

func (o *outgoing) state() string {
	if o.v.SendAt.IsZero() {
		return sendAccepted
	}
	return sendScheduled
}

// deliver makes the records durable: appended to the push log now, or
// stored in the schedule until send_at.
func (s *service) deliver(ctx context.Context, o *outgoing, recs []pushlog.Record) error {
	// Neither write is cut short when the caller goes away: one abandoned
	// halfway could still become durable after we had reported the
	// message as failed and released its idempotency key.
	cleanup := context.WithoutCancel(ctx)
	if !o.v.SendAt.IsZero() {
		ss := &internalv1.ScheduledSend{Records: make([]*internalv1.ScheduledRecord, len(recs))}
		for i, r := range recs {
			ss.Records[i] = &internalv1.ScheduledRecord{Key: r.Key, Value: r.Value}
		}
		body, err := proto.Marshal(ss)
		if err != nil {
			return fmt.Errorf("encode scheduled send: %w", err)
		}
		err = s.store.PutScheduled(cleanup, store.Scheduled{MessageID: o.id, AppID: o.app.ID, Due: o.v.SendAt, Body: body})
		if err != nil {
			s.logger.ErrorContext(ctx, "store scheduled send", "app_id", o.app.ID, "message_id", o.id, "err", err)
			return fmt.Errorf("store scheduled send: %w", err)
		}
		return nil
	}
	if len(recs) == 0 {
		return nil // every target was capped
	}
	if err := s.log.Append(cleanup, pushlog.TopicPush, recs...); err != nil {
		s.logger.ErrorContext(ctx, "append to push log", "app_id", o.app.ID, "message_id", o.id, "err", err)
		if errors.Is(err, herald.ErrUnavailable) {
			return fmt.Errorf("append to push log: %w", err)
		}
		return fmt.Errorf("%w: append to push log: %w", herald.ErrUnavailable, err)
	}
	return nil
}

// abandon records that a created message will not be sent: its targets
// fail, and a group or scheduled message is cancelled.
func (s *service) abandon(ctx context.Context, o *outgoing, targets []string) {
	if err := s.store.Mark(ctx, transitions(o.id, targets, store.StateFailed)...); err != nil {
		s.logger.ErrorContext(ctx, "mark unsent targets failed", "app_id", o.app.ID, "message_id", o.id, "err", err)
	}
	if o.msg.Group || o.msg.State == store.MessageScheduled {
		from := []store.MessageState{store.MessageActive, store.MessageScheduled}
		if _, _, err := s.store.SetMessageState(ctx, o.id, from, store.MessageCancelled); err != nil {
			s.logger.ErrorContext(ctx, "cancel unsent message", "app_id", o.app.ID, "message_id", o.id, "err", err)
		}
	}
}

func transitions(messageID string, devices []string, st store.DeliveryState) []store.Transition {
	ts := make([]store.Transition, len(devices))
	for i, d := range devices {
		ts[i] = store.Transition{MessageID: messageID, DeviceID: d, State: st}
	}
	return ts
}

// emit hands a receipt to the emitter (a nil emitter drops it).
func (s *service) emit(r receipt.Receipt) { s.receipts.Emit(r) }

// message returns one of the app's messages and its counts.
func (s *service) message(ctx context.Context, app store.App, messageID string) (store.Message, store.Counts, error) {
	if messageID == "" {
		return store.Message{}, store.Counts{}, invalid("message_id is required")
	}
	notFound := fmt.Errorf("%w: %q", herald.ErrMessageNotFound, messageID)
	if len(messageID) > maxMessageID {
		return store.Message{}, store.Counts{}, notFound
	}
	m, c, err := s.store.MessageStatus(ctx, messageID)
	if errors.Is(err, herald.ErrMessageNotFound) {
		return store.Message{}, store.Counts{}, notFound
	}
	if err != nil {
		return store.Message{}, store.Counts{}, fmt.Errorf("read message status: %w", err)
	}
	if m.AppID != app.ID {
		return store.Message{}, store.Counts{}, notFound
	}
	return m, c, nil
}

// MessageStatus returns the delivery status of one of the app's messages.
func (s *service) MessageStatus(ctx context.Context, app store.App, messageID string) (messageStatus, error) {
	m, c, err := s.message(ctx, app, messageID)
	if err != nil {
		return messageStatus{}, err
	}
	st := messageStatus{MessageID: m.ID, Audience: m.Audience, SendAt: m.SendAt, Counts: c}
	switch {
	case m.State == store.MessageScheduled:
		st.State = "scheduled"
	case m.State == store.MessageCancelled:
		st.State = "cancelled"
	case m.State == store.MessageRecalled:
		st.State = "recalled"
	case s.done(m, c):
		st.State = "done"
	default:
		st.State = "sending"
	}
	if st.Audience == "" {
		st.Audience = audienceDevices // recorded before audiences had kinds
	}
	return st, nil
}

// done reports whether an active message has nothing left to deliver: a
// unicast message once no target is pending, a group message once it
// expired (devices that connect later get it until then).
func (s *service) done(m store.Message, c store.Counts) bool {
	if !m.Group {
		return c.Pending == 0
	}
	return !s.now().Before(s.groupEnd(m))
}

// groupEnd is when a group message stops being delivered: its expiry, or
// for an online-only one, the end of the longest spread window.
func (s *service) groupEnd(m store.Message) time.Time {
	if !m.ExpiresAt.IsZero() {
		return m.ExpiresAt
	}
	start := m.CreatedAt
	if !m.SendAt.IsZero() {
		start = m.SendAt
	}
	return start.Add(s.limits.MaxSpread)
}

// CancelMessage cancels a scheduled message, or recalls what is not yet
// delivered of an active one. It answers the message's new state.
func (s *service) CancelMessage(ctx context.Context, app store.App, messageID string) (string, error) {
	m, c, err := s.message(ctx, app, messageID)
	if err != nil {
		return "", err
	}
	state := m.State
	if state == store.MessageScheduled {
		st, moved, err := s.store.SetMessageState(ctx, m.ID, []store.MessageState{store.MessageScheduled}, store.MessageCancelled)
		if err != nil {
			return "", fmt.Errorf("cancel message: %w", err)
		}
		if moved {
			// The scheduler skips a cancelled message and deletes its
			// entry itself, so a failure here only delays the cleanup.
			if err := s.store.DeleteScheduled(ctx, store.Scheduled{MessageID: m.ID, AppID: app.ID, Due: m.SendAt}); err != nil {
				s.logger.WarnContext(ctx, "delete cancelled scheduled send", "app_id", app.ID, "message_id", m.ID, "err", err)
			}
			return "cancelled", nil
		}
		state = st // the scheduler fired it meanwhile
		if _, c, err = s.message(ctx, app, messageID); err != nil {
			return "", err
		}
	}
	switch state {
	case store.MessageActive:
	case store.MessageCancelled:
		return "", fmt.Errorf("%w: message %s was cancelled already", herald.ErrConflict, m.ID)
	case store.MessageRecalled:
		if !m.Group {
			// Finish a recall that failed halfway; nothing if it did not.
			if err := s.recallUnicast(ctx, app, m.ID); err != nil {
				return "", err
			}
		}
		return "", fmt.Errorf("%w: message %s was recalled already", herald.ErrConflict, m.ID)
	default:
		return "", fmt.Errorf("%w: message %s is %s", herald.ErrConflict, m.ID, state)
	}
	if s.done(m, c) {
		return "", fmt.Errorf("%w: message %s is done: nothing is left to recall", herald.ErrConflict, m.ID)
	}
	if m.Group {
		return s.recallGroup(ctx, app, m)
	}
	st, moved, err := s.store.SetMessageState(ctx, m.ID, []store.MessageState{store.MessageActive}, store.MessageRecalled)
	if err != nil {
		return "", fmt.Errorf("recall message: %w", err)
	}
	if !moved && st != store.MessageRecalled {
		return "", fmt.Errorf("%w: message %s is %s", herald.ErrConflict, m.ID, st)
	}
	if err := s.recallUnicast(ctx, app, m.ID); err != nil {
		return "", err
	}
	return "recalled", nil
}

// recallUnicast marks the pending targets of a recalled message recalled
// and removes the message from their inboxes.
func (s *service) recallUnicast(ctx context.Context, app store.App, messageID string) error {
	devices, err := s.store.RecallPending(ctx, messageID)
	if err != nil {
		return fmt.Errorf("recall pending targets: %w", err)
	}
	cleanup := context.WithoutCancel(ctx)
	now := s.now().UnixMilli()
	for _, d := range devices {
		if err := s.store.Delete(cleanup, app.ID, d, messageID); err != nil {
			s.logger.ErrorContext(ctx, "delete recalled message from inbox", "app_id", app.ID, "message_id", messageID, "device_id", d, "err", err)
		}
		s.emit(receipt.Receipt{AppID: app.ID, MessageID: messageID, DeviceID: d, Event: receipt.EventRecalled, Count: 1, AtMS: now})
	}
	return nil
}

// recallGroup flags a group message recalled in the topic log (no replay),
// tells the gateways to drop queued copies, then moves its state. Every
// step is idempotent, so a failed recall can simply be retried.
func (s *service) recallGroup(ctx context.Context, app store.App, m store.Message) (string, error) {
	if err := s.store.RecallBroadcast(ctx, app.ID, m.ID); err != nil {
		return "", fmt.Errorf("recall broadcast: %w", err)
	}
	env := &internalv1.Envelope{
		AppId: app.ID,
		Push:  &devicev1.Push{MessageId: m.ID, Group: true},
		// The gateways drop every queued copy of the message, whatever
		// its audience was; "all" reaches every gateway's sessions.
		Audience: &internalv1.Audience{All: true},
		Recall:   true,
	}
	b, err := proto.Marshal(env)
	if err != nil {
		return "", fmt.Errorf("encode recall: %w", err)
	}
	if err := s.log.Append(context.WithoutCancel(ctx), pushlog.TopicPush, pushlog.Record{Key: []byte(app.ID), Value: b}); err != nil {
		s.logger.ErrorContext(ctx, "append recall to push log", "app_id", app.ID, "message_id", m.ID, "err", err)
		if errors.Is(err, herald.ErrUnavailable) {
			return "", fmt.Errorf("append recall to push log: %w", err)
		}
		return "", fmt.Errorf("%w: append recall to push log: %w", herald.ErrUnavailable, err)
	}
	st, moved, err := s.store.SetMessageState(ctx, m.ID, []store.MessageState{store.MessageActive}, store.MessageRecalled)
	if err != nil {
		return "", fmt.Errorf("recall message: %w", err)
	}
	if !moved && st != store.MessageRecalled {
		return "", fmt.Errorf("%w: message %s is %s", herald.ErrConflict, m.ID, st)
	}
	s.emit(receipt.Receipt{AppID: app.ID, MessageID: m.ID, Event: receipt.EventRecalled, Count: 1, Group: true, AtMS: s.now().UnixMilli()})
	return "recalled", nil
}
