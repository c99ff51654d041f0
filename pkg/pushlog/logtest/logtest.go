// Package logtest is the contract suite every pushlog.Log implementation
// must pass. An engine's test calls Run with a Harness that opens logs.
//
// Every subtest uses fresh random topic and group names, so a shared
// backend (a Kafka cluster) needs no cleaning between subtests; topics must
// be created on first use (or by the harness) and a group that never
// committed must start at the earliest record of the topic.
package logtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/heraldpush/herald/pkg/pushlog"
)

// Harness opens the logs under test.
type Harness struct {
	// Open returns a log on fresh storage. The suite closes it.
	Open func(t testing.TB) pushlog.Log
	// Reopen returns a new log on the storage of prev, which the suite has
	// already closed: it stands for a process restart. The suite closes
	// the new log.
	Reopen func(t testing.TB, prev pushlog.Log) pushlog.Log
}

// Timeouts of the suite: long enough for a real cluster, short enough to
// fail fast.
const (
	waitTimeout  = 30 * time.Second
	quietTimeout = 300 * time.Millisecond // "nothing more arrives"
)

// Run runs the contract suite.
func Run(t *testing.T, h Harness) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(*testing.T, Harness)
	}{
		{"RoundTrip", testRoundTrip},
		{"PerKeyOrder", testPerKeyOrder},
		{"CommitAndReopen", testCommitAndReopen},
		{"ConcurrentAppenders", testConcurrentAppenders},
		{"FetchBlocksThenWakes", testFetchWakes},
		{"FetchHonoursCancel", testFetchCancel},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, h) })
	}
}

func uniq(prefix string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return prefix + "-" + hex.EncodeToString(b[:])
}

func open(t testing.TB, h Harness) pushlog.Log {
	t.Helper()
	l := h.Open(t)
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func consume(t testing.TB, l pushlog.Log, topic, group string) pushlog.Consumer {
	t.Helper()
	c, err := l.Consume(t.Context(), topic, group)
	if err != nil {
		t.Fatalf("Consume(%s, %s): %v", topic, group, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func appendRecs(t testing.TB, l pushlog.Log, topic string, recs ...pushlog.Record) {
	t.Helper()
	if err := l.Append(t.Context(), topic, recs...); err != nil {
		t.Fatalf("Append: %v", err)
	}
}

func rec(key, value string) pushlog.Record {
	r := pushlog.Record{Value: []byte(value)}
	if key != "" {
		r.Key = []byte(key)
	}
	return r
}

// fetchN fetches until at least n records arrived, failing after waitTimeout.
func fetchN(t testing.TB, c pushlog.Consumer, n int) []pushlog.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	var out []pushlog.Record
	for len(out) < n {
		recs, err := c.Fetch(ctx)
		if err != nil {
			t.Fatalf("Fetch after %d of %d records: %v", len(out), n, err)
		}
		out = append(out, recs...)
	}
	return out
}

// expectNothing checks that no record arrives within quietTimeout.
func expectNothing(t testing.TB, c pushlog.Consumer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), quietTimeout)
	defer cancel()
	recs, err := c.Fetch(ctx)
	if len(recs) > 0 {
		t.Fatalf("Fetch returned %d unexpected records, first %q", len(recs), recs[0].Value)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Fetch on an exhausted topic = %v, want context.DeadlineExceeded", err)
	}
}

func values(recs []pushlog.Record) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = string(r.Value)
	}
	return out
}

// checkOffsets fails if a partition's offsets do not strictly increase in
// the order the records were fetched.
func checkOffsets(t testing.TB, recs []pushlog.Record) {
	t.Helper()
	last := make(map[int]int64)
	for _, r := range recs {
		if r.Partition < 0 {
			t.Fatalf("record %q has partition %d", r.Value, r.Partition)
		}
		if prev, ok := last[r.Partition]; ok && r.Offset <= prev {
			t.Fatalf("partition %d: offset %d fetched after %d", r.Partition, r.Offset, prev)
		}
		last[r.Partition] = r.Offset
	}
}

