package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
	"google.golang.org/protobuf/proto"
)

// The controller drives each worker process over its stdin (one JSON command
// a line) and reads JSON events from its stdout. Every command gets exactly
// one reply event; "progress" events may come in between.

// Device is a registered device.
type Device struct {
	ID    string `json:"id"`
	Token string `json:"token"`
}

// Command is one controller -> worker request.
type Command struct {
	Op string `json:"op"` // worker: connect, stats, reset, churn, pings, quit; rawserver: listen, count, write, quit
	// Gateways are the addresses to dial: device i (global index) dials
	// Gateways[i mod len(Gateways)].
	Gateways    []string `json:"gateways,omitempty"`
	AppKey      string   `json:"app_key,omitempty"`
	Devices     []Device `json:"devices,omitempty"`
	FirstIndex  int      `json:"first_index,omitempty"` // global index of Devices[0], picks the source address
	Raw         bool     `json:"raw,omitempty"`         // connect without a handshake (raw fan-out baseline)
	Concurrency int      `json:"concurrency,omitempty"`
	PingEvery   Duration `json:"ping_every,omitempty"`
	PingAligned bool     `json:"ping_aligned,omitempty"` // every device pings at the same instants
	Duration    Duration `json:"duration,omitempty"`
	Pause       bool     `json:"pause,omitempty"`  // pings: stop (true) or restart (false) the heartbeats
	Frame       []byte   `json:"frame,omitempty"`  // rawserver write: the bytes written to every connection
	Passes      int      `json:"passes,omitempty"` // rawserver write: how many times (default 1)
}

// Event is one worker -> controller message.
type Event struct {
	Ev         string             `json:"ev"`             // progress, connected, stats, churned, error, bye; rawserver: listening, count, written
	Addr       string             `json:"addr,omitempty"` // rawserver listening: its address
	Connected  int                `json:"connected"`
	Failed     int                `json:"failed,omitempty"`
	Err        string             `json:"err,omitempty"`
	ElapsedNs  int64              `json:"elapsed_ns,omitempty"`
	Handshakes uint64             `json:"handshakes,omitempty"`
	Received   uint64             `json:"received,omitempty"`
	Unique     uint64             `json:"unique,omitempty"`
	Closed     uint64             `json:"closed,omitempty"`       // connections the server ended
	Pings      uint64             `json:"pings,omitempty"`        // PINGs written since the last reset
	WriteErrs  uint64             `json:"write_errors,omitempty"` // failed device writes since the worker started
	Latency    *Histogram         `json:"latency,omitempty"`
	Rounds     map[string]RoundAt `json:"rounds,omitempty"`
}

// RoundAt is what a worker saw of one fan-out round.
type RoundAt struct {
	Count    int   `json:"count"`
	LastNano int64 `json:"last_ns"`
}

// Duration is a time.Duration that reads and writes as a Go duration string.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	*d = Duration(v)
	return err
}

// sourceAddr spreads connections over 127.0.0.2..254 so no single source
// address runs out of ephemeral ports (TIME_WAIT during churn included).
func sourceAddr(index int) *net.TCPAddr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+index%253))}
}

// gatewayFor is the address device index dials: gateways are taken in
// turn, so G gateway processes each hold N/G of the devices (±1).
func gatewayFor(gateways []string, index int) string {
	if len(gateways) == 0 {
		return ""
	}
	return gateways[index%len(gateways)]
}

// worker holds this process's device connections and what they received.
type worker struct {
	out   *json.Encoder
	outMu sync.Mutex

	mu       sync.Mutex
	conns    []*devConn
	seen     Bitset
	received uint64
	latency  Histogram
	rounds   map[string]*RoundAt

	handshakes atomic.Uint64
	closed     atomic.Uint64
	pings      atomic.Uint64
	writeErrs  atomic.Uint64 // failed PING, PONG and ACK writes, never reset
	paused     atomic.Bool
}

