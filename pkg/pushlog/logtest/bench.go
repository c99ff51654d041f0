package logtest

import (
	"fmt"
	"testing"

	"github.com/heraldpush/herald/pkg/pushlog"
)

// AppendBenchmark measures durable Appends of 100 records (256-byte values,
// keyed by device) from one goroutine, or from GOMAXPROCS*4 goroutines with
// parallel set (group commit shares the syncs). It reports records/s.
func AppendBenchmark(b *testing.B, open func(testing.TB) pushlog.Log, parallel bool) {
	l := open(b)
	defer l.Close()
	const batch = 100
	value := make([]byte, 256)
	makeBatch := func(seed int) []pushlog.Record {
		recs := make([]pushlog.Record, batch)
		for i := range recs {
			recs[i] = pushlog.Record{Key: fmt.Appendf(nil, "device-%d", (seed*batch+i)%10000), Value: value}
		}
		return recs
	}
	b.ReportAllocs()
	b.ResetTimer()
	if parallel {
		b.SetParallelism(4)
		b.RunParallel(func(pb *testing.PB) {
			recs := makeBatch(0)
			for pb.Next() {
				if err := l.Append(b.Context(), pushlog.TopicPush, recs...); err != nil {
					b.Errorf("Append: %v", err)
					return
				}
			}
		})
	} else {
		recs := makeBatch(0)
		for range b.N {
			if err := l.Append(b.Context(), pushlog.TopicPush, recs...); err != nil {
				b.Fatalf("Append: %v", err)
			}
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "records/s")
}
