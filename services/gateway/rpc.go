package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/heraldpush/herald/pkg/delivery"
	"github.com/heraldpush/herald/pkg/envelope/internalv1"
)

// RPCConfig configures the gateway's internal gRPC server.
type RPCConfig struct {
	// Addr is the listen address, e.g. ":9091" or "127.0.0.1:0".
	Addr string
	// MaxRecvBytes bounds one request (a batch of deliveries). Default
	// 16 MiB; callers split larger batches.
	MaxRecvBytes int
	// GracePeriod bounds the wait for calls in flight at shutdown (a
	// Deliver waits for acks). Default 15s.
	GracePeriod time.Duration
}

// deadlineMargin is kept from a Deliver call's deadline so the answer
// reaches the caller before it gives up: outcomes that arrive late are
// lost, and the caller would store acked messages again.
func deadlineMargin(remaining time.Duration) time.Duration {
	return min(remaining/10, 250*time.Millisecond)
}

// RPCServer serves herald.internal.v1.GatewayNode for one gateway (the
// dispatchers and the api of a cluster call it), with the standard gRPC
// health service next to it. It maps each call onto the gateway's
// Deliver, Drain, Kick, Broadcast and Refresh.
type RPCServer struct {
	internalv1.UnimplementedGatewayNodeServer
	g      *Gateway
	cfg    RPCConfig
	log    *slog.Logger
	health *health.Server

	started atomic.Bool
	ready   chan struct{}
	addr    atomic.Value // string
}

var _ internalv1.GatewayNodeServer = (*RPCServer)(nil)

// NewRPCServer returns the gateway's gRPC server; Run starts it. Its
// health is NOT_SERVING until the gateway and the listener are up, and
// again once shutdown begins.
func NewRPCServer(g *Gateway, cfg RPCConfig, logger *slog.Logger) *RPCServer {
	if cfg.MaxRecvBytes <= 0 {
		cfg.MaxRecvBytes = 16 << 20
	}
	if cfg.GracePeriod <= 0 {
		cfg.GracePeriod = 15 * time.Second
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &RPCServer{
		g:      g,
		cfg:    cfg,
		log:    logger.With("role", "gateway", "node", g.NodeID(), "component", "rpc"),
		health: health.NewServer(),
		ready:  make(chan struct{}),
	}
	s.addr.Store("")
	s.SetServing(false)
	return s
}

// Register adds the GatewayNode and health services to r, for a caller
// that runs its own gRPC server instead of Run (and reports health with
// SetServing).
func (s *RPCServer) Register(r grpc.ServiceRegistrar) {
	internalv1.RegisterGatewayNodeServer(r, s)
	healthpb.RegisterHealthServer(r, s.health)
}

// Ready is closed once the listener is bound.
func (s *RPCServer) Ready() <-chan struct{} { return s.ready }

// Addr is the bound listen address (after Ready).
func (s *RPCServer) Addr() string { return s.addr.Load().(string) }

// Run serves until ctx ends, then reports NOT_SERVING, lets the calls in
// flight finish (up to the grace period) and returns nil.
func (s *RPCServer) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("gateway rpc: Run called twice")
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("gateway rpc: listen %s: %w", s.cfg.Addr, err)
	}
	gs := grpc.NewServer(
		grpc.MaxRecvMsgSize(s.cfg.MaxRecvBytes),
		// Callers ping idle connections every 30s (gatewayrpc); the
		// default policy (5 min) would close them for it.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: time.Minute, Timeout: 20 * time.Second}),
	)
	s.Register(gs)
	s.addr.Store(ln.Addr().String())
	close(s.ready)
	s.log.Info("gateway rpc listening", "addr", ln.Addr().String())

	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(ln) }()
	go func() {
		select {
		case <-s.g.Ready():
			if ctx.Err() == nil {
				s.SetServing(true)
			}
		case <-ctx.Done():
		}
	}()

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-errc:
		runErr = fmt.Errorf("gateway rpc: serve: %w", err)
	}
	s.health.Shutdown() // NOT_SERVING for every service, for good
	stopped := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(stopped)
	}()
	timer := time.NewTimer(s.cfg.GracePeriod)
	defer timer.Stop()
	select {
	case <-stopped:
	case <-timer.C:
		s.log.Warn("gateway rpc shutdown grace period passed, closing connections")
		gs.Stop()
		<-stopped
	}
	if runErr == nil {
		<-errc
	}
	s.log.Info("gateway rpc stopped")
	return runErr
}

