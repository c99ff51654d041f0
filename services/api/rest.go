package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/store"
)

// Authentication challenges sent with 401 answers.
const (
	challengeBasic  = `Basic realm="herald"`
	challengeBearer = `Bearer realm="herald"`
)

// rest is the REST/JSON API: it routes with a ServeMux and answers
// unrouted requests (404, 405) in the API's JSON error shape.
type rest struct {
	svc     *service
	mux     *http.ServeMux
	maxBody int64
	metrics *metrics
	logger  *slog.Logger
}

func newREST(svc *service, cfg Config, m *metrics, logger *slog.Logger) *rest {
	h := &rest{svc: svc, mux: http.NewServeMux(), maxBody: int64(cfg.MaxBodyBytes), metrics: m, logger: logger}
	h.mux.HandleFunc("POST /v1/apps", h.createApp)
	h.mux.HandleFunc("POST /v1/devices", h.registerDevice)
	h.mux.HandleFunc("GET /v1/devices/{device_id}", h.getDevice)
	h.mux.HandleFunc("DELETE /v1/devices/{device_id}", h.deleteDevice)
	h.mux.HandleFunc("PUT /v1/devices/{device_id}/alias", h.setAlias)
	h.mux.HandleFunc("PUT /v1/devices/{device_id}/tags/{tag}", h.addTag)
	h.mux.HandleFunc("DELETE /v1/devices/{device_id}/tags/{tag}", h.removeTag)
	h.mux.HandleFunc("PUT /v1/devices/{device_id}/topics/{topic}", h.subscribe)
	h.mux.HandleFunc("DELETE /v1/devices/{device_id}/topics/{topic}", h.unsubscribe)
	h.mux.HandleFunc("PUT /v1/devices/{device_id}/badge", h.setBadge)
	h.mux.HandleFunc("POST /v1/tags", h.updateTags)
	h.mux.HandleFunc("POST /v1/messages", h.send)
	h.mux.HandleFunc("GET /v1/messages/{message_id}", h.getMessage)
	h.mux.HandleFunc("DELETE /v1/messages/{message_id}", h.cancelMessage)
	h.mux.HandleFunc("GET /v1/stats", h.getStats)
	h.mux.HandleFunc("PATCH /v1/app", h.updateSettings)
	h.mux.HandleFunc("PATCH /v1/apps/{app_id}", h.updateApp)
	h.mux.HandleFunc("GET /v1/endpoints", h.getEndpoints)
	if cfg.Mount != nil {
		cfg.Mount(h.mux)
	}
	return h
}

// JSON bodies.
type (
	createAppBody struct {
		Name string `json:"name"`
	}
	createAppAnswer struct {
		AppID     string `json:"app_id"`
		AppKey    string `json:"app_key"`
		AppSecret string `json:"app_secret"`
	}
	registerDeviceBody struct {
		DeviceID string   `json:"device_id"`
		Platform string   `json:"platform"`
		Alias    string   `json:"alias"`
		Tags     []string `json:"tags"`
	}
	registerDeviceAnswer struct {
		DeviceID    string `json:"device_id"`
		DeviceToken string `json:"device_token"`
	}
	sendAnswer struct {
		MessageID        string   `json:"message_id"`
		State            string   `json:"state"`
		InvalidDeviceIDs []string `json:"invalid_device_ids,omitempty"`
		CappedDeviceIDs  []string `json:"capped_device_ids,omitempty"`
	}
	countsAnswer struct {
		Targeted  int64 `json:"targeted"`
		Delivered int64 `json:"delivered"`
		Clicked   int64 `json:"clicked"`
		Pending   int64 `json:"pending"`
		Expired   int64 `json:"expired"`
		Failed    int64 `json:"failed"`
		Collapsed int64 `json:"collapsed"`
		Recalled  int64 `json:"recalled"`
	}
	messageAnswer struct {
		MessageID string       `json:"message_id"`
		State     string       `json:"state"`
		Audience  string       `json:"audience"`
		SendAt    string       `json:"send_at,omitempty"`
		Counts    countsAnswer `json:"counts"`
	}
	cancelAnswer struct {
		MessageID string `json:"message_id"`
		State     string `json:"state"`
	}
	errorAnswer struct {
		Error errorDetail `json:"error"`
	}
	errorDetail struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
)

func (h *rest) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
	_, pattern := h.mux.Handler(r)
	route := pattern
	if pattern == "" {
		route = "unmatched"
		h.unrouted(sw, r)
	} else {
		h.mux.ServeHTTP(sw, r)
	}
	h.metrics.request(r.Context(), route, strconv.Itoa(sw.status), time.Since(start))
}

// probeMethods are tried to tell 405 from 404.
var probeMethods = []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions}

// unrouted answers a request that no pattern matches.
func (h *rest) unrouted(w http.ResponseWriter, r *http.Request) {
	var allowed []string
	for _, m := range probeMethods {
		if m == r.Method {
			continue
		}
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, p := h.mux.Handler(probe); p != "" {
			allowed = append(allowed, m)
		}
	}
	if len(allowed) > 0 {
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		writeErrorCode(w, http.StatusMethodNotAllowed, codeMethodNotAllowed,
			fmt.Sprintf("method %s is not allowed on %s", r.Method, r.URL.Path))
		return
	}
	writeErrorCode(w, http.StatusNotFound, codeNotFound, fmt.Sprintf("no such path: %s", r.URL.Path))
}

