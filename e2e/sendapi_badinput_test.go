package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func manyIDs(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%04d", prefix, i)
	}
	return out
}

// Send API acceptance 8: bad sends get a clear 4xx (malformed tag
// expressions name the byte position; unknown topics are 404; send_at in
// the past or more than 7 days ahead; oversized payloads 413; over-rate
// sends 429 with Retry-After) and nothing is sent: no message id in the
// answer, and no device receives anything but the messages that were
// accepted.
func TestSendBadInput(t *testing.T) {
	p := startPlatform(t, testConfig(t))
	api := apiFor(t, p.api)
	ap := api.createApp(t, "send-bad-input")
	devs := api.registerSpecs(t, ap, p.gw, []devSpec{
		{ID: "bi-0", Tags: []string{"vip", "cn"}},
		{ID: "bi-1", Tags: []string{"vip", "hk"}},
	})
	connectEach(t, devs)
	api.putTopic(t, ap, "bi-1", "news") // "news" exists; other topics do not

	tags := func(expr string) map[string]any { return map[string]any{"tags": expr} }
	var terms []string
	for i := 0; i <= 64; i++ {
		terms = append(terms, fmt.Sprintf("t%d", i))
	}
	tooManyTerms := strings.Join(terms, " || ")
	tooDeep := strings.Repeat("(", 17) + "vip" + strings.Repeat(")", 17)
	tooLong := strings.Repeat("vip || ", 147) + "cn" // 1031 bytes
	now := time.Now()
	sendAt := func(at time.Time) map[string]any { return map[string]any{"send_at": at.UTC().Format(time.RFC3339)} }
	data := map[string]string{"k": "must not arrive"}

	cases := []struct {
		name    string
		body    message
		code    int
		errCode string
		msgHas  string // in the error message
	}{
		{"tags: ends after an operator", message{Audience: tags("vip &&"), Data: data}, 400, "invalid_argument", "at byte 6"},
		{"tags: unbalanced (", message{Audience: tags("vip && (cn || hk"), Data: data}, 400, "invalid_argument", "at byte 7"},
		{"tags: unbalanced )", message{Audience: tags("vip)"), Data: data}, 400, "invalid_argument", "at byte 3"},
		{"tags: starts with an operator", message{Audience: tags("&& vip"), Data: data}, 400, "invalid_argument", "at byte 0"},
		{"tags: bad character in a tag", message{Audience: tags("vip && c$n"), Data: data}, 400, "invalid_argument", "at byte 8"},
		{"tags: three bars", message{Audience: tags("vip ||| cn"), Data: data}, 400, "invalid_argument", "at byte 6"},
		{"tags: not without operand", message{Audience: tags("vip && !"), Data: data}, 400, "invalid_argument", "at byte 8"},
		{"tags: empty", message{Audience: tags("   "), Data: data}, 400, "invalid_argument", "at byte"},
		{"tags: longer than 1024 bytes", message{Audience: tags(tooLong), Data: data}, 400, "invalid_argument", "at byte"},
		{"tags: more than 64 tags", message{Audience: tags(tooManyTerms), Data: data}, 400, "invalid_argument", fmt.Sprintf("at byte %d", strings.Index(tooManyTerms, "t64"))},
		{"tags: nested deeper than 16", message{Audience: tags(tooDeep), Data: data}, 400, "invalid_argument", "at byte 16"},
		{"unknown topic", message{Audience: map[string]any{"topic": "nobody-subscribed"}, Data: data}, 404, "topic_not_found", "nobody-subscribed"},
		{"invalid topic name", message{Audience: map[string]any{"topic": "no spaces"}, Data: data}, 400, "invalid_argument", ""},
		{"more than 1000 device ids", message{Audience: toDevices(manyIDs("d", 1001)...), Data: data}, 400, "invalid_argument", ""},
		{"more than 1000 aliases", message{Audience: map[string]any{"aliases": manyIDs("a", 1001)}, Data: data}, 400, "invalid_argument", ""},
		{"two audience kinds", message{Audience: map[string]any{"device_ids": []string{"bi-0"}, "tags": "vip"}, Data: data}, 400, "invalid_argument", ""},
		{"no audience", message{Audience: map[string]any{}, Data: data}, 400, "invalid_argument", ""},
		{"send_at in the past", message{Audience: toDevices("bi-0"), Data: data, Options: sendAt(now.Add(-time.Minute))}, 400, "invalid_argument", "send_at"},
		{"send_at a second ago", message{Audience: map[string]any{"all": true}, Data: data, Options: sendAt(now.Add(-time.Second))}, 400, "invalid_argument", "send_at"},
		{"send_at more than 7 days ahead", message{Audience: toDevices("bi-0"), Data: data, Options: sendAt(now.Add(7*24*time.Hour + time.Hour))}, 400, "invalid_argument", "send_at"},
		{"send_at not RFC 3339", message{Audience: toDevices("bi-0"), Data: data, Options: map[string]any{"send_at": "tomorrow"}}, 400, "invalid_argument", "send_at"},
		{"spread_over on a unicast audience", message{Audience: toDevices("bi-0"), Data: data, Options: map[string]any{"spread_over_seconds": 10}}, 400, "invalid_argument", "spread_over_seconds"},
		{"spread_over beyond an hour", message{Audience: "all", Data: data, Options: map[string]any{"spread_over_seconds": 3601}}, 400, "invalid_argument", "spread_over_seconds"},
		{"oversized data", message{Audience: toDevices("bi-0"), Data: map[string]string{"blob": strings.Repeat("x", 5000)}}, 413, "payload_too_large", ""},
		{"oversized notification to a group", message{Audience: "all", Notification: map[string]any{"title": "t", "body": strings.Repeat("y", 5000)}}, 413, "payload_too_large", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, raw, _ := api.post(t, ap, tc.body)
			errCode, msg := apiError(raw)
			if code != tc.code || errCode != tc.errCode {
				t.Fatalf("%d %s, want %d %s", code, raw, tc.code, tc.errCode)
			}
			if !strings.Contains(msg, tc.msgHas) {
				t.Errorf("error message %q does not say %q", msg, tc.msgHas)
			}
			if strings.Contains(string(raw), "message_id") {
				t.Errorf("a refused send names a message id: %s", raw)
			}
		})
	}

	// Over-rate sends: the admin sets 5 sends/s; a burst of 40 gets some
	// 429s with Retry-After; only the accepted ones arrive.
	api.patchApp(t, ap, map[string]any{"rate_limit_per_second": 5})
	want := wantSets{}
	var mu sync.Mutex
	limited := 0
	burstStart := time.Now()
	err := parallel(40, 40, func(i int) error {
		req, err := http.NewRequest("POST", api.base+"/v1/messages", strings.NewReader(fmt.Sprintf(`{"audience":{"device_ids":["bi-0"]},"data":{"n":"%d"}}`, i)))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		ap.auth(req)
		resp, err := api.http.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		raw, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		switch {
		case accepted(resp.StatusCode):
			var out msgAnswer
			if err := json.Unmarshal(raw, &out); err != nil || out.MessageID == "" {
				return fmt.Errorf("accepted send without a message id: %s", raw)
			}
			want.add(out.MessageID, devs[0])
		case resp.StatusCode == http.StatusTooManyRequests:
			limited++
			secs, err := strconv.Atoi(resp.Header.Get("Retry-After"))
			if err != nil || secs < 1 {
				return fmt.Errorf("429 with Retry-After %q, want whole seconds >= 1", resp.Header.Get("Retry-After"))
			}
			if c, _ := apiError(raw); c != "rate_limited" || strings.Contains(string(raw), "message_id") {
				return fmt.Errorf("429 body %s: want error rate_limited and no message id", raw)
			}
		default:
			return fmt.Errorf("burst send: %d %s", resp.StatusCode, raw)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	burst := time.Since(burstStart)
	nAccepted := len(want[devs[0].id])
	t.Logf("burst of 40 in %s at 5/s: %d accepted, %d rate limited", burst, nAccepted, limited)
	// A bucket of one second's worth (5), refilled at 5/s while the burst lasts.
	if most := 5 + int(5*burst.Seconds()) + 1; limited == 0 || nAccepted == 0 || nAccepted > most {
		t.Errorf("burst of 40 at 5 sends/s: %d accepted, %d limited; want some of each and at most %d accepted", nAccepted, limited, most)
	}

	// Barrier: with the limit lifted, a last message to everyone; each
	// device then holds exactly what was accepted for it.
	api.patchApp(t, ap, map[string]any{"rate_limit_per_second": 0})
	last := api.sendOK(t, ap, message{Audience: "all", Data: map[string]string{"k": "last"}})
	want.add(last.MessageID, devs...)
	expectExactly(t, devs, want, 30*time.Second)
}
