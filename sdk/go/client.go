package herald

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
)

// Version is the SDK version sent to the server in CONNECT.
const Version = "0.1.0"

// Defaults for zero Config fields.
const (
	DefaultDialTimeout = 10 * time.Second
	DefaultMinBackoff  = 500 * time.Millisecond
	DefaultMaxBackoff  = 30 * time.Second
	DefaultDedupSize   = 10000
)

// fallbackHeartbeat is used when neither side names an interval.
const fallbackHeartbeat = time.Minute

// Config configures a Client. AppKey, DeviceID, Token and at least one
// gateway address or an EndpointsURL are required; zero values elsewhere
// mean the defaults.
type Config struct {
	// Addrs are gateway host:port addresses, tried in order; the next one is
	// tried when one fails. With EndpointsURL they are the fallback used
	// when the endpoint list cannot be fetched.
	Addrs []string
	// EndpointsURL is the base URL of the Herald API (e.g.
	// "https://push.example.com"). If set, the client fetches its gateway
	// list from GET <EndpointsURL>/v1/endpoints before connecting, when the
	// list's TTL has passed and whenever every gateway in it failed, and
	// tries the addresses in order. When the API cannot be reached it uses
	// the last list it fetched, then Addrs.
	EndpointsURL string
	// EndpointsTimeout bounds one fetch of the endpoint list.
	EndpointsTimeout time.Duration
	// HTTPClient fetches the endpoint list; nil means a default client.
	HTTPClient *http.Client

	AppKey, DeviceID, Token string
	// Heartbeat is the interval the client asks for (whole seconds; 0 lets
	// the server choose). The server's answer is what is used.
	Heartbeat time.Duration
	// ResumeCursor is the newest message id handled before this process
	// started (see Client.Cursor).
	ResumeCursor string
	// BroadcastCursor is the newest broadcast, tag or topic message id
	// handled before this process started (see Client.BroadcastCursor).
	BroadcastCursor string
	// HandledGroupIDs are the group message ids handled before this process
	// started (see Client.HandledGroupIDs). They seed de-duplication, so the
	// group messages the server replays on connect are not handled twice.
	HandledGroupIDs []string
	// OnMessage is called for every new message, in order, one at a time.
	// The message is acknowledged after it returns. It may call Close.
	OnMessage func(Message)
	// OnState, if set, is called on every state change, from Run's goroutine.
	// The error says why the client left the Connected state.
	OnState func(State, error)
	Logger  *slog.Logger
	// DialTimeout bounds the TCP dial plus the CONNECT/CONNACK handshake.
	DialTimeout time.Duration
	// MinBackoff and MaxBackoff bound the reconnect delay (exponential with
	// full jitter).
	MinBackoff, MaxBackoff time.Duration
	// DedupSize is how many handled message ids are remembered (default
	// DefaultDedupSize). Group messages replayed on reconnect are dropped
	// as duplicates only while their ids are remembered: keep it above the
	// messages a device gets in the server's replay look-back (70 min).
	DedupSize int
}

// State is the connection state reported to Config.OnState.
type State int

// Connection states.
const (
	Connecting State = iota
	Connected
	Disconnected
	Closed
)

func (s State) String() string {
	switch s {
	case Connecting:
		return "connecting"
	case Connected:
		return "connected"
	case Disconnected:
		return "disconnected"
	case Closed:
		return "closed"
	}
	return "unknown"
}

// Client is a device connection to Herald. Create it with New, then call Run.
// Its methods are safe for concurrent use.
type Client struct {
	cfg          Config
	log          *slog.Logger
	dedup        *dedup // used only by the message-handling goroutine of the current session
	endpointsURL string // the full endpoint list URL; "" without EndpointsURL
	http         *http.Client
	lastGood     endpointList // used only by Run's goroutine

	mu        sync.Mutex
	started   bool
	closed    bool
	cancelRun context.CancelCauseFunc
	finished  chan struct{} // closed when Run returns
	cursor    string        // newest unicast message id handled
	bcursor   string        // newest group message id handled
	groupIDs  []string      // the last maxGroupIDs group message ids handled, oldest first
	sess      *session
	connected chan struct{}          // closed when the next session is up
	pending   map[string]chan string // UPSTREAM/SUBSCRIBE request id -> answer's error
}