type devConn struct {
	w      *worker
	dev    Device
	index  int
	gw     string
	appKey string
	raw    bool
	every  time.Duration
	align  bool

	mu      sync.Mutex // guards conn writes and conn replacement
	conn    net.Conn
	timer   *time.Timer
	skipped bool // a ping fell due while pings were paused
}

// runWorker is `heraldbench worker`: it serves commands until stdin closes
// or "quit" arrives, then closes every connection.
func runWorker(ctx context.Context, in io.Reader, out io.Writer) error {
	w := &worker{out: json.NewEncoder(out), rounds: map[string]*RoundAt{}}
	defer w.closeAll()
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var cmd Command
		if err := json.Unmarshal(sc.Bytes(), &cmd); err != nil {
			w.emit(Event{Ev: "error", Err: "bad command: " + err.Error()})
			continue
		}
		switch cmd.Op {
		case "connect":
			w.emit(w.connect(ctx, cmd))
		case "stats":
			w.emit(w.stats())
		case "reset":
			w.reset()
			w.emit(Event{Ev: "reset"})
		case "churn":
			w.emit(w.churn(ctx, cmd))
		case "pings":
			w.setPaused(cmd.Pause)
			w.emit(Event{Ev: "pings"})
		case "quit":
			w.emit(Event{Ev: "bye"})
			return nil
		default:
			w.emit(Event{Ev: "error", Err: "unknown op " + cmd.Op})
		}
	}
	return sc.Err()
}

func (w *worker) emit(ev Event) {
	w.outMu.Lock()
	defer w.outMu.Unlock()
	_ = w.out.Encode(ev)
}

func (w *worker) live() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, c := range w.conns {
		c.mu.Lock()
		if c.conn != nil {
			n++
		}
		c.mu.Unlock()
	}
	return n
}

// connect opens a connection for each device of cmd, cmd.Concurrency at a time.
func (w *worker) connect(ctx context.Context, cmd Command) Event {
	start := time.Now()
	conc := max(cmd.Concurrency, 1)
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	jobs := make(chan *devConn)
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for c := range jobs {
				if err := c.dial(ctx); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				ok.Add(1)
			}
		})
	}
	stop := make(chan struct{})
	progress := sync.WaitGroup{}
	progress.Go(func() {
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				w.emit(Event{Ev: "progress", Connected: int(ok.Load()), Failed: int(failed.Load())})
			}
		}
	})
	for i, d := range cmd.Devices {
		c := &devConn{w: w, dev: d, index: cmd.FirstIndex + i, gw: gatewayFor(cmd.Gateways, cmd.FirstIndex+i), appKey: cmd.AppKey, raw: cmd.Raw, every: time.Duration(cmd.PingEvery), align: cmd.PingAligned}
		w.mu.Lock()
		w.conns = append(w.conns, c)
		w.mu.Unlock()
		select {
		case jobs <- c:
		case <-ctx.Done():
		}
	}
	close(jobs)
	wg.Wait()
	close(stop)
	progress.Wait()
	ev := Event{Ev: "connected", Connected: int(ok.Load()), Failed: int(failed.Load()), ElapsedNs: int64(time.Since(start))}
	if e, _ := firstErr.Load().(string); e != "" {
		ev.Err = e
	}
	return ev
}

