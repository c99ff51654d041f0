package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
)

// options are the knobs of one session.
type options struct {
	Steps        []int // connect: N values; the largest is used by every mode
	PerWorker    int
	Concurrency  int // dials in flight per worker
	RegisterConc int
	PingEvery    time.Duration
	HBWindow     time.Duration
	Repeats      int
	Rates        []float64 // unicast target rates; 0 = flat out
	UnicastFor   time.Duration
	Senders      int
	ChurnFor     time.Duration
	ChurnRate    float64 // messages/s sent during the churn
	DeliverWait  time.Duration
}

// bench is one session: a target, its registered devices and the workers.
type bench struct {
	opt   options
	tgt   *target
	app   appCreds
	devs  []Device
	fleet *fleet
	snd   *sender
	res   *Result
	log   io.Writer
	conn  int // devices connected so far (a prefix of devs)
	seq   atomic.Uint64
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.log, "heraldbench: "+format+"\n", args...)
}

func (b *bench) maxN() int {
	n := 0
	for _, s := range b.opt.Steps {
		n = max(n, s)
	}
	return n
}

func workersFor(n, perWorker int) int {
	return max(1, (n+perWorker-1)/perWorker)
}

// setup creates the app, registers the devices and starts the workers.
func (b *bench) setup(ctx context.Context) error {
	rest := newREST(b.tgt.API)
	app, err := rest.createApp(ctx, b.tgt.Admin, fmt.Sprintf("heraldbench-%d", time.Now().UnixNano()))
	if err != nil {
		return fmt.Errorf("create app: %w", err)
	}
	b.app = app
	n := b.maxN()
	start := time.Now()
	b.devs, err = rest.registerDevices(ctx, app, n, b.opt.RegisterConc, func(done int) {
		b.logf("registering devices: %d/%d", done, n)
	})
	if err != nil {
		return fmt.Errorf("register devices: %w", err)
	}
	b.logf("registered %d devices in %.1fs", n, time.Since(start).Seconds())
	b.snd, err = newSender(b.tgt.GRPC, app)
	if err != nil {
		return err
	}
	return b.startFleet(ctx, workersFor(n, b.opt.PerWorker))
}

func (b *bench) startFleet(ctx context.Context, workers int) error {
	f, err := startFleet(ctx, workers)
	if err != nil {
		return err
	}
	f.progress = func(c, failed int) { b.logf("connecting: %d connected, %d failed", c, failed) }
	b.fleet = f
	b.res.Workers = workers
	b.conn = 0
	return nil
}

func (b *bench) close() {
	if b.fleet != nil {
		b.fleet.stop()
	}
	if b.snd != nil {
		b.snd.close()
	}
}

// connectTo connects devices [b.conn, n) spread evenly over the workers.
func (b *bench) connectTo(ctx context.Context, n int, gateway string, raw bool) (ConnectStep, error) {
	lo := b.conn
	w := len(b.fleet.procs)
	cmds := make([]Command, w)
	for i := range w {
		a, z := lo+(n-lo)*i/w, lo+(n-lo)*(i+1)/w
		cmds[i] = Command{Op: "connect", Gateway: gateway, AppKey: b.app.Key, Devices: b.devs[a:z], FirstIndex: a,
			Raw: raw, Concurrency: b.opt.Concurrency, PingEvery: Duration(b.opt.PingEvery)}
	}
	start := time.Now()
	evs, err := b.fleet.all(ctx, cmds)
	el := time.Since(start)
	step := ConnectStep{N: n, RampSeconds: el.Seconds()}
	var firstErr string
	for _, ev := range evs {
		step.Connected += ev.Connected
		step.Failed += ev.Failed
		if firstErr == "" {
			firstErr = ev.Err
		}
	}
	if el > 0 {
		step.HandshakesPerS = float64(step.Connected) / el.Seconds()
	}
	step.Connected += lo
	b.conn = n
	if step.Failed > 0 {
		b.res.Problems = append(b.res.Problems, fmt.Sprintf("connect to %d: %d dials failed, first: %s", n, step.Failed, firstErr))
	}
	return step, err
}

