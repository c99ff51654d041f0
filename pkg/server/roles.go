package server

import (
	"github.com/heraldpush/herald/pkg/config"
	"github.com/heraldpush/herald/pkg/discovery"
	"github.com/heraldpush/herald/services/api"
	"github.com/heraldpush/herald/services/dispatcher"
	"github.com/heraldpush/herald/services/gateway"
	"github.com/heraldpush/herald/services/receipts"
	"github.com/heraldpush/herald/services/scheduler"
)

// buildAll wires every role in this process through Go calls.
func (s *Server) buildAll() error {
	e := s.eng
	gw, err := s.newGateway()
	if err != nil {
		return err
	}
	gws := gateway.NewDirectory(gw)
	endpoints := discovery.Static(func() string { return advertise(s.cfg.Discovery.AdvertiseAddr, gw.Addr()) })
	a, err := api.New(s.apiConfig(), api.Deps{
		Store: e.store, Log: e.log, Kicker: gws, Endpoints: endpoints, Receipts: s.receipts, Meter: s.tel.Meter("herald/api"),
	}, s.log)
	if err != nil {
		return err
	}
	dispatch, err := s.dispatchRoles(gws, nil)
	if err != nil {
		return err
	}
	s.gw, s.api = gw, a
	s.roles = append(s.roles,
		role{name: "gateway", run: gw.Run, ready: gw.Ready()},
		role{name: "api", run: a.Run, ready: a.Ready()},
	)
	s.roles = append(s.roles, dispatch...)
	s.roles = append(s.roles, e.jobs...)
	s.summary = func() []any {
		return []any{"api_http", a.HTTPAddr(), "api_grpc", a.GRPCAddr(), "gateway", gw.Addr()}
	}
	return nil
}

// newGateway builds the gateway role (its store, receipts and config).
func (s *Server) newGateway() (*gateway.Gateway, error) {
	e := s.eng
	return gateway.New(s.gatewayConfig(), gateway.Deps{
		Registry: e.store, Inbox: e.store, Status: e.store, Store: e.store, Routes: e.routes, Log: e.log,
		Receipts: s.receipts, Meter: s.tel.Meter("herald/gateway"),
	}, s.log)
}

// dispatchRoles builds what runs in the dispatcher role: the dispatcher,
// the send_at scheduler (one per cluster when leadership is set) and the
// two receipt consumers (statistics, webhooks).
func (s *Server) dispatchRoles(gws dispatcher.Gateways, leadership scheduler.Leadership) ([]role, error) {
	c, e := s.cfg, s.eng
	disp, err := dispatcher.New(dispatcher.Config{
		CommitInterval: c.Dispatcher.CommitInterval,
		MaxInFlight:    c.Dispatcher.MaxInFlight,
		DeliverTimeout: c.Gateway.AckTimeout + c.Gateway.AckTimeout/2,
	}, dispatcher.Deps{
		Log: e.log, Routes: e.routes, Gateways: gws, Store: e.store, Receipts: s.receipts,
		Meter: s.tel.Meter("herald/dispatcher"),
	}, s.log)
	if err != nil {
		return nil, err
	}
	sched, err := scheduler.New(scheduler.Config{Interval: c.Scheduler.Interval}, scheduler.Deps{
		Store: e.store, Log: e.log, Leadership: leadership, Meter: s.tel.Meter("herald/scheduler"),
	}, s.log)
	if err != nil {
		return nil, err
	}
	stats, err := receipts.NewStats(receipts.StatsConfig{}, receipts.StatsDeps{
		Log: e.log, Store: e.store, Meter: s.tel.Meter("herald/receipts"),
	}, s.log)
	if err != nil {
		return nil, err
	}
	hooks, err := receipts.NewWebhooks(receipts.WebhooksConfig{Timeout: c.Receipts.WebhookTimeout}, receipts.WebhooksDeps{
		Log: e.log, Apps: e.store, Meter: s.tel.Meter("herald/receipts"),
	}, s.log)
	if err != nil {
		return nil, err
	}
	return []role{
		{name: "dispatcher", run: disp.Run, late: true},
		{name: "scheduler", run: sched.Run},
		{name: "receipt stats", run: stats.Run},
		{name: "receipt webhooks", run: hooks.Run},
	}, nil
}

// sharedEtcd reports whether other herald processes may share this one's
// store (a cluster): then one scheduler among them fires send_at messages.
func (s *Server) sharedEtcd() bool {
	return s.eng.etcd != nil && (s.cfg.Target != config.TargetAll || len(s.cfg.Discovery.EtcdEndpoints) > 0)
}
