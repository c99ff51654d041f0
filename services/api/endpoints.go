package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/discovery"
)

// endpointsTTL is how long a device may keep using a list it fetched
// before it should ask again.
const endpointsTTL = 5 * time.Minute

// Endpoints lists the gateway addresses a device should try, best first:
// discovery.Set in a cluster (weighted by spare capacity, in a stable
// order per device), discovery.Static for the all-in-one process.
type Endpoints interface {
	Endpoints(ctx context.Context, appID, deviceID string) ([]discovery.Endpoint, error)
}

type (
	endpointAnswer struct {
		Addr   string `json:"addr"`
		Weight int    `json:"weight"`
	}
	endpointsAnswer struct {
		Endpoints  []endpointAnswer `json:"endpoints"`
		TTLSeconds int              `json:"ttl_seconds"`
	}
)

// Endpoints returns the gateway list for a device of the app with this
// (public) app key. The device need not be registered: the list says
// nothing about it.
func (s *service) Endpoints(ctx context.Context, appKey, deviceID string) ([]discovery.Endpoint, error) {
	if appKey == "" {
		return nil, fmt.Errorf("%w: app_key is required", herald.ErrInvalidArgument)
	}
	if !validDeviceID(deviceID) {
		return nil, fmt.Errorf("%w: device_id must be 1-128 characters of A-Z a-z 0-9 . _ : -", herald.ErrInvalidArgument)
	}
	if s.endpoints == nil {
		return nil, fmt.Errorf("endpoints: no endpoint provider: %w", herald.ErrUnavailable)
	}
	app, err := s.store.AppByKey(ctx, appKey)
	if errors.Is(err, herald.ErrAppNotFound) {
		return nil, fmt.Errorf("%w: no app with this app_key", herald.ErrAppNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("look up app key: %w", err)
	}
	eps, err := s.endpoints.Endpoints(ctx, app.ID, deviceID)
	if err != nil {
		return nil, fmt.Errorf("endpoints: %w", err)
	}
	if len(eps) == 0 {
		return nil, fmt.Errorf("endpoints: no gateway available: %w", herald.ErrUnavailable)
	}
	return eps, nil
}

// getEndpoints answers GET /v1/endpoints?app_key=K&device_id=D. It is
// public: devices call it before connecting, with no secret.
func (h *rest) getEndpoints(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	eps, err := h.svc.Endpoints(r.Context(), q.Get("app_key"), q.Get("device_id"))
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	a := endpointsAnswer{Endpoints: make([]endpointAnswer, len(eps)), TTLSeconds: int(endpointsTTL / time.Second)}
	for i, e := range eps {
		a.Endpoints[i] = endpointAnswer{Addr: e.Addr, Weight: e.Weight}
	}
	// Per device and per moment: shared caches must not keep it.
	w.Header().Set("Cache-Control", "private, max-age=0")
	writeJSON(w, http.StatusOK, a)
}
