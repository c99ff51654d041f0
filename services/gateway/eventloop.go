package gateway

import (
	"context"
	"net"
	"runtime"
	"sync"
	"time"

	"github.com/heraldpush/herald/api/frame"
	"github.com/heraldpush/herald/pkg/timewheel"
	"github.com/heraldpush/herald/services/gateway/internal/netpoll"
)

// I/O models of Config.IO.
const (
	// IOGoroutine runs one reader goroutine per connection.
	IOGoroutine = "goroutine"
	// IOEventLoop multiplexes connections on epoll event loops (package
	// netpoll, Linux only); the blocking session work runs on a bounded
	// worker pool.
	IOEventLoop = "eventloop"
)

// eventLoop is the event-loop I/O model: the gateway's own listener accepts,
// each connection is handed to a netpoll poller (a few epoll loops that park
// in the runtime's netpoller), and the loops decode frames incrementally.
// PING and PONG are answered on the loop; every other frame (CONNECT auth,
// acks, upstream appends all call the store) goes to the session's queue,
// which one worker at a time runs, so a session's frames are handled in
// order and never on a loop.
type eventLoop struct {
	g    *Gateway
	ctx  context.Context
	poll *netpoll.Poller
	work chan *session
	bufs bufPool

	workers  sync.WaitGroup
	sessions sync.WaitGroup // sessions whose cleanup has not run
}

// jobKind is what a session's queue entry asks the worker to do.
type jobKind uint8

const (
	jobFrame   jobKind = iota + 1 // handle a frame (buf holds its body)
	jobReadErr                    // the stream was bad: close with its code
	jobClose                      // the connection is gone: clean up
)

type job struct {
	kind jobKind
	t    frame.Type
	buf  *[]byte
	err  error
}

// evState is a session's event-loop state. The loop goroutine owns rbuf,
// started and dead; qmu guards the queue.
type evState struct {
	l       *eventLoop
	rbuf    *[]byte // an incomplete frame, held only until it completes
	hs      *timewheel.Timer
	started bool // the first frame (CONNECT) was decoded
	dead    bool // a decode error ended the stream
	counted bool // set at open: the connection is in the gauge

	qmu       sync.Mutex
	q         []job
	scheduled bool // on the work channel or being run by a worker
	connected bool // worker only: the first frame was handled
	ended     bool // worker only: a handler ended the session
}

func newEventLoop(ctx context.Context, g *Gateway) (*eventLoop, error) {
	procs := runtime.GOMAXPROCS(0)
	l := &eventLoop{g: g, ctx: ctx, work: make(chan *session, 4096)}
	p, err := netpoll.New(netpoll.Config{
		Loops:          procs,
		ReadBufferSize: 16 << 10,
		// A device that does not read its socket: the connection is closed
		// once this much is queued in user space (the kernel buffer is full).
		MaxWriteBuffer: max(4<<20, 4*g.cfg.MaxFrameBytes),
		OnOpen:         l.onOpen,
		OnData:         l.onData,
		OnClose:        l.onClose,
	})
	if err != nil {
		return nil, err
	}
	l.poll = p
	// Store calls block for milliseconds: enough workers to keep the store
	// busy, few enough that a store outage cannot pile up goroutines.
	n := max(16, 8*procs)
	l.workers.Add(n)
	for range n {
		go l.worker()
	}
	return l, nil
}

// attach hands an accepted connection to the loops.
func (l *eventLoop) attach(c net.Conn) {
	if _, err := l.poll.Add(c); err != nil { // c is closed in every case
		l.g.log.Warn("attach connection to event loop", "err", err)
	}
}

// stop waits for every session's cleanup, then stops the loops (no
// callback runs after that) and the workers.
func (l *eventLoop) stop() {
	l.sessions.Wait()
	l.poll.Stop()
	close(l.work)
	l.workers.Wait()
}

func (l *eventLoop) worker() {
	defer l.workers.Done()
	for s := range l.work {
		s.runQueue()
	}
}

// onOpen runs in netpoll.Poller.Add, before the connection can deliver
// data or be closed by anything but this session.
func (l *eventLoop) onOpen(c *netpoll.Conn) {
	g := l.g
	s := g.newSession(c)
	ev := &evState{l: l}
	s.ev = ev
	c.SetSession(s) // before anything below can close the connection
	l.sessions.Add(1)
	if g.track(s) {
		g.m.connections.Add(l.ctx, 1)
		ev.counted = true
		ev.hs = s.armHandshakeTimeout()
	} else {
		// Not from here: onClose would queue the cleanup from inside Add.
		go s.closeWith(frame.CodeShutdown, "gateway shutting down", 0)
	}
}

func (l *eventLoop) onClose(c *netpoll.Conn, _ error) {
	s := l.sessionOf(c)
	if s == nil {
		return
	}
	s.enqueue(job{kind: jobClose})
}

