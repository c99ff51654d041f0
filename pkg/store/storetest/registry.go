package storetest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/store"
)

func putDevice(t testing.TB, s store.Store, d store.Device) {
	t.Helper()
	if d.CreatedAt.IsZero() {
		d.CreatedAt = now()
	}
	if d.Platform == "" {
		d.Platform = "android"
	}
	mustNoErr(t, s.PutDevice(t.Context(), d), "PutDevice")
}

func getDevice(t testing.TB, s store.Store, appID, deviceID string) store.Device {
	t.Helper()
	d, err := s.Device(t.Context(), appID, deviceID)
	mustNoErr(t, err, "Device")
	return d
}

// sorted returns a sorted copy of xs, for comparing unordered results.
func sorted(xs []string) []string {
	return slices.Sorted(slices.Values(xs))
}

func testAppSettings(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	a := store.App{ID: uniq("app"), Name: "Demo", Key: uniq("key"), Secret: "s3cret", CreatedAt: now(),
		WebhookURL: "https://example.com/created", RateLimit: 5, DailyCap: 7}
	mustNoErr(t, s.CreateApp(t.Context(), a), "CreateApp")
	steps := []struct {
		name   string
		update store.App
		want   store.App
	}{
		{"created with settings", store.App{}, a},
		{"settings replaced, other fields ignored",
			store.App{ID: a.ID, Name: "ignored", Key: uniq("ignored"), Secret: "ignored",
				WebhookURL: "https://example.com/hook", RateLimit: 100, DailyCap: 3},
			store.App{ID: a.ID, Name: a.Name, Key: a.Key, Secret: a.Secret, CreatedAt: a.CreatedAt,
				WebhookURL: "https://example.com/hook", RateLimit: 100, DailyCap: 3}},
		{"settings cleared", store.App{ID: a.ID},
			store.App{ID: a.ID, Name: a.Name, Key: a.Key, Secret: a.Secret, CreatedAt: a.CreatedAt}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if st.update.ID != "" {
				mustNoErr(t, s.UpdateApp(t.Context(), st.update), "UpdateApp")
			}
			for name, get := range map[string]func() (store.App, error){
				"AppByID":  func() (store.App, error) { return s.AppByID(t.Context(), a.ID) },
				"AppByKey": func() (store.App, error) { return s.AppByKey(t.Context(), a.Key) },
			} {
				got, err := get()
				mustNoErr(t, err, name)
				if !got.CreatedAt.Equal(st.want.CreatedAt) {
					t.Errorf("%s CreatedAt = %v, want %v", name, got.CreatedAt, st.want.CreatedAt)
				}
				got.CreatedAt = st.want.CreatedAt
				if got != st.want {
					t.Errorf("%s = %+v, want %+v", name, got, st.want)
				}
			}
		})
	}
	wantErr(t, s.UpdateApp(t.Context(), store.App{ID: uniq("missing"), RateLimit: 1}), herald.ErrAppNotFound, "UpdateApp(missing)")
	_, err := s.AppByID(t.Context(), a.ID)
	mustNoErr(t, err, "AppByID after a failed update")
}

func testDeviceTagsTopics(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	app := uniq("app")
	withTags := store.Device{AppID: app, ID: uniq("dev"), Platform: "ios", Alias: "al",
		Tags: []string{"cn", "vip"}, Topics: []string{"news", "sports"}, TokenHash: []byte{9}, CreatedAt: now(), UpdatedAt: now()}
	bare := store.Device{AppID: app, ID: uniq("dev"), Platform: "web", CreatedAt: now()}
	putDevice(t, s, withTags)
	putDevice(t, s, bare)
	missing := uniq("dev")

	got := getDevice(t, s, app, withTags.ID)
	if !slices.Equal(got.Tags, withTags.Tags) || !slices.Equal(got.Topics, withTags.Topics) {
		t.Errorf("Device tags/topics = %v/%v, want %v/%v", got.Tags, got.Topics, withTags.Tags, withTags.Topics)
	}
	devs, err := s.Devices(t.Context(), app, []string{withTags.ID, missing, bare.ID})
	mustNoErr(t, err, "Devices")
	if len(devs) != 2 {
		t.Fatalf("Devices returned %d devices, want 2 (the absent one missing): %+v", len(devs), devs)
	}
	if _, ok := devs[missing]; ok {
		t.Errorf("Devices returned an absent device")
	}
	tests := []struct {
		name string
		want store.Device
	}{
		{"with tags and topics", withTags},
		{"without", bare},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, ok := devs[tt.want.ID]
			if !ok {
				t.Fatalf("Devices misses %s", tt.want.ID)
			}
			if d.AppID != app || d.ID != tt.want.ID || d.Platform != tt.want.Platform || d.Alias != tt.want.Alias ||
				!slices.Equal(d.Tags, tt.want.Tags) || !slices.Equal(d.Topics, tt.want.Topics) || !d.CreatedAt.Equal(tt.want.CreatedAt) {
				t.Errorf("Devices[%s] = %+v, want %+v", tt.want.ID, d, tt.want)
			}
		})
	}
	devs, err = s.Devices(t.Context(), uniq("otherapp"), []string{withTags.ID})
	mustNoErr(t, err, "Devices(other app)")
	if len(devs) != 0 {
		t.Errorf("Devices of another app = %+v, want none", devs)
	}
	// PutDevice replaces tags and topics.
	withTags.Tags, withTags.Topics = []string{"hk"}, nil
	putDevice(t, s, withTags)
	got = getDevice(t, s, app, withTags.ID)
	if !slices.Equal(got.Tags, []string{"hk"}) || len(got.Topics) != 0 {
		t.Errorf("after PutDevice again: tags/topics = %v/%v, want [hk]/[]", got.Tags, got.Topics)
	}
}

