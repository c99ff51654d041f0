package gateway

import (
	"math/bits"
	"sync"
)

// bufPool hands out byte buffers in power-of-two size classes from 256 B to
// 64 KiB, so an idle session holds no buffer at all: the event loop borrows
// one only while a frame is incomplete or waiting for a worker. Larger
// buffers (max_frame_bytes above 64 KiB) are allocated and left to the GC.
type bufPool struct {
	classes [numClasses]sync.Pool
}

const (
	minClassShift = 8 // 256 B
	numClasses    = 9 // up to 64 KiB
)

func classOf(n int) int {
	if n <= 1<<minClassShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minClassShift
}

// get returns a buffer of length 0 and capacity at least n.
func (p *bufPool) get(n int) *[]byte {
	c := classOf(n)
	if c >= numClasses {
		b := make([]byte, 0, n)
		return &b
	}
	if v, ok := p.classes[c].Get().(*[]byte); ok {
		*v = (*v)[:0]
		return v
	}
	b := make([]byte, 0, 1<<(c+minClassShift))
	return &b
}

// put returns a buffer from get; nil is ignored.
func (p *bufPool) put(b *[]byte) {
	if b == nil {
		return
	}
	c := classOf(cap(*b))
	if c >= numClasses || cap(*b) != 1<<(c+minClassShift) {
		return
	}
	p.classes[c].Put(b)
}
