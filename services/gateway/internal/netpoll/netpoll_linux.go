//go:build linux

package netpoll

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Poller is a set of event loops. Add hands it connections; Stop closes
// them and ends the loops.
type Poller struct {
	cfg   Config
	loops []*loop
	done  sync.WaitGroup // loop goroutines

	mu      sync.Mutex
	next    int
	stopped bool
}

// loop is one epoll instance and the goroutine that drains it.
type loop struct {
	p    *Poller
	epfd int
	file *os.File // epfd, registered with the runtime poller
	rc   syscall.RawConn

	// The loop goroutine owns evs, ready and buf.
	evs   []unix.EpollEvent
	ready []*Conn
	buf   []byte

	mu    sync.Mutex
	conns map[int32]*Conn // by fd: every open connection of this loop
}

// Conn is one connection on a loop. Write and Close are safe from any
// goroutine; a Conn is also a net.Conn (Read is not supported).
type Conn struct {
	l            *loop
	laddr, raddr net.Addr
	session      any

	mu     sync.Mutex
	fd     int32 // valid while !closed
	added  bool  // registered with the loop's epoll (Add may still be running OnOpen)
	closed bool
	out    []byte // bytes the socket did not take yet; written on EPOLLOUT
}

const (
	evRead  = unix.EPOLLIN | unix.EPOLLRDHUP
	evWrite = evRead | unix.EPOLLOUT
	evEnd   = unix.EPOLLRDHUP | unix.EPOLLHUP | unix.EPOLLERR
)

// New creates the epoll instances and starts the loop goroutines.
func New(cfg Config) (*Poller, error) {
	if cfg.OnData == nil || cfg.OnClose == nil {
		return nil, errors.New("netpoll: OnData and OnClose are required")
	}
	cfg.Loops = max(cfg.Loops, 1)
	if cfg.ReadBufferSize <= 0 {
		cfg.ReadBufferSize = 16 << 10
	}
	if cfg.MaxWriteBuffer <= 0 {
		cfg.MaxWriteBuffer = 4 << 20
	}
	p := &Poller{cfg: cfg}
	for range cfg.Loops {
		l, err := newLoop(p)
		if err != nil {
			for _, l := range p.loops {
				_ = l.file.Close()
			}
			return nil, err
		}
		p.loops = append(p.loops, l)
	}
	p.done.Add(len(p.loops))
	for _, l := range p.loops {
		go l.run()
	}
	return p, nil
}

func newLoop(p *Poller) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("netpoll: epoll_create1: %w", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		_ = unix.Close(epfd)
		return nil, fmt.Errorf("netpoll: set epoll fd non-blocking: %w", err)
	}
	// os.NewFile registers a non-blocking fd with the runtime poller; an
	// epoll fd is pollable (readable while its ready list is not empty).
	f := os.NewFile(uintptr(epfd), "netpoll-epoll")
	rc, err := f.SyscallConn()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("netpoll: epoll fd: %w", err)
	}
	return &loop{
		p: p, epfd: epfd, file: f, rc: rc,
		evs:   make([]unix.EpollEvent, 256),
		ready: make([]*Conn, 0, 256),
		buf:   make([]byte, p.cfg.ReadBufferSize),
		conns: make(map[int32]*Conn),
	}, nil
}

// Add takes nc over: its descriptor moves to a loop (nc is closed, in every
// case). OnOpen runs before the first OnData.
func (p *Poller) Add(nc net.Conn) (*Conn, error) {
	fd, err := detach(nc)
	if err != nil {
		return nil, err
	}
	// p.mu is held until the conn is registered, so Stop either comes
	// first (ErrStopped) or sees the conn, opened, in its loop's map.
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		_ = unix.Close(fd)
		return nil, ErrStopped
	}
	l := p.loops[p.next%len(p.loops)]
	p.next++
	c := &Conn{l: l, fd: int32(fd), laddr: nc.LocalAddr(), raddr: nc.RemoteAddr()}
	if p.cfg.OnOpen != nil {
		p.cfg.OnOpen(c)
	}
	// Registered under the conn's lock: a Close that came first (from
	// OnOpen's goroutines) leaves a closed conn, and its fd number, which
	// may already be reused, is not touched.
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		p.mu.Unlock()
		return c, nil
	}
	l.mu.Lock()
	l.conns[c.fd] = c
	l.mu.Unlock()
	ev := unix.EpollEvent{Events: evRead, Fd: c.fd}
	if len(c.out) > 0 { // written to during OnOpen, and the socket was full
		ev.Events = evWrite
	}
	err = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev)
	c.added = err == nil
	c.mu.Unlock()
	p.mu.Unlock()
	if err != nil {
		err = fmt.Errorf("netpoll: epoll_ctl add: %w", err)
		c.closeWith(err)
		return nil, err
	}
	return c, nil
}

