//go:build linux

package netpoll

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const wait = 10 * time.Second

// server is a poller fed by a real TCP listener.
type server struct {
	p      *Poller
	ln     net.Listener
	conns  chan *Conn
	closes chan closeEvent
}

type closeEvent struct {
	c   *Conn
	err error
}

type callbacks struct {
	onData  func(c *Conn, data []byte)
	onClose func(c *Conn, err error)
}

// pollerAndListener starts a Poller with cfg and a listener on loopback;
// both are stopped when the test ends (the listener first).
func pollerAndListener(tb testing.TB, cfg Config) (*Poller, net.Listener) {
	tb.Helper()
	p, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(p.Stop)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = ln.Close() })
	return p, ln
}

// acceptAdd accepts the next connection of ln and adds it to p.
func acceptAdd(tb testing.TB, p *Poller, ln net.Listener) *Conn {
	tb.Helper()
	nc, err := ln.Accept()
	if err != nil {
		tb.Fatal(err)
	}
	c, err := p.Add(nc)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

func startServer(tb testing.TB, cfg Config, cb callbacks) *server {
	tb.Helper()
	s := &server{conns: make(chan *Conn, 1024), closes: make(chan closeEvent, 1024)}
	cfg.OnOpen = func(c *Conn) { s.conns <- c }
	cfg.OnData = func(c *Conn, data []byte) {
		if cb.onData != nil {
			cb.onData(c, data)
		}
	}
	cfg.OnClose = func(c *Conn, err error) {
		if cb.onClose != nil {
			cb.onClose(c, err)
		}
		s.closes <- closeEvent{c, err}
	}
	p, ln := pollerAndListener(tb, cfg)
	s.p, s.ln = p, ln
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if _, err := p.Add(c); err != nil && !errors.Is(err, ErrStopped) {
				tb.Errorf("Add: %v", err)
			}
		}
	}()
	tb.Cleanup(func() { // before pollerAndListener's: the accept loop ends first
		_ = ln.Close()
		<-accepted
	})
	return s
}

func (s *server) dial(tb testing.TB) (net.Conn, *Conn) {
	tb.Helper()
	c, err := net.DialTimeout("tcp", s.ln.Addr().String(), wait)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	select {
	case sc := <-s.conns:
		return c, sc
	case <-time.After(wait):
		tb.Fatal("connection not opened")
		return nil, nil
	}
}

func echo(c *Conn, data []byte) {
	if _, err := c.Write(data); err != nil && !errors.Is(err, net.ErrClosed) {
		panic(err)
	}
}

func readN(tb testing.TB, c net.Conn, n int) []byte {
	tb.Helper()
	_ = c.SetReadDeadline(time.Now().Add(wait))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		tb.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

// waitClosed returns the next OnClose, failing after wait.
func (s *server) waitClosed(tb testing.TB) closeEvent {
	tb.Helper()
	select {
	case e := <-s.closes:
		return e
	case <-time.After(wait):
		tb.Fatal("OnClose not called")
		return closeEvent{}
	}
}

func TestEcho(t *testing.T) {
	s := startServer(t, Config{Loops: 2, ReadBufferSize: 64}, callbacks{onData: echo})
	c, _ := s.dial(t)
	for _, msg := range [][]byte{[]byte("ping"), bytes.Repeat([]byte("abcdefgh"), 100), {0}} {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if got := readN(t, c, len(msg)); !bytes.Equal(got, msg) {
			t.Fatalf("echo of %d bytes differs", len(msg))
		}
	}
	// The peer's close reaches OnClose, as EOF.
	_ = c.Close()
	if e := s.waitClosed(t); !errors.Is(e.err, io.EOF) {
		t.Fatalf("OnClose err %v, want EOF", e.err)
	}
}

// pattern fills b with bytes that depend on their offset in the stream.
func pattern(b []byte, off int) {
	for i := range b {
		x := off + i
		b[i] = byte(x ^ x>>8 ^ x>>16)
	}
}

func queued(c *Conn) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.out)
}