func testAliasIndex(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	app := uniq("app")
	d1, d2, d3, d4 := uniq("dev"), uniq("dev"), uniq("dev"), uniq("dev")
	byAlias := func(t *testing.T, alias string, limit int) []string {
		t.Helper()
		got, err := s.DevicesByAlias(t.Context(), app, alias, limit)
		mustNoErr(t, err, "DevicesByAlias")
		return sorted(got)
	}
	steps := []struct {
		name   string
		change func(t *testing.T)
		want   map[string][]string // alias -> devices
	}{
		{"registered", func(t *testing.T) {
			putDevice(t, s, store.Device{AppID: app, ID: d1, Alias: "alice"})
			putDevice(t, s, store.Device{AppID: app, ID: d2, Alias: "alice"})
			putDevice(t, s, store.Device{AppID: app, ID: d3, Alias: "bob"})
			putDevice(t, s, store.Device{AppID: app, ID: d4})
		}, map[string][]string{"alice": sorted([]string{d1, d2}), "bob": {d3}, "": nil, "carol": nil}},
		{"d2 renamed to bob", func(t *testing.T) {
			putDevice(t, s, store.Device{AppID: app, ID: d2, Alias: "bob"})
		}, map[string][]string{"alice": {d1}, "bob": sorted([]string{d2, d3})}},
		{"d2 re-put with the same alias", func(t *testing.T) {
			putDevice(t, s, store.Device{AppID: app, ID: d2, Alias: "bob", Platform: "ios"})
		}, map[string][]string{"alice": {d1}, "bob": sorted([]string{d2, d3})}},
		{"d3 deleted", func(t *testing.T) {
			mustNoErr(t, s.DeleteDevice(t.Context(), app, d3), "DeleteDevice")
		}, map[string][]string{"alice": {d1}, "bob": {d2}}},
		{"d1 alias cleared, d4 named alice", func(t *testing.T) {
			putDevice(t, s, store.Device{AppID: app, ID: d1})
			putDevice(t, s, store.Device{AppID: app, ID: d4, Alias: "alice"})
		}, map[string][]string{"alice": {d4}, "bob": {d2}, "": nil}},
		{"d3 registered again", func(t *testing.T) {
			putDevice(t, s, store.Device{AppID: app, ID: d3, Alias: "alice"})
		}, map[string][]string{"alice": sorted([]string{d3, d4}), "bob": {d2}}},
	}
	for _, st := range steps {
		st.change(t)
		for alias, want := range st.want {
			if got := byAlias(t, alias, 100); !slices.Equal(got, want) {
				t.Fatalf("after %s: DevicesByAlias(%q) = %v, want %v", st.name, alias, got, want)
			}
		}
	}
	got := byAlias(t, "alice", 1)
	if len(got) != 1 || (got[0] != d3 && got[0] != d4) {
		t.Errorf("DevicesByAlias(alice, limit 1) = %v, want one of %s, %s", got, d3, d4)
	}
	other, err := s.DevicesByAlias(t.Context(), uniq("otherapp"), "alice", 100)
	mustNoErr(t, err, "DevicesByAlias(other app)")
	if len(other) != 0 {
		t.Errorf("DevicesByAlias of another app = %v, want none", other)
	}
}