// detach returns a close-on-exec, non-blocking duplicate of nc's
// descriptor and closes nc, which removes it from the runtime's poller
// (epoll registrations belong to the open file description, and the runtime
// deletes its own before closing).
func detach(nc net.Conn) (int, error) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		_ = nc.Close()
		return -1, fmt.Errorf("netpoll: %T has no file descriptor", nc)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		_ = nc.Close()
		return -1, fmt.Errorf("netpoll: %w", err)
	}
	fd := -1
	var derr error
	if err := raw.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		_ = nc.Close()
		return -1, fmt.Errorf("netpoll: %w", err)
	}
	_ = nc.Close()
	if derr != nil {
		return -1, fmt.Errorf("netpoll: dup: %w", derr)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		return -1, fmt.Errorf("netpoll: set non-blocking: %w", err)
	}
	return fd, nil
}

// Stop closes every connection (OnClose runs for each), then ends the loops
// and waits for them: no callback runs after Stop returns.
func (p *Poller) Stop() {
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		p.done.Wait()
		return
	}
	p.stopped = true
	p.mu.Unlock()
	for _, l := range p.loops {
		l.mu.Lock()
		all := make([]*Conn, 0, len(l.conns))
		for _, c := range l.conns {
			all = append(all, c)
		}
		l.mu.Unlock()
		for _, c := range all {
			c.closeWith(net.ErrClosed)
		}
	}
	// No open conn refers to an epoll fd any more: closing the file wakes
	// the parked loop (its RawConn.Read fails), and the fd is closed once
	// the loop has left it.
	for _, l := range p.loops {
		_ = l.file.Close()
	}
	p.done.Wait()
}

func (l *loop) run() {
	defer l.p.done.Done()
	for {
		err := l.rc.Read(func(uintptr) bool {
			l.drain()
			return false // park until the epoll fd is readable again
		})
		if err != nil {
			return // the file was closed: Stop
		}
	}
}

// drain handles ready events until epoll_wait(0) reports none: the runtime
// registers the epoll fd edge-triggered, so its ready list must be empty
// before the loop parks.
func (l *loop) drain() {
	for {
		r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_WAIT, uintptr(l.epfd),
			uintptr(unsafe.Pointer(&l.evs[0])), uintptr(len(l.evs)), 0, 0, 0)
		if e == unix.EINTR {
			continue
		}
		n := int(r)
		if e != 0 || n <= 0 {
			return
		}
		// Resolve the batch under one lock. A conn closed and its fd reused
		// since epoll_wait gets a spurious event, which is harmless.
		l.ready = l.ready[:0]
		l.mu.Lock()
		for i := range n {
			c := l.conns[l.evs[i].Fd]
			if c == nil {
				// Not ours (cannot happen: conns are registered after they
				// are in the map and removed after they are deleted); drop
				// it so it does not fire forever.
				_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, int(l.evs[i].Fd), nil)
			}
			l.ready = append(l.ready, c)
		}
		l.mu.Unlock()
		for i, c := range l.ready {
			if c == nil {
				continue
			}
			ev := l.evs[i].Events
			if ev&unix.EPOLLOUT != 0 {
				c.flush()
			}
			if ev&(unix.EPOLLIN|evEnd) != 0 {
				l.read(c, ev)
			}
			l.ready[i] = nil
		}
	}
}