func TestPartialWritesKeepOrder(t *testing.T) {
	s := startServer(t, Config{Loops: 1, MaxWriteBuffer: 64 << 20}, callbacks{})
	c, sc := s.dial(t)
	// The peer does not read: write until the kernel buffers are full and
	// bytes queue in user space, then 1 MiB more, in chunks of odd sizes.
	total, extra := 0, -1
	for extra < 1<<20 {
		if total > 48<<20 {
			t.Fatal("48 MiB written and nothing queued: the socket never pushed back")
		}
		chunk := make([]byte, 7919+total%1000)
		pattern(chunk, total)
		if n, err := sc.Write(chunk); err != nil || n != len(chunk) {
			t.Fatalf("Write: %d, %v", n, err)
		}
		total += len(chunk)
		if extra >= 0 {
			extra += len(chunk)
		} else if queued(sc) > 0 {
			extra = 0
		}
	}
	got := readN(t, c, total)
	want := make([]byte, total)
	pattern(want, 0)
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("%d bytes written, byte %d differs", total, i)
	}
	// The queue was flushed and the conn went back to reads only: it still
	// echoes nothing (no OnData set) but stays open and writable.
	deadline := time.Now().Add(wait)
	for queued(sc) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("queue not flushed")
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := sc.Write([]byte("end")); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, c, 3); string(got) != "end" {
		t.Fatalf("got %q after the flush", got)
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

func TestWriteBufferLimitCloses(t *testing.T) {
	s := startServer(t, Config{Loops: 1, MaxWriteBuffer: 256 << 10}, callbacks{})
	_, sc := s.dial(t)
	chunk := make([]byte, 64<<10)
	var err error
	for i := 0; err == nil; i++ {
		if i > 1000 {
			t.Fatal("64 MiB written to a peer that does not read, and no error")
		}
		_, err = sc.Write(chunk)
	}
	if !errors.Is(err, ErrWriteBufferFull) {
		t.Fatalf("Write: %v, want ErrWriteBufferFull", err)
	}
	if e := s.waitClosed(t); e.c != sc || !errors.Is(e.err, ErrWriteBufferFull) {
		t.Fatalf("OnClose(%p, %v), want the conn with ErrWriteBufferFull", e.c, e.err)
	}
	if _, err := sc.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after the close: %v, want net.ErrClosed", err)
	}
}

func TestWriteAfterClose(t *testing.T) {
	s := startServer(t, Config{Loops: 1}, callbacks{onData: echo})
	c, sc := s.dial(t)
	if err := sc.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if e := s.waitClosed(t); e.c != sc {
		t.Fatal("OnClose for another conn")
	}
	if _, err := sc.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v, want net.ErrClosed", err)
	}
	if err := sc.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close: %v, want net.ErrClosed", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("peer read after Close: %d, %v; want EOF", n, err)
	}
	select {
	case e := <-s.closes:
		t.Fatalf("a second OnClose (%v)", e.err)
	case <-time.After(50 * time.Millisecond):
	}
}

// A writer holding a closed conn must not write to the file that reuses
// its descriptor number.
func TestStaleConnDoesNotWriteToReusedFD(t *testing.T) {
	p, ln := pollerAndListener(t, Config{Loops: 1, OnData: func(*Conn, []byte) {}, OnClose: func(*Conn, error) {}})
	var err error
	// Both peers first, so that no client socket takes a freed number; the
	// accepts are then a's (accepted fd N, dup M > N) and b's, whose dup
	// gets M again once a is closed.
	var peers [2]net.Conn
	for i := range peers {
		if peers[i], err = net.Dial("tcp", ln.Addr().String()); err != nil {
			t.Fatal(err)
		}
		defer peers[i].Close()
	}
	a := acceptAdd(t, p, ln)
	fd := a.fd
	_ = a.Close()
	b := acceptAdd(t, p, ln)
	if b.fd != fd {
		t.Skipf("the descriptor number was not reused (%d, then %d)", fd, b.fd)
	}
	if _, err := a.Write([]byte("stale")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("stale Write: %v, want net.ErrClosed", err)
	}
	if _, err := b.Write([]byte("fresh")); err != nil {
		t.Fatal(err)
	}
	_ = b.Close()
	// Which peer is b's depends on the accept order; b's peer reads
	// "fresh" then EOF, a's EOF only.
	for _, c := range peers {
		_ = c.SetReadDeadline(time.Now().Add(wait))
		got, err := io.ReadAll(c)
		if err != nil || (len(got) != 0 && string(got) != "fresh") {
			t.Fatalf("a peer read %q, %v", got, err)
		}
	}
}

func TestCloseWhileWriting(t *testing.T) {
	s := startServer(t, Config{Loops: 2, MaxWriteBuffer: 1 << 30}, callbacks{})
	for range 20 {
		c, sc := s.dial(t)
		go func() { _, _ = io.Copy(io.Discard, c) }()
		var wg sync.WaitGroup
		var writes atomic.Int64
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 3000)
				for {
					_, err := sc.Write(buf)
					if err != nil {
						if !errors.Is(err, net.ErrClosed) {
							t.Errorf("Write: %v, want net.ErrClosed", err)
						}
						return
					}
					if writes.Add(1)%64 == 0 && queued(sc) > 1<<20 {
						time.Sleep(time.Millisecond) // the reader is behind: bound the queue, not the test
					}
				}
			}()
		}
		for writes.Load() < 10 {
			time.Sleep(100 * time.Microsecond)
		}
		closed := make(chan error, 3)
		for range 3 {
			go func() { closed <- sc.Close() }()
		}
		nils := 0
		for range 3 {
			if err := <-closed; err == nil {
				nils++
			} else if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Close: %v", err)
			}
		}
		if nils != 1 {
			t.Fatalf("%d of 3 concurrent Closes succeeded, want 1", nils)
		}
		wg.Wait()
		if e := s.waitClosed(t); e.c != sc {
			t.Fatal("OnClose for another conn")
		}
	}
	select {
	case e := <-s.closes:
		t.Fatalf("an extra OnClose (%v)", e.err)
	default:
	}
}

