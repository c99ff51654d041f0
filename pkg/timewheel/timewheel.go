// Package timewheel is a hashed timing wheel: one goroutine and one runtime
// ticker serve any number of timers, so a gateway holding a million sessions
// keeps a million small Timer structs in slot lists instead of a million
// runtime timers.
//
// The wheel has a fixed number of slots, each covering one tick. A timer due
// at tick n sits in slot n%slots and fires when the wheel reaches tick n; a
// timer further away than one rotation (tick*slots) stays in its slot for as
// many rotations as it needs (the wheel keeps each timer's absolute due tick,
// which is the rounds counter without the per-visit decrement).
//
// Precision is one tick: a timer never fires before its time and normally
// fires within one tick after it (later only when the wheel goroutine itself
// is delayed). Callbacks run on the wheel goroutine, one after another, in no
// particular order within a tick: they must be short and must not block. A
// callback may call Schedule, Stop and Reset freely (typically a session's
// heartbeat callback checks its last-seen time and re-arms its own timer).
package timewheel

import (
	"context"
	"sync"
	"time"
)

// Wheel is a hashed timing wheel. Create it with New and drive it with Run.
type Wheel struct {
	tick  time.Duration
	start time.Time // the wheel's tick 0; tick n is at start + n*tick
	now   func() time.Duration

	mu    sync.Mutex
	cur   int64    // last tick processed
	slots []*Timer // slot heads of intrusive doubly linked lists
	count int      // pending timers
}

// Timer is a pending callback on a Wheel.
type Timer struct {
	w          *Wheel
	fn         func()
	due        int64 // absolute tick
	prev, next *Timer
	queued     bool // linked into a slot (guarded by w.mu)
}

// New returns a wheel with the given tick (precision) and number of slots.
// Any timer may be scheduled arbitrarily far ahead; tick*slots is only the
// span one rotation covers. Non-positive arguments take defaults (100ms,
// 512 slots).
func New(tick time.Duration, slots int) *Wheel {
	if tick <= 0 {
		tick = 100 * time.Millisecond
	}
	if slots <= 0 {
		slots = 512
	}
	start := time.Now()
	return &Wheel{
		tick:  tick,
		start: start,
		now:   func() time.Duration { return time.Since(start) },
		slots: make([]*Timer, slots),
	}
}

// Tick returns the wheel's precision.
func (w *Wheel) Tick() time.Duration { return w.tick }

// Len returns the number of pending timers.
func (w *Wheel) Len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.count
}

// Run turns the wheel until ctx ends, running due callbacks on its own
// goroutine. Timers still pending when it returns do not fire (unless Run
// is called again). Run one Run at a time. It returns ctx's error.
func (w *Wheel) Run(ctx context.Context) error {
	t := time.NewTicker(w.tick)
	defer t.Stop()
	var due []*Timer
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		due = w.advance(int64(w.now()/w.tick), due[:0])
		for i, tm := range due {
			due[i] = nil // the timer may be re-armed by fn; keep no stale refs
			tm.fn()
		}
	}
}

// advance moves the wheel to tick now and appends the timers due by then to
// out, unlinked (so Stop on them reports false).
func (w *Wheel) advance(now int64, out []*Timer) []*Timer {
	w.mu.Lock()
	defer w.mu.Unlock()
	if now <= w.cur {
		return out
	}
	n := now - w.cur
	if n > int64(len(w.slots)) {
		n = int64(len(w.slots)) // a full rotation visits every slot
	}
	for i := int64(1); i <= n; i++ {
		s := int((w.cur + i) % int64(len(w.slots)))
		for tm := w.slots[s]; tm != nil; {
			next := tm.next
			if tm.due <= now {
				w.unlink(tm, s)
				out = append(out, tm)
			}
			tm = next
		}
	}
	w.cur = now
	return out
}

// Schedule arranges for fn to run on the wheel goroutine at the first tick
// at or after at. A time already past fires on the next tick.
func (w *Wheel) Schedule(at time.Time, fn func()) *Timer {
	tm := &Timer{w: w, fn: fn}
	w.mu.Lock()
	w.insert(tm, at)
	w.mu.Unlock()
	return tm
}

// AfterFunc is Schedule(time.Now().Add(d), fn).
func (w *Wheel) AfterFunc(d time.Duration, fn func()) *Timer {
	return w.Schedule(time.Now().Add(d), fn)
}

// Stop prevents the timer from firing. It reports whether it stopped a
// pending timer; false means the callback already ran, is running or is
// about to run, or the timer was stopped before.
func (t *Timer) Stop() bool {
	w := t.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if !t.queued {
		return false
	}
	w.unlink(t, int(t.due%int64(len(w.slots))))
	return true
}

// Reset re-arms the timer (pending or not) to fire at at with the same
// callback, without allocating. It reports whether the timer was pending.
// Calling Reset from the timer's own callback is the intended way to
// re-arm a periodic check.
func (t *Timer) Reset(at time.Time) bool {
	w := t.w
	w.mu.Lock()
	defer w.mu.Unlock()
	was := t.queued
	if was {
		w.unlink(t, int(t.due%int64(len(w.slots))))
	}
	w.insert(t, at)
	return was
}

// insert links tm into the slot of the first tick at or after at. w.mu held.
func (w *Wheel) insert(tm *Timer, at time.Time) {
	d := at.Sub(w.start)
	due := int64(d / w.tick)
	if d > 0 && d%w.tick != 0 {
		due++ // round up: never fire early
	}
	if due <= w.cur {
		due = w.cur + 1
	}
	tm.due = due
	s := int(due % int64(len(w.slots)))
	tm.prev = nil
	tm.next = w.slots[s]
	if tm.next != nil {
		tm.next.prev = tm
	}
	w.slots[s] = tm
	tm.queued = true
	w.count++
}

// unlink removes tm from slot s. w.mu held.
func (w *Wheel) unlink(tm *Timer, s int) {
	if tm.prev != nil {
		tm.prev.next = tm.next
	} else {
		w.slots[s] = tm.next
	}
	if tm.next != nil {
		tm.next.prev = tm.prev
	}
	tm.prev, tm.next = nil, nil
	tm.queued = false
	w.count--
}
