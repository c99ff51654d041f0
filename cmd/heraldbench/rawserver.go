package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// rawServer is `heraldbench rawserver`, one process of the raw writer: it
// accepts connections from the workers and, on command, writes the same
// pre-encoded bytes to every one of them. One process cannot hold 150,000
// sockets (20,000 open files per process), so a run against G gateway
// processes uses G raw servers, each with its share of the connections:
// herald and the raw writer then hold the same connections in the same
// number of server processes.
//
// Commands (one JSON line each on stdin, one reply event on stdout):
// listen (reply "listening" with Addr), count (reply "count": connections
// accepted so far), write (Frame written Passes times to every connection
// by 2 goroutines; reply "written" with the elapsed time and the failed
// writes), quit.
type rawServer struct {
	out *json.Encoder

	mu    sync.Mutex
	ln    net.Listener
	conns []net.Conn
}

// rawWriters is the number of goroutines writing to the connections, as in
// the one-process raw writer before it.
const rawWriters = 2

func runRawServer(ctx context.Context, in io.Reader, out io.Writer) error {
	s := &rawServer{out: json.NewEncoder(out)}
	defer s.close()
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var cmd Command
		if err := json.Unmarshal(sc.Bytes(), &cmd); err != nil {
			_ = s.out.Encode(Event{Ev: "error", Err: "bad command: " + err.Error()})
			continue
		}
		var ev Event
		switch cmd.Op {
		case "listen":
			ev = s.listen(ctx)
		case "count":
			ev = Event{Ev: "count", Connected: s.count()}
		case "write":
			ev = s.write(cmd.Frame, max(cmd.Passes, 1))
		case "quit":
			_ = s.out.Encode(Event{Ev: "bye"})
			return nil
		default:
			ev = Event{Ev: "error", Err: "unknown op " + cmd.Op}
		}
		_ = s.out.Encode(ev)
	}
	return sc.Err()
}

func (s *rawServer) listen(ctx context.Context) Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		return Event{Ev: "listening", Addr: s.ln.Addr().String()}
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return Event{Ev: "error", Err: err.Error()}
	}
	s.ln = ln
	go s.accept(ln)
	return Event{Ev: "listening", Addr: ln.Addr().String()}
}

func (s *rawServer) accept(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns = append(s.conns, c)
		s.mu.Unlock()
	}
}

func (s *rawServer) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// write writes buf passes times to every connection accepted so far.
func (s *rawServer) write(buf []byte, passes int) Event {
	if len(buf) == 0 {
		return Event{Ev: "error", Err: "write: empty frame"}
	}
	s.mu.Lock()
	all := append([]net.Conn(nil), s.conns...)
	s.mu.Unlock()
	start := time.Now()
	var failed atomic.Int64
	var firstErr atomic.Value
	for range passes {
		var wg sync.WaitGroup
		for w := range rawWriters {
			wg.Go(func() {
				for i := w; i < len(all); i += rawWriters {
					if _, err := all[i].Write(buf); err != nil {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
					}
				}
			})
		}
		wg.Wait()
	}
	ev := Event{Ev: "written", Connected: len(all), Failed: int(failed.Load()), ElapsedNs: int64(time.Since(start))}
	if e, _ := firstErr.Load().(string); e != "" {
		ev.Err = e
	}
	return ev
}

func (s *rawServer) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		s.ln.Close()
	}
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
}

// rawServerMain is the entry point of `heraldbench rawserver`.
func rawServerMain(ctx context.Context) int {
	if err := runRawServer(ctx, os.Stdin, os.Stdout); err != nil && !errors.Is(err, io.EOF) {
		fmt.Fprintln(os.Stderr, "heraldbench rawserver:", err)
		return 1
	}
	return 0
}

// rawServers is the controller's side of the G raw server processes.
type rawServers struct {
	f     *fleet
	addrs []string
}

// startRawServers starts g raw server processes and has each listen.
func startRawServers(ctx context.Context, g int) (*rawServers, error) {
	f, err := startProcs(ctx, g, roleRawServer)
	if err != nil {
		return nil, err
	}
	evs, err := f.same(ctx, Command{Op: "listen"})
	if err != nil {
		f.stop()
		return nil, fmt.Errorf("raw servers listen: %w", err)
	}
	rs := &rawServers{f: f}
	for _, ev := range evs {
		rs.addrs = append(rs.addrs, ev.Addr)
	}
	return rs, nil
}

// count is the number of connections the raw servers accepted, in total.
func (rs *rawServers) count(ctx context.Context) (int, error) {
	evs, err := rs.f.same(ctx, Command{Op: "count"})
	n := 0
	for _, ev := range evs {
		n += ev.Connected
	}
	return n, err
}

// waitCount polls until the raw servers accepted n connections or within passed.
func (rs *rawServers) waitCount(ctx context.Context, n int, within time.Duration) (int, error) {
	deadline := time.Now().Add(within)
	for {
		got, err := rs.count(ctx)
		if err != nil || got >= n || time.Now().After(deadline) {
			return got, err
		}
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			return got, ctx.Err()
		}
	}
}

// write has every raw server write buf passes times to each of its
// connections, all servers at once; it returns when the last is done.
func (rs *rawServers) write(ctx context.Context, buf []byte, passes int) error {
	evs, err := rs.f.same(ctx, Command{Op: "write", Frame: buf, Passes: passes})
	if err != nil {
		return err
	}
	for _, ev := range evs {
		if ev.Failed > 0 {
			return fmt.Errorf("raw write: %d writes failed, first: %s", ev.Failed, ev.Err)
		}
	}
	return nil
}

func (rs *rawServers) stop() { rs.f.stop() }
