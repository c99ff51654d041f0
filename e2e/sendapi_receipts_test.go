package e2e

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"
)

// webhookReceiver is an app's webhook endpoint: it verifies each POST's
// X-Herald-Signature (HMAC-SHA256 of the body with the app secret) and
// records the distinct (message, event, device) receipts it was sent.
type webhookReceiver struct {
	appID, secret string

	mu       sync.Mutex
	posts    int
	problems []string
	got      map[string]map[string]bool // message id + " " + event -> device ids
}

func newWebhookReceiver(t *testing.T, ap app) (*webhookReceiver, *httptest.Server) {
	h := &webhookReceiver{appID: ap.ID, secret: ap.Secret, got: map[string]map[string]bool{}}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return h, srv
}

func (h *webhookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.posts++
	problem := func(format string, args ...any) {
		h.problems = append(h.problems, fmt.Sprintf(format, args...))
		http.Error(w, "bad request", http.StatusBadRequest)
	}
	if err != nil {
		problem("read body: %v", err)
		return
	}
	mac := hmac.New(sha256.New, []byte(h.secret))
	mac.Write(body)
	want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
	if got := r.Header.Get("X-Herald-Signature"); !hmac.Equal([]byte(got), []byte(want)) {
		problem("X-Herald-Signature %q, want %q", got, want)
		return
	}
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
		problem("%s with Content-Type %q, want POST application/json", r.Method, r.Header.Get("Content-Type"))
		return
	}
	var batch struct {
		Receipts []struct {
			AppID     string `json:"app_id"`
			MessageID string `json:"message_id"`
			DeviceID  string `json:"device_id"`
			Event     string `json:"event"`
			Count     int64  `json:"count"`
			AtMS      int64  `json:"at_ms"`
		} `json:"receipts"`
	}
	if err := json.Unmarshal(body, &batch); err != nil || len(batch.Receipts) == 0 {
		problem("body %q: %v", body, err)
		return
	}
	for _, rc := range batch.Receipts {
		if rc.AppID != h.appID || rc.MessageID == "" || rc.AtMS == 0 || rc.Event == "sent" {
			problem("receipt %+v: want app %s, a message id, a time, and no sent events", rc, h.appID)
			return
		}
		k := rc.MessageID + " " + rc.Event
		if h.got[k] == nil {
			h.got[k] = map[string]bool{}
		}
		h.got[k][rc.DeviceID] = true
	}
	w.WriteHeader(http.StatusOK)
}

// devices returns the sorted device ids of the receipts for a message's event.
// await waits until the receiver has, for every "<message id> <event>" of
// want, exactly those devices, failing at once on a badly signed post.
func (h *webhookReceiver) await(t *testing.T, want map[string][]string, within time.Duration) {
	t.Helper()
	eventually(t, within, "the webhook got every receipt", func() (bool, string) {
		h.mu.Lock()
		problems := slices.Clone(h.problems)
		h.mu.Unlock()
		if len(problems) > 0 {
			t.Fatalf("webhook receiver: %d bad posts, e.g. %s", len(problems), problems[0])
		}
		for k, w := range want {
			var id, event string
			fmt.Sscan(k, &id, &event)
			if got := h.devices(id, event); !slices.Equal(got, w) {
				return false, fmt.Sprintf("%s: devices %v, want %v", k, got, w)
			}
		}
		return true, ""
	})
}

func (h *webhookReceiver) devices(id, event string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for d := range h.got[id+" "+event] {
		out = append(out, d)
	}
	sort.Strings(out)
	return out
}

func idsOf(devs []*device) []string {
	var out []string
	for _, d := range devs {
		out = append(out, d.id)
	}
	sort.Strings(out)
	return out
}

// statsTotals is what GET /v1/stats says over the range.
type statsTotals struct {
	Sent, Delivered, Clicked int64
}

