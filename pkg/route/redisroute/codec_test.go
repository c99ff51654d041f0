package redisroute

import (
	"hash/fnv"
	"testing"

	"github.com/heraldpush/herald/pkg/route"
)

func TestCodecRoundTrip(t *testing.T) {
	tests := []route.Route{
		{Node: "gw-1", ConnID: 0},
		{Node: "gw 1 with spaces", ConnID: 7},
		{Node: "{tag}", ConnID: 3},
		{Node: "ü", ConnID: 1<<64 - 1},
	}
	for _, r := range tests {
		t.Run(r.Node, func(t *testing.T) {
			got, ok := decode(encode(r))
			if !ok || got != r {
				t.Fatalf("decode(encode(%+v)) = %+v, %v", r, got, ok)
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	for _, v := range []string{"", "7", "7 ", " gw", "x gw", "-1 gw", "+1 gw", "18446744073709551616 gw"} {
		if r, ok := decode(v); ok {
			t.Errorf("decode(%q) = %+v, want rejected", v, r)
		}
	}
}

func TestBucketOfIsFNV1a(t *testing.T) {
	// The bucket is part of the data layout shared by every process (and
	// by operators finding a device's key): FNV-1a-32 mod 1024, forever.
	for _, device := range []string{"", "a", "app/device", "app/ü{x}"} {
		h := fnv.New32a()
		h.Write([]byte(device))
		if got, want := bucketOf(device), int(h.Sum32()%1024); got != want {
			t.Errorf("bucketOf(%q) = %d, want %d", device, got, want)
		}
	}
}

// FuzzDecode: values in Redis may be written by anything with access to it.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{"1 gw-1", "18446744073709551615 node with spaces", "", "x", "0 "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		r, ok := decode(v)
		if !ok {
			return
		}
		if r.Node == "" {
			t.Fatalf("decode(%q) accepted an empty node", v)
		}
		back, ok := decode(encode(r))
		if !ok || back != r {
			t.Fatalf("decode(%q) = %+v does not round-trip: %+v, %v", v, r, back, ok)
		}
	})
}
