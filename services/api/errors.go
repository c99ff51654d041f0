package api

import (
	"context"
	"errors"
	"net/http"

	"google.golang.org/grpc/codes"

	"github.com/heraldpush/herald"
)

// errorClass is how one kind of error looks at the edge.
type errorClass struct {
	err    error // matched with errors.Is; nil for the fallback
	status int
	code   string
	grpc   codes.Code
}

// errorTable is the one place where domain errors become HTTP statuses,
// API error codes and gRPC codes. The first entry that matches wins.
var errorTable = []errorClass{
	{herald.ErrInvalidArgument, http.StatusBadRequest, "invalid_argument", codes.InvalidArgument},
	{herald.ErrUnauthenticated, http.StatusUnauthorized, "unauthenticated", codes.Unauthenticated},
	{herald.ErrForbidden, http.StatusForbidden, "forbidden", codes.PermissionDenied},
	{herald.ErrAppNotFound, http.StatusNotFound, "app_not_found", codes.NotFound},
	{herald.ErrDeviceNotFound, http.StatusNotFound, "device_not_found", codes.NotFound},
	{herald.ErrMessageNotFound, http.StatusNotFound, "message_not_found", codes.NotFound},
	{errTopicNotFound, http.StatusNotFound, "topic_not_found", codes.NotFound},
	{herald.ErrConflict, http.StatusConflict, "conflict", codes.FailedPrecondition},
	{herald.ErrTooLarge, http.StatusRequestEntityTooLarge, "payload_too_large", codes.ResourceExhausted},
	{herald.ErrRateLimited, http.StatusTooManyRequests, "rate_limited", codes.ResourceExhausted},
	{herald.ErrUnavailable, http.StatusServiceUnavailable, "unavailable", codes.Unavailable},
	{herald.ErrClosed, http.StatusServiceUnavailable, "unavailable", codes.Unavailable},
	{context.DeadlineExceeded, http.StatusServiceUnavailable, "unavailable", codes.DeadlineExceeded},
	{context.Canceled, http.StatusServiceUnavailable, "unavailable", codes.Canceled},
}

// internalError is the class of every error the table does not know.
var internalError = errorClass{status: http.StatusInternalServerError, code: "internal", grpc: codes.Internal}

// Codes of errors that come from the HTTP routing, not from a domain error.
const (
	codeNotFound         = "not_found"
	codeMethodNotAllowed = "method_not_allowed"
)

// classify returns the class of err.
func classify(err error) errorClass {
	for _, c := range errorTable {
		if errors.Is(err, c.err) {
			return c
		}
	}
	return internalError
}

// publicMessage is the message a client sees for err of class c: the error
// text for client errors, a fixed text for server-side ones (their details
// are logged, not returned).
func publicMessage(c errorClass, err error) string {
	switch {
	case c.status == http.StatusServiceUnavailable:
		return "temporarily unavailable, retry"
	case c.status >= 500:
		return "internal error"
	}
	return err.Error()
}