// maxGroupIDs is how many group message ids HandledGroupIDs returns at most.
const maxGroupIDs = 1024

// New checks cfg and returns a client. It does not connect: Run does.
func New(cfg Config) (*Client, error) {
	switch {
	case len(cfg.Addrs) == 0 && cfg.EndpointsURL == "":
		return nil, fmt.Errorf("%w: no gateway address and no EndpointsURL", ErrInvalidConfig)
	case cfg.AppKey == "":
		return nil, fmt.Errorf("%w: AppKey is empty", ErrInvalidConfig)
	case cfg.DeviceID == "":
		return nil, fmt.Errorf("%w: DeviceID is empty", ErrInvalidConfig)
	case cfg.Token == "":
		return nil, fmt.Errorf("%w: Token is empty", ErrInvalidConfig)
	case cfg.Heartbeat < 0 || cfg.DialTimeout < 0 || cfg.MinBackoff < 0 || cfg.MaxBackoff < 0 || cfg.DedupSize < 0 || cfg.EndpointsTimeout < 0:
		return nil, fmt.Errorf("%w: negative duration or size", ErrInvalidConfig)
	}
	for _, a := range cfg.Addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("%w: address %q: %w", ErrInvalidConfig, a, err)
		}
	}
	var endpointsURL string
	if cfg.EndpointsURL != "" {
		u, err := endpointsRequestURL(cfg.EndpointsURL, cfg.AppKey, cfg.DeviceID)
		if err != nil {
			return nil, fmt.Errorf("%w: EndpointsURL: %w", ErrInvalidConfig, err)
		}
		endpointsURL = u
	}
	if cfg.EndpointsTimeout == 0 {
		cfg.EndpointsTimeout = DefaultEndpointsTimeout
	}
	httpClient := cfg.HTTPClient
	if httpClient == nil {
		// One request every few minutes at most: no idle connection kept.
		httpClient = &http.Client{Timeout: cfg.EndpointsTimeout, Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			DisableKeepAlives:   true,
			TLSHandshakeTimeout: cfg.EndpointsTimeout,
		}}
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.MinBackoff > cfg.MaxBackoff {
		return nil, fmt.Errorf("%w: MinBackoff %s > MaxBackoff %s", ErrInvalidConfig, cfg.MinBackoff, cfg.MaxBackoff)
	}
	if cfg.DedupSize == 0 {
		cfg.DedupSize = DefaultDedupSize
	}
	cfg.Addrs = append([]string(nil), cfg.Addrs...)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{
		cfg:          cfg,
		log:          log.With("device_id", cfg.DeviceID),
		dedup:        newDedup(cfg.DedupSize),
		endpointsURL: endpointsURL,
		http:         httpClient,
		finished:     make(chan struct{}),
		cursor:       cfg.ResumeCursor,
		bcursor:      cfg.BroadcastCursor,
		connected:    make(chan struct{}),
		pending:      make(map[string]chan string),
	}
	seed := cfg.HandledGroupIDs[max(0, len(cfg.HandledGroupIDs)-maxGroupIDs):]
	for _, id := range seed {
		if id != "" {
			c.dedup.add(id)
			c.groupIDs = append(c.groupIDs, id)
		}
	}
	c.cfg.HandledGroupIDs = nil
	return c, nil
}

// Cursor returns the id of the newest message sent to this device alone
// (not a group message) handled so far, or Config.ResumeCursor if none was.
// It is sent as CONNECT.resume_cursor on every connect.
func (c *Client) Cursor() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cursor
}

// BroadcastCursor returns the id of the newest broadcast, tag or topic
// message (Message.Group) handled so far, or Config.BroadcastCursor if none
// was. It is sent as CONNECT.broadcast_cursor on every connect: the server
// replays the group messages the device missed from there (minus a
// look-back). Persist it with HandledGroupIDs and pass both back in Config
// after a restart.
func (c *Client) BroadcastCursor() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bcursor
}

