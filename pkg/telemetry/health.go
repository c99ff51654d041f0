package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// CheckTimeout bounds one readiness check.
const CheckTimeout = 2 * time.Second

// Health answers the liveness and readiness probes of one process.
// A process starts not ready; main calls SetReady(true) once every role
// is serving and SetReady(false) first thing on shutdown.
type Health struct {
	metrics http.Handler

	mu     sync.Mutex
	ready  bool
	was    bool // ready at some point: not ready now means stopping
	checks []check
}

type check struct {
	name string
	fn   func(context.Context) error
}

// NewHealth returns a Health, not ready. metrics is served at /metrics by
// Mount (nil: no /metrics route), usually Telemetry.MetricsHandler().
func NewHealth(metrics http.Handler) *Health {
	return &Health{metrics: metrics}
}

// SetReady marks the process ready or not ready.
func (h *Health) SetReady(ready bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ready = ready
	if ready {
		h.was = true
	}
}

// AddCheck adds a readiness check, run on every /readyz while the process is
// marked ready; a non-nil error makes the process not ready, with
// "<name>: <error>" as the reason. Checks must be quick: each gets CheckTimeout.
func (h *Health) AddCheck(name string, fn func(context.Context) error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.checks = append(h.checks, check{name: name, fn: fn})
}

// Ready returns nil when the process is ready, else an error saying why.
func (h *Health) Ready(ctx context.Context) error {
	h.mu.Lock()
	ready, was := h.ready, h.was
	checks := h.checks[:len(h.checks):len(h.checks)]
	h.mu.Unlock()
	switch {
	case !ready && was:
		return errors.New("stopping")
	case !ready:
		return errors.New("starting")
	}
	for _, c := range checks {
		cctx, cancel := context.WithTimeout(ctx, CheckTimeout)
		err := c.fn(cctx)
		cancel()
		if err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
	}
	return nil
}

// Mount registers GET /healthz, GET /readyz and, with a metrics handler,
// GET /metrics on mux.
//   - /healthz answers 200 "ok" while the process runs (liveness).
//   - /readyz answers 200 "ok" when ready, else 503 "not ready: <reason>".
func (h *Health) Mount(mux *http.ServeMux) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := h.Ready(r.Context()); err != nil {
			writeText(w, http.StatusServiceUnavailable, "not ready: "+err.Error())
			return
		}
		writeText(w, http.StatusOK, "ok")
	})
	if h.metrics != nil {
		mux.Handle("GET /metrics", h.metrics)
	}
}

func writeText(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body + "\n"))
}
