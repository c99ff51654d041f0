package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// apiCall is one request the fake API received.
type apiCall struct {
	method, path, auth string
	body               map[string]any
}

// fakeAPI answers per the REST contract and records what it was asked.
type fakeAPI struct {
	t     testing.TB
	calls []apiCall
	// answer, if set, replaces the contract answer.
	answer func(w http.ResponseWriter, r *http.Request)
}

func newFakeAPI(t testing.TB) (*fakeAPI, string) {
	t.Helper()
	f := &fakeAPI{t: t}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv.URL
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	call := apiCall{method: r.Method, path: r.URL.EscapedPath(), auth: r.Header.Get("Authorization")}
	if r.Body != nil {
		b, _ := io.ReadAll(r.Body)
		if len(b) > 0 {
			if ct := r.Header.Get("Content-Type"); ct != "application/json" {
				f.t.Errorf("Content-Type %q", ct)
			}
			if err := json.Unmarshal(b, &call.body); err != nil {
				f.t.Errorf("request body %q: %v", b, err)
			}
		}
	}
	f.calls = append(f.calls, call)
	if f.answer != nil {
		f.answer(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/v1/apps":
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{"app_id":"app1","app_key":"key1","app_secret":"secret1"}`)
	case r.Method == http.MethodPost && r.URL.Path == "/v1/devices":
		id, _ := call.body["device_id"].(string)
		if id == "" {
			id = "generated"
		}
		w.WriteHeader(http.StatusCreated)
		json.NewEncoder(w).Encode(map[string]string{"device_id": id, "device_token": "tok1"})
	case r.Method == http.MethodDelete && strings.HasPrefix(r.URL.Path, "/v1/devices/"):
		w.WriteHeader(http.StatusNoContent)
	case r.Method == http.MethodPost && r.URL.Path == "/v1/messages":
		w.WriteHeader(http.StatusAccepted)
		io.WriteString(w, `{"message_id":"01MSG"}`)
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v1/messages/"):
		// int64 counts as protojson writes them (strings) and as plain numbers.
		io.WriteString(w, `{"message_id":"01MSG","state":"delivering","counts":{"targeted":"3","delivered":2,"clicked":"1","pending":"1","expired":0,"failed":"0"}}`)
	default:
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, `{"error":{"code":"not_found","message":"no such route"}}`)
	}
}

// only returns the single call the API received.
func (f *fakeAPI) only() apiCall {
	f.t.Helper()
	if len(f.calls) != 1 {
		f.t.Fatalf("API got %d calls, want 1: %+v", len(f.calls), f.calls)
	}
	return f.calls[0]
}

// runCLI runs heraldctl with args and the given environment.
func runCLI(t testing.TB, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	return runCLIContext(t.Context(), t, env, args...)
}

func runCLIContext(ctx context.Context, t testing.TB, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	c := newCLI(&out, &errOut, func(k string) string { return env[k] })
	c.adminTokenFile = filepath.Join(t.TempDir(), "admin-token") // absent unless the test writes it
	if f, ok := env["admin-token-file"]; ok {
		c.adminTokenFile = f
	}
	code = c.run(ctx, args)
	return code, out.String(), errOut.String()
}

const basicKeySecret = "Basic a2V5MTpzZWNyZXQx" // key1:secret1

func TestAppCreate(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "admin-token")
	if err := os.WriteFile(tokenFile, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		env      map[string]string
		args     []string
		wantAuth string
	}{
		{"flag", nil, []string{"--admin-token", "from-flag"}, "Bearer from-flag"},
		{"env", map[string]string{"HERALD_ADMIN_TOKEN": "from-env"}, nil, "Bearer from-env"},
		{"file", map[string]string{"admin-token-file": tokenFile}, nil, "Bearer from-file"},
		{"flag beats env", map[string]string{"HERALD_ADMIN_TOKEN": "from-env"}, []string{"--admin-token", "from-flag"}, "Bearer from-flag"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			api, url := newFakeAPI(t)
			args := append([]string{"--api", url, "app", "create", "--name", "demo"}, tt.args...)
			code, out, errOut := runCLI(t, tt.env, args...)
			if code != exitOK {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			call := api.only()
			if call.method != "POST" || call.path != "/v1/apps" || call.auth != tt.wantAuth ||
				!reflect.DeepEqual(call.body, map[string]any{"name": "demo"}) {
				t.Fatalf("request %+v", call)
			}
			want := "app_id:       app1\napp_key:      key1\napp_secret:   secret1\n"
			if out != want {
				t.Fatalf("output %q, want %q", out, want)
			}
		})
	}
}

func TestJSONOutput(t *testing.T) {
	_, url := newFakeAPI(t)
	for _, args := range [][]string{
		{"--json", "--api", url, "app", "create", "--name", "demo", "--admin-token", "x"},
		{"--api", url, "app", "create", "--json", "--name", "demo", "--admin-token", "x"}, // global flag after the command
	} {
		code, out, errOut := runCLI(t, nil, args...)
		if code != exitOK {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		var got map[string]string
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("output %q: %v", out, err)
		}
		if want := map[string]string{"app_id": "app1", "app_key": "key1", "app_secret": "secret1"}; !reflect.DeepEqual(got, want) {
			t.Fatalf("JSON %v, want %v", got, want)
		}
	}
}

func TestDeviceRegister(t *testing.T) {
	tests := []struct {
		name     string
		env      map[string]string
		args     []string
		wantBody map[string]any
		wantOut  string
	}{
		{
			name:     "server picks the id",
			args:     []string{"--app-key", "key1", "--app-secret", "secret1"},
			wantBody: map[string]any{"platform": "android"},
			wantOut:  "device_id:    generated\ndevice_token: tok1\n",
		},
		{
			name:     "credentials from the environment",
			env:      map[string]string{"HERALD_APP_KEY": "key1", "HERALD_APP_SECRET": "secret1"},
			args:     []string{"--device-id", "d1", "--platform", "ios", "--alias", "alice"},
			wantBody: map[string]any{"device_id": "d1", "platform": "ios", "alias": "alice"},
			wantOut:  "device_id:    d1\ndevice_token: tok1\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			api, url := newFakeAPI(t)
			code, out, errOut := runCLI(t, tt.env, append([]string{"--api", url, "device", "register"}, tt.args...)...)
			if code != exitOK {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			call := api.only()
			if call.method != "POST" || call.path != "/v1/devices" || call.auth != basicKeySecret || !reflect.DeepEqual(call.body, tt.wantBody) {
				t.Fatalf("request %+v, want body %v", call, tt.wantBody)
			}
			if out != tt.wantOut {
				t.Fatalf("output %q, want %q", out, tt.wantOut)
			}
		})
	}
}

func TestDeviceDelete(t *testing.T) {
	api, url := newFakeAPI(t)
	env := map[string]string{"HERALD_API": url}
	code, out, errOut := runCLI(t, env, "device", "delete", "--app-key", "key1", "--app-secret", "secret1", "--device-id", "a/b")
	if code != exitOK || out != "" {
		t.Fatalf("exit %d, out %q: %s", code, out, errOut)
	}
	call := api.only()
	if call.method != "DELETE" || call.path != "/v1/devices/a%2Fb" || call.auth != basicKeySecret || call.body != nil {
		t.Fatalf("request %+v", call)
	}
}

func TestSend(t *testing.T) {
	creds := []string{"--app-key", "key1", "--app-secret", "secret1"}
	tests := []struct {
		name     string
		args     []string
		wantBody string
	}{
		{
			name:     "notification",
			args:     []string{"--device", "d1", "--title", "Hi", "--body", "there"},
			wantBody: `{"audience":{"device_ids":["d1"]},"notification":{"title":"Hi","body":"there"}}`,
		},
		{
			name: "everything",
			args: []string{"--device", "d1", "--device", "d2", "--title", "T", "--body", "B", "--badge", "0",
				"--sound", "ding", "--click-action", "open", "--data", "k=v", "--data", "url=a=b", "--ttl", "0",
				"--priority", "normal", "--collapse-id", "c", "--idempotency-key", "i"},
			wantBody: `{"audience":{"device_ids":["d1","d2"]},
				"notification":{"title":"T","body":"B","badge":0,"sound":"ding","click_action":"open"},
				"data":{"k":"v","url":"a=b"},
				"options":{"ttl_seconds":0,"priority":"normal","collapse_id":"c","idempotency_key":"i"}}`,
		},
		{
			name:     "data only",
			args:     []string{"--device", "d1", "--data", "k=", "--ttl", "3600", "--priority", "high"},
			wantBody: `{"audience":{"device_ids":["d1"]},"data":{"k":""},"options":{"ttl_seconds":3600,"priority":"high"}}`,
		},
		{
			name:     "aliases on one platform",
			args:     []string{"--alias", "alice", "--alias", "bob", "--platform", "ios", "--body", "B", "--badge", "+1"},
			wantBody: `{"audience":{"aliases":["alice","bob"],"platform":"ios"},"notification":{"title":"","body":"B","badge":"+1"}}`,
		},
		{
			name: "tag expression, spread and scheduled",
			args: []string{"--tags", "vip && (cn || hk)", "--title", "Sale", "--image", "https://i.example/a.png", "--channel", "promo",
				"--spread", "600", "--send-at", "2030-01-02T15:04:05Z"},
			wantBody: `{"audience":{"tags":"vip && (cn || hk)"},"notification":{"title":"Sale","body":"","image":"https://i.example/a.png","channel":"promo"},
				"options":{"spread_over_seconds":600,"send_at":"2030-01-02T15:04:05Z"}}`,
		},
		{
			name:     "topic",
			args:     []string{"--topic", "news", "--data", "k=v", "--priority", "normal"},
			wantBody: `{"audience":{"topic":"news"},"data":{"k":"v"},"options":{"priority":"normal"}}`,
		},
		{
			name:     "everyone on android",
			args:     []string{"--all", "--platform", "android", "--body", "B"},
			wantBody: `{"audience":{"all":true,"platform":"android"},"notification":{"title":"","body":"B"}}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			api, url := newFakeAPI(t)
			code, out, errOut := runCLI(t, nil, append(append([]string{"--api", url, "send"}, creds...), tt.args...)...)
			if code != exitOK {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			if out != "01MSG\n" {
				t.Fatalf("output %q, want the message id", out)
			}
			call := api.only()
			var want map[string]any
			if err := json.Unmarshal([]byte(tt.wantBody), &want); err != nil {
				t.Fatal(err)
			}
			if call.method != "POST" || call.path != "/v1/messages" || call.auth != basicKeySecret || !reflect.DeepEqual(call.body, want) {
				t.Fatalf("request %+v\nwant body %v", call, want)
			}
		})
	}
}