func testRoundTrip(t *testing.T, h Harness) {
	l := open(t, h)
	topic := uniq("topic")
	want := []pushlog.Record{rec("dev-1", "hello"), rec("", "no key"), rec("dev-2", "")}
	appendRecs(t, l, topic, want...)
	appendRecs(t, l, topic) // nothing: a no-op
	c := consume(t, l, topic, uniq("group"))
	got := fetchN(t, c, len(want))
	if len(got) != len(want) {
		t.Fatalf("fetched %d records, want %d", len(got), len(want))
	}
	checkOffsets(t, got)
	byValue := make(map[string]pushlog.Record)
	for _, r := range got {
		byValue[string(r.Value)] = r
	}
	for _, w := range want {
		g, ok := byValue[string(w.Value)]
		if !ok {
			t.Errorf("record %q not fetched", w.Value)
			continue
		}
		if string(g.Key) != string(w.Key) {
			t.Errorf("record %q: key %q, want %q", w.Value, g.Key, w.Key)
		}
	}
	expectNothing(t, c)
	// Another topic is separate.
	other := consume(t, l, uniq("topic"), uniq("group"))
	expectNothing(t, other)
}

func testPerKeyOrder(t *testing.T, h Harness) {
	l := open(t, h)
	topic := uniq("topic")
	const keys, perKey = 10, 30
	// Interleave keys within and across Appends.
	for round := range perKey / 3 {
		var recs []pushlog.Record
		for i := range 3 {
			for k := range keys {
				recs = append(recs, rec(fmt.Sprint("key-", k), fmt.Sprintf("%d/%03d", k, round*3+i)))
			}
		}
		appendRecs(t, l, topic, recs...)
	}
	c := consume(t, l, topic, uniq("group"))
	got := fetchN(t, c, keys*perKey)
	checkOffsets(t, got)
	seq := make(map[string][]string)
	part := make(map[string]int)
	for _, r := range got {
		k := string(r.Key)
		if p, ok := part[k]; ok && p != r.Partition {
			t.Fatalf("key %s in partitions %d and %d", k, p, r.Partition)
		}
		part[k] = r.Partition
		seq[k] = append(seq[k], string(r.Value))
	}
	for k, vs := range seq {
		if !slices.IsSorted(vs) || len(vs) != perKey {
			t.Errorf("key %s: values %v, want %d in append order", k, vs, perKey)
		}
	}
}

