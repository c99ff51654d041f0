package herald

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	const base, max = 500 * time.Millisecond, 30 * time.Second
	tests := []struct {
		attempt int
		ceiling time.Duration
	}{
		{0, base},
		{1, 2 * base},
		{3, 8 * base},
		{6, max},
		{1000, max},
	}
	for _, tt := range tests {
		t.Run(tt.ceiling.String(), func(t *testing.T) {
			var spread bool
			first := backoff(tt.attempt, base, max)
			for range 200 {
				d := backoff(tt.attempt, base, max)
				if d < 0 || d > tt.ceiling {
					t.Fatalf("backoff(%d) = %s, want within [0, %s]", tt.attempt, d, tt.ceiling)
				}
				spread = spread || d != first
			}
			if !spread {
				t.Fatalf("backoff(%d) always %s: no jitter", tt.attempt, first)
			}
		})
	}
}