// SetServing sets the health of the server and of the GatewayNode service.
// Run does it itself.
func (s *RPCServer) SetServing(ok bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ok {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.health.SetServingStatus("", st)
	s.health.SetServingStatus(internalv1.GatewayNode_ServiceDesc.ServiceName, st)
}

// Deliver hands the deliveries to the gateway. A request for another node
// id (the caller's view of the cluster is stale) answers NOT_HERE for
// every delivery, as does a delivery without a device or an envelope.
func (s *RPCServer) Deliver(ctx context.Context, req *internalv1.DeliverRequest) (*internalv1.DeliverResponse, error) {
	in := req.GetDeliveries()
	out := make([]internalv1.Outcome, len(in))
	for i := range out {
		out[i] = internalv1.Outcome_OUTCOME_NOT_HERE
	}
	if req.GetNode() != s.g.NodeID() {
		s.log.Warn("deliveries for another node", "to_node", req.GetNode(), "n", len(in))
		return &internalv1.DeliverResponse{Outcomes: out}, nil
	}
	ds := make([]delivery.Delivery, 0, len(in))
	idx := make([]int, 0, len(in))
	for i, d := range in {
		if d.GetDevice() == "" || d.GetEnvelope() == nil {
			continue
		}
		ds = append(ds, delivery.Delivery{Device: d.GetDevice(), ConnID: d.GetConnId(), Envelope: d.GetEnvelope()})
		idx = append(idx, i)
	}
	if len(ds) == 0 {
		return &internalv1.DeliverResponse{Outcomes: out}, nil
	}
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-deadlineMargin(time.Until(dl))))
		defer cancel()
	}
	for j, o := range s.g.Deliver(ctx, ds) {
		out[idx[j]] = outcomeToProto(o)
	}
	return &internalv1.DeliverResponse{Outcomes: out}, nil
}

// Drain asks the device's session conn_id to drain its inbox (lazy: at
// the device's next activity), if this node holds it.
func (s *RPCServer) Drain(ctx context.Context, req *internalv1.DrainRequest) (*internalv1.DrainResponse, error) {
	if req.GetNode() == s.g.NodeID() {
		s.g.Drain(ctx, req.GetDevice(), req.GetConnId(), req.GetLazy())
	}
	return &internalv1.DrainResponse{}, nil
}

// Broadcast fans group messages (or their recalls) out to this node's
// matching sessions: the request's envelope, if set, then its envelopes,
// in order (Gateway.BroadcastBatch). A request for another node id matches
// nothing: the caller's view of the cluster is stale, and that node's
// devices replay the messages from the topic log when they reconnect.
func (s *RPCServer) Broadcast(ctx context.Context, req *internalv1.BroadcastRequest) (*internalv1.BroadcastResponse, error) {
	envs := req.GetEnvelopes()
	single := req.GetEnvelope() != nil
	if single {
		envs = append([]*internalv1.Envelope{req.GetEnvelope()}, envs...)
	}
	if req.GetNode() != s.g.NodeID() {
		s.log.Warn("broadcast for another node", "to_node", req.GetNode())
		return &internalv1.BroadcastResponse{MatchedEach: make([]int64, len(envs))}, nil
	}
	for _, env := range envs {
		if env.GetAudience() == nil || env.GetPush().GetMessageId() == "" || env.GetAppId() == "" {
			return nil, status.Error(codes.InvalidArgument, "broadcast needs envelopes with an app, an audience and a message id")
		}
	}
	n, err := s.g.BroadcastBatch(ctx, envs)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	resp := &internalv1.BroadcastResponse{MatchedEach: n}
	if single {
		resp.Matched = n[0]
	}
	return resp, nil
}

// Refresh reloads the device's platform, tags and topics into its
// session, whatever node id the caller named (like Kick).
func (s *RPCServer) Refresh(ctx context.Context, req *internalv1.RefreshRequest) (*internalv1.RefreshResponse, error) {
	if err := s.g.Refresh(ctx, req.GetAppId(), req.GetDeviceId()); err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return &internalv1.RefreshResponse{}, nil
}

// Kick closes the device's session if this gateway holds one, whatever
// node id the caller named: a deleted device must go wherever it is.
func (s *RPCServer) Kick(ctx context.Context, req *internalv1.KickRequest) (*internalv1.KickResponse, error) {
	if err := s.g.Kick(ctx, req.GetAppId(), req.GetDeviceId()); err != nil {
		return nil, fmt.Errorf("gateway rpc: kick: %w", err)
	}
	return &internalv1.KickResponse{}, nil
}

// outcomeToProto is the wire form of a delivery outcome.
func outcomeToProto(o delivery.Outcome) internalv1.Outcome {
	switch o {
	case delivery.Acked:
		return internalv1.Outcome_OUTCOME_ACKED
	case delivery.TimedOut:
		return internalv1.Outcome_OUTCOME_TIMED_OUT
	}
	return internalv1.Outcome_OUTCOME_NOT_HERE
}