func TestSendAtFromNow(t *testing.T) {
	api, url := newFakeAPI(t)
	api.answer = func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, `{"message_id":"01MSG","state":"scheduled"}`)
	}
	before := time.Now()
	code, out, errOut := runCLI(t, nil, "--api", url, "send", "--app-key", "k", "--app-secret", "s", "--all", "--body", "x", "--send-at", "+10m")
	if code != exitOK || out != "01MSG\n" || !strings.Contains(errOut, "scheduled for") {
		t.Fatalf("exit %d, out %q, err %q", code, out, errOut)
	}
	opts, _ := api.only().body["options"].(map[string]any)
	at, err := time.Parse(time.RFC3339, fmt.Sprint(opts["send_at"]))
	if err != nil || at.Before(before.Add(10*time.Minute).Add(-time.Second)) || at.After(time.Now().Add(10*time.Minute)) {
		t.Fatalf("send_at %v (%v), want about 10 minutes from now", opts["send_at"], err)
	}
}

func TestCancel(t *testing.T) {
	api, url := newFakeAPI(t)
	api.answer = func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"message_id":"01MSG","state":"recalled"}`)
	}
	code, out, errOut := runCLI(t, nil, "--api", url, "cancel", "01MSG", "--app-key", "key1", "--app-secret", "secret1")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if call := api.only(); call.method != "DELETE" || call.path != "/v1/messages/01MSG" || call.auth != basicKeySecret {
		t.Fatalf("request %+v", call)
	}
	if want := "message_id:   01MSG\nstate:        recalled\n"; out != want {
		t.Fatalf("output %q, want %q", out, want)
	}
}

func TestSendReportsInvalidDevices(t *testing.T) {
	api, url := newFakeAPI(t)
	api.answer = func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusAccepted)
		io.WriteString(w, `{"message_id":"01MSG","invalid_device_ids":["nope"],"capped_device_ids":["busy"]}`)
	}
	code, out, errOut := runCLI(t, nil, "--api", url, "send", "--app-key", "k", "--app-secret", "s", "--device", "nope", "--device", "busy", "--body", "x")
	if code != exitOK || out != "01MSG\n" || !strings.Contains(errOut, "nope") || !strings.Contains(errOut, "daily cap not targeted: busy") {
		t.Fatalf("exit %d, out %q, err %q", code, out, errOut)
	}
}

func TestStatus(t *testing.T) {
	for _, args := range [][]string{
		{"status", "01MSG", "--app-key", "key1", "--app-secret", "secret1"},
		{"status", "--app-key", "key1", "--app-secret", "secret1", "01MSG"},
	} {
		api, url := newFakeAPI(t)
		code, out, errOut := runCLI(t, nil, append([]string{"--api", url}, args...)...)
		if code != exitOK {
			t.Fatalf("%v: exit %d: %s", args, code, errOut)
		}
		if call := api.only(); call.method != "GET" || call.path != "/v1/messages/01MSG" || call.auth != basicKeySecret {
			t.Fatalf("request %+v", call)
		}
		want := "message_id:   01MSG\nstate:        delivering\ntargeted:     3\ndelivered:    2\nclicked:      1\npending:      1\nexpired:      0\nfailed:       0\ncollapsed:    0\nrecalled:     0\n"
		if out != want {
			t.Fatalf("output:\n%s\nwant:\n%s", out, want)
		}
	}

	_, url := newFakeAPI(t)
	code, out, _ := runCLI(t, nil, "--api", url, "--json", "status", "01MSG", "--app-key", "k", "--app-secret", "s")
	var got statusResponse
	if err := json.Unmarshal([]byte(out), &got); code != exitOK || err != nil || got.Counts.Targeted != 3 || got.State != "delivering" {
		t.Fatalf("exit %d, JSON %q: %v", code, out, err)
	}
}

func TestUsageErrors(t *testing.T) {
	creds := []string{"--app-key", "k", "--app-secret", "s"}
	tests := []struct {
		name string
		args []string
		want string // in stderr
	}{
		{"no command", nil, "no command"},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"unknown subcommand", []string{"device", "eat"}, `unknown command "device eat"`},
		{"unknown flag", []string{"send", "--bogus"}, "bogus"},
		{"app create without name", []string{"app", "create", "--admin-token", "x"}, "--name is required"},
		{"app create without token", []string{"app", "create", "--name", "n"}, "no admin token"},
		{"register without secret", []string{"device", "register", "--app-key", "k"}, "--app-secret is required"},
		{"delete without id", append([]string{"device", "delete"}, creds...), "--device-id is required"},
		{"send without audience", append([]string{"send", "--title", "t"}, creds...), "an audience is required"},
		{"send to two audiences", append([]string{"send", "--device", "d", "--all", "--title", "t"}, creds...), "give one audience"},
		{"send to an empty tag expression and a topic", append([]string{"send", "--tags", "", "--topic", "t", "--title", "t"}, creds...), "give one audience"},
		{"send bad badge", append([]string{"send", "--device", "d", "--badge", "+2"}, creds...), "want a number >= 0 or +1"},
		{"send negative badge", append([]string{"send", "--device", "d", "--badge", "-1"}, creds...), "want a number >= 0 or +1"},
		{"send bad send-at", append([]string{"send", "--all", "--body", "b", "--send-at", "tomorrow"}, creds...), "--send-at"},
		{"send negative spread", append([]string{"send", "--all", "--body", "b", "--spread", "-1"}, creds...), "--spread"},
		{"cancel without id", append([]string{"cancel"}, creds...), "want exactly one message id"},
		{"send nothing", append([]string{"send", "--device", "d"}, creds...), "nothing to send"},
		{"send bad data", append([]string{"send", "--device", "d", "--data", "novalue"}, creds...), "want key=value"},
		{"send bad priority", append([]string{"send", "--device", "d", "--body", "b", "--priority", "urgent"}, creds...), "want high or normal"},
		{"send negative ttl", append([]string{"send", "--device", "d", "--body", "b", "--ttl", "-1"}, creds...), "--ttl"},
		{"send stray argument", append([]string{"send", "--device", "d", "--body", "b", "extra"}, creds...), `unexpected argument "extra"`},
		{"status without id", append([]string{"status"}, creds...), "want exactly one message id"},
		{"listen without token", []string{"listen", "--app-key", "k", "--device-id", "d"}, "--token is required"},
		{"listen with bad gateway", []string{"--gateway", "nohost", "listen", "--app-key", "k", "--device-id", "d", "--token", "t"}, "invalid config"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			api, url := newFakeAPI(t)
			code, out, errOut := runCLI(t, map[string]string{"HERALD_API": url}, tt.args...)
			if code != exitUsage {
				t.Fatalf("exit %d, want %d; stderr %q", code, exitUsage, errOut)
			}
			if !strings.Contains(errOut, tt.want) || out != "" {
				t.Fatalf("stderr %q, want it to mention %q; stdout %q", errOut, tt.want, out)
			}
			if len(api.calls) != 0 {
				t.Fatalf("API called on a usage error: %+v", api.calls)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	code, out, _ := runCLI(t, nil, "help")
	if code != exitOK || !strings.Contains(out, "app create --name") {
		t.Fatalf("exit %d, help %q", code, out)
	}
	if code, _, _ := runCLI(t, nil, "send", "-h"); code != exitOK {
		t.Fatalf("send -h: exit %d", code)
	}
}

func TestAPIErrors(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   string
		want   string
	}{
		{"contract error", http.StatusUnauthorized, `{"error":{"code":"unauthenticated","message":"bad app key or secret"}}`, "heraldctl: unauthenticated: bad app key or secret\n"},
		{"not JSON", http.StatusBadGateway, "upstream down", "heraldctl: http_502: upstream down\n"},
		{"empty", http.StatusServiceUnavailable, "", "heraldctl: http_503: Service Unavailable\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			api, url := newFakeAPI(t)
			api.answer = func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			}
			code, out, errOut := runCLI(t, nil, "--api", url, "status", "x", "--app-key", "k", "--app-secret", "s")
			if code != exitError || out != "" || errOut != tt.want {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit 1 and %q", code, out, errOut, tt.want)
			}
		})
	}
}

func TestAPIUnreachable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close()
	code, out, errOut := runCLI(t, nil, "--api", srv.URL, "status", "x", "--app-key", "k", "--app-secret", "s")
	if code != exitError || out != "" || !strings.HasPrefix(errOut, "heraldctl: GET /v1/messages/x: ") {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
}

func contextWithCancel(t testing.TB) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	return ctx, cancel
}
