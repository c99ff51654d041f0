package herald

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
	"google.golang.org/protobuf/proto"
)

const (
	// maxAckDelay bounds how long a handled message waits for its ACK.
	maxAckDelay = 5 * time.Millisecond
	// maxAckBatch is the queued ids that trigger an ACK at once (26-byte ids: ~7 KiB).
	maxAckBatch = 256
	// maxPushBatch bounds how many decoded PUSH frames the reader holds
	// before handing them over.
	maxPushBatch = 128
	// writeTimeout bounds one frame write on a live session.
	writeTimeout = 10 * time.Second
	// closeTimeout bounds the final ACK and DISCONNECT on a graceful close.
	closeTimeout = time.Second
)

// session is one connection that completed the handshake.
type session struct {
	c        *Client
	conn     net.Conn
	addr     string
	id       string
	hb       time.Duration // negotiated heartbeat
	maxFrame int           // largest frame the server accepts

	fr *frameReader

	wmu       sync.Mutex
	closing   atomic.Bool
	closingCh chan struct{} // closed on a graceful close (ctx ended or Close)
	dead      chan struct{} // closed when the read loop has ended

	qmu    sync.Mutex
	queue  []Message
	notify chan struct{} // capacity 1: the queue got messages

	amu     sync.Mutex
	acks    []string      // handled, not yet acknowledged
	ackNow  chan struct{} // capacity 1: send the ACKs now
	ackSoon chan struct{} // capacity 1: send the ACKs within maxAckDelay
}

// connect dials addr and runs the CONNECT/CONNACK handshake. A DISCONNECT
// answer is returned as a *CloseError.
func (c *Client) connect(ctx context.Context, addr string) (*session, error) {
	d := net.Dialer{Timeout: c.cfg.DialTimeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("herald: dial %s: %w", addr, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	s, err := c.handshake(conn, addr)
	if !stop() {
		_ = conn.Close()
		return nil, fmt.Errorf("herald: connect %s: %w", addr, ctx.Err())
	}
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	return s, nil
}

func (c *Client) handshake(conn net.Conn, addr string) (*session, error) {
	if err := conn.SetDeadline(time.Now().Add(c.cfg.DialTimeout)); err != nil {
		return nil, fmt.Errorf("herald: connect %s: %w", addr, err)
	}
	hbSeconds := uint32((c.cfg.Heartbeat + time.Second - 1) / time.Second)
	b, err := frame.AppendMessage(nil, frame.TypeConnect, &devicev1.Connect{
		ProtocolVersion:  frame.ProtocolVersion,
		AppKey:           c.cfg.AppKey,
		DeviceId:         c.cfg.DeviceID,
		DeviceToken:      c.cfg.Token,
		ResumeCursor:     c.Cursor(),
		BroadcastCursor:  c.BroadcastCursor(),
		ClientVersion:    "herald-sdk-go/" + Version,
		HeartbeatSeconds: hbSeconds,
	})
	if err != nil {
		return nil, fmt.Errorf("herald: connect %s: %w", addr, err)
	}
	if _, err := conn.Write(b); err != nil {
		return nil, fmt.Errorf("herald: send CONNECT to %s: %w", addr, err)
	}
	fr := newFrameReader(conn, frame.DefaultMaxFrame)
	f, err := fr.next()
	if err != nil {
		return nil, fmt.Errorf("herald: read CONNACK from %s: %w", addr, err)
	}
	switch f.Type {
	case frame.TypeConnAck:
	case frame.TypeDisconnect:
		ce, err := parseDisconnect(f.Body)
		if err != nil {
			return nil, fmt.Errorf("herald: connect %s: %w", addr, err)
		}
		return nil, ce
	default:
		return nil, fmt.Errorf("herald: connect %s: got %s, want CONNACK", addr, f.Type)
	}
	var ack devicev1.ConnAck
	if err := proto.Unmarshal(f.Body, &ack); err != nil {
		return nil, fmt.Errorf("herald: decode CONNACK from %s: %w", addr, err)
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return nil, fmt.Errorf("herald: connect %s: %w", addr, err)
	}
	s := &session{
		c:         c,
		conn:      conn,
		addr:      addr,
		id:        ack.GetSessionId(),
		hb:        time.Duration(ack.GetHeartbeatSeconds()) * time.Second,
		maxFrame:  int(ack.GetMaxFrameBytes()),
		fr:        fr,
		closingCh: make(chan struct{}),
		dead:      make(chan struct{}),
		notify:    make(chan struct{}, 1),
		ackNow:    make(chan struct{}, 1),
		ackSoon:   make(chan struct{}, 1),
	}
	if s.hb <= 0 {
		s.hb = c.cfg.Heartbeat
	}
	if s.hb <= 0 {
		s.hb = fallbackHeartbeat
	}
	if s.maxFrame <= 0 {
		s.maxFrame = frame.DefaultMaxFrame
	}
	return s, nil
}

// run serves the session until the connection ends or ctx ends; on ctx end
// it flushes pending ACKs, says DISCONNECT 3000 and closes. It returns once
// every goroutine it started has returned.
func (s *session) run(ctx context.Context) error {
	var wg sync.WaitGroup
	handled := make(chan struct{})
	wg.Go(s.pingLoop)
	wg.Go(s.ackLoop)
	wg.Go(func() {
		defer close(handled)
		s.handleLoop()
	})
	closed := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(closed)
		s.closing.Store(true)
		close(s.closingCh)
		_ = s.conn.SetWriteDeadline(time.Now().Add(closeTimeout)) // unblock a stuck write
		<-handled                                                 // OnMessage has returned: acknowledge what it handled
		s.flushAcks()
		b, err := frame.AppendMessage(nil, frame.TypeDisconnect, &devicev1.Disconnect{
			Code:   uint32(frame.CodeNormal),
			Reason: "client closed",
		})
		if err == nil {
			_ = s.write(b)
		}
		_ = s.conn.Close()
	})

	err := s.readLoop()
	s.c.endSession(s)
	close(s.dead)
	_ = s.conn.Close()
	if !stop() {
		<-closed
	}
	wg.Wait()
	return err
}