func testSetAlias(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	app, dev := uniq("app"), uniq("dev")
	putDevice(t, s, store.Device{AppID: app, ID: dev, Platform: "ios", Alias: "alice", Tags: []string{"vip"}, Topics: []string{"news"}, TokenHash: []byte("h")})
	d, err := s.SetAlias(t.Context(), app, dev, "bob")
	mustNoErr(t, err, "SetAlias")
	if d.Alias != "bob" || !slices.Equal(d.Tags, []string{"vip"}) || !slices.Equal(d.Topics, []string{"news"}) || d.Platform != "ios" || string(d.TokenHash) != "h" {
		t.Fatalf("after SetAlias(bob) the device is %+v, want alias bob and everything else kept", d)
	}
	for alias, want := range map[string][]string{"alice": nil, "bob": {dev}} {
		got, err := s.DevicesByAlias(t.Context(), app, alias, 10)
		mustNoErr(t, err, "DevicesByAlias")
		if !slices.Equal(got, want) {
			t.Fatalf("DevicesByAlias(%q) = %v, want %v", alias, got, want)
		}
	}
	// Alias and tag changes at the same moment both survive (an alias
	// change is not a read-modify-write of the whole device).
	concurrently(t, 16, func(i int) error {
		if i%2 == 0 {
			_, err := s.SetAlias(t.Context(), app, dev, fmt.Sprintf("user-%d", i))
			return err
		}
		_, err := s.UpdateTags(t.Context(), app, dev, []string{fmt.Sprintf("t%d", i)}, nil)
		return err
	})
	d = getDevice(t, s, app, dev)
	for i := 1; i < 16; i += 2 {
		if !slices.Contains(d.Tags, fmt.Sprintf("t%d", i)) {
			t.Fatalf("tag t%d lost to a concurrent SetAlias: tags %v", i, d.Tags)
		}
	}
	got, err := s.DevicesByAlias(t.Context(), app, d.Alias, 10)
	mustNoErr(t, err, "DevicesByAlias")
	if !slices.Equal(got, []string{dev}) {
		t.Fatalf("DevicesByAlias(%q), the alias the device ended with = %v, want [%s]", d.Alias, got, dev)
	}
	if _, err := s.SetAlias(t.Context(), app, dev, ""); err != nil {
		t.Fatal(err)
	}
	if d = getDevice(t, s, app, dev); d.Alias != "" {
		t.Fatalf("alias after clearing = %q", d.Alias)
	}
	if _, err := s.SetAlias(t.Context(), app, uniq("ghost"), "x"); !errors.Is(err, herald.ErrDeviceNotFound) {
		t.Fatalf("SetAlias of an absent device: %v, want ErrDeviceNotFound", err)
	}
}

func testUpdateTags(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	app, dev := uniq("app"), uniq("dev")
	putDevice(t, s, store.Device{AppID: app, ID: dev, Alias: "al", Tags: []string{"m"}})
	steps := []struct {
		name        string
		add, remove []string
		want        []string
	}{
		{"add unsorted with duplicates", []string{"vip", "cn", "vip", "m"}, nil, []string{"cn", "m", "vip"}},
		{"remove", nil, []string{"m", "absent"}, []string{"cn", "vip"}},
		{"add and remove", []string{"hk"}, []string{"cn"}, []string{"hk", "vip"}},
		{"add then remove the same tag", []string{"x"}, []string{"x"}, []string{"hk", "vip"}},
		{"remove all", nil, []string{"hk", "vip"}, nil},
		{"nothing", nil, nil, nil},
	}
	for _, st := range steps {
		got, err := s.UpdateTags(t.Context(), app, dev, st.add, st.remove)
		mustNoErr(t, err, "UpdateTags "+st.name)
		if !slices.Equal(got.Tags, st.want) || got.ID != dev || got.AppID != app || got.Alias != "al" {
			t.Fatalf("after %s: UpdateTags = %+v, want tags %v", st.name, got, st.want)
		}
		if stored := getDevice(t, s, app, dev); !slices.Equal(stored.Tags, st.want) || stored.Alias != "al" {
			t.Fatalf("after %s: Device = %+v, want tags %v", st.name, stored, st.want)
		}
	}
	_, err := s.UpdateTags(t.Context(), app, uniq("missing"), []string{"a"}, nil)
	wantErr(t, err, herald.ErrDeviceNotFound, "UpdateTags(missing)")
	_, err = s.Device(t.Context(), app, uniq("missing"))
	wantErr(t, err, herald.ErrDeviceNotFound, "Device after UpdateTags(missing)")
}

