package api

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/heraldpush/herald"
)

// maxIdleBuckets bounds the rate limiter's memory: past it, buckets that
// have refilled completely (apps that stopped sending) are forgotten.
const maxIdleBuckets = 10000

// rateLimiter is a token bucket per app: limit sends per second with a
// burst of one second's worth. It lives in one api process, so a cluster
// of n api instances lets an app send up to n times its limit.
type rateLimiter struct {
	def int // sends per second of apps without their own limit; 0 = unlimited

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	rate   float64 // tokens per second, also the capacity
	tokens float64
	last   time.Time
}

func newRateLimiter(def int) *rateLimiter {
	return &rateLimiter{def: def, buckets: make(map[string]*bucket)}
}

// limit is the sends per second allowed to an app whose own limit is
// appLimit (0 = the default); 0 = unlimited.
func (l *rateLimiter) limit(appLimit int) int {
	if appLimit > 0 {
		return appLimit
	}
	return l.def
}

// allow takes one send from the app's bucket. limit is the app's own
// limit (0 = the default). It returns 0 when the send may go, else how
// long until it may.
func (l *rateLimiter) allow(appID string, limit int, now time.Time) time.Duration {
	limit = l.limit(limit)
	if limit <= 0 {
		return 0
	}
	rate := float64(limit)
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[appID]
	if !ok {
		if len(l.buckets) >= maxIdleBuckets {
			l.forgetIdle(now)
		}
		b = &bucket{rate: rate, tokens: rate, last: now}
		l.buckets[appID] = b
	}
	b.refill(rate, now)
	if b.tokens >= 1 {
		b.tokens--
		return 0
	}
	return time.Duration((1 - b.tokens) / rate * float64(time.Second))
}

func (b *bucket) refill(rate float64, now time.Time) {
	if elapsed := now.Sub(b.last); elapsed > 0 {
		b.tokens += elapsed.Seconds() * b.rate
		b.last = now
	}
	b.rate = rate // the app's limit may have changed
	b.tokens = min(b.tokens, rate)
}

// forgetIdle drops the buckets that are full again. Called with l.mu held.
func (l *rateLimiter) forgetIdle(now time.Time) {
	for id, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*b.rate >= b.rate {
			delete(l.buckets, id)
		}
	}
}

// rateLimitedError is a send refused by the rate limiter. It wraps
// herald.ErrRateLimited and says when to retry.
type rateLimitedError struct {
	limit      int
	retryAfter time.Duration
}

func (e *rateLimitedError) Error() string {
	return fmt.Sprintf("%s: the app may send %d messages per second; retry after %d s",
		herald.ErrRateLimited, e.limit, e.retryAfterSeconds())
}

func (e *rateLimitedError) Unwrap() error { return herald.ErrRateLimited }

// retryAfterSeconds is the Retry-After value: whole seconds, at least 1.
func (e *rateLimitedError) retryAfterSeconds() int {
	return max(1, int(math.Ceil(e.retryAfter.Seconds())))
}

// retryAfter returns the Retry-After seconds of a rate-limited error.
func retryAfter(err error) (int, bool) {
	var rl *rateLimitedError
	if errors.As(err, &rl) {
		return rl.retryAfterSeconds(), true
	}
	return 0, false
}