func (h *rest) createApp(w http.ResponseWriter, r *http.Request) {
	if err := h.svc.authorizeAdmin(bearerToken(r.Header.Get("Authorization"))); err != nil {
		w.Header().Set("WWW-Authenticate", challengeBearer)
		h.writeError(w, r, err)
		return
	}
	var b createAppBody
	if err := h.readJSON(w, r, &b); err != nil {
		h.writeError(w, r, err)
		return
	}
	creds, err := h.svc.CreateApp(r.Context(), b.Name)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, createAppAnswer{AppID: creds.AppID, AppKey: creds.AppKey, AppSecret: creds.AppSecret})
}

func (h *rest) registerDevice(w http.ResponseWriter, r *http.Request) {
	app, ok := h.authApp(w, r)
	if !ok {
		return
	}
	var b registerDeviceBody
	if err := h.readJSON(w, r, &b); err != nil {
		h.writeError(w, r, err)
		return
	}
	id, token, err := h.svc.RegisterDevice(r.Context(), app, deviceRegistration(b))
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, registerDeviceAnswer{DeviceID: id, DeviceToken: token})
}

func (h *rest) deleteDevice(w http.ResponseWriter, r *http.Request) {
	app, ok := h.authApp(w, r)
	if !ok {
		return
	}
	if err := h.svc.DeleteDevice(r.Context(), app, r.PathValue("device_id")); err != nil {
		h.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *rest) send(w http.ResponseWriter, r *http.Request) {
	app, ok := h.authApp(w, r)
	if !ok {
		return
	}
	body, err := h.readBody(w, r)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	v, err := decodeSendRequest(body, h.svc.limits, h.svc.now())
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	res, err := h.svc.Send(r.Context(), app, v)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, sendAnswer(res))
}

func (h *rest) cancelMessage(w http.ResponseWriter, r *http.Request) {
	app, ok := h.authApp(w, r)
	if !ok {
		return
	}
	id := r.PathValue("message_id")
	state, err := h.svc.CancelMessage(r.Context(), app, id)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, cancelAnswer{MessageID: id, State: state})
}

func (h *rest) getMessage(w http.ResponseWriter, r *http.Request) {
	app, ok := h.authApp(w, r)
	if !ok {
		return
	}
	st, err := h.svc.MessageStatus(r.Context(), app, r.PathValue("message_id"))
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	c := st.Counts
	writeJSON(w, http.StatusOK, messageAnswer{
		MessageID: st.MessageID,
		State:     st.State,
		Audience:  st.Audience,
		SendAt:    rfc3339(st.SendAt),
		Counts: countsAnswer{
			Targeted: c.Targeted, Delivered: c.Delivered, Clicked: c.Clicked, Pending: c.Pending,
			Expired: c.Expired, Failed: c.Failed, Collapsed: c.Collapsed, Recalled: c.Recalled,
		},
	})
}

// authApp authenticates the app from HTTP Basic credentials, or answers 401.
func (h *rest) authApp(w http.ResponseWriter, r *http.Request) (store.App, bool) {
	key, secret, _ := r.BasicAuth()
	app, err := h.svc.authenticateApp(r.Context(), key, secret)
	if err != nil {
		h.writeError(w, r, err)
		return store.App{}, false
	}
	return app, true
}

// readBody reads the request body, at most maxBody bytes.
func (h *rest) readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.maxBody))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return nil, fmt.Errorf("%w: the request body is larger than %d bytes", herald.ErrTooLarge, tooBig.Limit)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: read request body: %s", herald.ErrInvalidArgument, err.Error())
	}
	return body, nil
}

func (h *rest) readJSON(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := h.readBody(w, r)
	if err != nil {
		return err
	}
	return decodeJSON(body, v)
}

// writeError answers err in the API's error shape.
func (h *rest) writeError(w http.ResponseWriter, r *http.Request, err error) {
	c := classify(err)
	if c.status >= 500 {
		h.logger.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "code", c.code, "err", err)
	}
	if c.status == http.StatusUnauthorized && w.Header().Get("WWW-Authenticate") == "" {
		w.Header().Set("WWW-Authenticate", challengeBasic)
	}
	if secs, ok := retryAfter(err); ok {
		w.Header().Set("Retry-After", strconv.Itoa(secs))
	}
	writeErrorCode(w, c.status, c.code, publicMessage(c, err))
}

func writeErrorCode(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, errorAnswer{Error: errorDetail{Code: code, Message: msg}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Only the fixed answer types above are marshalled; they cannot fail.
		status = http.StatusInternalServerError
		b = []byte(`{"error":{"code":"internal","message":"internal error"}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// bearerToken returns the token of an "Authorization: Bearer <token>" value.
func bearerToken(h string) string {
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}

// statusWriter remembers the status a handler wrote.
type statusWriter struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wroteHeader && code >= 200 {
		w.status = code
		w.wroteHeader = true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wroteHeader = true
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
