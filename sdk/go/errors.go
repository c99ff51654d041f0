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
	// ErrTooLarge is returned by Upstream (and Subscribe, Unsubscribe) when
	// the frame would exceed the size the server accepts.
	ErrTooLarge = errors.New("herald: payload too large")
	// ErrAlreadyRunning is returned by a second call to Run.
	ErrAlreadyRunning = errors.New("herald: Run already called")
	// ErrNotConnected is returned by the calls that only send on the current
	// session (ReportClick, ReportOpen, SetBadge) when there is none.
	ErrNotConnected = errors.New("herald: not connected")
	// ErrInvalidArgument is wrapped by calls given an argument the server
	// would refuse (a bad topic name, a negative badge).
	ErrInvalidArgument = errors.New("herald: invalid argument")
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

// SubscribeError is returned by Subscribe and Unsubscribe when the server
// answered with an error instead of changing the subscriptions.
type SubscribeError struct {
	RequestID string
	// Code is the server's error name, e.g. "invalid_topic" (a name the
	// server refuses, or too many topics: do not retry as is) or
	// "unavailable" (the store cannot take writes now: retry later).
	Code string
}

func (e *SubscribeError) Error() string {
	return fmt.Sprintf("herald: subscription change %s rejected: %s", e.RequestID, e.Code)
}
