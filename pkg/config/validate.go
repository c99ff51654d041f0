package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Frame size limits of gateway.max_frame_bytes.
const (
	MinFrameBytes = 1 << 10
	MaxFrameBytes = 16 << 20
	// FrameOverhead is what a PUSH frame needs beyond the payload (header,
	// message id, timestamps): api.max_payload_bytes must stay below
	// gateway.max_frame_bytes minus this.
	FrameOverhead = 1 << 10
)

// FieldError is one problem with one setting; Field is its yaml path.
type FieldError struct {
	Field   string
	Problem string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Problem }

// Validate checks every setting and returns all problems at once, joined
// (one *FieldError per line); nil means the configuration is usable.
func (c Config) Validate() error {
	v := &validator{}

	v.oneOf("target", c.Target, TargetAll, TargetGateway, TargetRouter, TargetDispatcher, TargetAPI)
	switch {
	case c.NodeID == "":
		v.add("node_id", "must not be empty")
	case len(c.NodeID) > 128 || strings.IndexFunc(c.NodeID, func(r rune) bool { return !isNodeIDRune(r) }) >= 0:
		v.add("node_id", "%q must be 1-128 characters of [A-Za-z0-9._-]", c.NodeID)
	}
	if strings.TrimSpace(c.DataDir) == "" {
		v.add("data_dir", "must not be empty")
	}
	if strings.ContainsFunc(c.AdminToken, func(r rune) bool { return r <= ' ' }) {
		v.add("admin_token", "must not contain spaces or control characters")
	}
	v.oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	v.oneOf("log.format", c.Log.Format, "text", "json")
	if c.Ops.Addr != "" {
		v.addr("ops.addr", c.Ops.Addr)
	}

	a := c.API
	v.addr("api.http_addr", a.HTTPAddr)
	v.addr("api.grpc_addr", a.GRPCAddr)
	v.positive("api.max_targets", a.MaxTargets)
	v.positive("api.max_payload_bytes", a.MaxPayloadBytes)
	v.positive("api.max_body_bytes", a.MaxBodyBytes)
	if a.MaxPayloadBytes > 0 && a.MaxBodyBytes > 0 && a.MaxBodyBytes < a.MaxPayloadBytes {
		v.add("api.max_body_bytes", "%d is below api.max_payload_bytes %d", a.MaxBodyBytes, a.MaxPayloadBytes)
	}
	v.positiveDuration("api.default_ttl", a.DefaultTTL)
	v.positiveDuration("api.max_ttl", a.MaxTTL)
	if a.DefaultTTL > 0 && a.MaxTTL > 0 && a.DefaultTTL > a.MaxTTL {
		v.add("api.default_ttl", "%s is above api.max_ttl %s", fmtDuration(a.DefaultTTL), fmtDuration(a.MaxTTL))
	}
	if a.DefaultRateLimit < 0 {
		v.add("api.default_rate_limit", "%d must be 0 (unlimited) or positive", a.DefaultRateLimit)
	}
	if a.MaxSendAhead < time.Minute {
		v.add("api.max_send_ahead", "%s is below 1m", fmtDuration(a.MaxSendAhead))
	}
	switch {
	case a.MaxSpread < time.Second:
		v.add("api.max_spread", "%s is below 1s", fmtDuration(a.MaxSpread))
	case a.MaxSpread%time.Second != 0:
		v.add("api.max_spread", "%s is not a whole number of seconds (sends ask for spread_over_seconds)", fmtDuration(a.MaxSpread))
	}

	g := c.Gateway
	v.addr("gateway.addr", g.Addr)
	if g.MaxFrameBytes < MinFrameBytes || g.MaxFrameBytes > MaxFrameBytes {
		v.add("gateway.max_frame_bytes", "%d is outside [%d, %d] (1 KiB to 16 MiB)", g.MaxFrameBytes, MinFrameBytes, MaxFrameBytes)
	} else if a.MaxPayloadBytes >= g.MaxFrameBytes-FrameOverhead {
		v.add("api.max_payload_bytes", "%d must be below gateway.max_frame_bytes - %d (%d) so a PUSH frame fits",
			a.MaxPayloadBytes, FrameOverhead, g.MaxFrameBytes-FrameOverhead)
	}
	v.positiveDuration("gateway.handshake_timeout", g.HandshakeTimeout)
	hbOK := v.heartbeat("gateway.heartbeat_min", g.HeartbeatMin)
	hbOK = v.heartbeat("gateway.heartbeat", g.Heartbeat) && hbOK
	hbOK = v.heartbeat("gateway.heartbeat_max", g.HeartbeatMax) && hbOK
	if hbOK {
		switch {
		case g.HeartbeatMin > g.HeartbeatMax:
			v.add("gateway.heartbeat_min", "%s is above gateway.heartbeat_max %s", fmtDuration(g.HeartbeatMin), fmtDuration(g.HeartbeatMax))
		case g.Heartbeat < g.HeartbeatMin:
			v.add("gateway.heartbeat", "%s is below gateway.heartbeat_min %s", fmtDuration(g.Heartbeat), fmtDuration(g.HeartbeatMin))
		case g.Heartbeat > g.HeartbeatMax:
			v.add("gateway.heartbeat", "%s is above gateway.heartbeat_max %s", fmtDuration(g.Heartbeat), fmtDuration(g.HeartbeatMax))
		}
	}
	v.positiveDuration("gateway.ack_timeout", g.AckTimeout)
	v.positive("gateway.window", g.Window)
	v.positiveDuration("gateway.drain_timeout", g.DrainTimeout)
	v.oneOf("gateway.io", g.IO, GatewayIOGoroutine, GatewayIOEventLoop)
	v.positiveDuration("gateway.normal_max_delay", g.NormalMaxDelay)
	v.positiveDuration("gateway.replay_lookback", g.ReplayLookback)
	if g.NormalMaxDelay > 0 && a.MaxSpread > 0 && g.ReplayLookback > 0 && g.ReplayLookback < a.MaxSpread+g.NormalMaxDelay {
		v.add("gateway.replay_lookback", "%s is below api.max_spread + gateway.normal_max_delay (%s): paced or deferred group pushes could be missed on reconnect",
			fmtDuration(g.ReplayLookback), fmtDuration(a.MaxSpread+g.NormalMaxDelay))
	}

	v.positive("dispatcher.batch_size", c.Dispatcher.BatchSize)
	v.positiveDuration("dispatcher.commit_interval", c.Dispatcher.CommitInterval)
	v.positive("dispatcher.max_in_flight", c.Dispatcher.MaxInFlight)
	switch si := c.Scheduler.Interval; {
	case si <= 0:
		v.add("scheduler.interval", "%s must be positive", fmtDuration(si))
	case si > time.Second:
		v.add("scheduler.interval", "%s is above 1s (a send_at message fires within one interval of its time)", fmtDuration(si))
	}
	v.positiveDuration("receipts.webhook_timeout", c.Receipts.WebhookTimeout)

	v.positive("log_store.partitions", c.LogStore.Partitions)
	v.positiveDuration("log_store.retention", c.LogStore.Retention)

	r := c.Router
	v.oneOf("router.backend", r.Backend, BackendMemory, BackendEtcd, BackendRedis)
	if r.Backend == BackendRedis {
		v.addr("router.redis_addr", r.RedisAddr)
	}
	if r.RouteTTL < time.Minute {
		v.add("router.route_ttl", "%s is below 1m (gateways refresh routes in a fraction of it)", fmtDuration(r.RouteTTL))
	}
	for i, ep := range r.EtcdEndpoints {
		v.endpoint(fmt.Sprintf("router.etcd_endpoints[%d]", i), ep)
	}
	if r.Backend == BackendEtcd && len(r.EtcdEndpoints) == 0 && !c.Etcd.Embedded {
		v.add("router.etcd_endpoints", "empty with router.backend etcd needs etcd.embedded true (or list the etcd endpoints)")
	}
	if r.LeaseTTL < time.Second {
		v.add("router.lease_ttl", "%s is below 1s (etcd leases count whole seconds)", fmtDuration(r.LeaseTTL))
	}

	v.oneOf("store.backend", c.Store.Backend, BackendPebble, BackendCassandra)
	if c.Store.Backend == BackendCassandra {
		cs := c.Store.Cassandra
		if len(cs.Hosts) == 0 {
			v.add("store.cassandra.hosts", "must list at least one host:port")
		}
		if !validKeyspace(cs.Keyspace) {
			v.add("store.cassandra.keyspace", "%q must be 1-48 characters of [a-z0-9_], starting with a letter", cs.Keyspace)
		}
		v.oneOf("store.cassandra.consistency", cs.Consistency, "one", "local_one", "local_quorum", "quorum", "all")
		v.positive("store.cassandra.replication_factor", cs.ReplicationFactor)
		v.positiveDuration("store.cassandra.timeout", cs.Timeout)
	}
	v.oneOf("queue.backend", c.Queue.Backend, BackendPebble, BackendKafka)
	if c.Queue.Backend == BackendKafka {
		k := c.Queue.Kafka
		if len(k.Brokers) == 0 {
			v.add("queue.kafka.brokers", "must list at least one host:port")
		}
		for i, b := range k.Brokers {
			v.addr(fmt.Sprintf("queue.kafka.brokers[%d]", i), b)
		}
		v.positive("queue.kafka.partitions", k.Partitions)
		v.positive("queue.kafka.replication_factor", k.ReplicationFactor)
	}
	if c.Target != TargetAll && (c.Store.Backend == BackendPebble || c.Queue.Backend == BackendPebble) {
		v.add("target", "%s runs one role of a cluster: it needs store.backend cassandra and queue.backend kafka (the embedded engines serve one process)", c.Target)
	}
	if c.Target != TargetAll && c.Router.Backend == BackendMemory {
		v.add("router.backend", "memory serves one process; target %s needs redis or etcd", c.Target)
	}
	for i, ep := range c.Discovery.EtcdEndpoints {
		v.endpoint(fmt.Sprintf("discovery.etcd_endpoints[%d]", i), ep)
	}
	if c.Target != TargetAll && len(c.Discovery.EtcdEndpoints) == 0 {
		v.add("discovery.etcd_endpoints", "target %s needs the etcd cluster where roles find each other", c.Target)
	}
	if c.Target == TargetGateway {
		v.addr("discovery.gateway_grpc_addr", c.Discovery.GatewayGRPCAddr)
	}
	if c.Discovery.LeaseTTL < time.Second {
		v.add("discovery.lease_ttl", "%s is below 1s (etcd leases count whole seconds)", fmtDuration(c.Discovery.LeaseTTL))
	}
	if p := c.Discovery.EtcdPrefix; len(p) < 2 || !strings.HasPrefix(p, "/") || !strings.HasSuffix(p, "/") || strings.Contains(p, "//") {
		v.add("discovery.etcd_prefix", "%q must start and end with / and name at least one key segment (like /herald/ or /herald/eu-1/)", p)
	}

	if c.RunsEmbeddedEtcd() {
		v.addr("etcd.client_addr", c.Etcd.ClientAddr)
		v.addr("etcd.peer_addr", c.Etcd.PeerAddr)
	}
	v.portClashes(c.listeners())
	return errors.Join(v.errs...)
}

