package main

import (
	"errors"
	"math"
	"math/bits"
	"sort"
	"time"
)

// Histogram is a log-linear latency histogram in microseconds: values below
// 16 µs get their own bucket, above that every power of two is split into 16
// sub-buckets (about 6 % relative error). It is cheap to merge, so workers
// send theirs to the controller as a plain slice.
type Histogram struct {
	Counts []uint64 `json:"counts"`
}

const histSub = 16 // sub-buckets per power of two

func histIndex(us uint64) int {
	if us < histSub {
		return int(us)
	}
	exp := bits.Len64(us) - 1 // us in [2^exp, 2^(exp+1))
	sub := (us >> (exp - 4)) & (histSub - 1)
	return histSub + (exp-4)*histSub + int(sub)
}

// histLower is the smallest value that falls in bucket i.
func histLower(i int) uint64 {
	if i < histSub {
		return uint64(i)
	}
	exp := (i-histSub)/histSub + 4
	sub := uint64((i - histSub) % histSub)
	return (1 << exp) | sub<<(exp-4)
}

// Record adds one latency.
func (h *Histogram) Record(d time.Duration) {
	us := uint64(0)
	if d > 0 {
		us = uint64(d / time.Microsecond)
	}
	i := histIndex(us)
	if i >= len(h.Counts) {
		h.Counts = append(h.Counts, make([]uint64, i+1-len(h.Counts))...)
	}
	h.Counts[i]++
}

// Merge adds o's counts to h.
func (h *Histogram) Merge(o Histogram) {
	if len(o.Counts) > len(h.Counts) {
		h.Counts = append(h.Counts, make([]uint64, len(o.Counts)-len(h.Counts))...)
	}
	for i, c := range o.Counts {
		h.Counts[i] += c
	}
}

// Total is the number of recorded values.
func (h *Histogram) Total() uint64 {
	var n uint64
	for _, c := range h.Counts {
		n += c
	}
	return n
}

// Quantile returns the q-quantile (0 < q <= 1) as the midpoint of its
// bucket, or 0 for an empty histogram.
func (h *Histogram) Quantile(q float64) time.Duration {
	total := h.Total()
	if total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(total)))
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i, c := range h.Counts {
		seen += c
		if seen >= rank {
			lo, hi := histLower(i), histLower(i+1)
			return time.Duration((lo+hi)/2) * time.Microsecond
		}
	}
	return 0
}

// Percentile returns the p-th percentile (nearest rank, 0 < p <= 100) of
// values, which it sorts in place; 0 for no values.
func Percentile(values []float64, p float64) float64 {
	if len(values) == 0 {
		return 0
	}
	sort.Float64s(values)
	rank := int(math.Ceil(p / 100 * float64(len(values))))
	rank = min(max(rank, 1), len(values))
	return values[rank-1]
}

// Fit is a least-squares line y = Intercept + Slope*x.
type Fit struct {
	Slope     float64 `json:"slope"`
	Intercept float64 `json:"intercept"`
}

// FitLine fits a line through the points (xs[i], ys[i]).
func FitLine(xs, ys []float64) (Fit, error) {
	if len(xs) != len(ys) || len(xs) < 2 {
		return Fit{}, errors.New("fit: need at least two points")
	}
	n := float64(len(xs))
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx += xs[i]
		sy += ys[i]
		sxx += xs[i] * xs[i]
		sxy += xs[i] * ys[i]
	}
	den := n*sxx - sx*sx
	if den == 0 {
		return Fit{}, errors.New("fit: all x values are equal")
	}
	slope := (n*sxy - sx*sy) / den
	return Fit{Slope: slope, Intercept: (sy - slope*sx) / n}, nil
}

// Bitset records which sequence numbers were seen.
type Bitset struct {
	words []uint64
	count uint64
}

// Set marks i and reports whether it was new.
func (b *Bitset) Set(i uint64) bool {
	w := int(i / 64)
	if w >= len(b.words) {
		b.words = append(b.words, make([]uint64, w+1-len(b.words))...)
	}
	m := uint64(1) << (i % 64)
	if b.words[w]&m != 0 {
		return false
	}
	b.words[w] |= m
	b.count++
	return true
}

// Count is the number of distinct values set.
func (b *Bitset) Count() uint64 { return b.count }
