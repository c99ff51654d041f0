// Package herald holds the domain errors shared by every Herald role. Each
// error is a sentinel wrapped with %w along the way; the API edge maps them
// to HTTP and gRPC codes in one table (services/api/errors.go).
package herald

import "errors"

var (
	ErrAppNotFound     = errors.New("herald: app not found")
	ErrDeviceNotFound  = errors.New("herald: device not found")
	ErrMessageNotFound = errors.New("herald: message not found")
	ErrUnauthenticated = errors.New("herald: bad or missing credentials")
	ErrForbidden       = errors.New("herald: not allowed")
	ErrInvalidArgument = errors.New("herald: invalid argument")
	ErrTooLarge        = errors.New("herald: payload too large")
	ErrConflict        = errors.New("herald: conflict")
	ErrRateLimited     = errors.New("herald: rate limited")
	ErrUnavailable     = errors.New("herald: temporarily unavailable, retry")
	ErrClosed          = errors.New("herald: closed")
)
