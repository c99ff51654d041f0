package e2e

import (
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
)

// chaosProxy forwards TCP connections to a gateway and can cut them
// abruptly, the way a mobile network drops a device mid-stream: no
// DISCONNECT, no final acks.
type chaosProxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	conns map[net.Conn]net.Conn // client side -> server side
}

func startProxy(t testing.TB, target string) *chaosProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &chaosProxy{ln: ln, target: target, conns: make(map[net.Conn]net.Conn)}
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.cutAll()
	})
	return p
}

func (p *chaosProxy) addr() string { return p.ln.Addr().String() }

func (p *chaosProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c] = s
		p.mu.Unlock()
		go func() {
			_, _ = io.Copy(s, c)
			p.cut(c)
		}()
		go func() {
			_, _ = io.Copy(c, s)
			p.cut(c)
		}()
	}
}

func (p *chaosProxy) cut(c net.Conn) {
	p.mu.Lock()
	s, ok := p.conns[c]
	delete(p.conns, c)
	p.mu.Unlock()
	if ok {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // RST, like a dead radio link
		}
		c.Close()
		s.Close()
	}
}

// cutRandom drops one random live connection; it reports whether there was one.
func (p *chaosProxy) cutRandom() bool {
	p.mu.Lock()
	var victim net.Conn
	n := rand.IntN(len(p.conns) + 1)
	for c := range p.conns {
		victim = c
		if n--; n <= 0 {
			break
		}
	}
	p.mu.Unlock()
	if victim == nil {
		return false
	}
	p.cut(victim)
	return true
}

func (p *chaosProxy) cutAll() {
	p.mu.Lock()
	all := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		all = append(all, c)
	}
	p.mu.Unlock()
	for _, c := range all {
		p.cut(c)
	}
}
