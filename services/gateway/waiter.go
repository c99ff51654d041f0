package gateway

import (
	"sync"

	"github.com/heraldpush/herald/pkg/delivery"
)

// waiter collects the outcomes of one Deliver call (or one drain page).
type waiter struct {
	mu        sync.Mutex
	out       []delivery.Outcome
	remaining int
	finished  bool
	done      chan struct{}
}

func newWaiter(n int) *waiter {
	w := &waiter{out: make([]delivery.Outcome, n), remaining: n, done: make(chan struct{})}
	if n == 0 {
		close(w.done)
	}
	return w
}

// resolve sets outcome i once; later calls for the same i are ignored.
func (w *waiter) resolve(i int, o delivery.Outcome) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.finished || w.out[i] != 0 {
		return
	}
	w.out[i] = o
	w.remaining--
	if w.remaining == 0 {
		close(w.done)
	}
}

// unresolved is how many outcomes are still open.
func (w *waiter) unresolved() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.remaining
}

// finish freezes the outcomes: what is unresolved has timed out.
func (w *waiter) finish() []delivery.Outcome {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.finished = true
	out := make([]delivery.Outcome, len(w.out))
	for i, o := range w.out {
		if o == 0 {
			o = delivery.TimedOut
		}
		out[i] = o
	}
	return out
}

// inflightRef ties a pushed message id to the waiter slot it resolves.
type inflightRef struct {
	w    *waiter
	i    int32
	kind pushKind
}

// pushKind tells what an ack of an in-flight push records.
type pushKind uint8

const (
	kindUnicast  pushKind = iota // from the inbox: status Mark + inbox delete + "delivered"
	kindGroup                    // "delivered" only (no per-device rows)
	kindGroupDup                 // a replayed group push the device probably had: nothing
	// kindLive is a unicast push handed over by Deliver, never stored: its
	// ack marks the status and skips the inbox delete (a read of a key that
	// is not there, the costliest part of an ack). The dispatcher stores a
	// live push only after Deliver gave it up, and that drops the ref, so
	// a late ack finds none and deletes the inbox copy as before.
	kindLive
)