// dial connects and, unless raw, completes the handshake; then it starts
// the reader and the heartbeat.
func (c *devConn) dial(ctx context.Context) error {
	d := net.Dialer{LocalAddr: sourceAddr(c.index), Timeout: 10 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", c.gw)
	if err != nil {
		return fmt.Errorf("dial %s: %w", c.dev.ID, err)
	}
	rd := frame.NewReader(conn, frame.DefaultMaxFrame)
	if !c.raw {
		hb := uint32(30)
		if c.every > 0 {
			hb = uint32(max(c.every/time.Second, 1))
		}
		buf, err := frame.AppendMessage(nil, frame.TypeConnect, &devicev1.Connect{
			ProtocolVersion: frame.ProtocolVersion, AppKey: c.appKey, DeviceId: c.dev.ID,
			DeviceToken: c.dev.Token, HeartbeatSeconds: hb, ClientVersion: "heraldbench",
		})
		if err == nil {
			_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
			_, err = conn.Write(buf)
		}
		if err != nil {
			conn.Close()
			return fmt.Errorf("connect %s: %w", c.dev.ID, err)
		}
		f, err := rd.Next()
		if err != nil {
			conn.Close()
			return fmt.Errorf("connack %s: %w", c.dev.ID, err)
		}
		if f.Type != frame.TypeConnAck {
			var dis devicev1.Disconnect
			_ = proto.Unmarshal(f.Body, &dis)
			conn.Close()
			return fmt.Errorf("connect %s: got %s code %d %q", c.dev.ID, f.Type, dis.GetCode(), dis.GetReason())
		}
		_ = conn.SetDeadline(time.Time{})
		c.w.handshakes.Add(1)
	}
	c.mu.Lock()
	c.conn = conn
	if c.every > 0 && !c.raw && c.timer == nil {
		// A random phase spreads the fleet's heartbeats evenly over the
		// interval; aligned, every device pings at the next multiple of it.
		first := rand.N(c.every)
		if c.align {
			now := time.Now()
			first = now.Truncate(c.every).Add(c.every).Sub(now)
		}
		c.timer = time.AfterFunc(first, c.ping)
	}
	c.mu.Unlock()
	go c.read(conn, rd)
	return nil
}

func (c *devConn) ping() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.w.paused.Load() {
		c.skipped = true // the timer stays stopped until setPaused(false)
		return
	}
	if c.conn != nil {
		_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.conn.Write(frame.Ping); err != nil {
			c.w.writeErrs.Add(1)
		}
		c.w.pings.Add(1)
	}
	if c.timer != nil {
		c.timer.Reset(c.every)
	}
}

// read consumes server frames until the connection ends, acking every PUSH.
func (c *devConn) read(conn net.Conn, rd *frame.Reader) {
	var push devicev1.Push
	var ack []byte
	for {
		f, err := rd.Next()
		if err != nil {
			break
		}
		switch f.Type {
		case frame.TypePush:
			now := time.Now()
			push.Reset()
			if err := proto.Unmarshal(f.Body, &push); err != nil {
				continue
			}
			c.w.record(push.GetData(), now)
			ack, _ = frame.AppendMessage(ack[:0], frame.TypeAck, &devicev1.Ack{MessageIds: []string{push.GetMessageId()}})
			c.mu.Lock()
			if c.conn == conn {
				// Every write sets its own deadline: ping's would otherwise
				// still apply, and 5 s after a device's first PING every
				// ACK would fail with a timeout (the server then redelivers).
				_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
				if _, err := conn.Write(ack); err != nil {
					c.w.writeErrs.Add(1)
				}
			}
			c.mu.Unlock()
		case frame.TypePing:
			c.mu.Lock()
			_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := conn.Write(frame.Pong); err != nil {
				c.w.writeErrs.Add(1)
			}
			c.mu.Unlock()
		case frame.TypeDisconnect:
			c.w.closed.Add(1)
		}
	}
	c.mu.Lock()
	if c.conn == conn {
		c.conn = nil
	}
	c.mu.Unlock()
	conn.Close()
}

// record notes one received message: its sequence number ("s"), send time
// in Unix nanoseconds ("t") and, for fan-out, its round ("r").
func (w *worker) record(data map[string]string, now time.Time) {
	seq, errS := strconv.ParseUint(data["s"], 10, 64)
	sent, errT := strconv.ParseInt(data["t"], 10, 64)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.received++
	if errS == nil && !w.seen.Set(seq) {
		return // a redelivery: counted in received, not in latency
	}
	if errT == nil {
		w.latency.Record(now.Sub(time.Unix(0, sent)))
	}
	if r := data["r"]; r != "" {
		ra := w.rounds[r]
		if ra == nil {
			ra = &RoundAt{}
			w.rounds[r] = ra
		}
		ra.Count++
		ra.LastNano = max(ra.LastNano, now.UnixNano())
	}
}

