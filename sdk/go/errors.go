package herald

import (
	"errors"
	"fmt"
	"time"

	"github.com/heraldpush/herald/api/frame"
)

var (
	// ErrClosed is returned by calls on a client that was closed or whose Run has returned.
	ErrClosed = errors.New("herald: client closed")
	// ErrInvalidConfig is wrapped by New when the configuration is unusable.
	ErrInvalidConfig = errors.New("herald: invalid config")
	// ErrTooLarge is returned by Upstream when the frame would exceed the
	// size the server accepts.
	ErrTooLarge = errors.New("herald: payload too large")
	// ErrAlreadyRunning is returned by a second call to Run.
	ErrAlreadyRunning = errors.New("herald: Run already called")
	// ErrNoGateway is reported to OnState when the endpoint list cannot be
	// fetched and Config.Addrs is empty: the client asks again later.
	ErrNoGateway = errors.New("herald: no gateway address (endpoint list unavailable, no fallback Addrs)")
)

// CloseError is a DISCONNECT received from the server. Run returns it when
// the code says not to reconnect (4000-4999); OnState sees every one.
type CloseError struct {
	Code       frame.Code
	Reason     string
	RetryAfter time.Duration // wait at least this long before reconnecting (0 = own backoff)
	Redirect   string        // gateway address to reconnect to, if set
}

func (e *CloseError) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("herald: closed by server: %d %s", uint32(e.Code), e.Code)
	}
	return fmt.Sprintf("herald: closed by server: %d %s: %s", uint32(e.Code), e.Code, e.Reason)
}

// UpstreamError is returned by Upstream when the server answered the
// request with an error instead of storing it.
type UpstreamError struct {
	RequestID string
	Code      string // close-code style error name from the server
}

func (e *UpstreamError) Error() string {
	return fmt.Sprintf("herald: upstream %s rejected: %s", e.RequestID, e.Code)
}
