package timewheel

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// manual returns a wheel whose clock only moves through step, so tick
// arithmetic can be checked exactly.
func manual(tb testing.TB, tick time.Duration, slots int) *Wheel {
	tb.Helper()
	w := New(tick, slots)
	w.now = func() time.Duration {
		tb.Fatal("manual wheel read the clock")
		return 0
	}
	return w
}

// step advances a manual wheel to tick now and runs what is due, as Run does.
func step(w *Wheel, now int64) {
	for _, tm := range w.advance(now, nil) {
		tm.fn()
	}
}

// running starts w.Run for the duration of the test.
func running(tb testing.TB, w *Wheel) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		<-done
	})
}

// eventually polls cond until it holds or the deadline passes.
func eventually(tb testing.TB, d time.Duration, cond func() bool, what string) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestFiresOnItsTick(t *testing.T) {
	const tick = 10 * time.Millisecond
	const slots = 8 // one rotation spans 80ms
	tests := []struct {
		name  string
		after time.Duration // from the wheel's start
		want  int64         // tick at which it fires
	}{
		{"past fires next tick", -time.Second, 1},
		{"now fires next tick", 0, 1},
		{"exactly on a tick", 30 * time.Millisecond, 3},
		{"between ticks rounds up", 31 * time.Millisecond, 4},
		{"last slot of first rotation", 70 * time.Millisecond, 7},
		{"one full rotation", 80 * time.Millisecond, 8},
		{"just past one rotation", 85 * time.Millisecond, 9},
		{"several rotations", 1234 * time.Millisecond, 124},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := manual(t, tick, slots)
			fired := int64(-1)
			var now int64
			w.Schedule(w.start.Add(tt.after), func() {
				if fired >= 0 {
					t.Errorf("fired twice: at tick %d and %d", fired, now)
				}
				fired = now
			})
			for now = 1; now <= tt.want+2*slots; now++ {
				step(w, now)
			}
			if fired != tt.want {
				t.Fatalf("fired at tick %d, want %d", fired, tt.want)
			}
			if n := w.Len(); n != 0 {
				t.Fatalf("Len = %d after firing, want 0", n)
			}
		})
	}
}

func TestFarFutureAcrossJumps(t *testing.T) {
	// The wheel goroutine may be late by many ticks (GC, overloaded host):
	// a jump past a timer's tick fires it once, and never early.
	w := manual(t, time.Millisecond, 4)
	var fired []int64
	var now int64
	for _, ms := range []int{3, 9, 17, 40, 41, 1000} {
		w.Schedule(w.start.Add(time.Duration(ms)*time.Millisecond), func() { fired = append(fired, now) })
	}
	for _, jump := range []int64{2, 10, 39, 41, 999, 1000, 5000} {
		now = jump
		step(w, now)
	}
	want := []int64{10, 10, 39, 41, 41, 1000}
	if len(fired) != len(want) {
		t.Fatalf("fired at ticks %v, want %v", fired, want)
	}
	counts := map[int64]int{}
	for _, f := range fired {
		counts[f]++
	}
	for _, f := range want {
		counts[f]--
	}
	for tick, c := range counts {
		if c != 0 {
			t.Fatalf("fired at ticks %v, want %v (tick %d off by %d)", fired, want, tick, c)
		}
	}
}

func TestStop(t *testing.T) {
	w := manual(t, 10*time.Millisecond, 8)
	var fired atomic.Int32
	a := w.Schedule(w.start.Add(50*time.Millisecond), func() { fired.Add(1) })
	b := w.Schedule(w.start.Add(50*time.Millisecond), func() { fired.Add(10) })
	c := w.Schedule(w.start.Add(50*time.Millisecond), func() { fired.Add(100) })
	if !b.Stop() {
		t.Fatal("Stop of a pending timer = false, want true")
	}
	if b.Stop() {
		t.Fatal("second Stop = true, want false")
	}
	for now := int64(1); now <= 30; now++ {
		step(w, now)
	}
	if got := fired.Load(); got != 101 {
		t.Fatalf("fired sum = %d, want 101 (stopped timer must not fire)", got)
	}
	if a.Stop() || c.Stop() {
		t.Fatal("Stop after firing = true, want false")
	}
}

func TestResetFromCallback(t *testing.T) {
	// The gateway's heartbeat pattern: the callback re-arms its own timer.
	w := manual(t, 10*time.Millisecond, 8)
	var ticks []int64
	var now int64
	var tm *Timer
	tm = w.Schedule(w.start.Add(30*time.Millisecond), func() {
		ticks = append(ticks, now)
		if len(ticks) < 3 {
			tm.Reset(w.start.Add(time.Duration(now)*10*time.Millisecond + 100*time.Millisecond))
		}
	})
	for now = 1; now <= 100; now++ {
		step(w, now)
	}
	want := []int64{3, 13, 23}
	if len(ticks) != len(want) || ticks[0] != want[0] || ticks[1] != want[1] || ticks[2] != want[2] {
		t.Fatalf("fired at ticks %v, want %v", ticks, want)
	}
	if tm.Reset(w.start.Add(2 * time.Second)) {
		t.Fatal("Reset of a fired timer reported pending")
	}
	if !tm.Reset(w.start.Add(3 * time.Second)) {
		t.Fatal("Reset of a pending timer reported not pending")
	}
	if w.Len() != 1 {
		t.Fatalf("Len = %d after double Reset, want 1", w.Len())
	}
}

