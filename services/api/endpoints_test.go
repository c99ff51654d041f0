package api

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"testing"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/discovery"
	"github.com/heraldpush/herald/pkg/pebbledb"
	"github.com/heraldpush/herald/pkg/pushlog/pebblelog"
	"github.com/heraldpush/herald/pkg/route"
	"github.com/heraldpush/herald/pkg/store/pebblestore"
)

// newEndpointsEnv serves the REST API of a Server whose Deps.Endpoints is
// eps (the REST handler alone: no gRPC listener is needed).
func newEndpointsEnv(t testing.TB, eps Endpoints) *testEnv {
	t.Helper()
	quiet := testLogger(t, 100) // errors are expected: keep them quiet
	db, err := pebbledb.Open(t.TempDir(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	st := pebblestore.New(db, pebblestore.Options{}, quiet)
	lg, err := pebblelog.New(db, pebblelog.Options{Partitions: 1}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{AdminToken: testAdminToken}, Deps{Store: st, Log: lg, Endpoints: eps}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.handler)
	t.Cleanup(func() {
		ts.Close()
		_ = lg.Close()
		_ = st.Close()
		_ = db.Close()
	})
	return &testEnv{srv: srv, db: db, store: st, log: lg, url: ts.URL}
}

func endpointsPath(appKey, deviceID string) string {
	return "/v1/endpoints?" + url.Values{"app_key": {appKey}, "device_id": {deviceID}}.Encode()
}

// fleet is three registered gateways as a discovery.Set would list them.
var fleet = []discovery.Gateway{
	{Node: "gw-a", DeviceAddr: "10.0.0.1:5222", Weight: 100},
	{Node: "gw-b", DeviceAddr: "10.0.0.2:5222", Weight: 100},
	{Node: "gw-c", DeviceAddr: "10.0.0.3:5222", Weight: 100},
}

func TestEndpoints(t *testing.T) {
	var askedFor []string
	e := newEndpointsEnv(t, discovery.EndpointsFunc(func(_ context.Context, appID, deviceID string) ([]discovery.Endpoint, error) {
		askedFor = append(askedFor, route.Key(appID, deviceID))
		return discovery.Order(fleet, route.Key(appID, deviceID)), nil
	}))
	app := e.createApp(t, "shop")

	a := e.do(t, "GET", endpointsPath(app.Key, "phone-1"), noAuth, "")
	mustStatus(t, a, http.StatusOK)
	var got endpointsAnswer
	a.decode(t, &got)
	if got.TTLSeconds != 300 || len(got.Endpoints) != 3 {
		t.Fatalf("answer %+v, want 3 endpoints and ttl 300", got)
	}
	for _, ep := range got.Endpoints {
		if ep.Weight <= 0 || !slices.ContainsFunc(fleet, func(g discovery.Gateway) bool { return g.DeviceAddr == ep.Addr }) {
			t.Fatalf("endpoint %+v is not one of the fleet's", ep)
		}
	}
	if !slices.Equal(askedFor, []string{route.Key(app.ID, "phone-1")}) {
		t.Fatalf("provider asked for %v, want the app id and device id", askedFor)
	}
	if cc := a.header.Get("Cache-Control"); cc == "" {
		t.Errorf("no Cache-Control header")
	}

	// The order is the device's own and stable; devices spread out.
	again := e.do(t, "GET", endpointsPath(app.Key, "phone-1"), noAuth, "")
	var got2 endpointsAnswer
	again.decode(t, &got2)
	if !slices.Equal(got.Endpoints, got2.Endpoints) {
		t.Fatalf("order changed: %v then %v", got.Endpoints, got2.Endpoints)
	}
	firsts := map[string]bool{}
	for i := range 30 {
		var ans endpointsAnswer
		e.do(t, "GET", endpointsPath(app.Key, fmt.Sprintf("phone-%d", i)), noAuth, "").decode(t, &ans)
		firsts[ans.Endpoints[0].Addr] = true
	}
	if len(firsts) != 3 {
		t.Errorf("30 devices start on %d gateways, want all 3", len(firsts))
	}
}

func TestEndpointsErrors(t *testing.T) {
	unavailable := discovery.EndpointsFunc(func(context.Context, string, string) ([]discovery.Endpoint, error) {
		return nil, fmt.Errorf("no gateway: %w", herald.ErrUnavailable)
	})
	empty := discovery.EndpointsFunc(func(context.Context, string, string) ([]discovery.Endpoint, error) { return nil, nil })
	static := discovery.Static(func() string { return "127.0.0.1:5222" })
	tests := []struct {
		name       string
		eps        Endpoints
		path       func(key string) string
		wantStatus int
		wantCode   string
	}{
		{"static", static, func(k string) string { return endpointsPath(k, "d1") }, 200, ""},
		{"unknown app key", static, func(string) string { return endpointsPath("nope", "d1") }, 404, "app_not_found"},
		{"no app key", static, func(string) string { return "/v1/endpoints?device_id=d1" }, 400, "invalid_argument"},
		{"no device id", static, func(k string) string { return "/v1/endpoints?app_key=" + k }, 400, "invalid_argument"},
		{"bad device id", static, func(k string) string { return endpointsPath(k, "a b") }, 400, "invalid_argument"},
		{"no provider", nil, func(k string) string { return endpointsPath(k, "d1") }, 503, "unavailable"},
		{"no gateway", unavailable, func(k string) string { return endpointsPath(k, "d1") }, 503, "unavailable"},
		{"empty list", empty, func(k string) string { return endpointsPath(k, "d1") }, 503, "unavailable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEndpointsEnv(t, tt.eps)
			app := e.createApp(t, "shop")
			a := e.do(t, "GET", tt.path(app.Key), noAuth, "")
			mustStatus(t, a, tt.wantStatus)
			if tt.wantStatus != 200 {
				if code, _ := a.errorCode(t); code != tt.wantCode {
					t.Fatalf("error code %q, want %q", code, tt.wantCode)
				}
				return
			}
			var got endpointsAnswer
			a.decode(t, &got)
			if len(got.Endpoints) != 1 || got.Endpoints[0].Addr != "127.0.0.1:5222" {
				t.Fatalf("answer %+v", got)
			}
		})
	}
	t.Run("POST is not allowed", func(t *testing.T) {
		e := newEndpointsEnv(t, static)
		mustStatus(t, e.do(t, "POST", "/v1/endpoints", noAuth, "{}"), http.StatusMethodNotAllowed)
	})
}
