// Package ids makes message ids: 26-character, lexicographically
// time-ordered, monotonic within a process (a ULID layout: 48-bit unix
// milliseconds, then 80 bits that are random at each new millisecond and
// incremented within one).
package ids

import (
	"crypto/rand"
	"encoding/binary"
	"sync"
	"time"
)

const alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ" // Crockford base32, sorts like the bytes

// Generator makes message ids. The zero value is not usable; use New.
type Generator struct {
	mu     sync.Mutex
	now    func() time.Time
	lastMS uint64
	hi     uint16 // top 16 of the 80 random bits
	lo     uint64 // low 64
}

// New returns a generator reading the given clock (time.Now if nil).
func New(now func() time.Time) *Generator {
	if now == nil {
		now = time.Now
	}
	return &Generator{now: now}
}

// Next returns a new id, greater than every id this generator returned before.
func (g *Generator) Next() string {
	g.mu.Lock()
	ms := uint64(g.now().UnixMilli())
	if ms > g.lastMS {
		g.lastMS = ms
		var b [10]byte
		_, _ = rand.Read(b[:])
		g.hi = binary.BigEndian.Uint16(b[:2]) & 0x7fff // headroom so increments never overflow
		g.lo = binary.BigEndian.Uint64(b[2:])
	} else {
		g.lo++
		if g.lo == 0 {
			g.hi++
		}
	}
	var raw [16]byte
	binary.BigEndian.PutUint64(raw[:8], g.lastMS<<16|uint64(g.hi))
	binary.BigEndian.PutUint64(raw[8:], g.lo)
	g.mu.Unlock()
	return encode(raw)
}

// Time returns the millisecond timestamp encoded in id, or the zero time.
func Time(id string) time.Time {
	if len(id) != 26 {
		return time.Time{}
	}
	var ms uint64
	for i := 0; i < 10; i++ {
		v := indexOf(id[i])
		if v < 0 {
			return time.Time{}
		}
		ms = ms<<5 | uint64(v)
	}
	return time.UnixMilli(int64(ms))
}

func indexOf(c byte) int {
	for i := 0; i < len(alphabet); i++ {
		if alphabet[i] == c {
			return i
		}
	}
	return -1
}

// encode writes 128 bits as 26 base32 characters (the first carries 3 bits).
func encode(raw [16]byte) string {
	hi := binary.BigEndian.Uint64(raw[:8])
	lo := binary.BigEndian.Uint64(raw[8:])
	var out [26]byte
	for i := 25; i >= 0; i-- {
		out[i] = alphabet[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
	return string(out[:])
}

// Floor returns the smallest id of millisecond t: every id made at t or
// later sorts after or equal to it, every id made earlier sorts before.
// Times before the epoch give the smallest id.
func Floor(t time.Time) string {
	ms := max(t.UnixMilli(), 0)
	var raw [16]byte
	binary.BigEndian.PutUint64(raw[:8], uint64(ms)<<16)
	return encode(raw)
}
