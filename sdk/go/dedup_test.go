package herald

import (
	"fmt"
	"testing"
)

func TestDedupForgetsOldest(t *testing.T) {
	d := newDedup(3)
	for i := range 5 {
		d.add(fmt.Sprint(i))
	}
	d.add("4") // re-adding does not push anything out
	for _, tt := range []struct {
		id   string
		seen bool
	}{{"0", false}, {"1", false}, {"2", true}, {"3", true}, {"4", true}, {"5", false}} {
		if got := d.seen(tt.id); got != tt.seen {
			t.Errorf("seen(%s) = %v, want %v", tt.id, got, tt.seen)
		}
	}
	if len(d.set) != 3 {
		t.Fatalf("remembers %d ids, want 3", len(d.set))
	}
}