// HandledGroupIDs returns the ids of the last group messages handled
// (at most 1024, oldest first), including those of
// Config.HandledGroupIDs. The server's replay on connect looks back past the
// broadcast cursor, so it re-sends recent group messages; an app that
// persists these ids and passes them back as Config.HandledGroupIDs after a
// restart does not see those again.
func (c *Client) HandledGroupIDs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.groupIDs...)
}

// Close stops Run: the current session acknowledges what was handled, says
// DISCONNECT 3000 and closes; Run then returns nil. Close does not wait for
// Run to return. It is idempotent and may be called from OnMessage.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	if c.cancelRun != nil {
		c.cancelRun(ErrClosed)
	}
	return nil
}

// Run connects and keeps the client connected until ctx ends (it returns
// ctx.Err()), Close is called (it returns nil) or the server closes the
// session with a code that forbids reconnecting (it returns a *CloseError).
// Run may be called once.
func (c *Client) Run(ctx context.Context) error {
	c.mu.Lock()
	switch {
	case c.started:
		c.mu.Unlock()
		return ErrAlreadyRunning
	case c.closed:
		c.started = true
		c.mu.Unlock()
		close(c.finished)
		return nil
	}
	c.started = true
	runCtx, cancel := context.WithCancelCause(ctx)
	c.cancelRun = cancel
	c.mu.Unlock()
	defer close(c.finished)
	defer cancel(nil)

	err := c.loop(runCtx)
	if context.Cause(runCtx) == ErrClosed {
		err = nil
	} else if ctx.Err() != nil {
		err = ctx.Err()
	}
	c.setState(Closed, err)
	return err
}

