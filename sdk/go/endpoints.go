package herald

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// DefaultEndpointsTimeout bounds one fetch of the endpoint list.
const DefaultEndpointsTimeout = 5 * time.Second

// maxEndpointsBody bounds the endpoint list answer read.
const maxEndpointsBody = 1 << 20

// defaultEndpointsTTL is used when the answer names no TTL.
const defaultEndpointsTTL = 5 * time.Minute

// endpointList is a fetched gateway list.
type endpointList struct {
	addrs   []string
	expires time.Time
}

// endpointsAnswer is the JSON of GET /v1/endpoints.
type endpointsAnswer struct {
	Endpoints []struct {
		Addr   string `json:"addr"`
		Weight int    `json:"weight"`
	} `json:"endpoints"`
	TTLSeconds int64 `json:"ttl_seconds"`
}

// parseEndpoints reads a GET /v1/endpoints answer: the valid host:port
// addresses in order, without duplicates, and the list's TTL.
func parseEndpoints(body []byte) ([]string, time.Duration, error) {
	var a endpointsAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		return nil, 0, fmt.Errorf("decode endpoint list: %w", err)
	}
	var addrs []string
	seen := make(map[string]bool)
	for _, e := range a.Endpoints {
		if _, _, err := net.SplitHostPort(e.Addr); err != nil || seen[e.Addr] {
			continue
		}
		seen[e.Addr] = true
		addrs = append(addrs, e.Addr)
	}
	if len(addrs) == 0 {
		return nil, 0, errors.New("endpoint list holds no usable address")
	}
	ttl := defaultEndpointsTTL
	if a.TTLSeconds > 0 && a.TTLSeconds < int64(24*time.Hour/time.Second) {
		ttl = time.Duration(a.TTLSeconds) * time.Second
	}
	return addrs, ttl, nil
}

// endpointsRequest builds the endpoint list request URL for base.
func endpointsRequestURL(base, appKey, deviceID string) (string, error) {
	u, err := url.Parse(strings.TrimRight(base, "/"))
	if err != nil {
		return "", err
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return "", fmt.Errorf("%q: want an http or https URL", base)
	}
	u.Path += "/v1/endpoints"
	u.RawQuery = url.Values{"app_key": {appKey}, "device_id": {deviceID}}.Encode()
	return u.String(), nil
}

// fetchEndpoints asks the API for this device's gateway list.
func (c *Client) fetchEndpoints(ctx context.Context) (endpointList, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.EndpointsTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.endpointsURL, nil)
	if err != nil {
		return endpointList{}, err
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "herald-sdk-go/"+Version)
	resp, err := c.http.Do(req)
	if err != nil {
		return endpointList{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxEndpointsBody))
	if err != nil {
		return endpointList{}, fmt.Errorf("read endpoint list: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return endpointList{}, fmt.Errorf("endpoint list: HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(body[:min(len(body), 200)])))
	}
	addrs, ttl, err := parseEndpoints(body)
	if err != nil {
		return endpointList{}, err
	}
	return endpointList{addrs: addrs, expires: time.Now().Add(ttl)}, nil
}

// gateways returns the addresses to try next, best first. With an
// EndpointsURL it fetches the list; when the API cannot be reached it
// falls back to the last good list, then Config.Addrs.
func (c *Client) gateways(ctx context.Context) []string {
	if c.endpointsURL == "" {
		return c.cfg.Addrs
	}
	l, err := c.fetchEndpoints(ctx)
	if err == nil {
		c.lastGood = l
		c.log.Info("gateway list fetched", "n", len(l.addrs), "first", l.addrs[0])
		return l.addrs
	}
	if ctx.Err() != nil {
		return nil
	}
	out := append([]string(nil), c.lastGood.addrs...)
	for _, a := range c.cfg.Addrs {
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	c.log.Warn("gateway list unavailable; using the fallback addresses", "err", err, "n", len(out))
	return out
}

// listStale reports whether the fetched list's TTL has passed.
func (c *Client) listStale() bool {
	return c.endpointsURL != "" && time.Now().After(c.lastGood.expires)
}
