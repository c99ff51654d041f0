package frame

// Code is a DISCONNECT close code. Codes 3000-3999 mean "reconnect" (after
// RetryAfter if the frame carries one, else with the client's own backoff);
// codes 4000-4999 mean "do not reconnect until something changes" (fix the
// client, re-register the device). docs/protocol.md has the table.
type Code uint32

// Close codes of protocol version 1.
const (
	// CodeNormal: the peer closed the session on purpose; reconnect when needed.
	CodeNormal Code = 3000
	// CodeShutdown: the gateway is draining; reconnect after RetryAfter, to Redirect if set.
	CodeShutdown Code = 3001
	// CodeHeartbeatTimeout: nothing heard within the heartbeat window; reconnect.
	CodeHeartbeatTimeout Code = 3002
	// CodeServerError: an internal error; reconnect with backoff.
	CodeServerError Code = 3003
	// CodeSlowConsumer: the client did not read fast enough; reconnect.
	CodeSlowConsumer Code = 3004
	// CodeHandshakeTimeout: CONNECT did not arrive in time; reconnect with backoff.
	CodeHandshakeTimeout Code = 3005

	// CodeBadFrame: malformed frame, unknown type or undecodable body; do not retry.
	CodeBadFrame Code = 4000
	// CodeUnauthorized: unknown app key, unknown device or wrong token; do not retry.
	CodeUnauthorized Code = 4001
	// CodeUnsupportedVersion: the server does not speak the client's protocol version.
	CodeUnsupportedVersion Code = 4002
	// CodeFrameTooLarge: a frame exceeded the negotiated maximum; do not retry.
	CodeFrameTooLarge Code = 4003
	// CodeExpectedConnect: the first frame was not CONNECT; do not retry.
	CodeExpectedConnect Code = 4004
	// CodeReplaced: a newer connection of the same device took over; do not retry.
	CodeReplaced Code = 4005
	// CodeDeviceDeleted: the device was deleted (logout); do not retry.
	CodeDeviceDeleted Code = 4006
)

// Retry reports whether a client should reconnect after this close code.
func (c Code) Retry() bool { return c >= 3000 && c < 4000 }

func (c Code) String() string {
	switch c {
	case CodeNormal:
		return "normal"
	case CodeShutdown:
		return "shutdown"
	case CodeHeartbeatTimeout:
		return "heartbeat timeout"
	case CodeServerError:
		return "server error"
	case CodeSlowConsumer:
		return "slow consumer"
	case CodeHandshakeTimeout:
		return "handshake timeout"
	case CodeBadFrame:
		return "bad frame"
	case CodeUnauthorized:
		return "unauthorized"
	case CodeUnsupportedVersion:
		return "unsupported protocol version"
	case CodeFrameTooLarge:
		return "frame too large"
	case CodeExpectedConnect:
		return "expected CONNECT"
	case CodeReplaced:
		return "replaced by a newer connection"
	case CodeDeviceDeleted:
		return "device deleted"
	}
	return "unknown"
}