// stats reads GET /v1/stats and sums its buckets; if the answer has a
// total it must equal the sum.
func (a *apiClient) stats(t testing.TB, ap app, from, to time.Time, granularity string) statsTotals {
	t.Helper()
	type counts struct {
		Sent      int64 `json:"sent"`
		Delivered int64 `json:"delivered"`
		Clicked   int64 `json:"clicked"`
	}
	var out struct {
		Buckets []counts `json:"buckets"`
		Total   *counts  `json:"total"`
	}
	q := url.Values{"from": {from.UTC().Format(time.RFC3339)}, "to": {to.UTC().Format(time.RFC3339)}, "granularity": {granularity}}
	code, raw := a.do(t, "GET", "/v1/stats?"+q.Encode(), ap.auth, nil, &out)
	if code != http.StatusOK {
		t.Fatalf("GET /v1/stats: %d %s", code, raw)
	}
	var sum counts
	for _, b := range out.Buckets {
		sum.Sent += b.Sent
		sum.Delivered += b.Delivered
		sum.Clicked += b.Clicked
	}
	if out.Total != nil && *out.Total != sum {
		t.Fatalf("GET /v1/stats: total %+v is not the sum of the buckets %+v: %s", *out.Total, sum, raw)
	}
	return statsTotals{sum.Sent, sum.Delivered, sum.Clicked}
}