func (w *worker) stats() Event {
	live := w.live()
	w.mu.Lock()
	defer w.mu.Unlock()
	h := Histogram{Counts: append([]uint64(nil), w.latency.Counts...)}
	rounds := make(map[string]RoundAt, len(w.rounds))
	for k, v := range w.rounds {
		rounds[k] = *v
	}
	return Event{Ev: "stats", Connected: live, Handshakes: w.handshakes.Load(), Received: w.received,
		Unique: w.seen.Count(), Closed: w.closed.Load(), Pings: w.pings.Load(), WriteErrs: w.writeErrs.Load(), Latency: &h, Rounds: rounds}
}

// setPaused stops or restarts the heartbeats. Devices whose ping fell due
// during the pause ping within the next second (the gateway closes a
// session 1.5 intervals after its last frame, so a pause must stay well
// under half an interval); the others keep their phase.
func (w *worker) setPaused(pause bool) {
	w.paused.Store(pause)
	if pause {
		return
	}
	w.mu.Lock()
	conns := append([]*devConn(nil), w.conns...)
	w.mu.Unlock()
	for _, c := range conns {
		c.mu.Lock()
		if c.skipped && c.timer != nil {
			c.skipped = false
			c.timer.Reset(rand.N(time.Second))
		}
		c.mu.Unlock()
	}
}

func (w *worker) reset() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.seen = Bitset{}
	w.received = 0
	w.latency = Histogram{}
	w.rounds = map[string]*RoundAt{}
	w.handshakes.Store(0)
	w.closed.Store(0)
	w.pings.Store(0)
}

// churn closes and reopens connections, cmd.Concurrency at a time, for
// cmd.Duration: a reconnect storm. Every connection is open again at the end.
func (w *worker) churn(ctx context.Context, cmd Command) Event {
	w.mu.Lock()
	conns := append([]*devConn(nil), w.conns...)
	w.mu.Unlock()
	if len(conns) == 0 {
		return Event{Ev: "churned"}
	}
	before := w.handshakes.Load()
	start := time.Now()
	deadline := start.Add(time.Duration(cmd.Duration))
	var failed atomic.Int64
	var next atomic.Int64
	var wg sync.WaitGroup
	for range max(cmd.Concurrency, 1) {
		wg.Go(func() {
			for time.Now().Before(deadline) && ctx.Err() == nil {
				c := conns[int(next.Add(1)-1)%len(conns)]
				c.mu.Lock()
				old := c.conn
				c.conn = nil
				c.mu.Unlock()
				if old != nil {
					old.Close()
				}
				if err := c.dial(ctx); err != nil {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	// Reconnect whatever a failure left closed, so no device stays offline.
	for _, c := range conns {
		c.mu.Lock()
		down := c.conn == nil
		c.mu.Unlock()
		if down {
			if err := c.dial(ctx); err != nil {
				failed.Add(1)
			}
		}
	}
	return Event{Ev: "churned", Handshakes: w.handshakes.Load() - before, Failed: int(failed.Load()), ElapsedNs: int64(elapsed), Connected: w.live()}
}

func (w *worker) closeAll() {
	w.mu.Lock()
	conns := w.conns
	w.conns = nil
	w.mu.Unlock()
	for _, c := range conns {
		c.mu.Lock()
		if c.timer != nil {
			c.timer.Stop()
		}
		if c.conn != nil {
			c.conn.Close()
			c.conn = nil
		}
		c.mu.Unlock()
	}
}

// workerMain is the entry point of `heraldbench worker`.
func workerMain(ctx context.Context) int {
	if err := runWorker(ctx, os.Stdin, os.Stdout); err != nil && !errors.Is(err, io.EOF) {
		fmt.Fprintln(os.Stderr, "heraldbench worker:", err)
		return 1
	}
	return 0
}
