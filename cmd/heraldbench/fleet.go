package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"time"
)

// workerEnv makes the test binary act as a worker or raw server (see
// TestMain: its value is the role); the real binary is re-executed as
// `heraldbench worker` or `heraldbench rawserver`.
const workerEnv = "HERALDBENCH_ROLE"

// The roles a heraldbench process is re-executed in.
const (
	roleWorker    = "worker"    // holds device connections (worker.go)
	roleRawServer = "rawserver" // the raw writer: accepts connections, writes on command (rawserver.go)
)

// fleet is the controller's view of its worker (or raw server) processes.
type fleet struct {
	procs    []*workerProc
	progress func(connected, failed int)
}

type workerProc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	events chan Event
	done   chan error

	mu       sync.Mutex
	progress Event
}

// startFleet starts n worker processes.
func startFleet(ctx context.Context, n int) (*fleet, error) {
	return startProcs(ctx, n, roleWorker)
}

// startProcs starts n processes of this executable in role.
func startProcs(ctx context.Context, n int, role string) (*fleet, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find own executable: %w", err)
	}
	f := &fleet{}
	for range n {
		cmd := exec.CommandContext(ctx, exe, role)
		cmd.Env = append(os.Environ(), workerEnv+"="+role)
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			f.stop()
			return nil, err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			f.stop()
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			f.stop()
			return nil, fmt.Errorf("start %s: %w", role, err)
		}
		p := &workerProc{cmd: cmd, stdin: stdin, events: make(chan Event, 16), done: make(chan error, 1)}
		go p.readEvents(stdout)
		f.procs = append(f.procs, p)
	}
	return f, nil
}

func (p *workerProc) readEvents(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var ev Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			continue
		}
		if ev.Ev == "progress" {
			p.mu.Lock()
			p.progress = ev
			p.mu.Unlock()
			continue
		}
		p.events <- ev
	}
	close(p.events)
	p.done <- p.cmd.Wait()
}

// call sends one command and waits for its reply.
func (p *workerProc) call(ctx context.Context, cmd Command) (Event, error) {
	raw, err := json.Marshal(cmd)
	if err != nil {
		return Event{}, err
	}
	if _, err := p.stdin.Write(append(raw, '\n')); err != nil {
		return Event{}, fmt.Errorf("worker %s: %w", cmd.Op, err)
	}
	select {
	case ev, ok := <-p.events:
		if !ok {
			return Event{}, errors.New("worker exited")
		}
		if ev.Ev == "error" {
			return ev, fmt.Errorf("worker: %s", ev.Err)
		}
		return ev, nil
	case <-ctx.Done():
		return Event{}, ctx.Err()
	}
}

// all sends cmds[i] to worker i in parallel and returns the replies in order.
func (f *fleet) all(ctx context.Context, cmds []Command) ([]Event, error) {
	evs := make([]Event, len(f.procs))
	errs := make([]error, len(f.procs))
	var wg sync.WaitGroup
	for i, p := range f.procs {
		wg.Go(func() { evs[i], errs[i] = p.call(ctx, cmds[i]) })
	}
	stop := make(chan struct{})
	var pw sync.WaitGroup
	if f.progress != nil && len(cmds) > 0 && cmds[0].Op == "connect" {
		pw.Go(func() {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					c, fl := 0, 0
					for _, p := range f.procs {
						p.mu.Lock()
						c += p.progress.Connected
						fl += p.progress.Failed
						p.mu.Unlock()
					}
					f.progress(c, fl)
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	pw.Wait()
	for _, p := range f.procs {
		p.mu.Lock()
		p.progress = Event{}
		p.mu.Unlock()
	}
	return evs, errors.Join(errs...)
}

// same sends one command to every worker.
func (f *fleet) same(ctx context.Context, cmd Command) ([]Event, error) {
	cmds := make([]Command, len(f.procs))
	for i := range cmds {
		cmds[i] = cmd
	}
	return f.all(ctx, cmds)
}

// total is the fleet-wide sum of a stats reply.
type total struct {
	Connected  int
	Handshakes uint64
	Received   uint64
	Unique     uint64
	Closed     uint64
	Pings      uint64
	WriteErrs  uint64
	Latency    Histogram
	Rounds     map[string]RoundAt
}

func (f *fleet) stats(ctx context.Context) (total, error) {
	evs, err := f.same(ctx, Command{Op: "stats"})
	if err != nil {
		return total{}, err
	}
	t := total{Rounds: map[string]RoundAt{}}
	for _, ev := range evs {
		t.Connected += ev.Connected
		t.Handshakes += ev.Handshakes
		t.Received += ev.Received
		t.Unique += ev.Unique
		t.Closed += ev.Closed
		t.Pings += ev.Pings
		t.WriteErrs += ev.WriteErrs
		if ev.Latency != nil {
			t.Latency.Merge(*ev.Latency)
		}
		for k, v := range ev.Rounds {
			r := t.Rounds[k]
			r.Count += v.Count
			r.LastNano = max(r.LastNano, v.LastNano)
			t.Rounds[k] = r
		}
	}
	return t, nil
}

// pids are the fleet's process ids.
func (f *fleet) pids() []int {
	out := make([]int, len(f.procs))
	for i, p := range f.procs {
		out[i] = p.cmd.Process.Pid
	}
	return out
}

// cpuSeconds is the fleet's CPU time so far (utime + stime).
func (f *fleet) cpuSeconds() float64 {
	var sum float64
	for _, p := range f.procs {
		if s, err := sampleProc(p.cmd.Process.Pid); err == nil {
			sum += s.CPUSeconds
		}
	}
	return sum
}

// stop asks every worker to quit (closing its connections) and waits a
// bounded time before killing it.
func (f *fleet) stop() {
	for _, p := range f.procs {
		_ = p.stdin.Close()
	}
	for _, p := range f.procs {
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	f.procs = nil
}
