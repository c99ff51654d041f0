package etcdroute

import (
	"testing"

	"github.com/heraldpush/herald/pkg/route"
)

func TestCodecRoundTrip(t *testing.T) {
	tests := []route.Route{
		{Node: "gw-1", ConnID: 0},
		{Node: "gw 1 with spaces", ConnID: 7},
		{Node: "ü", ConnID: 1<<64 - 1},
	}
	for _, r := range tests {
		t.Run(r.Node, func(t *testing.T) {
			got, ok := decode([]byte(encode(r)))
			if !ok || got != r {
				t.Fatalf("decode(encode(%+v)) = %+v, %v", r, got, ok)
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	for _, v := range []string{"", "7", "7 ", " gw", "x gw", "-1 gw", "18446744073709551616 gw"} {
		if r, ok := decode([]byte(v)); ok {
			t.Errorf("decode(%q) = %+v, want rejected", v, r)
		}
	}
}

// FuzzDecode: values in etcd may be written by anything with access to it.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{"1 gw-1", "18446744073709551615 node with spaces", "", "x", "0 "} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		r, ok := decode(v)
		if !ok {
			return
		}
		if r.Node == "" {
			t.Fatalf("decode(%q) accepted an empty node", v)
		}
		back, ok := decode([]byte(encode(r)))
		if !ok || back != r {
			t.Fatalf("decode(%q) = %+v does not round-trip: %+v, %v", v, r, back, ok)
		}
	})
}
