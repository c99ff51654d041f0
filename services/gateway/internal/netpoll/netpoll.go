// Package netpoll multiplexes TCP connections on a few epoll event loops
// whose idle wait is the Go runtime's own netpoller.
//
// Each loop's epoll fd is non-blocking and registered with the runtime
// through os.NewFile, so a loop goroutine parks like any goroutine waiting
// for a socket, without holding a P in a blocking epoll_wait. When the epoll
// fd becomes readable the loop drains it with epoll_wait(timeout 0) and
// reads the ready sockets. Every system call on the hot path (epoll_wait
// with timeout 0, read and write on non-blocking sockets, epoll_ctl, close)
// is made with RawSyscall: none of them can block, and a raw call does not
// enter the scheduler's syscall state, which is what wakes the runtime's
// sysmon thread out of its deep sleep. See docs/eventloop-choice.md.
package netpoll

import (
	"errors"
	"net"
	"time"
)

// Config configures a Poller.
type Config struct {
	// Loops is the number of event loops (at least 1).
	Loops int
	// ReadBufferSize is each loop's read buffer; 16 KiB when zero.
	ReadBufferSize int
	// MaxWriteBuffer is how many bytes a connection may queue in user space
	// when the socket does not take them; past it the connection is closed.
	// 4 MiB when zero.
	MaxWriteBuffer int

	// OnOpen runs in Add before the connection is registered with its loop:
	// the place to attach a session (Conn.SetSession).
	OnOpen func(c *Conn)
	// OnData runs on the connection's loop goroutine with the bytes read.
	// data is the loop's buffer: it is only valid until OnData returns.
	OnData func(c *Conn, data []byte)
	// OnClose runs exactly once for every connection OnOpen saw, on the
	// goroutine that closed it (the loop's, for a peer's close or a read
	// error; the caller of Close or Write otherwise; Stop's).
	OnClose func(c *Conn, err error)
}

// ErrStopped is returned by Add after Stop.
var ErrStopped = errors.New("netpoll: poller stopped")

// ErrUnsupported is returned by New on systems without epoll.
var ErrUnsupported = errors.New("netpoll: event loops need Linux (epoll)")

// ErrWriteBufferFull is the close reason of a connection whose queued
// writes passed Config.MaxWriteBuffer.
var ErrWriteBufferFull = errors.New("netpoll: write buffer full")

// Conn methods that exist only to satisfy net.Conn.

// Read is not supported: bytes are delivered to Config.OnData.
func (c *Conn) Read([]byte) (int, error) { return 0, errors.ErrUnsupported }

// LocalAddr returns the local address of the accepted connection.
func (c *Conn) LocalAddr() net.Addr { return c.laddr }

// RemoteAddr returns the peer's address.
func (c *Conn) RemoteAddr() net.Addr { return c.raddr }

// SetDeadline does nothing: writes never block and reads are events.
func (c *Conn) SetDeadline(time.Time) error { return nil }

// SetReadDeadline does nothing (see SetDeadline).
func (c *Conn) SetReadDeadline(time.Time) error { return nil }

// SetWriteDeadline does nothing (see SetDeadline).
func (c *Conn) SetWriteDeadline(time.Time) error { return nil }

// SetSession attaches the caller's state to the connection. Call it from
// OnOpen: OnData and OnClose then see it without further synchronization.
func (c *Conn) SetSession(s any) { c.session = s }

// Session returns what SetSession attached.
func (c *Conn) Session() any { return c.session }

var _ net.Conn = (*Conn)(nil)
