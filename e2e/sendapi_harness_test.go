package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	herald "github.com/heraldpush/herald/sdk/go"
)

// Helpers of the send-API tests (issue #4): any audience, full message
// status, devices with platforms, aliases and tags, fleets of devices.

// apiFor is newAPI for a platform that stops when the test ends: the
// client's idle connections are closed first, so the api's graceful
// shutdown does not wait for connections the client dialed but never used
// (net/http counts those as active for 5 s).
func apiFor(t testing.TB, base string) *apiClient {
	a := newAPI(base)
	t.Cleanup(a.http.CloseIdleConnections)
	return a
}

// msgAnswer is the answer to POST /v1/messages.
type msgAnswer struct {
	MessageID        string   `json:"message_id"`
	State            string   `json:"state"`
	InvalidDeviceIDs []string `json:"invalid_device_ids"`
	CappedDeviceIDs  []string `json:"capped_device_ids"`
}

// message is a POST /v1/messages body with any audience shape ("all" or an
// object).
type message struct {
	Audience     any               `json:"audience"`
	Notification map[string]any    `json:"notification,omitempty"`
	Data         map[string]string `json:"data,omitempty"`
	Options      map[string]any    `json:"options,omitempty"`
}

// post sends a message; the answer is decoded only on success.
func (a *apiClient) post(t testing.TB, ap app, body any) (int, []byte, msgAnswer) {
	t.Helper()
	var out msgAnswer
	code, raw := a.do(t, "POST", "/v1/messages", ap.auth, body, &out)
	return code, raw, out
}

// accepted reports whether a POST /v1/messages status code means accepted.
func accepted(code int) bool { return code == http.StatusOK || code == http.StatusAccepted }

// sendOK posts a message and requires it accepted with a message id.
func (a *apiClient) sendOK(t testing.TB, ap app, body any) msgAnswer {
	t.Helper()
	code, raw, out := a.post(t, ap, body)
	if !accepted(code) || out.MessageID == "" {
		t.Fatalf("send %s: %d %s", brief(body), code, raw)
	}
	return out
}

// sendOKE is sendOK for goroutines other than the test's.
func (a *apiClient) sendOKE(ap app, body any) (string, error) {
	var out msgAnswer
	code, raw, err := a.doE("POST", "/v1/messages", ap.auth, body, &out)
	if err != nil {
		return "", err
	}
	if !accepted(code) || out.MessageID == "" {
		return "", &sendError{Code: code, Body: string(raw)}
	}
	return out.MessageID, nil
}

