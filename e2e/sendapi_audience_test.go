package e2e

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// Send API acceptance 1: every audience kind end to end on one platform.
// device ids, an alias with three devices, a tag expression over a full
// truth table (tags set at registration, and tags changed through the API
// while the devices are connected), a topic subscribed from the SDK and
// through the API (unsubscribed devices do not receive), everyone of the
// app (not another app's devices), and the platform filter on three
// audience kinds. Every device ends with exactly the messages addressed
// to it, once each.
func TestSendAudiences(t *testing.T) {
	p := startPlatform(t, testConfig(t))
	api := apiFor(t, p.api)
	ap := api.createApp(t, "audiences")
	other := api.createApp(t, "audiences-other")

	const expr = "vip && (cn || hk) && !churned"
	// Tag bits of the truth table rows.
	const (
		vip = 1 << iota
		cn
		hk
		churned
	)
	rowTags := func(row int) []string {
		var tags []string
		for bit, name := range []string{"vip", "cn", "hk", "churned"} {
			if row&(1<<bit) != 0 {
				tags = append(tags, name)
			}
		}
		return tags
	}
	matches := func(row int) bool {
		return row&vip != 0 && row&(cn|hk) != 0 && row&churned == 0
	}

	specs := []devSpec{
		{ID: "id-0"}, {ID: "id-1"}, {ID: "id-2"},
		{ID: "alice-phone", Alias: "alice"},
		{ID: "alice-pad", Platform: "ios", Alias: "alice"},
		{ID: "alice-watch", Platform: "ios"}, // alias set through the API below
		{ID: "bob-phone", Alias: "bob"},
		{ID: "topic-sdk-0"}, {ID: "topic-sdk-1"}, {ID: "topic-api-0"}, {ID: "topic-api-1"},
		{ID: "topic-sdk-left"}, {ID: "topic-api-left"}, {ID: "topic-none"},
	}
	// Truth table rows twice: tags given at registration (android), and
	// tags changed through the API while connected (ios; they all start
	// "churned").
	for row := 0; row < 16; row++ {
		specs = append(specs, devSpec{ID: fmt.Sprintf("tt-reg-%04b", row), Tags: rowTags(row)})
	}
	for row := 0; row < 16; row++ {
		specs = append(specs, devSpec{ID: fmt.Sprintf("tt-api-%04b", row), Platform: "ios", Tags: []string{"churned"}})
	}
	devs := api.registerSpecs(t, ap, p.gw, specs)
	otherDevs := api.registerSpecs(t, other, p.gw, []devSpec{{ID: "other-0"}, {ID: "other-1", Platform: "ios"}})
	connectEach(t, append(append([]*device(nil), devs...), otherDevs...))
	dev := map[string]*device{}
	for _, d := range devs {
		dev[d.id] = d
	}
	pick := func(ids ...string) []*device {
		var out []*device
		for _, id := range ids {
			out = append(out, dev[id])
		}
		return out
	}
	var ttReg, ttAPI, ttRegMatch, ttAPIMatch []*device
	for row := 0; row < 16; row++ {
		r, a := dev[fmt.Sprintf("tt-reg-%04b", row)], dev[fmt.Sprintf("tt-api-%04b", row)]
		ttReg, ttAPI = append(ttReg, r), append(ttAPI, a)
		if matches(row) {
			ttRegMatch, ttAPIMatch = append(ttRegMatch, r), append(ttAPIMatch, a)
		}
	}
	ios := pick("alice-pad", "alice-watch")
	ios = append(ios, ttAPI...)

	// Tags of the connected tt-api devices: vip in bulk, cn and hk one by
	// one, churned removed in bulk for half the rows and one by one for
	// the other half.
	var vipIDs, unchurnBulk []string
	for row, d := range ttAPI {
		if row&vip != 0 {
			vipIDs = append(vipIDs, d.id)
		}
		if row&cn != 0 {
			api.putTag(t, ap, d.id, "cn")
		}
		if row&hk != 0 {
			api.putTag(t, ap, d.id, "hk")
		}
		if row&churned == 0 {
			if row%2 == 0 {
				unchurnBulk = append(unchurnBulk, d.id)
			} else {
				api.deleteTag(t, ap, d.id, "churned")
			}
		}
	}
	api.bulkTags(t, ap, vipIDs, []string{"vip"}, nil)
	api.bulkTags(t, ap, unchurnBulk, nil, []string{"churned"})
	api.putAlias(t, ap, "alice-watch", "alice")

	// Topic "news": two devices subscribe from the SDK, two through the
	// API; one of each subscribes and then leaves the topic.
	for _, id := range []string{"topic-sdk-0", "topic-sdk-1", "topic-sdk-left"} {
		if err := dev[id].client.Subscribe(t.Context(), "news"); err != nil {
			t.Fatalf("%s: Subscribe: %v", id, err)
		}
	}
	if err := dev["topic-sdk-left"].client.Unsubscribe(t.Context(), "news"); err != nil {
		t.Fatalf("Unsubscribe: %v", err)
	}
	for _, id := range []string{"topic-api-0", "topic-api-1", "topic-api-left"} {
		api.putTopic(t, ap, id, "news")
	}
	api.deleteTopic(t, ap, "topic-api-left", "news")

	want := wantSets{}
	group := map[string]bool{} // message id -> sent to a group audience
	type send struct {
		name     string
		audience any
		to       []*device
		group    bool
	}
	sends := []send{
		{"device ids", map[string]any{"device_ids": []string{"id-0", "id-1"}}, pick("id-0", "id-1"), false},
		{"alias with three devices", map[string]any{"aliases": []string{"alice"}}, pick("alice-phone", "alice-pad", "alice-watch"), false},
		{"tag expression truth table", map[string]any{"tags": expr}, append(append([]*device(nil), ttRegMatch...), ttAPIMatch...), true},
		{"topic from the SDK and the API", map[string]any{"topic": "news"}, pick("topic-sdk-0", "topic-sdk-1", "topic-api-0", "topic-api-1"), true},
		{"all", "all", devs, true},
		{"all as an object", map[string]any{"all": true}, devs, true},
		{"alias on ios", map[string]any{"aliases": []string{"alice", "bob"}, "platform": "ios"}, pick("alice-pad", "alice-watch"), false},
		{"tags on ios", map[string]any{"tags": expr, "platform": "ios"}, ttAPIMatch, true},
		{"all on ios", map[string]any{"all": true, "platform": "ios"}, ios, true},
	}
	ids := map[string]string{}
	for _, s := range sends {
		ans := api.sendOK(t, ap, message{Audience: s.audience, Data: map[string]string{"case": s.name}, Options: map[string]any{"ttl_seconds": 600}})
		if ans.State != "accepted" {
			t.Errorf("%s: state %q, want accepted", s.name, ans.State)
		}
		want.add(ans.MessageID, s.to...)
		group[ans.MessageID] = s.group
		ids[s.name] = ans.MessageID
		// Each case is delivered before the next is sent, so a failure
		// names its case.
		waitAllHave(t, s.to, ans.MessageID, 30*time.Second)
	}
	ans := api.sendOK(t, ap, message{Audience: toDevices("id-2", "nope"), Data: map[string]string{"case": "invalid id"}})
	if !slices.Equal(ans.InvalidDeviceIDs, []string{"nope"}) {
		t.Errorf("invalid_device_ids %v, want [nope]", ans.InvalidDeviceIDs)
	}
	want.add(ans.MessageID, dev["id-2"])

	// The other app: its "all" reaches only its own devices, and none of
	// the sends above reached them.
	otherAll := api.sendOK(t, other, message{Audience: "all", Data: map[string]string{"case": "other app"}})
	want.add(otherAll.MessageID, otherDevs...)
	group[otherAll.MessageID] = true

	// Barrier: a last message to everyone, then every device holds exactly
	// its messages (a stray copy would have arrived before it).
	last := api.sendOK(t, ap, message{Audience: "all", Data: map[string]string{"case": "last"}})
	want.add(last.MessageID, devs...)
	group[last.MessageID] = true
	all := append(append([]*device(nil), devs...), otherDevs...)
	expectExactly(t, all, want, 30*time.Second)
	for _, d := range all {
		for _, m := range d.received() {
			if m.Group != group[m.ID] {
				t.Errorf("device %s: message %s (%s) has group=%v, want %v", d.id, m.ID, m.Data["case"], m.Group, group[m.ID])
			}
		}
	}

	// Status counts: a unicast message counts its resolved targets, a
	// group message the devices it matched.
	for name, n := range map[string]int64{"alias with three devices": 3, "alias on ios": 2, "all": int64(len(devs)), "all on ios": int64(len(ios))} {
		api.waitStatus(t, ap, ids[name], 20*time.Second, name+" counts", func(st fullStatus) bool {
			return st.Counts.Targeted == n && st.Counts.Delivered == n
		})
	}
}