// settle waits until the server's RSS stops moving (or 10 s) and returns the last sample.
func (b *bench) settle(ctx context.Context) (procSample, error) {
	prev, err := sampleProc(b.tgt.PID)
	if err != nil {
		return prev, err
	}
	for range 10 {
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
			return prev, ctx.Err()
		}
		cur, err := sampleProc(b.tgt.PID)
		if err != nil {
			return prev, err
		}
		d := cur.RSSBytes - prev.RSSBytes
		prev = cur
		if d < cur.RSSBytes/200 && d > -cur.RSSBytes/200 {
			break
		}
	}
	return prev, nil
}

// cpuOver returns the server's CPU use over window, in % of one core.
func (b *bench) cpuOver(ctx context.Context, window time.Duration) (float64, error) {
	s0, err := sampleProc(b.tgt.PID)
	if err != nil {
		return 0, err
	}
	select {
	case <-time.After(window):
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	s1, err := sampleProc(b.tgt.PID)
	if err != nil {
		return 0, err
	}
	return 100 * (s1.CPUSeconds - s0.CPUSeconds) / window.Seconds(), nil
}

// runConnect measures RSS at each N and the heartbeat CPU at the largest.
func (b *bench) runConnect(ctx context.Context) error {
	res := &ConnectResult{}
	b.res.Connect = res
	base, err := b.settle(ctx)
	if err != nil {
		return err
	}
	res.Baseline = base
	hb := &HeartbeatResult{Every: b.opt.PingEvery.String(), Window: b.opt.HBWindow.String()}
	b.logf("measuring idle server CPU for %s", b.opt.HBWindow)
	if hb.IdleCPUPct, err = b.cpuOver(ctx, b.opt.HBWindow); err != nil {
		return err
	}
	xs, rss, kern := []float64{0}, []float64{float64(base.RSSBytes)}, []float64{float64(base.TCPMem)}
	for _, n := range b.opt.Steps {
		if n <= b.conn {
			continue
		}
		step, err := b.connectTo(ctx, n, b.tgt.Gateway, false)
		if err != nil {
			return err
		}
		if step.Server, err = b.settle(ctx); err != nil {
			return err
		}
		b.logf("connect: %d connected (%.0f handshakes/s), server RSS %s", step.Connected, step.HandshakesPerS, mib(float64(step.Server.RSSBytes)))
		res.Steps = append(res.Steps, step)
		xs = append(xs, float64(step.Connected))
		rss = append(rss, float64(step.Server.RSSBytes))
		kern = append(kern, float64(step.Server.TCPMem))
	}
	// Fit over the steps only when there are two: the first connections also
	// grow pools that stay, which the N=0 point would charge to the slope.
	from := 0
	if len(xs) >= 3 {
		from = 1
	}
	if f, err := FitLine(xs[from:], rss[from:]); err == nil {
		res.BytesPerConn = f.Slope
		res.Projection1MBytes = float64(base.RSSBytes) + f.Slope*1e6
	}
	if f, err := FitLine(xs[from:], kern[from:]); err == nil {
		res.KernelBytesPerConn = f.Slope
	}
	hb.N = b.conn
	b.logf("measuring server CPU with %d sessions pinging every %s for %s", hb.N, b.opt.PingEvery, b.opt.HBWindow)
	if hb.LoadedCPUPct, err = b.cpuOver(ctx, b.opt.HBWindow); err != nil {
		return err
	}
	hb.HeartbeatPct = hb.LoadedCPUPct - hb.IdleCPUPct
	res.Heartbeat = hb
	return nil
}

// ensureConnected connects every device if the connect run did not.
func (b *bench) ensureConnected(ctx context.Context) error {
	if n := b.maxN(); b.conn < n {
		if _, err := b.connectTo(ctx, n, b.tgt.Gateway, false); err != nil {
			return err
		}
	}
	return nil
}

// waitFor polls the workers until cond holds or within passes.
func (b *bench) waitFor(ctx context.Context, within time.Duration, cond func(total) bool) (total, bool, error) {
	deadline := time.Now().Add(within)
	for {
		t, err := b.fleet.stats(ctx)
		if err != nil || cond(t) {
			return t, err == nil, err
		}
		if time.Now().After(deadline) {
			return t, false, nil
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return t, false, ctx.Err()
		}
	}
}

// runFanout sends one message to every connected device, Repeats times.
// There is no broadcast in herald yet: a round is ceil(N/1000) sends of
// 1000 device ids each (api.max_targets), all started at once.
func (b *bench) runFanout(ctx context.Context) error {
	if err := b.ensureConnected(ctx); err != nil {
		return err
	}
	n := b.conn
	ids := make([]string, n)
	for i := range n {
		ids[i] = b.devs[i].ID
	}
	res := &FanoutResult{N: n, Repeats: b.opt.Repeats, Method: fmt.Sprintf("%d sends of up to 1000 ids, no broadcast yet", (n+999)/1000)}
	b.res.Fanout = res
	if _, err := b.fleet.same(ctx, Command{Op: "reset"}); err != nil {
		return err
	}
	for r := range b.opt.Repeats {
		key := "f" + strconv.Itoa(r)
		t0 := time.Now()
		data := map[string]string{"r": key, "t": strconv.FormatInt(t0.UnixNano(), 10)}
		var wg sync.WaitGroup
		errs := make(chan error, (n+999)/1000)
		for lo := 0; lo < n; lo += 1000 {
			wg.Go(func() { errs <- b.snd.send(ctx, ids[lo:min(lo+1000, n)], data) })
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				return fmt.Errorf("fan-out send: %w", err)
			}
		}
		t, ok, err := b.waitFor(ctx, 30*time.Second, func(t total) bool { return t.Rounds[key].Count >= n })
		if err != nil {
			return err
		}
		if !ok {
			res.Incomplete++
			b.logf("fan-out round %d: only %d of %d received in 30s", r, t.Rounds[key].Count, n)
			continue
		}
		d := time.Duration(t.Rounds[key].LastNano - t0.UnixNano())
		res.RoundMs = append(res.RoundMs, ms(d))
		b.logf("fan-out round %d: %d devices in %.1f ms", r, n, ms(d))
	}
	finishFanout(res)
	return nil
}