func (c *Client) loop(ctx context.Context) error {
	var (
		addrs    []string // the gateways to try, best first
		idx      int      // next address in addrs
		attempt  int      // backoff exponent
		failures int      // failed connects since the last session or backoff
		redirect string
		refresh  = true // (re)read the gateway list before the next connect
	)
	for {
		if refresh && redirect == "" {
			refresh = false
			addrs, idx, failures = c.gateways(ctx), 0, 0
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
		if len(addrs) == 0 {
			// Only an EndpointsURL and the API is down: ask again later.
			delay := backoff(attempt, c.cfg.MinBackoff, c.cfg.MaxBackoff)
			attempt++
			refresh = true
			c.setState(Disconnected, ErrNoGateway)
			if err := sleep(ctx, delay); err != nil {
				return err
			}
			continue
		}
		n := len(addrs)
		addr, redirected := addrs[idx], redirect != ""
		if redirected {
			addr, redirect = redirect, ""
		}
		c.setState(Connecting, nil)
		s, err := c.connect(ctx, addr)
		var up time.Duration
		if err == nil {
			failures = 0
			c.log.Info("connected", "addr", addr, "heartbeat", s.hb, "session_id", s.id)
			c.startSession(s)
			c.setState(Connected, nil)
			start := time.Now()
			err = s.run(ctx)
			up = time.Since(start)
			if up >= c.cfg.MaxBackoff {
				attempt = 0 // it was stable: start backing off from the bottom again
			}
			// A list past its TTL is fetched again before reconnecting.
			refresh = c.listStale()
		} else if !redirected {
			idx = (idx + 1) % n
			failures++
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var delay time.Duration
		var ce *CloseError
		if errors.As(err, &ce) {
			if !ce.Code.Retry() {
				c.log.Warn("closed by server", "addr", addr, "code", uint32(ce.Code), "reason", ce.Reason)
				return ce
			}
			redirect = ce.Redirect
			delay = ce.RetryAfter
		}
		if failures >= n {
			// Every known gateway failed in a row: fetch the list again.
			refresh = c.endpointsURL != ""
		}
		if delay == 0 && (failures == 0 || failures >= n) {
			// Back off after a session ends, or once every address failed in
			// a row; within a round, fail over to the next address at once.
			delay = backoff(attempt, c.cfg.MinBackoff, c.cfg.MaxBackoff)
			attempt++
			failures = 0
		}
		c.log.Info("disconnected", "addr", addr, "err", err, "retry_in", delay)
		c.setState(Disconnected, err)
		if err := sleep(ctx, delay); err != nil {
			return err
		}
	}
}

func (c *Client) setState(s State, err error) {
	if c.cfg.OnState != nil {
		c.cfg.OnState(s, err)
	}
}

func (c *Client) startSession(s *session) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sess = s
	close(c.connected)
}

// endSession forgets s; it is called before s.dead is closed.
func (c *Client) endSession(s *session) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess == s {
		c.sess = nil
		c.connected = make(chan struct{})
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Upstream sends payload on channel to the app's servers and returns once
// the server has stored it durably, or with an *UpstreamError if the server
// refused it. It waits for a connection if there is none; if the connection
// drops before the answer, it sends again on the next one with the same
// request id (at-least-once). It gives up when ctx ends or the client closes.
func (c *Client) Upstream(ctx context.Context, channel string, payload []byte) error {
	id := rand.Text()
	b, err := frame.AppendMessage(nil, frame.TypeUpstream, &devicev1.Upstream{RequestId: id, Channel: channel, Payload: payload})
	if err != nil {
		return fmt.Errorf("herald: upstream: %w", err)
	}
	code, err := c.request(ctx, id, frame.TypeUpstream, b)
	if err != nil {
		return err
	}
	if code != "" {
		return &UpstreamError{RequestID: id, Code: code}
	}
	return nil
}

// request sends the request frame b (of type t, request id id) and waits
// for its answer (UPACK, SUBACK), resending b on every new connection until
// one arrives. It returns the answer's error string ("" on success); its
// errors are ErrTooLarge (wrapped), ErrClosed and ctx.Err().
func (c *Client) request(ctx context.Context, id string, t frame.Type, b []byte) (string, error) {
	answer := make(chan string, 1)
	c.mu.Lock()
	c.pending[id] = answer
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()
	for {
		s, err := c.waitSession(ctx)
		if err != nil {
			return "", err
		}
		if len(b) > s.maxFrame {
			return "", fmt.Errorf("%w: %s frame of %d bytes, server accepts %d", ErrTooLarge, t, len(b), s.maxFrame)
		}
		if err := s.write(b); err != nil {
			c.log.Debug("request write failed", "request_id", id, "err", err)
		}
		select {
		case e := <-answer:
			return e, nil
		case <-s.dead:
			select {
			case e := <-answer:
				return e, nil
			default: // resend on the next connection
			}
		case <-ctx.Done():
			return "", ctx.Err()
		case <-c.finished:
			return "", ErrClosed
		}
	}
}

// waitSession returns the current session, waiting for one if needed.
func (c *Client) waitSession(ctx context.Context) (*session, error) {
	for {
		c.mu.Lock()
		s, next, closed := c.sess, c.connected, c.closed
		c.mu.Unlock()
		if closed {
			return nil, ErrClosed
		}
		if s != nil {
			select {
			case <-s.dead:
			default:
				return s, nil
			}
		}
		// A dead session was unset (endSession) before its dead channel
		// closed, so next is a fresh channel here.
		select {
		case <-next:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.finished:
			return nil, ErrClosed
		}
	}
}

// deliverAnswer hands an UPACK or SUBACK to the request waiting for it.
func (c *Client) deliverAnswer(a answer) {
	c.mu.Lock()
	ch := c.pending[a.requestID]
	c.mu.Unlock()
	if ch == nil {
		return // answer to a request that gave up, or a duplicate answer
	}
	select {
	case ch <- a.err:
	default:
	}
}

// handled advances the cursor m belongs to; m was passed to OnMessage.
func (c *Client) handled(m Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !m.Group {
		c.cursor = max(c.cursor, m.ID)
		return
	}
	c.bcursor = max(c.bcursor, m.ID)
	c.groupIDs = append(c.groupIDs, m.ID)
	if len(c.groupIDs) > maxGroupIDs {
		c.groupIDs = c.groupIDs[len(c.groupIDs)-maxGroupIDs:]
	}
}