// write sends one complete frame; writes are serialized.
func (s *session) write(b []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	timeout := writeTimeout
	if s.closing.Load() {
		timeout = closeTimeout
	}
	if err := s.conn.SetWriteDeadline(time.Now().Add(timeout)); err != nil {
		return fmt.Errorf("herald: write to %s: %w", s.addr, err)
	}
	if _, err := s.conn.Write(b); err != nil {
		_ = s.conn.Close() // the read loop ends and the client reconnects
		return fmt.Errorf("herald: write to %s: %w", s.addr, err)
	}
	return nil
}

func (s *session) readLoop() error {
	timeout := 2 * s.hb
	var batch []Message
	for {
		if err := s.conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
			return fmt.Errorf("herald: read from %s: %w", s.addr, err)
		}
		f, err := s.fr.next()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return fmt.Errorf("herald: nothing received from %s for %s: %w", s.addr, timeout, err)
			}
			return fmt.Errorf("herald: read from %s: %w", s.addr, err)
		}
		sf, err := parseServerFrame(f)
		if err != nil {
			return fmt.Errorf("herald: from %s: %w", s.addr, err)
		}
		switch sf.typ {
		case frame.TypePing:
			_ = s.write(frame.Pong)
		case frame.TypePush:
			batch = append(batch, sf.push)
		case frame.TypeUpAck, frame.TypeSubAck:
			s.c.deliverAnswer(sf.answer)
		case frame.TypeDisconnect:
			return sf.disconnect
		}
		if len(batch) > 0 && (len(batch) >= maxPushBatch || s.fr.buffered() == 0) {
			s.enqueue(batch)
			batch = nil
		}
	}
}

func (s *session) enqueue(ms []Message) {
	s.qmu.Lock()
	s.queue = append(s.queue, ms...)
	s.qmu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

func (s *session) dequeue() (Message, bool) {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	if len(s.queue) == 0 {
		return Message{}, false
	}
	m := s.queue[0]
	s.queue[0] = Message{}
	s.queue = s.queue[1:]
	return m, true
}

func (s *session) pingLoop() {
	t := time.NewTicker(s.hb)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if err := s.write(frame.Ping); err != nil {
				return
			}
		case <-s.dead:
			return
		case <-s.closingCh:
			return
		}
	}
}

// handleLoop passes queued messages to OnMessage one at a time and queues
// their acknowledgements: sent at once when the queue runs dry, else by
// ackLoop within maxAckDelay.
func (s *session) handleLoop() {
	for {
		select {
		case <-s.closingCh:
			return
		case <-s.dead:
			return
		default:
		}
		m, ok := s.dequeue()
		if !ok {
			kick(s.ackNow)
			select {
			case <-s.notify:
			case <-s.closingCh:
			case <-s.dead:
			}
			continue
		}
		if s.handle(m) {
			s.amu.Lock()
			s.acks = append(s.acks, m.ID)
			n := len(s.acks)
			s.amu.Unlock()
			switch {
			case n >= maxAckBatch:
				kick(s.ackNow)
			case n == 1:
				kick(s.ackSoon)
			}
		}
	}
}

// ackLoop sends queued acknowledgements when asked to, and never later than
// maxAckDelay after the first one was queued.
func (s *session) ackLoop() {
	t := time.NewTimer(maxAckDelay)
	t.Stop()
	defer t.Stop()
	for {
		select {
		case <-s.ackNow:
			s.flushAcks()
		case <-s.ackSoon:
			t.Reset(maxAckDelay)
		case <-t.C:
			s.flushAcks()
		case <-s.closingCh:
			return
		case <-s.dead:
			return
		}
	}
}

// flushAcks sends every queued acknowledgement in one ACK frame.
func (s *session) flushAcks() {
	s.amu.Lock()
	defer s.amu.Unlock() // held while writing: ACKs go out in order
	if len(s.acks) == 0 {
		return
	}
	b, err := frame.AppendMessage(nil, frame.TypeAck, &devicev1.Ack{MessageIds: s.acks})
	if err == nil {
		err = s.write(b)
	}
	if err != nil {
		s.c.log.Debug("ack failed", "count", len(s.acks), "err", err)
	}
	s.acks = s.acks[:0]
}

func kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// handle passes m to OnMessage unless it is a duplicate. It reports
// whether m is to be acknowledged.
func (s *session) handle(m Message) bool {
	c := s.c
	if m.ID == "" {
		c.log.Warn("message without id")
		if c.cfg.OnMessage != nil {
			c.cfg.OnMessage(m)
		}
		return false
	}
	if c.dedup.seen(m.ID) {
		// A redelivery, or a group message replayed from the look-back
		// window (docs/protocol.md, "Broadcast cursor").
		c.log.Debug("duplicate message", "message_id", m.ID, "group", m.Group)
		return true
	}
	if c.cfg.OnMessage != nil {
		c.cfg.OnMessage(m)
	}
	c.dedup.add(m.ID)
	c.handled(m)
	return true
}