func finishFanout(res *FanoutResult) {
	vals := append([]float64(nil), res.RoundMs...)
	res.P50Ms = Percentile(vals, 50)
	res.P90Ms = Percentile(vals, 90)
	if res.P50Ms > 0 {
		res.PerSecond = float64(res.N) / (res.P50Ms / 1000)
	}
}

// unicastLoad sends one-device messages until the deadline, at rate per
// second (0: as fast as senders allow). Payload: "s" sequence, "t" send
// time, "r" = key so the workers track the last arrival.
func (b *bench) unicastLoad(ctx context.Context, rate float64, d time.Duration, senders int, key string) (sent, errs uint64, elapsed time.Duration) {
	var nSent, nErr atomic.Uint64
	var k atomic.Uint64
	start := time.Now()
	end := start.Add(d)
	var wg sync.WaitGroup
	for range senders {
		wg.Go(func() {
			id := make([]string, 1)
			for ctx.Err() == nil {
				i := k.Add(1) - 1
				if rate > 0 {
					due := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
					if due.After(end) || time.Now().After(end) {
						return // a backlog the senders could not keep up with is dropped, not sent late
					}
					if w := time.Until(due); w > 0 {
						time.Sleep(w)
					}
				} else if time.Now().After(end) {
					return
				}
				seq := b.seq.Add(1)
				id[0] = b.devs[int(seq)%b.conn].ID
				data := map[string]string{"s": strconv.FormatUint(seq, 10), "r": key,
					"t": strconv.FormatInt(time.Now().UnixNano(), 10)}
				if err := b.snd.send(ctx, id, data); err != nil {
					nErr.Add(1)
					continue
				}
				nSent.Add(1)
			}
		})
	}
	wg.Wait()
	return nSent.Load(), nErr.Load(), time.Since(start)
}

