package api

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/heraldpush/herald/pkg/route"
)

func (a answer) device(t testing.TB) deviceAnswer {
	t.Helper()
	mustStatus(t, a, http.StatusOK)
	var d deviceAnswer
	a.decode(t, &d)
	return d
}

func TestDeviceEndpoints(t *testing.T) {
	e := newEnv(t)
	app, other := e.createApp(t, "shop"), e.createApp(t, "other")
	e.register(t, app, "d1", "ios", `"alias":"alice","tags":["vip","cn","vip"]`)
	e.register(t, other, "theirs", "ios", "")

	steps := []struct {
		name, method, path, body string
		want                     func(d deviceAnswer) bool
	}{
		{name: "registered with tags", method: "GET", path: "/v1/devices/d1",
			want: func(d deviceAnswer) bool {
				return d.Platform == "ios" && d.Alias == "alice" && fmt.Sprint(d.Tags) == "[cn vip]" && len(d.Topics) == 0 && d.CreatedAt != ""
			}},
		{name: "alias set", method: "PUT", path: "/v1/devices/d1/alias", body: `{"alias":"bob"}`,
			want: func(d deviceAnswer) bool { return d.Alias == "bob" }},
		{name: "tag added", method: "PUT", path: "/v1/devices/d1/tags/lang:zh-CN", want: func(d deviceAnswer) bool { return fmt.Sprint(d.Tags) == "[cn lang:zh-CN vip]" }},
		{name: "tag added twice", method: "PUT", path: "/v1/devices/d1/tags/lang:zh-CN", want: func(d deviceAnswer) bool { return fmt.Sprint(d.Tags) == "[cn lang:zh-CN vip]" }},
		{name: "tag removed", method: "DELETE", path: "/v1/devices/d1/tags/cn", want: func(d deviceAnswer) bool { return fmt.Sprint(d.Tags) == "[lang:zh-CN vip]" }},
		{name: "absent tag removed", method: "DELETE", path: "/v1/devices/d1/tags/cn", want: func(d deviceAnswer) bool { return fmt.Sprint(d.Tags) == "[lang:zh-CN vip]" }},
		{name: "subscribed", method: "PUT", path: "/v1/devices/d1/topics/news", want: func(d deviceAnswer) bool { return fmt.Sprint(d.Topics) == "[news]" }},
		{name: "subscribed again", method: "PUT", path: "/v1/devices/d1/topics/sports.f1", want: func(d deviceAnswer) bool { return fmt.Sprint(d.Topics) == "[news sports.f1]" }},
		{name: "unsubscribed", method: "DELETE", path: "/v1/devices/d1/topics/news", want: func(d deviceAnswer) bool { return fmt.Sprint(d.Topics) == "[sports.f1]" }},
		{name: "badge set", method: "PUT", path: "/v1/devices/d1/badge", body: `{"badge":7}`, want: func(d deviceAnswer) bool { return d.Badge == 7 }},
		{name: "alias cleared", method: "PUT", path: "/v1/devices/d1/alias", body: `{"alias":""}`, want: func(d deviceAnswer) bool { return d.Alias == "" }},
		{name: "everything kept", method: "GET", path: "/v1/devices/d1",
			want: func(d deviceAnswer) bool {
				return d.Badge == 7 && fmt.Sprint(d.Tags) == "[lang:zh-CN vip]" && fmt.Sprint(d.Topics) == "[sports.f1]"
			}},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			before := len(e.refreshes())
			d := e.do(t, s.method, s.path, app.auth, s.body).device(t)
			if d.DeviceID != "d1" || !s.want(d) {
				t.Fatalf("device %+v", d)
			}
			refreshed := e.refreshes()[before:]
			if s.method != "GET" && !strings.HasSuffix(s.path, "/badge") && !slices.Contains(refreshed, route.Key(app.ID, "d1")) {
				t.Errorf("no Refresh after %s %s (%v)", s.method, s.path, refreshed)
			}
		})
	}
	stored, err := e.store.Device(t.Context(), app.ID, "d1")
	if err != nil || fmt.Sprint(stored.Tags) != "[lang:zh-CN vip]" || fmt.Sprint(stored.Topics) != "[sports.f1]" {
		t.Fatalf("stored device %+v %v", stored, err)
	}
	if ok, err := e.store.TopicExists(t.Context(), app.ID, "news"); err != nil || !ok {
		t.Errorf("topic news is not known to the app after a subscription (%v)", err)
	}

	t.Run("re-registering keeps tags and topics unless given", func(t *testing.T) {
		e.register(t, app, "d1", "ios", "")
		d := e.do(t, "GET", "/v1/devices/d1", app.auth, "").device(t)
		if fmt.Sprint(d.Tags) != "[lang:zh-CN vip]" || fmt.Sprint(d.Topics) != "[sports.f1]" {
			t.Fatalf("after re-registering: %+v", d)
		}
		e.register(t, app, "d1", "ios", `"tags":[]`)
		d = e.do(t, "GET", "/v1/devices/d1", app.auth, "").device(t)
		if len(d.Tags) != 0 || fmt.Sprint(d.Topics) != "[sports.f1]" {
			t.Fatalf("after re-registering with no tags: %+v", d)
		}
	})

	sixtyFour := make([]string, 64)
	for i := range sixtyFour {
		sixtyFour[i] = fmt.Sprintf(`"t%d"`, i)
	}
	e.register(t, app, "full", "android", `"tags":[`+strings.Join(sixtyFour, ",")+`]`)
	errTests := []struct {
		name, method, path, body string
		wantStatus               int
		wantCode, wantMsg        string
	}{
		{"unknown device", "GET", "/v1/devices/ghost", "", 404, "device_not_found", ""},
		{"another app's device", "GET", "/v1/devices/theirs", "", 404, "device_not_found", ""},
		{"tag of an unknown device", "PUT", "/v1/devices/ghost/tags/vip", "", 404, "device_not_found", ""},
		{"bad tag name", "PUT", "/v1/devices/d1/tags/a%20b", "", 400, "invalid_argument", "not a valid name"},
		{"tag name too long", "PUT", "/v1/devices/d1/tags/" + strings.Repeat("t", 65), "", 400, "invalid_argument", "not a valid name"},
		{"65th tag", "PUT", "/v1/devices/full/tags/one-more", "", 400, "invalid_argument", "limit is 64"},
		{"bad topic name", "PUT", "/v1/devices/d1/topics/news!", "", 400, "invalid_argument", "not a valid name"},
		{"alias missing", "PUT", "/v1/devices/d1/alias", `{}`, 400, "invalid_argument", "alias is required"},
		{"alias too long", "PUT", "/v1/devices/d1/alias", `{"alias":"` + strings.Repeat("a", 129) + `"}`, 400, "invalid_argument", "128"},
		{"negative badge", "PUT", "/v1/devices/d1/badge", `{"badge":-1}`, 400, "invalid_argument", "badge"},
		{"badge missing", "PUT", "/v1/devices/d1/badge", `{}`, 400, "invalid_argument", "badge is required"},
		{"register with a bad tag", "POST", "/v1/devices", `{"platform":"ios","tags":["ok","not ok"]}`, 400, "invalid_argument", "tags[1]"},
		{"register with 65 tags", "POST", "/v1/devices", `{"platform":"ios","tags":[` + strings.Join(sixtyFour, ",") + `,"x"]}`, 400, "invalid_argument", "limit is 64"},
	}
	for _, tt := range errTests {
		t.Run(tt.name, func(t *testing.T) {
			mustError(t, e.do(t, tt.method, tt.path, app.auth, tt.body), tt.wantStatus, tt.wantCode, tt.wantMsg)
		})
	}
	if d, err := e.store.Device(t.Context(), app.ID, "full"); err != nil || len(d.Tags) != 64 {
		t.Errorf("device full has %d tags (%v), want 64", len(d.Tags), err)
	}
}

