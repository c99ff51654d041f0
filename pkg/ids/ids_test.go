package ids

import (
	"testing"
	"time"
)

func TestFloor(t *testing.T) {
	at := time.UnixMilli(1_764_400_000_123)
	g := New(func() time.Time { return at })
	id := g.Next()
	f := Floor(at)
	if !(f <= id) {
		t.Fatalf("Floor(%v) = %s sorts after an id of that millisecond %s", at, f, id)
	}
	if got := Time(f); !got.Equal(at) {
		t.Fatalf("Time(Floor(t)) = %v, want %v", got, at)
	}
	earlier := New(func() time.Time { return at.Add(-time.Millisecond) }).Next()
	if !(earlier < f) {
		t.Fatalf("an id of the previous millisecond %s does not sort before Floor %s", earlier, f)
	}
}
