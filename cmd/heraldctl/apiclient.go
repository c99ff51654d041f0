package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// apiClient speaks the Herald REST API.
type apiClient struct {
	base string
	http *http.Client
}

// apiError is an error answer of the API: {"error":{"code","message"}}.
type apiError struct {
	Status  int
	Code    string
	Message string
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

// credentials authenticate one request.
type credentials func(*http.Request)

func bearer(token string) credentials {
	return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+token) }
}

func basic(key, secret string) credentials {
	return func(r *http.Request) { r.SetBasicAuth(key, secret) }
}

type createAppRequest struct {
	Name string `json:"name"`
}

type createAppResponse struct {
	AppID     string `json:"app_id"`
	AppKey    string `json:"app_key"`
	AppSecret string `json:"app_secret"`
}

type registerDeviceRequest struct {
	DeviceID string `json:"device_id,omitempty"`
	Platform string `json:"platform"`
	Alias    string `json:"alias,omitempty"`
}

type registerDeviceResponse struct {
	DeviceID    string `json:"device_id"`
	DeviceToken string `json:"device_token"`
}

type sendRequest struct {
	Audience     audience          `json:"audience"`
	Notification *notification     `json:"notification,omitempty"`
	Data         map[string]string `json:"data,omitempty"`
	Options      *sendOptions      `json:"options,omitempty"`
}

// audience is exactly one of device ids, aliases, a tag expression, a
// topic or all, with an optional platform filter.
type audience struct {
	DeviceIDs []string `json:"device_ids,omitempty"`
	Aliases   []string `json:"aliases,omitempty"`
	Tags      string   `json:"tags,omitempty"`
	Topic     string   `json:"topic,omitempty"`
	All       bool     `json:"all,omitempty"`
	Platform  string   `json:"platform,omitempty"`
}

type notification struct {
	Title       string `json:"title"`
	Body        string `json:"body"`
	Badge       any    `json:"badge,omitempty"` // a number, or "+1"
	Sound       string `json:"sound,omitempty"`
	ClickAction string `json:"click_action,omitempty"`
	Image       string `json:"image,omitempty"`
	Channel     string `json:"channel,omitempty"`
}

type sendOptions struct {
	TTLSeconds        *int64 `json:"ttl_seconds,omitempty"`
	Priority          string `json:"priority,omitempty"`
	CollapseID        string `json:"collapse_id,omitempty"`
	IdempotencyKey    string `json:"idempotency_key,omitempty"`
	SendAt            string `json:"send_at,omitempty"`
	SpreadOverSeconds int64  `json:"spread_over_seconds,omitempty"`
}

type sendResponse struct {
	MessageID        string   `json:"message_id"`
	State            string   `json:"state,omitempty"`
	InvalidDeviceIDs []string `json:"invalid_device_ids,omitempty"`
	CappedDeviceIDs  []string `json:"capped_device_ids,omitempty"`
}

type statusResponse struct {
	MessageID string `json:"message_id"`
	State     string `json:"state"`
	Audience  string `json:"audience,omitempty"`
	SendAt    string `json:"send_at,omitempty"`
	Counts    counts `json:"counts"`
}

type cancelResponse struct {
	MessageID string `json:"message_id"`
	State     string `json:"state"`
}

// counts accepts numbers or strings: protobuf's JSON mapping writes int64 as strings.
type counts struct {
	Targeted  count `json:"targeted"`
	Delivered count `json:"delivered"`
	Pending   count `json:"pending"`
	Expired   count `json:"expired"`
	Failed    count `json:"failed"`
	Collapsed count `json:"collapsed"`
	Clicked   count `json:"clicked"`
	Recalled  count `json:"recalled"`
}

type count int64

func (n *count) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if s == "null" || s == "" {
		*n = 0
		return nil
	}
	var v int64
	if _, err := fmt.Sscan(s, &v); err != nil {
		return fmt.Errorf("count %s: %w", b, err)
	}
	*n = count(v)
	return nil
}

func (a *apiClient) createApp(ctx context.Context, adminToken, name string) (createAppResponse, error) {
	var out createAppResponse
	err := a.do(ctx, http.MethodPost, "/v1/apps", bearer(adminToken), createAppRequest{Name: name}, &out)
	return out, err
}

func (a *apiClient) registerDevice(ctx context.Context, cred credentials, req registerDeviceRequest) (registerDeviceResponse, error) {
	var out registerDeviceResponse
	err := a.do(ctx, http.MethodPost, "/v1/devices", cred, req, &out)
	return out, err
}

func (a *apiClient) deleteDevice(ctx context.Context, cred credentials, deviceID string) error {
	return a.do(ctx, http.MethodDelete, "/v1/devices/"+url.PathEscape(deviceID), cred, nil, nil)
}

func (a *apiClient) send(ctx context.Context, cred credentials, req sendRequest) (sendResponse, error) {
	var out sendResponse
	err := a.do(ctx, http.MethodPost, "/v1/messages", cred, req, &out)
	return out, err
}

func (a *apiClient) status(ctx context.Context, cred credentials, messageID string) (statusResponse, error) {
	var out statusResponse
	err := a.do(ctx, http.MethodGet, "/v1/messages/"+url.PathEscape(messageID), cred, nil, &out)
	return out, err
}

func (a *apiClient) cancel(ctx context.Context, cred credentials, messageID string) (cancelResponse, error) {
	var out cancelResponse
	err := a.do(ctx, http.MethodDelete, "/v1/messages/"+url.PathEscape(messageID), cred, nil, &out)
	return out, err
}

// do sends one request with a JSON body (if in is not nil) and decodes a
// 2xx answer into out (if not nil). Other answers become *apiError.
func (a *apiClient) do(ctx context.Context, method, path string, cred credentials, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	cred(req)
	resp, err := a.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return decodeError(resp.StatusCode, b)
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

func decodeError(status int, body []byte) error {
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err == nil && e.Error.Code != "" {
		return &apiError{Status: status, Code: e.Error.Code, Message: e.Error.Message}
	}
	msg := strings.TrimSpace(string(body))
	if len(msg) > 200 {
		msg = msg[:200] + "..."
	}
	if msg == "" {
		msg = http.StatusText(status)
	}
	return &apiError{Status: status, Code: fmt.Sprintf("http_%d", status), Message: msg}
}
