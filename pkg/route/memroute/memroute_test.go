package memroute_test

import (
	"fmt"
	"testing"

	"github.com/heraldpush/herald/pkg/route"
	"github.com/heraldpush/herald/pkg/route/memroute"
	"github.com/heraldpush/herald/pkg/route/routetest"
)

func TestContract(t *testing.T) {
	routetest.Run(t, func(t *testing.T) route.Table { return memroute.New() })
}

func TestLenFollowsBindsAndDrops(t *testing.T) {
	tbl := memroute.New()
	ctx := t.Context()
	for i := range 100 {
		node := fmt.Sprintf("gw-%d", i%4)
		if err := tbl.Bind(ctx, route.Key("app", fmt.Sprint(i)), route.Route{Node: node, ConnID: uint64(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if n := tbl.Len(); n != 100 {
		t.Fatalf("Len = %d, want 100", n)
	}
	if err := tbl.DropNode(ctx, "gw-0"); err != nil {
		t.Fatal(err)
	}
	if n := tbl.Len(); n != 75 {
		t.Fatalf("Len after dropping a quarter = %d, want 75", n)
	}
}

func BenchmarkLookup100(b *testing.B) {
	tbl := memroute.New()
	ctx := b.Context()
	const bound = 100_000
	for i := range bound {
		if err := tbl.Bind(ctx, route.Key("app", fmt.Sprint(i)), route.Route{Node: "gw", ConnID: uint64(i)}); err != nil {
			b.Fatal(err)
		}
	}
	batch := make([]string, 100)
	for i := range batch {
		batch[i] = route.Key("app", fmt.Sprint(i*997%(bound*2))) // about half bound
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tbl.Lookup(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBind(b *testing.B) {
	tbl := memroute.New()
	ctx := b.Context()
	keys := make([]string, 1<<16)
	for i := range keys {
		keys[i] = route.Key("app", fmt.Sprint(i))
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if err := tbl.Bind(ctx, keys[i&(len(keys)-1)], route.Route{Node: "gw", ConnID: uint64(i)}); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}