// brief is v for a failure message, cut at 300 bytes.
func brief(v any) string {
	s := fmt.Sprintf("%v", v)
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

// fullCounts are the counts of GET /v1/messages/{id}.
type fullCounts struct {
	Targeted  int64 `json:"targeted"`
	Delivered int64 `json:"delivered"`
	Clicked   int64 `json:"clicked"`
	Pending   int64 `json:"pending"`
	Expired   int64 `json:"expired"`
	Failed    int64 `json:"failed"`
	Collapsed int64 `json:"collapsed"`
	Recalled  int64 `json:"recalled"`
}

// fullStatus is GET /v1/messages/{id}.
type fullStatus struct {
	MessageID string     `json:"message_id"`
	State     string     `json:"state"`
	Audience  any        `json:"audience"`
	SendAt    string     `json:"send_at"`
	Counts    fullCounts `json:"counts"`
}

func (a *apiClient) fullStatus(t testing.TB, ap app, id string) fullStatus {
	t.Helper()
	var out fullStatus
	if code, raw := a.do(t, "GET", "/v1/messages/"+id, ap.auth, nil, &out); code != http.StatusOK {
		t.Fatalf("status %s: %d %s", id, code, raw)
	}
	return out
}

// waitStatus polls a message's status until ok holds.
func (a *apiClient) waitStatus(t testing.TB, ap app, id string, within time.Duration, what string, ok func(fullStatus) bool) fullStatus {
	t.Helper()
	var st fullStatus
	eventually(t, within, what, func() (bool, string) {
		st = a.fullStatus(t, ap, id)
		return ok(st), fmt.Sprintf("message %s: %+v", id, st)
	})
	return st
}

// ok2xx fails the test unless code is 2xx.
func ok2xx(t testing.TB, what string, code int, raw []byte) {
	t.Helper()
	if code < 200 || code > 299 {
		t.Fatalf("%s: %d %s", what, code, raw)
	}
}

// devSpec is a device to register.
type devSpec struct {
	ID       string   `json:"device_id"`
	Platform string   `json:"platform"`
	Alias    string   `json:"alias,omitempty"`
	Tags     []string `json:"tags,omitempty"`
}

func (a *apiClient) registerSpecE(ap app, s devSpec) (string, error) {
	if s.Platform == "" {
		s.Platform = "android"
	}
	var out struct {
		Token string `json:"device_token"`
	}
	code, raw, err := a.doE("POST", "/v1/devices", ap.auth, s, &out)
	if err != nil {
		return "", err
	}
	if code != http.StatusCreated || out.Token == "" {
		return "", fmt.Errorf("register %s: %d %s", s.ID, code, raw)
	}
	return out.Token, nil
}

// registerSpecs registers the devices from 32 workers and returns them,
// not connected, pointed at the gateway gw.
func (a *apiClient) registerSpecs(t testing.TB, ap app, gw string, specs []devSpec) []*device {
	t.Helper()
	devs := make([]*device, len(specs))
	err := parallel(len(specs), 32, func(i int) error {
		tok, err := a.registerSpecE(ap, specs[i])
		if err != nil {
			return err
		}
		devs[i] = newDevice(ap, specs[i].ID, tok, gw)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return devs
}

// connectEach connects the devices from 64 workers; they disconnect when
// the test ends.
func connectEach(t testing.TB, devs []*device) {
	t.Helper()
	start := time.Now()
	var mu sync.Mutex
	var connected []*device
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		_ = parallel(len(connected), 64, func(i int) error {
			connected[i].disconnect(t)
			return nil
		})
	})
	err := parallel(len(devs), 64, func(i int) error {
		if err := devs[i].connectE(); err != nil {
			return err
		}
		mu.Lock()
		connected = append(connected, devs[i])
		mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) > 100 {
		t.Logf("%d devices connected in %s", len(devs), time.Since(start))
	}
}

// smallDedup makes the devices' SDK clients remember 256 handled message
// ids instead of the default 10,000: the SDK allocates its dedup set up
// front (about 0.5 MB per client), too much for thousands of clients in one
// test process; these tests send each device a few messages.
func smallDedup(devs []*device) {
	for _, d := range devs {
		d.conf = func(c *herald.Config) { c.DedupSize = 256 }
	}
}

// parallel runs fn(0..n-1) from the given number of workers and returns
// the first error.
func parallel(n, workers int, fn func(i int) error) error {
	jobs := make(chan int)
	var once sync.Once
	var first error
	var wg sync.WaitGroup
	for w := 0; w < min(workers, n); w++ {
		wg.Go(func() {
			for i := range jobs {
				if err := fn(i); err != nil {
					once.Do(func() { first = err })
				}
			}
		})
	}
	for i := 0; i < n; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	return first
}

// times returns how many times the app was handed message id.
func (d *device) times(id string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.seen[id]
}

// receivedAt returns when the app was first handed message id.
func (d *device) receivedAt(id string) (time.Time, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, m := range d.got {
		if m.ID == id {
			return d.gotAt[i], true
		}
	}
	return time.Time{}, false
}

// waitAllHave waits until every device was handed message id.
func waitAllHave(t testing.TB, devs []*device, id string, within time.Duration) {
	t.Helper()
	eventually(t, within, "every device has message "+id, func() (bool, string) {
		missing := 0
		example := ""
		for _, d := range devs {
			if d.times(id) == 0 {
				if missing == 0 {
					example = d.id
				}
				missing++
			}
		}
		return missing == 0, fmt.Sprintf("%d of %d devices lack it (e.g. %s)", missing, len(devs), example)
	})
}

// wantSets is device id -> the message ids it must have, each once.
type wantSets map[string]map[string]bool

func (w wantSets) add(id string, devs ...*device) {
	for _, d := range devs {
		if w[d.id] == nil {
			w[d.id] = map[string]bool{}
		}
		w[d.id][id] = true
	}
}

// bulkTags adds and removes tags of devices with POST /v1/tags.
func (a *apiClient) bulkTags(t testing.TB, ap app, ids []string, add, remove []string) {
	t.Helper()
	code, raw := a.do(t, "POST", "/v1/tags", ap.auth, map[string]any{"device_ids": ids, "add": add, "remove": remove}, nil)
	ok2xx(t, "POST /v1/tags", code, raw)
}

// devicePath is /v1/devices/{id}/<rest...> with escaped segments.
func devicePath(id string, rest ...string) string {
	p := "/v1/devices/" + url.PathEscape(id)
	for _, r := range rest {
		p += "/" + url.PathEscape(r)
	}
	return p
}

func (a *apiClient) putTag(t testing.TB, ap app, dev, tag string) {
	t.Helper()
	code, raw := a.do(t, "PUT", devicePath(dev, "tags", tag), ap.auth, nil, nil)
	ok2xx(t, "PUT tag "+tag+" on "+dev, code, raw)
}

func (a *apiClient) deleteTag(t testing.TB, ap app, dev, tag string) {
	t.Helper()
	code, raw := a.do(t, "DELETE", devicePath(dev, "tags", tag), ap.auth, nil, nil)
	ok2xx(t, "DELETE tag "+tag+" on "+dev, code, raw)
}

func (a *apiClient) putTopic(t testing.TB, ap app, dev, topic string) {
	t.Helper()
	code, raw := a.do(t, "PUT", devicePath(dev, "topics", topic), ap.auth, nil, nil)
	ok2xx(t, "PUT topic "+topic+" on "+dev, code, raw)
}

func (a *apiClient) deleteTopic(t testing.TB, ap app, dev, topic string) {
	t.Helper()
	code, raw := a.do(t, "DELETE", devicePath(dev, "topics", topic), ap.auth, nil, nil)
	ok2xx(t, "DELETE topic "+topic+" on "+dev, code, raw)
}

func (a *apiClient) putAlias(t testing.TB, ap app, dev, alias string) {
	t.Helper()
	code, raw := a.do(t, "PUT", devicePath(dev, "alias"), ap.auth, map[string]string{"alias": alias}, nil)
	ok2xx(t, "PUT alias of "+dev, code, raw)
}

// patchApp changes an app's limits or webhook as the admin.
func (a *apiClient) patchApp(t testing.TB, ap app, fields map[string]any) {
	t.Helper()
	code, raw := a.do(t, "PATCH", "/v1/apps/"+url.PathEscape(ap.ID), admin, fields, nil)
	ok2xx(t, "PATCH /v1/apps/"+ap.ID, code, raw)
}

// errorBody is the API's error answer.
type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// apiError returns the code and message of an error answer
// {"error":{"code","message"}}.
func apiError(raw []byte) (string, string) {
	var e errorBody
	if err := json.Unmarshal(raw, &e); err != nil {
		return "", strings.TrimSpace(string(raw))
	}
	return e.Error.Code, e.Error.Message
}
