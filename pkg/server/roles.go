package server

import (
	"github.com/heraldpush/herald/pkg/discovery"
	"github.com/heraldpush/herald/services/api"
	"github.com/heraldpush/herald/services/dispatcher"
	"github.com/heraldpush/herald/services/gateway"
)

// buildAll wires every role in this process through Go calls.
func (s *Server) buildAll() error {
	e := s.eng
	gw, err := gateway.New(s.gatewayConfig(), gateway.Deps{
		Registry: e.store, Inbox: e.store, Status: e.store, Routes: e.routes, Log: e.log,
		Meter: s.tel.Meter("herald/gateway"),
	}, s.log)
	if err != nil {
		return err
	}
	gws := gateway.NewDirectory(gw)
	disp, err := s.newDispatcher(gws)
	if err != nil {
		return err
	}
	endpoints := discovery.Static(func() string { return advertise(s.cfg.Discovery.AdvertiseAddr, gw.Addr()) })
	a, err := api.New(s.apiConfig(), api.Deps{
		Store: e.store, Log: e.log, Kicker: gws, Endpoints: endpoints, Meter: s.tel.Meter("herald/api"),
	}, s.log)
	if err != nil {
		return err
	}
	s.gw, s.api = gw, a
	s.roles = append(s.roles,
		role{name: "gateway", run: gw.Run, ready: gw.Ready()},
		role{name: "api", run: a.Run, ready: a.Ready()},
		role{name: "dispatcher", run: disp.Run, late: true},
	)
	s.roles = append(s.roles, e.jobs...)
	s.summary = func() []any {
		return []any{"api_http", a.HTTPAddr(), "api_grpc", a.GRPCAddr(), "gateway", gw.Addr()}
	}
	return nil
}

func (s *Server) newDispatcher(gws dispatcher.Gateways) (*dispatcher.Dispatcher, error) {
	c := s.cfg
	return dispatcher.New(dispatcher.Config{
		CommitInterval: c.Dispatcher.CommitInterval,
		MaxInFlight:    c.Dispatcher.MaxInFlight,
		DeliverTimeout: c.Gateway.AckTimeout + c.Gateway.AckTimeout/2,
	}, dispatcher.Deps{
		Log: s.eng.log, Routes: s.eng.routes, Gateways: gws, Store: s.eng.store, Meter: s.tel.Meter("herald/dispatcher"),
	}, s.log)
}