// runUnicast runs one sustained unicast load per configured rate.
func (b *bench) runUnicast(ctx context.Context) error {
	if err := b.ensureConnected(ctx); err != nil {
		return err
	}
	for run, rate := range b.opt.Rates {
		key := "u" + strconv.Itoa(run)
		if _, err := b.fleet.same(ctx, Command{Op: "reset"}); err != nil {
			return err
		}
		s0, err := sampleProc(b.tgt.PID)
		if err != nil {
			return err
		}
		b.logf("unicast: %s at rate %.0f/s (0 = flat out), %d senders", b.opt.UnicastFor, rate, b.opt.Senders)
		start := time.Now()
		sent, sendErrs, el := b.unicastLoad(ctx, rate, b.opt.UnicastFor, b.opt.Senders, key)
		s1, err := sampleProc(b.tgt.PID)
		if err != nil {
			return err
		}
		// Rounds[key] counts distinct messages of this run only; Unique also
		// holds late arrivals of earlier runs.
		t, ok, err := b.waitFor(ctx, b.opt.DeliverWait, func(t total) bool { return uint64(t.Rounds[key].Count) >= sent })
		if err != nil {
			return err
		}
		u := UnicastResult{TargetRate: rate, Seconds: el.Seconds(), Senders: b.opt.Senders, Sent: sent, SendErrors: sendErrs,
			Delivered: uint64(t.Rounds[key].Count), Redelivered: t.Received - t.Unique, SentPerS: float64(sent) / el.Seconds(),
			P50Ms: ms(t.Latency.Quantile(0.50)), P99Ms: ms(t.Latency.Quantile(0.99)), P999Ms: ms(t.Latency.Quantile(0.999)),
			ServerCPUPct: 100 * (s1.CPUSeconds - s0.CPUSeconds) / el.Seconds(), DeliveryTimeout: !ok}
		if last := t.Rounds[key].LastNano; last > start.UnixNano() {
			u.DeliveredPerS = float64(u.Delivered) / time.Duration(last-start.UnixNano()).Seconds()
		}
		if !ok {
			b.res.Problems = append(b.res.Problems, fmt.Sprintf("unicast at %.0f/s: %d of %d delivered within %s", rate, u.Delivered, sent, b.opt.DeliverWait))
		}
		b.logf("unicast: sent %d (%.0f/s), delivered %d (%.0f/s), p50 %.2f ms p99 %.2f ms", sent, u.SentPerS, u.Delivered, u.DeliveredPerS, u.P50Ms, u.P99Ms)
		b.res.Unicast = append(b.res.Unicast, u)
	}
	return nil
}