func TestBulkTags(t *testing.T) {
	e := newEnv(t)
	app := e.createApp(t, "shop")
	for _, d := range []string{"d1", "d2", "d3"} {
		e.register(t, app, d, "android", `"tags":["old"]`)
	}
	a := e.do(t, "POST", "/v1/tags", app.auth, `{"device_ids":["d1","d2","ghost","d1"],"add":["vip","cn"],"remove":["old"]}`)
	mustStatus(t, a, http.StatusOK)
	var res updateTagsAnswer
	a.decode(t, &res)
	if fmt.Sprint(res.InvalidDeviceIDs) != "[ghost]" {
		t.Errorf("invalid_device_ids %v, want [ghost]", res.InvalidDeviceIDs)
	}
	for d, want := range map[string]string{"d1": "[cn vip]", "d2": "[cn vip]", "d3": "[old]"} {
		got, err := e.store.Device(t.Context(), app.ID, d)
		if err != nil || fmt.Sprint(got.Tags) != want {
			t.Errorf("%s tags %v (%v), want %s", d, got.Tags, err, want)
		}
	}
	refreshed := e.refreshes()
	for _, d := range []string{"d1", "d2"} {
		if !slices.Contains(refreshed, route.Key(app.ID, d)) {
			t.Errorf("%s not refreshed (%v)", d, refreshed)
		}
	}

	many := make([]string, 1001)
	for i := range many {
		many[i] = fmt.Sprintf(`"d%d"`, i)
	}
	sixtyThree := make([]string, 63)
	for i := range sixtyThree {
		sixtyThree[i] = fmt.Sprintf(`"t%d"`, i)
	}
	for _, tt := range []struct{ name, body, wantMsg string }{
		{"no devices", `{"device_ids":[],"add":["x"]}`, "at least one device"},
		{"1001 devices", `{"device_ids":[` + strings.Join(many, ",") + `],"add":["x"]}`, "limit is 1000"},
		{"nothing to change", `{"device_ids":["d1"]}`, "at least one tag"},
		{"bad name", `{"device_ids":["d1"],"remove":["a/b"]}`, "remove[0]"},
		{"one device over the limit", `{"device_ids":["d3","d1"],"add":[` + strings.Join(sixtyThree, ",") + `]}`, "device d1 would have 65 tags"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			mustError(t, e.do(t, "POST", "/v1/tags", app.auth, tt.body), http.StatusBadRequest, "invalid_argument", tt.wantMsg)
		})
	}
	// All or nothing: d3 (which had room) did not get the 63 tags either.
	if d, err := e.store.Device(t.Context(), app.ID, "d3"); err != nil || fmt.Sprint(d.Tags) != "[old]" {
		t.Errorf("d3 tags %v (%v) after a refused bulk change", d.Tags, err)
	}
}