func testUpdateTopics(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	app, dev := uniq("app"), uniq("dev")
	putDevice(t, s, store.Device{AppID: app, ID: dev})
	exists := func(t *testing.T, app, topic string) bool {
		t.Helper()
		ok, err := s.TopicExists(t.Context(), app, topic)
		mustNoErr(t, err, "TopicExists")
		return ok
	}
	if exists(t, app, "news") {
		t.Fatalf("topic exists before any subscribe")
	}
	steps := []struct {
		name     string
		sub, uns []string
		want     []string
		known    []string // topics that exist afterwards
		unknown  []string
	}{
		{"subscribe", []string{"news", "sports", "news"}, nil, []string{"news", "sports"},
			[]string{"news", "sports"}, []string{"weather"}},
		{"unsubscribe keeps the topic known", nil, []string{"news", "never"}, []string{"sports"},
			[]string{"news", "sports"}, []string{"never", "weather"}},
		{"subscribe and unsubscribe the same topic", []string{"weather"}, []string{"weather"}, []string{"sports"},
			[]string{"news", "sports", "weather"}, nil},
	}
	for _, st := range steps {
		got, err := s.UpdateTopics(t.Context(), app, dev, st.sub, st.uns)
		mustNoErr(t, err, "UpdateTopics "+st.name)
		if !slices.Equal(got.Topics, st.want) {
			t.Fatalf("after %s: UpdateTopics topics = %v, want %v", st.name, got.Topics, st.want)
		}
		if stored := getDevice(t, s, app, dev); !slices.Equal(stored.Topics, st.want) {
			t.Fatalf("after %s: Device topics = %v, want %v", st.name, stored.Topics, st.want)
		}
		for _, topic := range st.known {
			if !exists(t, app, topic) {
				t.Errorf("after %s: TopicExists(%s) = false, want true", st.name, topic)
			}
		}
		for _, topic := range st.unknown {
			if exists(t, app, topic) {
				t.Errorf("after %s: TopicExists(%s) = true, want false", st.name, topic)
			}
		}
	}
	if exists(t, uniq("otherapp"), "sports") {
		t.Errorf("a topic of another app exists")
	}
	_, err := s.UpdateTopics(t.Context(), app, uniq("missing"), []string{"x"}, nil)
	wantErr(t, err, herald.ErrDeviceNotFound, "UpdateTopics(missing)")
	mustNoErr(t, s.DeleteDevice(t.Context(), app, dev), "DeleteDevice")
	if !exists(t, app, "sports") {
		t.Errorf("TopicExists(sports) = false after its subscriber was deleted, want true (ever subscribed)")
	}
}

func testBadges(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	app, dev, other := uniq("app"), uniq("dev"), uniq("dev")
	badge := func(t *testing.T, dev string) int32 {
		t.Helper()
		n, err := s.Badge(t.Context(), app, dev)
		mustNoErr(t, err, "Badge")
		return n
	}
	if n := badge(t, dev); n != 0 {
		t.Fatalf("Badge of a fresh device = %d, want 0", n)
	}
	steps := []struct {
		name  string
		set   bool
		delta int32
		want  int32
	}{
		{"add 1", false, 1, 1},
		{"add 2", false, 2, 3},
		{"add 0", false, 0, 3},
		{"set 10", true, 10, 10},
		{"add -4", false, -4, 6},
		{"reset", true, 0, 0},
		{"add 1 after reset", false, 1, 1},
	}
	for _, st := range steps {
		if st.set {
			mustNoErr(t, s.SetBadge(t.Context(), app, dev, st.delta), "SetBadge "+st.name)
		} else {
			n, err := s.AddBadge(t.Context(), app, dev, st.delta)
			mustNoErr(t, err, "AddBadge "+st.name)
			if n != st.want {
				t.Fatalf("after %s: AddBadge = %d, want %d", st.name, n, st.want)
			}
		}
		if n := badge(t, dev); n != st.want {
			t.Fatalf("after %s: Badge = %d, want %d", st.name, n, st.want)
		}
	}
	if n := badge(t, other); n != 0 {
		t.Errorf("Badge of another device = %d, want 0", n)
	}
	t.Run("ConcurrentAdds", func(t *testing.T) {
		const goroutines, adds = 8, 20
		concurrently(t, goroutines, func(int) error {
			for range adds {
				if _, err := s.AddBadge(t.Context(), app, other, 1); err != nil {
					return err
				}
			}
			return nil
		})
		if n := badge(t, other); n != goroutines*adds {
			t.Errorf("Badge after %d concurrent +1 = %d", goroutines*adds, n)
		}
	})
}

// concurrently runs fn(0..n-1) in n goroutines and fails t on any error.
func concurrently(t testing.TB, n int, fn func(i int) error) {
	t.Helper()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = fn(i) })
	}
	wg.Wait()
	for _, err := range errs {
		mustNoErr(t, err, "concurrent call")
	}
}