// read reads c until the socket is drained, handing each chunk to OnData.
// The read itself is under c's lock so that a concurrent Close cannot
// hand its fd number to another file in between.
func (l *loop) read(c *Conn, ev uint32) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return
		}
		r, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(c.fd),
			uintptr(unsafe.Pointer(&l.buf[0])), uintptr(len(l.buf)))
		c.mu.Unlock()
		n := int(r)
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN:
			if ev&evEnd != 0 {
				c.closeWith(io.EOF) // hung up with nothing to read: level-triggered, would fire forever
			}
			return
		case e != 0:
			c.closeWith(e)
			return
		case n == 0:
			c.closeWith(io.EOF)
			return
		}
		l.p.cfg.OnData(c, l.buf[:n])
		if n < len(l.buf) {
			return // a short read drained the socket (saves the EAGAIN read)
		}
	}
}

// Write sends b, or queues what the socket does not take now; it never
// blocks. Queued bytes go out in order, before anything written later. A
// queue past Config.MaxWriteBuffer, or a socket error, closes the
// connection. After Close, Write returns net.ErrClosed.
func (c *Conn) Write(b []byte) (int, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return 0, net.ErrClosed
	}
	if len(c.out) > 0 {
		if len(c.out)+len(b) > c.l.p.cfg.MaxWriteBuffer {
			c.mu.Unlock()
			c.closeWith(ErrWriteBufferFull)
			return 0, ErrWriteBufferFull
		}
		c.out = append(c.out, b...)
		c.mu.Unlock()
		return len(b), nil
	}
	rest := b
	for len(rest) > 0 {
		r, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(c.fd),
			uintptr(unsafe.Pointer(&rest[0])), uintptr(len(rest)))
		switch e {
		case 0:
			rest = rest[int(r):]
			continue
		case unix.EINTR:
			continue
		case unix.EAGAIN:
		default:
			c.mu.Unlock()
			c.closeWith(e)
			return len(b) - len(rest), e
		}
		if len(rest) > c.l.p.cfg.MaxWriteBuffer {
			c.mu.Unlock()
			c.closeWith(ErrWriteBufferFull)
			return len(b) - len(rest), ErrWriteBufferFull
		}
		c.out = append(make([]byte, 0, max(len(rest), 4<<10)), rest...)
		var err error
		if c.added { // else Add registers it for EPOLLOUT
			ev := unix.EpollEvent{Events: evWrite, Fd: c.fd}
			err = unix.EpollCtl(c.l.epfd, unix.EPOLL_CTL_MOD, int(c.fd), &ev)
		}
		c.mu.Unlock()
		if err != nil {
			c.closeWith(err)
			return len(b) - len(rest), err
		}
		return len(b), nil
	}
	c.mu.Unlock()
	return len(b), nil
}

// flush writes the queue on EPOLLOUT; once it is empty the conn goes back
// to waiting for reads only.
func (c *Conn) flush() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	for len(c.out) > 0 {
		r, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(c.fd),
			uintptr(unsafe.Pointer(&c.out[0])), uintptr(len(c.out)))
		switch e {
		case 0:
			c.out = c.out[int(r):]
		case unix.EINTR:
		case unix.EAGAIN:
			c.mu.Unlock()
			return
		default:
			c.mu.Unlock()
			c.closeWith(e)
			return
		}
	}
	c.out = nil
	ev := unix.EpollEvent{Events: evRead, Fd: c.fd}
	err := unix.EpollCtl(c.l.epfd, unix.EPOLL_CTL_MOD, int(c.fd), &ev)
	c.mu.Unlock()
	if err != nil {
		c.closeWith(err)
	}
}

// Close closes the connection at once (queued writes are dropped) and runs
// OnClose. It returns net.ErrClosed if the connection was already closed.
func (c *Conn) Close() error {
	if !c.closeWith(net.ErrClosed) {
		return net.ErrClosed
	}
	return nil
}

// closeWith closes c once, with reason for OnClose; it reports whether this
// call closed it. The fd is deregistered and closed under c's lock, so no
// Write or read can use its number afterwards.
func (c *Conn) closeWith(reason error) bool {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return false
	}
	c.closed = true
	c.out = nil
	l, fd := c.l, c.fd
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	l.mu.Lock()
	if l.conns[fd] == c {
		delete(l.conns, fd)
	}
	l.mu.Unlock()
	_, _, _ = unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
	c.mu.Unlock()
	l.p.cfg.OnClose(c, reason)
	return true
}
