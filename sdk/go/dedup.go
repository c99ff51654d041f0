package herald

// dedup remembers the last n message ids handled (a ring plus a set). It is
// used by one goroutine at a time.
type dedup struct {
	ring []string
	next int
	set  map[string]struct{}
}

func newDedup(n int) *dedup {
	return &dedup{ring: make([]string, n), set: make(map[string]struct{}, n)}
}

func (d *dedup) seen(id string) bool {
	_, ok := d.set[id]
	return ok
}

func (d *dedup) add(id string) {
	if d.seen(id) {
		return
	}
	if old := d.ring[d.next]; old != "" {
		delete(d.set, old)
	}
	d.ring[d.next] = id
	d.set[id] = struct{}{}
	d.next = (d.next + 1) % len(d.ring)
}