func TestManyConnsConcurrently(t *testing.T) {
	s := startServer(t, Config{Loops: 2, ReadBufferSize: 512}, callbacks{onData: echo})
	const conns, rounds = 100, 20
	cs := make([]net.Conn, conns)
	for i := range cs {
		cs[i], _ = s.dial(t)
	}
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.SetDeadline(time.Now().Add(wait))
			msg := make([]byte, 700+i)
			got := make([]byte, len(msg))
			for r := range rounds {
				pattern(msg, i*1000+r)
				if _, err := c.Write(msg); err != nil {
					t.Errorf("conn %d: write: %v", i, err)
					return
				}
				if _, err := io.ReadFull(c, got); err != nil {
					t.Errorf("conn %d: read: %v", i, err)
					return
				}
				if !bytes.Equal(got, msg) {
					t.Errorf("conn %d round %d: echo differs", i, r)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func TestStopClosesLiveConns(t *testing.T) {
	s := startServer(t, Config{Loops: 2}, callbacks{onData: echo})
	const n = 10
	var peers []net.Conn
	for range n {
		c, _ := s.dial(t)
		peers = append(peers, c)
	}
	if _, err := peers[0].Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	readN(t, peers[0], 2)
	stopped := make(chan struct{})
	go func() {
		s.p.Stop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(wait):
		t.Fatal("Stop did not return")
	}
	if len(s.closes) != n {
		t.Fatalf("%d OnClose calls by the time Stop returned, want %d", len(s.closes), n)
	}
	for i, c := range peers {
		_ = c.SetReadDeadline(time.Now().Add(wait))
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("peer %d: %v, want EOF", i, err)
		}
	}
	c, err := net.Dial("tcp", s.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = s.p.Add(c)
	if !errors.Is(err, ErrStopped) {
		t.Fatalf("Add after Stop: %v, want ErrStopped", err)
	}
	s.p.Stop() // twice is fine
}

func TestStopRightAfterNew(t *testing.T) {
	for range 50 {
		p, err := New(Config{Loops: 2, OnData: func(*Conn, []byte) {}, OnClose: func(*Conn, error) {}})
		if err != nil {
			t.Fatal(err)
		}
		stopped := make(chan struct{})
		go func() {
			p.Stop()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-time.After(wait):
			t.Fatal("Stop right after New did not return")
		}
	}
}

// Close from OnOpen's goroutine before the conn is registered: OnClose
// still runs once, and the conn is never registered.
func TestCloseDuringOpen(t *testing.T) {
	closes := make(chan error, 10)
	p, ln := pollerAndListener(t, Config{
		Loops:   1,
		OnOpen:  func(c *Conn) { _ = c.Close() },
		OnData:  func(*Conn, []byte) { t.Error("OnData for a conn closed in OnOpen") },
		OnClose: func(_ *Conn, err error) { closes <- err },
	})
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			_, _ = c.Write([]byte("data"))
			_, _ = io.Copy(io.Discard, c)
			_ = c.Close()
		}
	}()
	c := acceptAdd(t, p, ln)
	if len(closes) != 1 {
		t.Fatalf("%d OnClose calls, want 1", len(closes))
	}
	p.loops[0].mu.Lock()
	n := len(p.loops[0].conns)
	p.loops[0].mu.Unlock()
	if n != 0 {
		t.Fatalf("%d conns registered, want 0", n)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write: %v, want net.ErrClosed", err)
	}
}

// Bytes queued before the conn is registered (written in OnOpen, or by
// another goroutine while Add runs) are flushed once it is.
func TestWriteBeforeRegistration(t *testing.T) {
	const total = 8 << 20 // more than loopback's socket buffers
	want := make([]byte, total)
	pattern(want, 0)
	p, ln := pollerAndListener(t, Config{
		Loops:          1,
		MaxWriteBuffer: 2 * total,
		OnOpen: func(c *Conn) {
			if _, err := c.Write(want); err != nil {
				t.Errorf("Write in OnOpen: %v", err)
			}
		},
		OnData:  func(*Conn, []byte) {},
		OnClose: func(*Conn, error) {},
	})
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	c := acceptAdd(t, p, ln)
	if queued(c) == 0 {
		t.Fatal("nothing was queued: the test does not test anything")
	}
	if i := firstDiff(readN(t, peer, total), want); i >= 0 {
		t.Fatalf("byte %d differs", i)
	}
}