// Send API acceptance 6: devices ack (the SDK) and report clicks and opens
// (SDK ReportClick/ReportOpen); the app's webhook receiver gets every
// delivered, clicked and opened receipt, signed; GET /v1/messages/{id} and
// GET /v1/stats count the truth. A second app whose webhook endpoint is
// down gets its deliveries as fast as an app without a webhook.
func TestReceiptsWebhookAndStats(t *testing.T) {
	p := startPlatform(t, testConfig(t))
	api := apiFor(t, p.api)
	from := time.Now().Add(-time.Hour)

	t.Run("webhook and counts equal the truth", func(t *testing.T) {
		ap := api.createApp(t, "receipts")
		hook, srv := newWebhookReceiver(t, ap)
		code, raw := api.do(t, "PATCH", "/v1/app", ap.auth, map[string]string{"webhook_url": srv.URL + "/herald"}, nil)
		ok2xx(t, "PATCH /v1/app", code, raw)

		specs := make([]devSpec, 20)
		for i := range specs {
			specs[i] = devSpec{ID: fmt.Sprintf("rc-%02d", i), Tags: []string{"fans"}}
		}
		devs := api.registerSpecs(t, ap, p.gw, specs)
		connectEach(t, devs)
		uni := api.sendOK(t, ap, message{Audience: toDevices(idsOf(devs[:10])...), Notification: map[string]any{"title": "unicast"}}).MessageID
		grp := api.sendOK(t, ap, message{Audience: map[string]any{"tags": "fans"}, Notification: map[string]any{"title": "group"}}).MessageID
		waitAllHave(t, devs[:10], uni, 20*time.Second)
		waitAllHave(t, devs, grp, 20*time.Second)
		for _, d := range devs[:5] {
			if err := d.client.ReportClick(t.Context(), uni); err != nil {
				t.Fatalf("%s: ReportClick: %v", d.id, err)
			}
		}
		for _, d := range devs[:7] {
			if err := d.client.ReportClick(t.Context(), grp); err != nil {
				t.Fatalf("%s: ReportClick: %v", d.id, err)
			}
		}
		for _, d := range devs[10:12] {
			if err := d.client.ReportOpen(t.Context(), grp); err != nil {
				t.Fatalf("%s: ReportOpen: %v", d.id, err)
			}
		}

		want := map[string][]string{
			uni + " delivered": idsOf(devs[:10]),
			uni + " clicked":   idsOf(devs[:5]),
			grp + " delivered": idsOf(devs),
			grp + " clicked":   idsOf(devs[:7]),
			grp + " opened":    idsOf(devs[10:12]),
		}
		hook.await(t, want, 30*time.Second)
		hook.mu.Lock()
		for k := range hook.got {
			if _, ok := want[k]; !ok {
				t.Errorf("webhook got unexpected receipts %s for %v", k, hook.got[k])
			}
		}
		t.Logf("webhook: %d signed posts", hook.posts)
		hook.mu.Unlock()

		api.waitStatus(t, ap, uni, 20*time.Second, "unicast counts", func(st fullStatus) bool {
			return st.Counts.Targeted == 10 && st.Counts.Delivered == 10 && st.Counts.Clicked == 5 && st.Counts.Pending == 0
		})
		api.waitStatus(t, ap, grp, 20*time.Second, "group counts", func(st fullStatus) bool {
			return st.Counts.Targeted == 20 && st.Counts.Delivered == 20 && st.Counts.Clicked == 7
		})
		wantStats := statsTotals{Sent: 30, Delivered: 30, Clicked: 12}
		to := time.Now().Add(time.Hour)
		for _, g := range []string{"hour", "day"} {
			eventually(t, 20*time.Second, "stats by "+g+" equal the truth", func() (bool, string) {
				got := api.stats(t, ap, from, to, g)
				return got == wantStats, fmt.Sprintf("%+v, want %+v", got, wantStats)
			})
		}
	})

	t.Run("a webhook that is down does not slow deliveries", func(t *testing.T) {
		// Three apps: no webhook; a webhook at a closed port (refused at
		// once); a webhook that accepts connections and never answers.
		base := api.createApp(t, "no-webhook")
		down := api.createApp(t, "webhook-down")
		hung := api.createApp(t, "webhook-hung")
		api.patchApp(t, down, map[string]any{"webhook_url": "http://" + freePort(t) + "/gone"})
		api.patchApp(t, hung, map[string]any{"webhook_url": "http://" + blackhole(t) + "/hook"})
		mk := func(ap app, prefix string) []*device {
			specs := make([]devSpec, 50)
			for i := range specs {
				specs[i] = devSpec{ID: fmt.Sprintf("%s-%02d", prefix, i)}
			}
			devs := api.registerSpecs(t, ap, p.gw, specs)
			connectEach(t, devs)
			return devs
		}
		baseDevs, downDevs, hungDevs := mk(base, "base"), mk(down, "down"), mk(hung, "hung")
		want := wantSets{}
		// round sends perDevice messages to every device and returns how
		// long until all of them arrived.
		round := func(ap app, devs []*device, perDevice int) time.Duration {
			start := time.Now()
			var mu sync.Mutex
			err := parallel(len(devs)*perDevice, 16, func(i int) error {
				d := devs[i%len(devs)]
				id, err := api.sendOKE(ap, message{Audience: toDevices(d.id), Data: map[string]string{"n": fmt.Sprint(i)}})
				if err != nil {
					return err
				}
				mu.Lock()
				want.add(id, d)
				mu.Unlock()
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			expectExactly(t, devs, want, 60*time.Second)
			return time.Since(start)
		}
		// Warm up: the failing apps' receipts are being retried from now on.
		round(down, downDevs, 1)
		round(hung, hungDevs, 1)
		round(base, baseDevs, 1)
		const perDevice = 10
		b1 := round(base, baseDevs, perDevice)
		d1 := round(down, downDevs, perDevice)
		h1 := round(hung, hungDevs, perDevice)
		b2 := round(base, baseDevs, perDevice)
		d2 := round(down, downDevs, perDevice)
		h2 := round(hung, hungDevs, perDevice)
		baseline := max(b1, b2, 500*time.Millisecond)
		t.Logf("%d deliveries: without a webhook %s and %s; webhook refused %s and %s; webhook hung %s and %s",
			len(baseDevs)*perDevice, b1, b2, d1, d2, h1, h2)
		if slow := max(d1, d2, h1, h2); slow > 4*baseline {
			t.Errorf("deliveries for the apps whose webhook is down took up to %s, more than 4x the %s without a webhook", slow, baseline)
		}
		// The counts of their messages are true all the same.
		for _, d := range []*device{downDevs[0], hungDevs[0]} {
			for id := range want[d.id] {
				api.waitStatus(t, d.app, id, 20*time.Second, "delivered count", func(st fullStatus) bool {
					return st.Counts.Targeted == 1 && st.Counts.Delivered == 1
				})
			}
		}
	})
}

// blackhole returns the address of a TCP listener that accepts
// connections and never answers (an endpoint that hangs).
func blackhole(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}
