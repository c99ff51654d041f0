package discovery

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/heraldpush/herald"
)

func fleet(weights ...int) []Gateway {
	var gws []Gateway
	for i, w := range weights {
		gws = append(gws, Gateway{Node: fmt.Sprintf("gw-%d", i), DeviceAddr: fmt.Sprintf("10.0.0.%d:5222", i), Weight: w})
	}
	return gws
}

func addrs(eps []Endpoint) []string {
	var out []string
	for _, e := range eps {
		out = append(out, e.Addr)
	}
	return out
}

// firstChoices counts, over n devices, how often each address comes first.
func firstChoices(gws []Gateway, n int) map[string]int {
	counts := map[string]int{}
	for i := range n {
		counts[Order(gws, fmt.Sprintf("app/device-%d", i))[0].Addr]++
	}
	return counts
}

func TestOrderSpreadsByWeight(t *testing.T) {
	tests := []struct {
		name    string
		weights []int
	}{
		{"equal", []int{100, 100, 100, 100}},
		{"uneven", []int{100, 100, 50}},
		{"canary", []int{100, 100, 100, 5}},
	}
	const n = 20000
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gws := fleet(tt.weights...)
			counts := firstChoices(gws, n)
			total := 0
			for _, w := range tt.weights {
				total += w
			}
			for _, g := range gws {
				want := float64(n) * float64(g.Weight) / float64(total)
				got := float64(counts[g.DeviceAddr])
				if math.Abs(got-want) > 0.1*want+30 {
					t.Errorf("%s (weight %d) is first for %v devices, want about %.0f", g.Node, g.Weight, got, want)
				}
			}
		})
	}
}

func TestOrderIsStablePerDevice(t *testing.T) {
	gws := fleet(100, 100, 100, 100, 100)
	const n = 2000
	moved := 0
	for i := range n {
		key := fmt.Sprintf("app/device-%d", i)
		before := Order(gws, key)
		if !slices.Equal(before, Order(gws, key)) {
			t.Fatalf("%s: two calls gave different orders", key)
		}
		// gw-2 leaves: the others keep their relative order.
		without := slices.DeleteFunc(slices.Clone(gws), func(g Gateway) bool { return g.Node == "gw-2" })
		after := addrs(Order(without, key))
		kept := slices.DeleteFunc(addrs(before), func(a string) bool { return a == "10.0.0.2:5222" })
		if !slices.Equal(after, kept) {
			t.Fatalf("%s: order %v became %v when gw-2 left", key, addrs(before), after)
		}
		if before[0].Addr == "10.0.0.2:5222" {
			moved++
		}
	}
	if moved == 0 || moved > n/3 {
		t.Fatalf("%d of %d devices moved when one of 5 gateways left", moved, n)
	}
}

func TestOrderFavoursLightlyLoadedGateways(t *testing.T) {
	gws := fleet(100, 100, 100, 100)
	for i := range gws[:3] {
		gws[i].Load = 10000
	}
	// gw-3 just started: its fair share would be a quarter of new devices.
	counts := firstChoices(gws, 10000)
	if got := counts["10.0.0.3:5222"]; got < 5000 {
		t.Fatalf("the empty gateway is first for %d of 10000 devices, want well over a quarter", got)
	}
	eps := Order(gws, "app/d")
	for _, e := range eps {
		want := 75
		if e.Addr == "10.0.0.3:5222" {
			want = 400
		}
		if e.Weight != want {
			t.Errorf("%s weight %d, want %d (load-corrected)", e.Addr, e.Weight, want)
		}
	}
}

func TestOrderEdgeCases(t *testing.T) {
	tests := []struct {
		name string
		gws  []Gateway
		want []string // exact order, or nil for "any order of wantSet"
		set  []string
	}{
		{name: "none", gws: nil, want: []string{}},
		{name: "no device address left out", gws: []Gateway{{Node: "a", Weight: 1}, {Node: "b", DeviceAddr: "b:1", Weight: 1}}, want: []string{"b:1"}},
		{name: "weight 0 last", gws: []Gateway{
			{Node: "a", DeviceAddr: "a:1", Weight: 0}, {Node: "b", DeviceAddr: "b:1", Weight: 1}, {Node: "c", DeviceAddr: "c:1", Weight: 0},
		}, set: []string{"b:1", "a:1", "c:1"}},
		{name: "all weight 0 still offered", gws: []Gateway{{Node: "a", DeviceAddr: "a:1"}, {Node: "b", DeviceAddr: "b:1"}}, set: []string{"a:1", "b:1"}},
		{name: "shared address listed once", gws: []Gateway{{Node: "a", DeviceAddr: "x:1", Weight: 1}, {Node: "b", DeviceAddr: "x:1", Weight: 1}}, want: []string{"x:1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := addrs(Order(tt.gws, "app/dev"))
			if got == nil {
				got = []string{}
			}
			if tt.want != nil {
				if !slices.Equal(got, tt.want) {
					t.Fatalf("Order = %v, want %v", got, tt.want)
				}
				return
			}
			if len(got) != len(tt.set) {
				t.Fatalf("Order = %v, want %v in some order", got, tt.set)
			}
			if tt.name == "weight 0 last" && got[0] != "b:1" {
				t.Fatalf("Order = %v, want b:1 first", got)
			}
		})
	}
}

func TestStatic(t *testing.T) {
	addr := ""
	p := Static(func() string { return addr })
	if _, err := p.Endpoints(t.Context(), "app", "dev"); !errors.Is(err, herald.ErrUnavailable) {
		t.Fatalf("before the address is known: %v, want ErrUnavailable", err)
	}
	addr = "127.0.0.1:5222"
	eps, err := p.Endpoints(t.Context(), "app", "dev")
	if err != nil || len(eps) != 1 || eps[0].Addr != addr {
		t.Fatalf("Endpoints = %v, %v", eps, err)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add("gw-1", []byte(`{"node":"gw-1","device_addr":"10.0.0.1:5222","grpc_addr":"10.0.0.1:9091","load":3,"weight":100,"started_at":"2026-01-02T03:04:05Z"}`))
	f.Fuzz(func(t *testing.T, node string, val []byte) {
		g, err := decode(node, val)
		if err != nil {
			return
		}
		if g.Node != node || g.Weight < 0 || g.Load < 0 {
			t.Fatalf("decode accepted %+v for node %q", g, node)
		}
		_ = Order([]Gateway{g}, "app/dev")
	})
}
