package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
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
	PingAligned  bool // every device pings at the same instants (one burst per interval)
	HBWindow     time.Duration
	Repeats      int
	Rates        []float64 // unicast target rates; 0 = flat out
	UnicastFor   time.Duration
	Senders      int
	ChurnFor     time.Duration
	ChurnRate    float64 // messages/s sent during the churn
	DeliverWait  time.Duration
	BcastEvery   time.Duration // broadcast-sustained: one broadcast per interval
	BcastFor     time.Duration // broadcast-sustained: how long broadcasts are sent
	BcastTTL     int64         // TTL of fan-out and sustained broadcasts; 0 = online only
	RawBatches   []int         // raw sustained: frames per write; nil = 1 and herald's measured frames per write; [0] = no raw sustained
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
	// writeErrs is the devices' failed writes already reported.
	writeErrs uint64
	seq       atomic.Uint64
}

// noteWriteErrors records a problem when the devices failed writes during
// mode m: a failed ACK makes herald redeliver after its ack timeout, which
// skews every figure that follows.
func (b *bench) noteWriteErrors(ctx context.Context, m string) {
	if b.fleet == nil {
		return
	}
	t, err := b.fleet.stats(ctx)
	if err != nil || t.WriteErrs <= b.writeErrs {
		return
	}
	b.res.Problems = append(b.res.Problems, fmt.Sprintf("%s: the devices failed %d writes (ACK, PING or PONG); the figures are suspect", m, t.WriteErrs-b.writeErrs))
	b.writeErrs = t.WriteErrs
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

// connectTo connects devices [b.conn, n) spread evenly over the workers;
// device i dials gateways[i mod len(gateways)].
func (b *bench) connectTo(ctx context.Context, n int, gateways []string, raw bool) (ConnectStep, error) {
	lo := b.conn
	w := len(b.fleet.procs)
	cmds := make([]Command, w)
	for i := range w {
		a, z := lo+(n-lo)*i/w, lo+(n-lo)*(i+1)/w
		cmds[i] = Command{Op: "connect", Gateways: gateways, AppKey: b.app.Key, Devices: b.devs[a:z], FirstIndex: a,
			Raw: raw, Concurrency: b.opt.Concurrency, PingEvery: Duration(b.opt.PingEvery), PingAligned: b.opt.PingAligned}
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

// settle waits until the RSS of the processes holding the connections
// stops moving (or 10 s) and returns the last reading: summed, and per
// process.
func (b *bench) settle(ctx context.Context) (procSample, []procSample, error) {
	pids := b.tgt.memPIDs()
	prev, each, err := sampleProcs(pids)
	if err != nil {
		return prev, each, err
	}
	for range 10 {
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
			return prev, each, ctx.Err()
		}
		cur, curEach, err := sampleProcs(pids)
		if err != nil {
			return prev, each, err
		}
		d := cur.RSSBytes - prev.RSSBytes
		prev, each = cur, curEach
		if d < cur.RSSBytes/200 && d > -cur.RSSBytes/200 {
			break
		}
	}
	return prev, each, nil
}

// serverSample is one reading summed over every herald process: CPU time
// and system calls.
func (b *bench) serverSample() (procSample, error) {
	s, _, err := sampleProcs(b.tgt.PIDs)
	return s, err
}

// usage is what the server spent over a measured window.
type usage struct {
	Seconds    float64 // wall clock
	CPUSeconds float64 // utime + stime
	Syscalls   int64   // read + write system calls
	Pings      uint64  // PINGs the workers wrote meanwhile
}

func (u usage) cpuPct() float64 { return 100 * u.CPUSeconds / u.Seconds }

// measureServer reads the server's CPU time and system calls across window.
func (b *bench) measureServer(ctx context.Context, window time.Duration) (usage, error) {
	s0, err := b.serverSample()
	if err != nil {
		return usage{}, err
	}
	start := time.Now()
	select {
	case <-time.After(window):
	case <-ctx.Done():
		return usage{}, ctx.Err()
	}
	s1, err := b.serverSample()
	if err != nil {
		return usage{}, err
	}
	return usage{Seconds: time.Since(start).Seconds(), CPUSeconds: s1.CPUSeconds - s0.CPUSeconds,
		Syscalls: s1.SysCR + s1.SysCW - s0.SysCR - s0.SysCW}, nil
}

// measure is measureServer plus the PINGs the workers wrote meanwhile
// (when devices are connected).
func (b *bench) measure(ctx context.Context, window time.Duration) (usage, error) {
	if b.fleet == nil || b.conn == 0 {
		return b.measureServer(ctx, window)
	}
	t0, err := b.fleet.stats(ctx)
	if err != nil {
		return usage{}, err
	}
	u, err := b.measureServer(ctx, window)
	if err != nil {
		return u, err
	}
	t1, err := b.fleet.stats(ctx)
	if err != nil {
		return usage{}, err
	}
	u.Pings = t1.Pings - t0.Pings
	return u, nil
}

// runConnect measures RSS at each N and the heartbeat CPU at the largest.
func (b *bench) runConnect(ctx context.Context) error {
	res := &ConnectResult{}
	b.res.Connect = res
	base, baseEach, err := b.settle(ctx)
	if err != nil {
		return err
	}
	res.Baseline = base
	if len(baseEach) > 1 {
		for _, e := range baseEach {
			res.BaselineRSS = append(res.BaselineRSS, e.RSSBytes)
		}
	}
	hb := &HeartbeatResult{Every: b.opt.PingEvery.String(), Window: b.opt.HBWindow.String()}
	b.logf("measuring idle server CPU for %s", b.opt.HBWindow)
	idle, err := b.measure(ctx, b.opt.HBWindow)
	if err != nil {
		return err
	}
	hb.IdleCPUPct = idle.cpuPct()
	xs, rss, kern := []float64{0}, []float64{float64(base.RSSBytes)}, []float64{float64(base.TCPMem)}
	for _, n := range b.opt.Steps {
		if n <= b.conn {
			continue
		}
		step, err := b.connectTo(ctx, n, b.tgt.Gateways, false)
		if err != nil {
			return err
		}
		var each []procSample
		if step.Server, each, err = b.settle(ctx); err != nil {
			return err
		}
		if len(each) > 1 {
			for _, e := range each {
				step.ProcessRSS = append(step.ProcessRSS, e.RSSBytes)
			}
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
	loaded, err := b.measure(ctx, b.opt.HBWindow)
	if err != nil {
		return err
	}
	hb.LoadedCPUPct = loaded.cpuPct()
	hb.HeartbeatPct = hb.LoadedCPUPct - hb.IdleCPUPct
	hb.Pings = loaded.Pings
	res.Heartbeat = hb
	if b.opt.PingEvery <= 0 {
		return nil
	}
	// The same sessions with their pings paused: what holding them costs
	// apart from heartbeats. The gateway closes a session 1.5 intervals
	// after its last frame; a device whose ping fell due in the pause
	// pings within 1 s of its end, so the pause stays at a fifth of an
	// interval, leaving margin for a loaded machine.
	quietFor := min(b.opt.HBWindow, b.opt.PingEvery/5)
	b.logf("measuring server CPU with %d sessions, pings paused, for %s", hb.N, quietFor)
	if _, err := b.fleet.same(ctx, Command{Op: "pings", Pause: true}); err != nil {
		return err
	}
	quiet, err := b.measureServer(ctx, quietFor)
	if _, perr := b.fleet.same(ctx, Command{Op: "pings", Pause: false}); err == nil {
		err = perr
	}
	if err != nil {
		return err
	}
	if t, err := b.fleet.stats(ctx); err == nil && t.Connected < b.conn {
		b.res.Problems = append(b.res.Problems, fmt.Sprintf("heartbeat: %d of %d sessions open after the pings pause", t.Connected, b.conn))
	}
	hb.QuietWindow = quietFor.String()
	hb.QuietCPUPct = quiet.cpuPct()
	hb.SessionsCPUPct = hb.QuietCPUPct - hb.IdleCPUPct
	hb.PingCPUPct = hb.LoadedCPUPct - hb.QuietCPUPct
	if loaded.Pings > 0 {
		hb.PingsPerS = float64(loaded.Pings) / loaded.Seconds
		hb.CPUMicrosPerPing = hb.PingCPUPct / 100 * 1e6 / hb.PingsPerS
		perS := func(u usage) float64 { return float64(u.Syscalls) / u.Seconds }
		hb.SyscallsPerPing = (perS(loaded) - perS(quiet)) / hb.PingsPerS
	}
	return nil
}

// ensureConnected connects every device if the connect run did not.
func (b *bench) ensureConnected(ctx context.Context) error {
	if n := b.maxN(); b.conn < n {
		if _, err := b.connectTo(ctx, n, b.tgt.Gateways, false); err != nil {
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

// runFanout sends one broadcast (audience "all") to every connected
// device, Repeats times; a round is the time from the send to the last
// device receiving it.
func (b *bench) runFanout(ctx context.Context) error {
	if err := b.ensureConnected(ctx); err != nil {
		return err
	}
	n := b.conn
	res := &FanoutResult{N: n, Repeats: b.opt.Repeats, Processes: max(1, len(b.tgt.Gateways)),
		Method: fmt.Sprintf("one broadcast, audience all, TTL %d s", b.opt.BcastTTL)}
	if g := len(b.tgt.Gateways); g > 1 {
		res.Method += fmt.Sprintf(", %d gateway processes", g)
	}
	b.res.Fanout = res
	if _, err := b.fleet.same(ctx, Command{Op: "reset"}); err != nil {
		return err
	}
	for r := range b.opt.Repeats {
		key := "f" + strconv.Itoa(r)
		b.quiesce(ctx, 5*time.Second)
		t0 := time.Now()
		data := map[string]string{"r": key, "t": strconv.FormatInt(t0.UnixNano(), 10)}
		if err := b.snd.broadcast(ctx, data, b.opt.BcastTTL); err != nil {
			return fmt.Errorf("fan-out send: %w", err)
		}
		res.SendMs = append(res.SendMs, ms(time.Since(t0)))
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
		b.logf("fan-out round %d: %d devices in %.1f ms (the api answered in %.1f ms)", r, n, ms(d), res.SendMs[r])
	}
	finishFanout(res)
	return nil
}

// quiesce waits until herald is quiet (at most one 10 ms CPU tick over
// 200 ms, summed over its processes), for up to limit, so that a fan-out
// round starts on an idle server, as a raw round does, and not while the
// server still handles the previous round's acks and receipts; likewise
// each unicast run.
func (b *bench) quiesce(ctx context.Context, limit time.Duration) {
	if len(b.tgt.PIDs) == 0 {
		return
	}
	prev, _, err := sampleProcs(b.tgt.PIDs)
	if err != nil {
		return
	}
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); {
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			return
		}
		cur, _, err := sampleProcs(b.tgt.PIDs)
		if err != nil || cur.CPUSeconds-prev.CPUSeconds <= 0.011 {
			return
		}
		prev = cur
	}
}

// runSustained sends a broadcast every BcastEvery for BcastFor to every
// connected device, then waits for the deliveries to stop. Deliveries/s
// run from the first send to the last arrival; the server's CPU time over
// that span, divided by the deliveries, is its cost per delivery.
func (b *bench) runSustained(ctx context.Context) error {
	if err := b.ensureConnected(ctx); err != nil {
		return err
	}
	if b.opt.BcastEvery <= 0 || b.opt.BcastFor <= 0 {
		return errors.New("broadcast-sustained needs -bcast-every and -bcast-for")
	}
	n := b.conn
	if _, err := b.fleet.same(ctx, Command{Op: "reset"}); err != nil {
		return err
	}
	const key = "bs"
	res := &SustainedResult{N: n, Every: b.opt.BcastEvery.String(), SendSeconds: b.opt.BcastFor.Seconds(), TTL: b.opt.BcastTTL}
	b.res.Sustained = res
	b.logf("broadcast-sustained: one broadcast every %s for %s to %d devices", b.opt.BcastEvery, b.opt.BcastFor, n)
	s0, err := b.serverSample()
	if err != nil {
		return err
	}
	d0 := b.fleet.cpuSeconds()
	start := time.Now()
	var sent, errs atomic.Int64
	var wg sync.WaitGroup
	inflight := make(chan struct{}, 64)
	for i := 0; ; i++ {
		due := start.Add(time.Duration(i) * b.opt.BcastEvery)
		if due.Sub(start) >= b.opt.BcastFor || ctx.Err() != nil {
			break
		}
		if w := time.Until(due); w > 0 {
			time.Sleep(w)
		}
		inflight <- struct{}{} // more than 64 calls waiting: the schedule slips
		wg.Go(func() {
			defer func() { <-inflight }()
			data := map[string]string{"r": key, "t": strconv.FormatInt(time.Now().UnixNano(), 10)}
			if err := b.snd.broadcast(ctx, data, b.opt.BcastTTL); err != nil {
				errs.Add(1)
				return
			}
			sent.Add(1)
		})
	}
	wg.Wait()
	lastSend := time.Now()
	res.Broadcasts, res.SendErrors = sent.Load(), errs.Load()
	res.Expected = uint64(res.Broadcasts) * uint64(n)
	// Wait for the deliveries: until all arrived or none came for 5 s. The
	// server reading is the one taken when the count last moved.
	s1, count := s0, 0
	var t total
	stall := time.Now()
	for time.Since(stall) < 5*time.Second && time.Since(lastSend) < 5*time.Minute {
		if t, err = b.fleet.stats(ctx); err != nil {
			return err
		}
		if c := t.Rounds[key].Count; c > count {
			count, stall = c, time.Now()
			if s1, err = b.serverSample(); err != nil {
				return err
			}
		}
		if uint64(count) >= res.Expected {
			break
		}
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	res.DriverCPUSeconds = b.fleet.cpuSeconds() - d0
	res.Delivered = uint64(count)
	res.P50Ms, res.P99Ms = ms(t.Latency.Quantile(0.50)), ms(t.Latency.Quantile(0.99))
	res.Closed = t.Closed
	if at := t.Rounds[key].LastNano; at > start.UnixNano() {
		res.Seconds = time.Duration(at - start.UnixNano()).Seconds()
		res.LagSeconds = time.Duration(at - lastSend.UnixNano()).Seconds()
	}
	if res.Seconds > 0 {
		res.DeliveriesPerS = float64(res.Delivered) / res.Seconds
	}
	res.ServerCPUSeconds = s1.CPUSeconds - s0.CPUSeconds
	res.WriteSyscalls = s1.SysCW - s0.SysCW
	if res.Delivered > 0 {
		res.CPUMicrosPerDelivery = res.ServerCPUSeconds * 1e6 / float64(res.Delivered)
	}
	if res.WriteSyscalls > 0 {
		res.FramesPerWrite = float64(res.Delivered) / float64(res.WriteSyscalls)
	}
	if res.Delivered < res.Expected {
		b.res.Problems = append(b.res.Problems, fmt.Sprintf("broadcast-sustained: %d of %d deliveries arrived", res.Delivered, res.Expected))
	}
	b.logf("broadcast-sustained: %d broadcasts, %d/%d deliveries in %.1f s (%.0f /s), %.2f µs server CPU per delivery, %.2f frames per write",
		res.Broadcasts, res.Delivered, res.Expected, res.Seconds, res.DeliveriesPerS, res.CPUMicrosPerDelivery, res.FramesPerWrite)
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
		b.quiesce(ctx, 30*time.Second)
		if _, err := b.fleet.same(ctx, Command{Op: "reset"}); err != nil {
			return err
		}
		s0, err := b.serverSample()
		if err != nil {
			return err
		}
		b.logf("unicast: %s at rate %.0f/s (0 = flat out), %d senders", b.opt.UnicastFor, rate, b.opt.Senders)
		start := time.Now()
		sent, sendErrs, el := b.unicastLoad(ctx, rate, b.opt.UnicastFor, b.opt.Senders, key)
		s1, err := b.serverSample()
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
	s0, err := b.serverSample()
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
	s1, err := b.serverSample()
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

// runRaw is the fan-out with a trivial TCP writer instead of herald: G raw
// server processes (G = the number of gateways, 1 for the all-in-one) accept
// N connections, device i's going to server i mod G as it went to gateway
// i mod G, and on command each writes one pre-encoded PUSH frame to each
// of its connections. A round runs from the command to the last device
// receiving the frame. It runs on a fresh set of workers so file limits
// stay as in the herald runs; the herald connections are closed first.
func (b *bench) runRaw(ctx context.Context) error {
	n := b.maxN()
	g := max(1, len(b.tgt.Gateways))
	b.fleet.stop()
	if err := b.startFleet(ctx, workersFor(n, b.opt.PerWorker)); err != nil {
		return err
	}
	srv, err := startRawServers(ctx, g)
	if err != nil {
		return err
	}
	defer srv.stop()
	if _, err := b.connectTo(ctx, n, srv.addrs, true); err != nil {
		return err
	}
	got, err := srv.waitCount(ctx, n, 30*time.Second)
	if err != nil {
		return err
	}
	res := &FanoutResult{N: got, Repeats: b.opt.Repeats, Processes: g,
		Method: fmt.Sprintf("raw TCP writer, pre-encoded PUSH, %d process(es)", g)}
	b.res.Raw = res
	for r := range b.opt.Repeats {
		key := "raw" + strconv.Itoa(r)
		t0 := time.Now()
		buf, err := frame.AppendMessage(nil, frame.TypePush, &devicev1.Push{MessageId: "01RAW0000000000000000000" + fmt.Sprintf("%02d", r%100),
			Kind: devicev1.Kind_KIND_DATA, Data: map[string]string{"r": key, "t": strconv.FormatInt(t0.UnixNano(), 10)}, SentAtMs: t0.UnixMilli()})
		if err != nil {
			return err
		}
		if err := srv.write(ctx, buf, 1); err != nil {
			return err
		}
		t, ok, err := b.waitFor(ctx, 30*time.Second, func(t total) bool { return t.Rounds[key].Count >= got })
		if err != nil {
			return err
		}
		if !ok {
			res.Incomplete++
			continue
		}
		d := time.Duration(t.Rounds[key].LastNano - t0.UnixNano())
		res.RoundMs = append(res.RoundMs, ms(d))
		b.logf("raw fan-out round %d: %d devices over %d writer process(es) in %.1f ms", r, got, g, ms(d))
	}
	finishFanout(res)
	return b.rawSustained(ctx, srv, got)
}

// rawSustained is the ceiling of broadcast-sustained: the trivial writer
// sends the same number of frames to every connection as herald's run
// did (at most 200), batch frames per write, flat out, from 2 goroutines
// per raw server process (acks are not read).
// Its CPU is the raw server processes' over the writes.
func (b *bench) rawSustained(ctx context.Context, srv *rawServers, n int) error {
	frames := 0
	if s := b.res.Sustained; s != nil {
		frames = int(s.Broadcasts)
	} else if b.opt.BcastEvery > 0 {
		frames = int(b.opt.BcastFor / b.opt.BcastEvery)
	}
	frames = min(frames, 200) // the raw server never reads the acks: bound their backlog
	if frames == 0 || n == 0 || slices.Equal(b.opt.RawBatches, []int{0}) {
		return nil
	}
	batches := b.opt.RawBatches
	if batches == nil {
		// One frame per write, herald's own frames per write (when it
		// coalesced), and 10 per write for what coalescing buys.
		batches = []int{1}
		if s := b.res.Sustained; s != nil && s.FramesPerWrite >= 1.5 && int(s.FramesPerWrite+0.5) != 10 {
			batches = append(batches, int(s.FramesPerWrite+0.5))
		}
		batches = append(batches, 10)
	}
	for _, batch := range batches {
		batch = max(1, min(batch, frames))
		passes := (frames + batch - 1) / batch
		key := "rs" + strconv.Itoa(batch)
		if _, err := b.fleet.same(ctx, Command{Op: "reset"}); err != nil {
			return err
		}
		expected := uint64(n) * uint64(passes*batch)
		w0 := srv.f.cpuSeconds()
		d0 := b.fleet.cpuSeconds()
		start := time.Now()
		// Every pass writes the same bytes: the workers count a round by
		// its "r" key, and the send time is not used here.
		one, err := frame.AppendMessage(nil, frame.TypePush, &devicev1.Push{MessageId: fmt.Sprintf("01RAWS%018d", batch),
			Kind: devicev1.Kind_KIND_DATA, Data: map[string]string{"r": key, "t": strconv.FormatInt(start.UnixNano(), 10)}, SentAtMs: start.UnixMilli()})
		if err != nil {
			return err
		}
		if err := srv.write(ctx, bytes.Repeat(one, batch), passes); err != nil {
			return err
		}
		writerCPU := srv.f.cpuSeconds() - w0
		t, _, err := b.waitFor(ctx, 60*time.Second, func(t total) bool { return uint64(t.Rounds[key].Count) >= expected })
		if err != nil {
			return err
		}
		r := RawSustainedResult{N: n, Batch: batch, FramesPerConn: passes * batch, Expected: expected,
			Delivered: uint64(t.Rounds[key].Count), WriterCPUSeconds: writerCPU,
			DriverCPUSeconds: b.fleet.cpuSeconds() - d0}
		if at := t.Rounds[key].LastNano; at > start.UnixNano() {
			r.Seconds = time.Duration(at - start.UnixNano()).Seconds()
			r.DeliveriesPerS = float64(r.Delivered) / r.Seconds
		}
		if r.Delivered > 0 {
			r.CPUMicrosPerDelivery = r.WriterCPUSeconds * 1e6 / float64(r.Delivered)
		}
		b.res.RawSustained = append(b.res.RawSustained, r)
		b.logf("raw sustained, %d frames per write: %d/%d deliveries in %.1f s (%.0f /s), %.2f µs writer CPU per delivery",
			batch, r.Delivered, expected, r.Seconds, r.DeliveriesPerS, r.CPUMicrosPerDelivery)
	}
	return nil
}

var errNoMode = errors.New("no mode given")
