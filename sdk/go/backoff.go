package herald

import (
	"math/rand/v2"
	"time"
)

// backoff returns the delay before reconnect attempt number attempt (0
// first): a uniformly random duration in [0, min(max, base*2^attempt)]
// ("full jitter"), so a fleet of devices dropped at once does not come back
// at once.
func backoff(attempt int, base, max time.Duration) time.Duration {
	ceiling := base
	for i := 0; i < attempt && ceiling < max; i++ {
		ceiling *= 2
	}
	if ceiling > max || ceiling <= 0 {
		ceiling = max
	}
	if ceiling <= 0 {
		return 0
	}
	return rand.N(ceiling + 1)
}