// listener is one address this process would listen on.
type listener struct{ field, addr string }

func (c Config) listeners() []listener {
	var ls []listener
	if c.Ops.Addr != "" {
		ls = append(ls, listener{"ops.addr", c.Ops.Addr})
	}
	if c.Runs(TargetAPI) {
		ls = append(ls, listener{"api.http_addr", c.API.HTTPAddr}, listener{"api.grpc_addr", c.API.GRPCAddr})
	}
	if c.Runs(TargetGateway) {
		ls = append(ls, listener{"gateway.addr", c.Gateway.Addr})
	}
	if c.Target == TargetGateway {
		ls = append(ls, listener{"discovery.gateway_grpc_addr", c.Discovery.GatewayGRPCAddr})
	}
	if c.RunsEmbeddedEtcd() {
		ls = append(ls, listener{"etcd.client_addr", c.Etcd.ClientAddr}, listener{"etcd.peer_addr", c.Etcd.PeerAddr})
	}
	return ls
}

type validator struct{ errs []error }

func (v *validator) add(field, format string, args ...any) {
	v.errs = append(v.errs, &FieldError{Field: field, Problem: fmt.Sprintf(format, args...)})
}

func (v *validator) oneOf(field, got string, allowed ...string) {
	for _, a := range allowed {
		if got == a {
			return
		}
	}
	v.add(field, "%q is not one of %s", got, strings.Join(allowed, ", "))
}