// onData runs on a loop goroutine: decode what is complete, keep the rest.
func (l *eventLoop) onData(c *netpoll.Conn, data []byte) {
	s := l.sessionOf(c)
	if s == nil {
		return
	}
	ev := s.ev
	if ev.dead {
		return
	}
	buf := data
	if ev.rbuf != nil {
		*ev.rbuf = append(*ev.rbuf, data...)
		buf = *ev.rbuf
	}
	max := l.g.cfg.MaxFrameBytes
	for len(buf) > 0 {
		f, n, err := frame.Decode(buf, max)
		if err != nil {
			ev.dead = true
			s.enqueue(job{kind: jobReadErr, err: err})
			break
		}
		if n == 0 {
			break
		}
		buf = buf[n:]
		l.dispatch(s, f)
	}
	l.keep(s, buf)
}

// sessionOf returns the session onOpen attached (netpoll orders OnOpen
// before OnData and OnClose).
func (l *eventLoop) sessionOf(c *netpoll.Conn) *session {
	s, _ := c.Session().(*session)
	return s
}

// keep saves the unconsumed tail (part of a frame) in a pooled buffer, or
// returns the buffer when nothing is left.
func (l *eventLoop) keep(s *session, rest []byte) {
	ev := s.ev
	if len(rest) == 0 || ev.dead {
		l.bufs.put(ev.rbuf)
		ev.rbuf = nil
		return
	}
	if ev.rbuf != nil && cap(*ev.rbuf) >= len(rest) {
		n := copy((*ev.rbuf)[:cap(*ev.rbuf)], rest) // rest may alias rbuf: copy is a memmove
		*ev.rbuf = (*ev.rbuf)[:n]
		return
	}
	nb := l.bufs.get(max(len(rest), 512))
	*nb = append(*nb, rest...)
	l.bufs.put(ev.rbuf)
	ev.rbuf = nb
}

// dispatch handles heartbeats on the loop and queues everything else.
func (l *eventLoop) dispatch(s *session, f frame.Frame) {
	g := l.g
	ev := s.ev
	g.m.framesIn.Add(context.Background(), 1)
	if !ev.started {
		ev.started = true
		if ev.hs != nil {
			ev.hs.Stop()
		}
	} else {
		s.lastSeen.Store(time.Now().UnixNano())
		if s.wake.Load() != 0 && s.authed.Load() {
			s.awake() // normal-priority work waiting for this device to be active
		}
		if (f.Type == frame.TypePing || f.Type == frame.TypePong) && s.authed.Load() && s.idle() {
			if f.Type == frame.TypePing {
				_ = s.write(frame.Pong) // never blocks: the loop's write is buffered
			}
			return
		}
	}
	b := l.bufs.get(len(f.Body))
	*b = append(*b, f.Body...)
	s.enqueue(job{kind: jobFrame, t: f.Type, buf: b})
}

// idle reports whether no frame is waiting for a worker, so a heartbeat
// answered on the loop cannot overtake one.
func (s *session) idle() bool {
	s.ev.qmu.Lock()
	defer s.ev.qmu.Unlock()
	return !s.ev.scheduled
}

func (s *session) enqueue(j job) {
	ev := s.ev
	ev.qmu.Lock()
	ev.q = append(ev.q, j)
	schedule := !ev.scheduled
	ev.scheduled = true
	ev.qmu.Unlock()
	if schedule {
		ev.l.work <- s // a full pool holds the loop back: backpressure
	}
}

// runQueue runs the session's queued jobs in order, on a worker.
func (s *session) runQueue() {
	ev := s.ev
	for {
		ev.qmu.Lock()
		if len(ev.q) == 0 {
			ev.q = nil
			ev.scheduled = false
			ev.qmu.Unlock()
			return
		}
		j := ev.q[0]
		ev.q[0] = job{}
		ev.q = ev.q[1:]
		ev.qmu.Unlock()
		s.run(j)
	}
}

func (s *session) run(j job) {
	ev := s.ev
	l := ev.l
	switch j.kind {
	case jobFrame:
		defer l.bufs.put(j.buf)
		if ev.ended {
			return
		}
		f := frame.Frame{Type: j.t, Body: *j.buf}
		var ok bool
		if !ev.connected {
			ev.connected = true
			ok = s.first(l.ctx, f)
		} else {
			ok = s.handle(f)
		}
		if !ok {
			ev.ended = true
			s.closeQuietly()
		}
	case jobReadErr:
		if !ev.ended {
			ev.ended = true
			s.closeOnReadError(j.err)
		}
	case jobClose:
		ev.ended = true
		s.cleanup()
		if ev.counted {
			s.g.m.connections.Add(context.Background(), -1)
		}
		l.sessions.Done()
	}
}