func TestRealTimeWithinATick(t *testing.T) {
	const tick = 5 * time.Millisecond
	// Scheduling noise on a shared CI machine can delay the wheel goroutine;
	// exact tick arithmetic is covered by TestFiresOnItsTick.
	const slack = 100 * time.Millisecond
	w := New(tick, 16) // span 80ms
	running(t, w)
	delays := []time.Duration{0, time.Millisecond, 7 * time.Millisecond, 40 * time.Millisecond, 200 * time.Millisecond}
	type result struct {
		at, fired time.Time
	}
	results := make([]result, len(delays))
	var wg sync.WaitGroup
	for i, d := range delays {
		wg.Add(1)
		at := time.Now().Add(d)
		results[i].at = at
		w.Schedule(at, func() {
			results[i].fired = time.Now()
			wg.Done()
		})
	}
	wg.Wait()
	for i, r := range results {
		late := r.fired.Sub(r.at)
		if late < 0 {
			t.Errorf("timer %v fired %v early", delays[i], -late)
		}
		if late > tick+slack {
			t.Errorf("timer %v fired %v late, want within a tick (%v) plus scheduling slack", delays[i], late, tick)
		}
	}
}

func TestManyTimersFireOnce(t *testing.T) {
	const n = 100_000
	w := New(time.Millisecond, 256)
	counts := make([]atomic.Int32, n)
	var total atomic.Int32
	rng := rand.New(rand.NewPCG(1, 2))
	start := time.Now()
	for i := range n {
		at := start.Add(time.Duration(rng.IntN(400)) * time.Millisecond)
		w.Schedule(at, func() {
			counts[i].Add(1)
			total.Add(1)
		})
	}
	running(t, w)
	eventually(t, 20*time.Second, func() bool { return total.Load() == n }, "all timers to fire")
	eventually(t, time.Second, func() bool { return w.Len() == 0 }, "wheel to empty")
	for i := range counts {
		if c := counts[i].Load(); c != 1 {
			t.Fatalf("timer %d fired %d times, want 1", i, c)
		}
	}
}

func TestManyTimersWithStops(t *testing.T) {
	const n = 20_000
	w := New(time.Millisecond, 64)
	counts := make([]atomic.Int32, n)
	timers := make([]*Timer, n)
	start := time.Now()
	for i := range n {
		timers[i] = w.Schedule(start.Add(time.Duration(50+i%200)*time.Millisecond), func() { counts[i].Add(1) })
	}
	running(t, w)
	// Stop every third timer while the wheel turns; each Stop that reports
	// true must mean the callback never runs.
	stopped := make([]bool, n)
	for i := 0; i < n; i += 3 {
		stopped[i] = timers[i].Stop()
	}
	eventually(t, 20*time.Second, func() bool { return w.Len() == 0 }, "wheel to empty")
	for i := range counts {
		want := int32(1)
		if stopped[i] {
			want = 0
		}
		if c := counts[i].Load(); c != want {
			t.Fatalf("timer %d (stopped=%v) fired %d times, want %d", i, stopped[i], c, want)
		}
	}
}

func TestRunStopsOnCancel(t *testing.T) {
	w := New(time.Millisecond, 8)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	cancel()
	select {
	case err := <-done:
		if err != context.Canceled {
			t.Fatalf("Run returned %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func BenchmarkScheduleStop(b *testing.B) {
	w := New(100*time.Millisecond, 512)
	at := time.Now().Add(time.Minute)
	fn := func() {}
	b.ReportAllocs()
	for b.Loop() {
		w.Schedule(at, fn).Stop()
	}
}

func BenchmarkScheduleStopParallel(b *testing.B) {
	w := New(100*time.Millisecond, 512)
	at := time.Now().Add(time.Minute)
	fn := func() {}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			w.Schedule(at, fn).Stop()
		}
	})
}

func BenchmarkReset(b *testing.B) {
	// One pending timer per session, re-armed: the gateway's steady state.
	w := New(100*time.Millisecond, 512)
	fn := func() {}
	base := time.Now()
	timers := make([]*Timer, 1<<16)
	for i := range timers {
		timers[i] = w.Schedule(base.Add(time.Duration(i)*time.Millisecond), fn)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		timers[i&(len(timers)-1)].Reset(base.Add(time.Duration(i) * time.Millisecond))
		i++
	}
}
