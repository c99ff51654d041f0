package api

import (
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/heraldpush/herald"
)

func TestRateLimiter(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	type step struct {
		app      string
		limit    int
		at       time.Duration // after t0
		wantWait time.Duration // 0 = allowed
	}
	tests := []struct {
		name  string
		def   int
		steps []step
	}{
		{name: "unlimited by default", def: 0, steps: []step{{"a", 0, 0, 0}, {"a", 0, 0, 0}, {"a", 0, 0, 0}}},
		{name: "burst of one second, then the rate", def: 2, steps: []step{
			{"a", 0, 0, 0}, {"a", 0, 0, 0}, {"a", 0, 0, 500 * time.Millisecond},
			{"a", 0, 250 * time.Millisecond, 250 * time.Millisecond},
			{"a", 0, 500 * time.Millisecond, 0}, {"a", 0, 500 * time.Millisecond, 500 * time.Millisecond},
			{"b", 0, 500 * time.Millisecond, 0}, // apps have their own buckets
		}},
		{name: "idle time refills at most a burst", def: 1, steps: []step{
			{"a", 0, 0, 0}, {"a", 0, time.Hour, 0}, {"a", 0, time.Hour, time.Second},
		}},
		{name: "the app's own limit wins", def: 1, steps: []step{
			{"a", 3, 0, 0}, {"a", 3, 0, 0}, {"a", 3, 0, 0}, {"a", 3, 0, time.Second / 3},
		}},
		{name: "a lowered limit applies at once", def: 0, steps: []step{
			{"a", 100, 0, 0}, {"a", 1, 0, 0}, {"a", 1, 0, time.Second},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newRateLimiter(tt.def)
			for i, s := range tt.steps {
				got := l.allow(s.app, s.limit, t0.Add(s.at))
				if d := got - s.wantWait; d > time.Millisecond || d < -time.Millisecond {
					t.Fatalf("step %d (%+v): wait %s, want %s", i, s, got, s.wantWait)
				}
			}
		})
	}
}

func TestRateLimiterForgetsIdleApps(t *testing.T) {
	l := newRateLimiter(10)
	t0 := time.Now()
	for i := range maxIdleBuckets {
		l.allow(strconv.Itoa(i), 0, t0)
	}
	l.allow("new", 0, t0.Add(time.Second))
	if n := len(l.buckets); n != 1 {
		t.Fatalf("%d buckets after every old one refilled, want 1", n)
	}
}

func TestRateLimitedError(t *testing.T) {
	for _, tt := range []struct {
		wait time.Duration
		want int
	}{{time.Millisecond, 1}, {time.Second, 1}, {1001 * time.Millisecond, 2}, {0, 1}} {
		err := error(&rateLimitedError{limit: 5, retryAfter: tt.wait})
		if !errors.Is(err, herald.ErrRateLimited) {
			t.Fatalf("%v does not wrap ErrRateLimited", err)
		}
		if got, ok := retryAfter(err); !ok || got != tt.want {
			t.Errorf("wait %s: Retry-After %d, want %d", tt.wait, got, tt.want)
		}
	}
}