// runChurn reconnects devices as fast as the workers can for ChurnFor
// while unicast messages flow, then checks that every message arrived.
func (b *bench) runChurn(ctx context.Context) error {
	if err := b.ensureConnected(ctx); err != nil {
		return err
	}
	if _, err := b.fleet.same(ctx, Command{Op: "reset"}); err != nil {
		return err
	}
	s0, err := sampleProc(b.tgt.PID)
	if err != nil {
		return err
	}
	b.logf("churn: reconnect storm of %d devices for %s with %.0f msg/s flowing", b.conn, b.opt.ChurnFor, b.opt.ChurnRate)
	var sent uint64
	var wg sync.WaitGroup
	wg.Go(func() {
		if b.opt.ChurnRate > 0 {
			sent, _, _ = b.unicastLoad(ctx, b.opt.ChurnRate, b.opt.ChurnFor, 16, "c")
		}
	})
	evs, err := b.fleet.same(ctx, Command{Op: "churn", Concurrency: b.opt.Concurrency, Duration: Duration(b.opt.ChurnFor)})
	wg.Wait()
	if err != nil {
		return err
	}
	s1, err := sampleProc(b.tgt.PID)
	if err != nil {
		return err
	}
	res := &ChurnResult{N: b.conn, MessagesSent: sent}
	var longest time.Duration
	for _, ev := range evs {
		res.Handshakes += ev.Handshakes
		res.Failed += ev.Failed
		longest = max(longest, time.Duration(ev.ElapsedNs))
	}
	res.Seconds = longest.Seconds()
	if longest > 0 {
		res.PerSecond = float64(res.Handshakes) / longest.Seconds()
		res.ServerCPUPct = 100 * (s1.CPUSeconds - s0.CPUSeconds) / longest.Seconds()
	}
	b.res.Churn = res
	// Rounds["c"] counts distinct messages of this storm only: a message of
	// an earlier run redelivered now counts apart, as Redelivered.
	t, ok, err := b.waitFor(ctx, b.opt.DeliverWait, func(t total) bool { return uint64(t.Rounds["c"].Count) >= sent })
	if err != nil {
		return err
	}
	res.Delivered = uint64(t.Rounds["c"].Count)
	res.Lost = sent - min(sent, res.Delivered)
	res.EarlierRedelivered = t.Unique - res.Delivered
	if !ok {
		b.res.Problems = append(b.res.Problems, fmt.Sprintf("churn: %d of %d messages delivered within %s", res.Delivered, sent, b.opt.DeliverWait))
	}
	b.logf("churn: %d handshakes (%.0f/s), %d failed, %d/%d messages delivered", res.Handshakes, res.PerSecond, res.Failed, res.Delivered, sent)
	return nil
}

// runRaw is the fan-out with a trivial TCP writer instead of herald: it
// accepts N connections and writes one pre-encoded PUSH frame to each per
// round. It runs on a fresh set of workers so file limits stay as in the
// herald runs; the herald connections are closed first.
func (b *bench) runRaw(ctx context.Context) error {
	n := b.maxN()
	b.fleet.stop()
	if err := b.startFleet(ctx, workersFor(n, b.opt.PerWorker)); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	}()
	if _, err := b.connectTo(ctx, n, ln.Addr().String(), true); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		got := len(conns)
		mu.Unlock()
		if got >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	all := append([]net.Conn(nil), conns...)
	mu.Unlock()
	res := &FanoutResult{N: len(all), Repeats: b.opt.Repeats, Method: "raw TCP writer, pre-encoded PUSH"}
	b.res.Raw = res
	for r := range b.opt.Repeats {
		key := "raw" + strconv.Itoa(r)
		t0 := time.Now()
		buf, err := frame.AppendMessage(nil, frame.TypePush, &devicev1.Push{MessageId: "01RAW0000000000000000000" + fmt.Sprintf("%02d", r%100),
			Kind: devicev1.Kind_KIND_DATA, Data: map[string]string{"r": key, "t": strconv.FormatInt(t0.UnixNano(), 10)}, SentAtMs: t0.UnixMilli()})
		if err != nil {
			return err
		}
		var wg sync.WaitGroup
		var werr atomic.Value
		const writers = 2
		for w := range writers {
			wg.Go(func() {
				for i := w; i < len(all); i += writers {
					if _, err := all[i].Write(buf); err != nil {
						werr.CompareAndSwap(nil, err)
					}
				}
			})
		}
		wg.Wait()
		if e, ok := werr.Load().(error); ok {
			return fmt.Errorf("raw write: %w", e)
		}
		t, ok, err := b.waitFor(ctx, 30*time.Second, func(t total) bool { return t.Rounds[key].Count >= len(all) })
		if err != nil {
			return err
		}
		if !ok {
			res.Incomplete++
			continue
		}
		d := time.Duration(t.Rounds[key].LastNano - t0.UnixNano())
		res.RoundMs = append(res.RoundMs, ms(d))
		b.logf("raw fan-out round %d: %d devices in %.1f ms", r, len(all), ms(d))
	}
	finishFanout(res)
	return nil
}

var errNoMode = errors.New("no mode given")