func testCommitAndReopen(t *testing.T, h Harness) {
	l := h.Open(t)
	topic, group := uniq("topic"), uniq("group")
	const n = 40
	var recs []pushlog.Record
	for i := range n {
		recs = append(recs, rec(fmt.Sprint("key-", i%10), fmt.Sprintf("v%02d", i)))
	}
	appendRecs(t, l, topic, recs...)

	c, err := l.Consume(t.Context(), topic, group)
	if err != nil {
		t.Fatal(err)
	}
	got := fetchN(t, c, n)
	// Commit the first half of every partition, in two calls, out of order
	// (committing an earlier record later must not move the offset back).
	byPart := make(map[int][]pushlog.Record)
	for _, r := range got {
		byPart[r.Partition] = append(byPart[r.Partition], r)
	}
	var commit, lower []pushlog.Record
	wantAgain := make(map[string]bool)
	for _, rs := range byPart {
		half := len(rs) / 2
		if half > 0 {
			commit = append(commit, rs[half-1])
			lower = append(lower, rs[0])
		}
		for _, r := range rs[half:] {
			wantAgain[string(r.Value)] = true
		}
	}
	if err := c.Commit(t.Context(), commit...); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if err := c.Commit(t.Context(), lower...); err != nil {
		t.Fatalf("Commit of earlier records: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("consumer Close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("log Close: %v", err)
	}

	l = h.Reopen(t, l)
	t.Cleanup(func() { _ = l.Close() })
	c = consume(t, l, topic, group)
	again := fetchN(t, c, len(wantAgain))
	checkOffsets(t, again)
	gotAgain := make(map[string]bool)
	for _, r := range again {
		if gotAgain[string(r.Value)] {
			t.Errorf("record %s redelivered twice", r.Value)
		}
		gotAgain[string(r.Value)] = true
	}
	for v := range wantAgain {
		if !gotAgain[v] {
			t.Errorf("uncommitted record %s not redelivered after reopen", v)
		}
	}
	for v := range gotAgain {
		if !wantAgain[v] {
			t.Errorf("committed record %s delivered again after reopen", v)
		}
	}
	expectNothing(t, c)

	// Appends after the restart continue the partitions' offsets.
	maxOff := make(map[int]int64)
	for _, r := range got {
		maxOff[r.Partition] = max(maxOff[r.Partition], r.Offset)
	}
	appendRecs(t, l, topic, recs[:10]...)
	for _, r := range fetchN(t, c, 10) {
		if off, ok := maxOff[r.Partition]; ok && r.Offset <= off {
			t.Errorf("partition %d: new record at offset %d, not after %d", r.Partition, r.Offset, off)
		}
	}

	// A group that never committed reads everything.
	fresh := consume(t, l, topic, uniq("group"))
	if all := fetchN(t, fresh, n+10); len(all) != n+10 {
		t.Errorf("a new group fetched %d records, want %d", len(all), n+10)
	}
}

func testConcurrentAppenders(t *testing.T, h Harness) {
	l := open(t, h)
	topic := uniq("topic")
	const writers, perWriter, batch = 8, 2000, 20
	c := consume(t, l, topic, uniq("group"))

	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			for i := 0; i < perWriter; i += batch {
				recs := make([]pushlog.Record, 0, batch)
				for j := i; j < i+batch; j++ {
					key := ""
					if j%4 != 0 { // some records have no key
						key = fmt.Sprintf("dev-%d-%d", w, j%16)
					}
					recs = append(recs, rec(key, fmt.Sprintf("%d/%d", w, j)))
				}
				if err := l.Append(t.Context(), topic, recs...); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	// Consume while appending: records appear in offset order, none skipped.
	seen := make(map[string]int, writers*perWriter)
	var all []pushlog.Record
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	for len(all) < writers*perWriter {
		recs, err := c.Fetch(ctx)
		if err != nil {
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Errorf("Append: %v", err)
			}
			t.Fatalf("Fetch after %d records: %v", len(all), err)
		}
		all = append(all, recs...)
		for _, r := range recs {
			seen[string(r.Value)]++
		}
		if err := c.Commit(ctx, recs...); err != nil {
			t.Fatalf("Commit: %v", err)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Append: %v", err)
	}
	checkOffsets(t, all)
	for v, n := range seen {
		if n != 1 {
			t.Errorf("record %s fetched %d times", v, n)
		}
	}
	for w := range writers {
		for j := range perWriter {
			if v := fmt.Sprintf("%d/%d", w, j); seen[v] == 0 {
				t.Fatalf("record %s lost", v)
			}
		}
	}
	// Per writer and key, the order of appends is kept.
	last := make(map[string]int)
	for _, r := range all {
		if len(r.Key) == 0 {
			continue
		}
		var w, j int
		if _, err := fmt.Sscanf(string(r.Value), "%d/%d", &w, &j); err != nil {
			t.Fatal(err)
		}
		if prev, ok := last[string(r.Key)]; ok && j <= prev {
			t.Fatalf("key %s: record %d fetched after %d", r.Key, j, prev)
		}
		last[string(r.Key)] = j
	}
	expectNothing(t, c)
}

func testFetchWakes(t *testing.T, h Harness) {
	l := open(t, h)
	topic := uniq("topic")
	c := consume(t, l, topic, uniq("group"))
	expectNothing(t, c) // Fetch blocks on an empty topic

	type result struct {
		recs []pushlog.Record
		err  error
	}
	done := make(chan result, 1)
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	go func() {
		recs, err := c.Fetch(ctx)
		done <- result{recs, err}
	}()
	// Give Fetch a moment to block, so the append has to wake it (if it
	// comes later, the test still passes, it just proves less).
	time.Sleep(20 * time.Millisecond)
	appendRecs(t, l, topic, rec("k", "wake up"))
	select {
	case r := <-done:
		if r.err != nil || len(r.recs) != 1 || string(r.recs[0].Value) != "wake up" {
			t.Fatalf("Fetch = %v, %v; want the appended record", values(r.recs), r.err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Fetch not woken by Append")
	}
}

func testFetchCancel(t *testing.T, h Harness) {
	l := open(t, h)
	c := consume(t, l, uniq("topic"), uniq("group"))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := c.Fetch(ctx)
		done <- err
	}()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Fetch after cancel = %v, want context.Canceled", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Fetch ignored the cancelled context")
	}
}
