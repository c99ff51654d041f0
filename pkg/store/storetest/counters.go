package storetest

import (
	"testing"
	"time"

	"github.com/heraldpush/herald/pkg/store"
)

func testQuotas(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	app, dev, other := uniq("app"), uniq("dev"), uniq("dev")
	today := time.Now().UTC().Truncate(24 * time.Hour)
	yesterday := today.Add(-24 * time.Hour)
	steps := []struct {
		name string
		dev  string
		day  time.Time
		n    int64
		want int64
	}{
		{"first of today", dev, today.Add(time.Hour), 1, 1},
		{"later today", dev, today.Add(23*time.Hour + 59*time.Minute), 1, 2},
		{"several at once", dev, today.Add(2 * time.Hour), 3, 5},
		{"yesterday is another day", dev, yesterday.Add(23 * time.Hour), 1, 1},
		{"yesterday again", dev, yesterday, 2, 3},
		{"another device", other, today, 1, 1},
		{"today after yesterday", dev, today, 1, 6},
		{"read with 0", dev, today.Add(12 * time.Hour), 0, 6},
		{"same instant in another zone", dev, today.Add(time.Hour).In(time.FixedZone("UTC-5", -5*3600)), 1, 7},
	}
	for _, st := range steps {
		got, err := s.CountDaily(t.Context(), app, st.dev, st.day, st.n)
		mustNoErr(t, err, "CountDaily "+st.name)
		if got != st.want {
			t.Fatalf("%s: CountDaily = %d, want %d", st.name, got, st.want)
		}
	}
	got, err := s.CountDaily(t.Context(), uniq("otherapp"), dev, today, 1)
	mustNoErr(t, err, "CountDaily(other app)")
	if got != 1 {
		t.Errorf("CountDaily of the same device id in another app = %d, want 1", got)
	}
}

func testStats(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	app := uniq("app")
	h0 := time.Now().UTC().Truncate(time.Hour).Add(-48 * time.Hour)
	adds := []struct {
		at time.Time
		d  store.StatCounts
	}{
		{h0.Add(10 * time.Minute), store.StatCounts{Sent: 10}},
		{h0.Add(59 * time.Minute), store.StatCounts{Delivered: 4, Clicked: 1}},
		{h0.Add(time.Hour), store.StatCounts{Sent: 5, Delivered: 5}},
		{h0.Add(3*time.Hour + time.Second), store.StatCounts{Clicked: 2}},
		{h0.Add(2 * time.Hour), store.StatCounts{}}, // an empty add leaves the hour empty
	}
	for _, a := range adds {
		mustNoErr(t, s.AddStats(t.Context(), app, a.at, a.d), "AddStats")
	}
	b0 := store.StatBucket{Hour: h0, StatCounts: store.StatCounts{Sent: 10, Delivered: 4, Clicked: 1}}
	b1 := store.StatBucket{Hour: h0.Add(time.Hour), StatCounts: store.StatCounts{Sent: 5, Delivered: 5}}
	b3 := store.StatBucket{Hour: h0.Add(3 * time.Hour), StatCounts: store.StatCounts{Clicked: 2}}
	tests := []struct {
		name     string
		from, to time.Time
		want     []store.StatBucket
	}{
		{"all", h0.Add(-time.Hour), h0.Add(24 * time.Hour), []store.StatBucket{b0, b1, b3}},
		{"to is exclusive", h0, h0.Add(3 * time.Hour), []store.StatBucket{b0, b1}},
		{"from is inclusive", h0.Add(time.Hour), h0.Add(4 * time.Hour), []store.StatBucket{b1, b3}},
		{"an hour starting before from is out", h0.Add(30 * time.Minute), h0.Add(2 * time.Hour), []store.StatBucket{b1}},
		{"empty hours are skipped", h0.Add(2 * time.Hour), h0.Add(3 * time.Hour), nil},
		{"empty range", h0.Add(time.Hour), h0.Add(time.Hour), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Stats(t.Context(), app, tt.from, tt.to)
			mustNoErr(t, err, "Stats")
			if !equalBuckets(got, tt.want) {
				t.Errorf("Stats[%v, %v) = %+v, want %+v", tt.from, tt.to, got, tt.want)
			}
		})
	}
	other, err := s.Stats(t.Context(), uniq("otherapp"), h0, h0.Add(24*time.Hour))
	mustNoErr(t, err, "Stats(other app)")
	if len(other) != 0 {
		t.Errorf("Stats of another app = %+v, want none", other)
	}
	t.Run("ConcurrentAdds", func(t *testing.T) {
		app := uniq("app")
		const goroutines, adds = 8, 25
		at := h0.Add(5*time.Hour + 17*time.Minute)
		concurrently(t, goroutines, func(i int) error {
			for range adds {
				if err := s.AddStats(t.Context(), app, at, store.StatCounts{Sent: 1, Delivered: 2, Clicked: int64(i % 2)}); err != nil {
					return err
				}
			}
			return nil
		})
		got, err := s.Stats(t.Context(), app, h0, h0.Add(24*time.Hour))
		mustNoErr(t, err, "Stats")
		want := []store.StatBucket{{Hour: h0.Add(5 * time.Hour), StatCounts: store.StatCounts{
			Sent: goroutines * adds, Delivered: 2 * goroutines * adds, Clicked: goroutines / 2 * adds}}}
		if !equalBuckets(got, want) {
			t.Errorf("Stats after concurrent adds = %+v, want %+v", got, want)
		}
	})
}

func equalBuckets(a, b []store.StatBucket) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Hour.Equal(b[i].Hour) || a[i].StatCounts != b[i].StatCounts {
			return false
		}
	}
	return true
}
