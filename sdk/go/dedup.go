package herald

// dedup remembers the last n message ids handled (a ring plus a set). It is
// used by one goroutine at a time. Both grow with use up to n, so a client
// that handles few messages (a device, or one of thousands of clients in a
// load tool) does not pay for n up front.
type dedup struct {
	n    int
	ring []string
	next int
	set  map[string]struct{}
}

func newDedup(n int) *dedup {
	return &dedup{n: n, set: make(map[string]struct{})}
}

func (d *dedup) seen(id string) bool {
	_, ok := d.set[id]
	return ok
}

func (d *dedup) add(id string) {
	if d.seen(id) {
		return
	}
	if len(d.ring) < d.n {
		d.ring = append(d.ring, id)
		d.set[id] = struct{}{}
		return
	}
	delete(d.set, d.ring[d.next])
	d.ring[d.next] = id
	d.set[id] = struct{}{}
	d.next = (d.next + 1) % len(d.ring)
}
