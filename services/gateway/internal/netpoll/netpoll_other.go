//go:build !linux

package netpoll

import "net"

// Poller is unavailable on this system: New fails.
type Poller struct{}

// Conn is unavailable on this system.
type Conn struct {
	laddr, raddr net.Addr
	session      any
}

// New returns ErrUnsupported.
func New(Config) (*Poller, error) { return nil, ErrUnsupported }

// Add returns ErrUnsupported.
func (p *Poller) Add(nc net.Conn) (*Conn, error) {
	_ = nc.Close()
	return nil, ErrUnsupported
}

// Stop does nothing.
func (p *Poller) Stop() {}

// Write returns net.ErrClosed.
func (c *Conn) Write([]byte) (int, error) { return 0, net.ErrClosed }

// Close returns net.ErrClosed.
func (c *Conn) Close() error { return net.ErrClosed }
