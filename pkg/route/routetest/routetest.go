// Package routetest is the contract suite every route.Table implementation
// passes: call Run from the implementation's tests with a constructor of
// fresh, empty tables.
package routetest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"testing"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/route"
)

// Run runs the contract suite. newTable must return a fresh, empty table
// each call; the suite closes it when the subtest ends (newTable may also
// register cleanups of its own, for example to close a client).
func Run(t *testing.T, newTable func(t *testing.T) route.Table) {
	tests := []struct {
		name string
		fn   func(t *testing.T, tbl route.Table)
	}{
		{"BindLookup", testBindLookup},
		{"RebindReplaces", testRebindReplaces},
		{"ConditionalUnbind", testConditionalUnbind},
		{"LookupManyHalfBound", testLookupManyHalfBound},
		{"LookupEmpty", testLookupEmpty},
		{"DropNode", testDropNode},
		{"ConcurrentDifferentKeys", testConcurrentDifferentKeys},
		{"ConcurrentSameKey", testConcurrentSameKey},
		{"InvalidArgument", testInvalidArgument},
		{"Closed", testClosed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tbl := newTable(t)
			t.Cleanup(func() {
				if err := tbl.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tt.fn(t, tbl)
		})
	}
}

func bind(tb testing.TB, tbl route.Table, device string, r route.Route) {
	tb.Helper()
	if err := tbl.Bind(tb.Context(), device, r); err != nil {
		tb.Fatalf("Bind(%q, %+v): %v", device, r, err)
	}
}

func unbind(tb testing.TB, tbl route.Table, device string, r route.Route) bool {
	tb.Helper()
	ok, err := tbl.Unbind(tb.Context(), device, r)
	if err != nil {
		tb.Fatalf("Unbind(%q, %+v): %v", device, r, err)
	}
	return ok
}

func lookup(tb testing.TB, tbl route.Table, devices ...string) map[string]route.Route {
	tb.Helper()
	got, err := tbl.Lookup(tb.Context(), devices)
	if err != nil {
		tb.Fatalf("Lookup(%d devices): %v", len(devices), err)
	}
	return got
}

// wantRoutes fails unless got is exactly want.
func wantRoutes(tb testing.TB, got, want map[string]route.Route) {
	tb.Helper()
	if maps.Equal(got, want) {
		return
	}
	for d, w := range want {
		if g, ok := got[d]; !ok {
			tb.Errorf("device %q: no route, want %+v", d, w)
		} else if g != w {
			tb.Errorf("device %q: route %+v, want %+v", d, g, w)
		}
	}
	for d, g := range got {
		if _, ok := want[d]; !ok {
			tb.Errorf("device %q: unexpected route %+v", d, g)
		}
	}
	tb.FailNow()
}

// parallel runs fn(i) for i in [0,n) on n goroutines and fails on any error.
func parallel(tb testing.TB, n int, fn func(i int) error) {
	tb.Helper()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { errs[i] = fn(i) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		tb.Fatal(err)
	}
}

func testBindLookup(t *testing.T, tbl route.Table) {
	a := route.Route{Node: "gw-a", ConnID: 1}
	b := route.Route{Node: "gw-b", ConnID: 2}
	c := route.Route{Node: "gw-a", ConnID: 1<<64 - 1}
	bind(t, tbl, route.Key("app1", "d1"), a)
	bind(t, tbl, route.Key("app1", "d2"), b)
	bind(t, tbl, route.Key("app2", "d1"), c)

	got := lookup(t, tbl, route.Key("app1", "d1"), route.Key("app1", "d2"), route.Key("app2", "d1"), route.Key("app2", "missing"))
	wantRoutes(t, got, map[string]route.Route{
		route.Key("app1", "d1"): a,
		route.Key("app1", "d2"): b,
		route.Key("app2", "d1"): c,
	})
	// Asking twice for the same device is harmless.
	got = lookup(t, tbl, route.Key("app1", "d1"), route.Key("app1", "d1"))
	wantRoutes(t, got, map[string]route.Route{route.Key("app1", "d1"): a})
}

func testRebindReplaces(t *testing.T, tbl route.Table) {
	dev := route.Key("app", "phone")
	steps := []route.Route{
		{Node: "gw-a", ConnID: 1},
		{Node: "gw-a", ConnID: 2}, // reconnect to the same gateway
		{Node: "gw-b", ConnID: 2}, // same conn id, other gateway
		{Node: "gw-c", ConnID: 7},
	}
	for _, r := range steps {
		bind(t, tbl, dev, r)
		wantRoutes(t, lookup(t, tbl, dev), map[string]route.Route{dev: r})
	}
	// The old nodes no longer own the device.
	for _, node := range []string{"gw-a", "gw-b"} {
		if err := tbl.DropNode(t.Context(), node); err != nil {
			t.Fatalf("DropNode(%q): %v", node, err)
		}
	}
	wantRoutes(t, lookup(t, tbl, dev), map[string]route.Route{dev: steps[len(steps)-1]})
}

func testConditionalUnbind(t *testing.T, tbl route.Table) {
	dev := route.Key("app", "phone")
	old := route.Route{Node: "gw-a", ConnID: 1}
	cur := route.Route{Node: "gw-a", ConnID: 2}
	bind(t, tbl, dev, old)
	bind(t, tbl, dev, cur) // the device reconnected before the old session closed

	stale := []struct {
		name string
		r    route.Route
	}{
		{"old session of the same node", old},
		{"same conn id on another node", route.Route{Node: "gw-b", ConnID: 2}},
		{"zero route", route.Route{}},
	}
	for _, s := range stale {
		if unbind(t, tbl, dev, s.r) {
			t.Fatalf("Unbind with %s (%+v) = true, want false", s.name, s.r)
		}
		wantRoutes(t, lookup(t, tbl, dev), map[string]route.Route{dev: cur})
	}
	if !unbind(t, tbl, dev, cur) {
		t.Fatal("Unbind with the current route = false, want true")
	}
	wantRoutes(t, lookup(t, tbl, dev), map[string]route.Route{})
	if unbind(t, tbl, dev, cur) {
		t.Fatal("second Unbind = true, want false")
	}
	if unbind(t, tbl, route.Key("app", "never-bound"), cur) {
		t.Fatal("Unbind of a device without a route = true, want false")
	}
}

func testLookupManyHalfBound(t *testing.T, tbl route.Table) {
	const n = 1000
	devices := make([]string, n)
	want := make(map[string]route.Route, n/2)
	for i := range devices {
		devices[i] = route.Key("app", fmt.Sprintf("device-%04d", i))
		if i%2 == 0 {
			want[devices[i]] = route.Route{Node: fmt.Sprintf("gw-%d", i%3), ConnID: uint64(i)}
		}
	}
	const workers = 16
	parallel(t, workers, func(w int) error {
		for i := w * 2; i < n; i += workers * 2 {
			if err := tbl.Bind(t.Context(), devices[i], want[devices[i]]); err != nil {
				return err
			}
		}
		return nil
	})
	wantRoutes(t, lookup(t, tbl, devices...), want)
}

func testLookupEmpty(t *testing.T, tbl route.Table) {
	bind(t, tbl, route.Key("app", "d"), route.Route{Node: "gw-a", ConnID: 1})
	for _, devices := range [][]string{nil, {}} {
		got, err := tbl.Lookup(t.Context(), devices)
		if err != nil {
			t.Fatalf("Lookup(%#v): %v", devices, err)
		}
		if len(got) != 0 {
			t.Fatalf("Lookup(%#v) = %v, want empty", devices, got)
		}
	}
}

func testDropNode(t *testing.T, tbl route.Table) {
	const perNode = 30
	var devices []string
	want := map[string]route.Route{}
	for i := range perNode {
		a := route.Key("app", fmt.Sprintf("a-%d", i))
		b := route.Key("app", fmt.Sprintf("b-%d", i))
		devices = append(devices, a, b)
		bind(t, tbl, a, route.Route{Node: "gw-a", ConnID: uint64(i)})
		bind(t, tbl, b, route.Route{Node: "gw-b", ConnID: uint64(i)})
		want[b] = route.Route{Node: "gw-b", ConnID: uint64(i)}
	}
	// A device that moved from gw-a to gw-b survives gw-a's drop.
	moved := route.Key("app", "moved")
	devices = append(devices, moved)
	bind(t, tbl, moved, route.Route{Node: "gw-a", ConnID: 99})
	bind(t, tbl, moved, route.Route{Node: "gw-b", ConnID: 100})
	want[moved] = route.Route{Node: "gw-b", ConnID: 100}

	if err := tbl.DropNode(t.Context(), "gw-a"); err != nil {
		t.Fatalf("DropNode: %v", err)
	}
	wantRoutes(t, lookup(t, tbl, devices...), want)

	if err := tbl.DropNode(t.Context(), "gw-never-seen"); err != nil {
		t.Fatalf("DropNode of an unknown node: %v", err)
	}
	if err := tbl.DropNode(t.Context(), "gw-a"); err != nil {
		t.Fatalf("second DropNode: %v", err)
	}
	wantRoutes(t, lookup(t, tbl, devices...), want)

	// The node comes back (restarted gateway) and binds again.
	back := route.Key("app", "a-0")
	bind(t, tbl, back, route.Route{Node: "gw-a", ConnID: 1000})
	want[back] = route.Route{Node: "gw-a", ConnID: 1000}
	wantRoutes(t, lookup(t, tbl, devices...), want)
}

func testConcurrentDifferentKeys(t *testing.T, tbl route.Table) {
	const workers, keys, rounds = 8, 4, 5
	want := map[string]route.Route{}
	var mu sync.Mutex
	var all []string
	parallel(t, workers, func(w int) error {
		ctx := t.Context()
		node := fmt.Sprintf("gw-%d", w%3)
		for k := range keys {
			dev := route.Key("app", fmt.Sprintf("w%d-k%d", w, k))
			for r := range rounds {
				rt := route.Route{Node: node, ConnID: uint64(r)}
				if err := tbl.Bind(ctx, dev, rt); err != nil {
					return err
				}
				ok, err := tbl.Unbind(ctx, dev, rt)
				if err != nil {
					return err
				}
				if !ok {
					return fmt.Errorf("Unbind(%q, %+v) of its own fresh route = false", dev, rt)
				}
			}
			final := route.Route{Node: node, ConnID: uint64(1000 + k)}
			if err := tbl.Bind(ctx, dev, final); err != nil {
				return err
			}
			mu.Lock()
			want[dev] = final
			all = append(all, dev)
			mu.Unlock()
		}
		return nil
	})
	wantRoutes(t, lookup(t, tbl, all...), want)
}

func testConcurrentSameKey(t *testing.T, tbl route.Table) {
	const workers, rounds = 8, 5
	// Every session binds and then unbinds its own route. The last bind of
	// all is followed by its own session's unbind, which must find and
	// remove it: the device ends without a route.
	churn := route.Key("app", "churn")
	// Every session binds and keeps its route: the last bind wins, and it
	// is some session's last round.
	last := route.Key("app", "last")
	parallel(t, workers, func(w int) error {
		ctx := t.Context()
		node := fmt.Sprintf("gw-%d", w)
		for r := range rounds {
			rt := route.Route{Node: node, ConnID: uint64(r)}
			if err := tbl.Bind(ctx, churn, rt); err != nil {
				return err
			}
			if _, err := tbl.Unbind(ctx, churn, rt); err != nil {
				return err
			}
			if err := tbl.Bind(ctx, last, rt); err != nil {
				return err
			}
		}
		return nil
	})
	got := lookup(t, tbl, churn, last)
	if r, ok := got[churn]; ok {
		t.Errorf("device bound and unbound by every session still routes to %+v", r)
	}
	r, ok := got[last]
	if !ok {
		t.Fatal("device bound by every session has no route")
	}
	var node int
	if _, err := fmt.Sscanf(r.Node, "gw-%d", &node); err != nil || node < 0 || node >= workers || r.ConnID != rounds-1 {
		t.Fatalf("device bound by every session routes to %+v, want some gw-N's last round (conn %d)", r, rounds-1)
	}
}

func testInvalidArgument(t *testing.T, tbl route.Table) {
	tests := []struct {
		name   string
		device string
		r      route.Route
	}{
		{"empty device", "", route.Route{Node: "gw-a", ConnID: 1}},
		{"empty node", route.Key("app", "d"), route.Route{ConnID: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tbl.Bind(t.Context(), tt.device, tt.r)
			if !errors.Is(err, herald.ErrInvalidArgument) {
				t.Fatalf("Bind(%q, %+v) = %v, want %v", tt.device, tt.r, err, herald.ErrInvalidArgument)
			}
		})
	}
	wantRoutes(t, lookup(t, tbl, "", route.Key("app", "d")), map[string]route.Route{})
}

func testClosed(t *testing.T, tbl route.Table) {
	dev := route.Key("app", "d")
	r := route.Route{Node: "gw-a", ConnID: 1}
	bind(t, tbl, dev, r)
	if err := tbl.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	ctx := context.WithoutCancel(t.Context())
	checks := []struct {
		name string
		err  error
	}{
		{"Bind", tbl.Bind(ctx, dev, r)},
		{"Unbind", second(tbl.Unbind(ctx, dev, r))},
		{"Lookup", second(tbl.Lookup(ctx, []string{dev}))},
		{"DropNode", tbl.DropNode(ctx, "gw-a")},
	}
	for _, c := range checks {
		if !errors.Is(c.err, herald.ErrClosed) {
			t.Errorf("%s after Close = %v, want %v", c.name, c.err, herald.ErrClosed)
		}
	}
	// The suite closes the table again at cleanup: Close is idempotent.
}

func second[T any](_ T, err error) error { return err }