func (v *validator) positive(field string, n int) {
	if n <= 0 {
		v.add(field, "%d must be positive", n)
	}
}

func (v *validator) positiveDuration(field string, d time.Duration) {
	if d <= 0 {
		v.add(field, "%s must be positive", fmtDuration(d))
	}
}

// heartbeat checks a heartbeat bound: at least 1s and whole seconds, since
// the protocol negotiates seconds.
func (v *validator) heartbeat(field string, d time.Duration) bool {
	switch {
	case d < time.Second:
		v.add(field, "%s is below 1s", fmtDuration(d))
	case d%time.Second != 0:
		v.add(field, "%s is not a whole number of seconds (the protocol negotiates seconds)", fmtDuration(d))
	default:
		return true
	}
	return false
}

// addr checks a listen address: host:port with a numeric port (0 picks a free one).
func (v *validator) addr(field, addr string) {
	if _, err := splitAddr(addr); err != nil {
		v.add(field, "%q is not host:port (%v)", addr, err)
	}
}

// endpoint checks an etcd endpoint: host:port or http(s)://host:port.
func (v *validator) endpoint(field, ep string) {
	hostport := ep
	if strings.Contains(ep, "://") {
		u, err := url.Parse(ep)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			v.add(field, "%q is not host:port or http(s)://host:port", ep)
			return
		}
		hostport = u.Host
	}
	host, err := splitAddr(hostport)
	if err != nil || host == "" {
		v.add(field, "%q is not host:port or http(s)://host:port", ep)
	}
}

func (v *validator) portClashes(ls []listener) {
	for i, a := range ls {
		ha, pa, errA := net.SplitHostPort(a.addr)
		if errA != nil || pa == "0" {
			continue
		}
		for _, b := range ls[:i] {
			hb, pb, errB := net.SplitHostPort(b.addr)
			if errB != nil || pa != pb {
				continue
			}
			if ha == hb || wildcard(ha) || wildcard(hb) {
				v.add(a.field, "port %s is also used by %s", pa, b.field)
				break
			}
		}
	}
}

func wildcard(host string) bool { return host == "" || host == "0.0.0.0" || host == "::" }

// splitAddr splits host:port and checks the port is a number in [0, 65535].
func splitAddr(addr string) (host string, err error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return "", errors.New(ae.Err)
		}
		return "", err
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return "", fmt.Errorf("port %q is not a number in 0-65535", port)
	}
	return host, nil
}

func validKeyspace(s string) bool {
	if len(s) == 0 || len(s) > 48 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') {
			return false
		}
	}
	return true
}
