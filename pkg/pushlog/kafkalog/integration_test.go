//go:build integration

package kafkalog_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/enginetest"
	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/pkg/pushlog/kafkalog"
	"github.com/heraldpush/herald/pkg/pushlog/logtest"
)

const waitTimeout = 30 * time.Second

// newPrefix returns a topic prefix of its own for a test, and deletes the
// topics and groups under it when the test ends.
func newPrefix(tb testing.TB, brokers []string) string {
	tb.Helper()
	var b [5]byte
	_, _ = rand.Read(b[:])
	prefix := "t" + hex.EncodeToString(b[:]) + "."
	tb.Cleanup(func() { enginetest.DropKafkaPrefix(tb, brokers, prefix) })
	return prefix
}

func testLogger(tb testing.TB) *slog.Logger {
	if testing.Verbose() && os.Getenv("HERALD_TEST_KAFKA_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func testConfig(brokers []string, prefix string) kafkalog.Config {
	return kafkalog.Config{
		Brokers:           brokers,
		TopicPrefix:       prefix,
		Partitions:        6,
		SessionTimeout:    6 * time.Second, // the broker's minimum by default
		HeartbeatInterval: 500 * time.Millisecond,
		RebalanceTimeout:  3 * time.Second,
	}
}

func openLog(tb testing.TB, cfg kafkalog.Config) *kafkalog.Log {
	tb.Helper()
	l, err := kafkalog.New(cfg, testLogger(tb))
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	tb.Cleanup(func() { _ = l.Close() })
	return l
}

// harness opens logs with a topic prefix of their own; Reopen opens a new
// log with the prefix of the previous one, as a restarted process would.
type harness struct {
	cfg      kafkalog.Config
	mu       sync.Mutex
	prefixes map[pushlog.Log]string
}

func (h *harness) open(tb testing.TB, prefix string) pushlog.Log {
	cfg := h.cfg
	cfg.TopicPrefix = prefix
	l := openLog(tb, cfg)
	h.mu.Lock()
	h.prefixes[l] = prefix
	h.mu.Unlock()
	return l
}

func (h *harness) Open(tb testing.TB) pushlog.Log { return h.open(tb, newPrefix(tb, h.cfg.Brokers)) }

func (h *harness) Reopen(tb testing.TB, prev pushlog.Log) pushlog.Log {
	h.mu.Lock()
	prefix, ok := h.prefixes[prev]
	delete(h.prefixes, prev)
	h.mu.Unlock()
	if !ok {
		tb.Fatalf("Reopen of a log the harness did not open")
	}
	return h.open(tb, prefix)
}

func TestContract(t *testing.T) {
	brokers := enginetest.Kafka(t)
	h := &harness{prefixes: make(map[pushlog.Log]string)}
	h.cfg = testConfig(brokers, "")
	h.cfg.MaxBatch = 64
	logtest.Run(t, logtest.Harness{Open: h.Open, Reopen: h.Reopen})
}

func consume(tb testing.TB, l pushlog.Log, topic, group string) pushlog.Consumer {
	tb.Helper()
	c, err := l.Consume(tb.Context(), topic, group)
	if err != nil {
		tb.Fatalf("Consume: %v", err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// waitStable waits until the group has n members that all own partitions.
func waitStable(tb testing.TB, brokers []string, group string, n int) {
	tb.Helper()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Transport: tr, Timeout: 5 * time.Second}
	deadline := time.Now().Add(waitTimeout)
	last := "no answer"
	for time.Now().Before(deadline) {
		resp, err := client.DescribeGroups(tb.Context(), &kafka.DescribeGroupsRequest{GroupIDs: []string{group}})
		if err == nil && len(resp.Groups) == 1 {
			g := resp.Groups[0]
			owners := 0
			for _, m := range g.Members {
				for _, t := range m.MemberAssignments.Topics {
					if len(t.Partitions) > 0 {
						owners++
						break
					}
				}
			}
			if g.GroupState == "Stable" && len(g.Members) == n && owners == n {
				return
			}
			last = fmt.Sprintf("state %s, %d members, %d own partitions", g.GroupState, len(g.Members), owners)
		} else if err != nil {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond) // poll interval
	}
	tb.Fatalf("group %s not stable with %d members after %v: %s", group, n, waitTimeout, last)
}

func appendN(tb testing.TB, l pushlog.Log, topic string, n int) map[string]bool {
	tb.Helper()
	recs := make([]pushlog.Record, n)
	want := make(map[string]bool, n)
	for i := range recs {
		v := fmt.Sprintf("r%04d", i)
		recs[i] = pushlog.Record{Key: fmt.Appendf(nil, "dev-%d", i%50), Value: []byte(v)}
		want[v] = true
	}
	if err := l.Append(tb.Context(), topic, recs...); err != nil {
		tb.Fatalf("Append: %v", err)
	}
	return want
}

// fetchSome fetches for at most d; no record is not an error.
func fetchSome(tb testing.TB, c pushlog.Consumer, d time.Duration) []pushlog.Record {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), d)
	defer cancel()
	recs, err := c.Fetch(ctx)
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		tb.Fatalf("Fetch: %v", err)
	}
	return recs
}

// member is what one group member fetched.
type member struct {
	name  string
	c     pushlog.Consumer
	seen  map[string]pushlog.Record
	parts map[int]bool
}

func newMember(name string, c pushlog.Consumer) *member {
	return &member{name: name, c: c, seen: make(map[string]pushlog.Record), parts: make(map[int]bool)}
}

// fetchAll fetches from the members in turn until they saw want between
// them; it fails on a record seen twice.
func fetchAll(tb testing.TB, want map[string]bool, commit bool, ms ...*member) {
	tb.Helper()
	deadline := time.Now().Add(waitTimeout)
	total := 0
	for total < len(want) {
		if time.Now().After(deadline) {
			tb.Fatalf("fetched %d of %d records in %v", total, len(want), waitTimeout)
		}
		for _, m := range ms {
			recs := fetchSome(tb, m.c, 200*time.Millisecond)
			for _, r := range recs {
				v := string(r.Value)
				if !want[v] {
					tb.Fatalf("%s fetched unexpected record %q", m.name, v)
				}
				for _, o := range ms {
					if _, dup := o.seen[v]; dup {
						tb.Fatalf("record %s fetched by %s and again by %s", v, o.name, m.name)
					}
				}
				m.seen[v] = r
				m.parts[r.Partition] = true
				total++
			}
			if commit && len(recs) > 0 {
				if err := m.c.Commit(tb.Context(), recs...); err != nil {
					tb.Fatalf("%s Commit: %v", m.name, err)
				}
			}
		}
	}
}

// TestMembersSplitPartitions runs two members of one group, in two logs
// as two dispatcher processes would: each record reaches exactly one, and
// they own disjoint partitions.
func TestMembersSplitPartitions(t *testing.T) {
	brokers := enginetest.Kafka(t)
	cfg := testConfig(brokers, newPrefix(t, brokers))
	a, b := openLog(t, cfg), openLog(t, cfg)
	ma := newMember("a", consume(t, a, pushlog.TopicPush, "dispatch"))
	mb := newMember("b", consume(t, b, pushlog.TopicPush, "dispatch"))
	waitStable(t, brokers, cfg.TopicPrefix+"dispatch", 2)

	want := appendN(t, a, pushlog.TopicPush, 600)
	fetchAll(t, want, true, ma, mb)
	if len(ma.seen) == 0 || len(mb.seen) == 0 {
		t.Errorf("a fetched %d records, b %d: want both a share", len(ma.seen), len(mb.seen))
	}
	for p := range ma.parts {
		if mb.parts[p] {
			t.Errorf("partition %d fetched by both members", p)
		}
	}
	for _, m := range []*member{ma, mb} {
		if extra := fetchSome(t, m.c, 300*time.Millisecond); len(extra) > 0 {
			t.Errorf("%s fetched %d more records, first %q", m.name, len(extra), extra[0].Value)
		}
	}
}

// handOver checks that, after the member that fetched lost without
// committing is gone, the survivor fetches exactly the lost records again.
func handOver(t *testing.T, survivor *member, lost map[string]bool) {
	t.Helper()
	got := make(map[string]bool)
	deadline := time.Now().Add(waitTimeout)
	for len(got) < len(lost) {
		if time.Now().After(deadline) {
			t.Fatalf("survivor fetched %d of the %d uncommitted records in %v", len(got), len(lost), waitTimeout)
		}
		recs := fetchSome(t, survivor.c, time.Second)
		for _, r := range recs {
			v := string(r.Value)
			switch {
			case !lost[v]:
				t.Fatalf("survivor fetched %q, a record it had committed", v)
			case got[v]:
				t.Fatalf("survivor fetched %q twice", v)
			}
			got[v] = true
		}
		if len(recs) > 0 {
			if err := survivor.c.Commit(t.Context(), recs...); err != nil {
				t.Fatalf("Commit: %v", err)
			}
		}
	}
	if extra := fetchSome(t, survivor.c, 300*time.Millisecond); len(extra) > 0 {
		t.Errorf("survivor fetched %d more records, first %q", len(extra), extra[0].Value)
	}
}

// TestClosedMemberHandsOver closes a member that fetched without
// committing: the other takes its partitions over and fetches its records
// again from the committed offsets.
func TestClosedMemberHandsOver(t *testing.T) {
	brokers := enginetest.Kafka(t)
	cfg := testConfig(brokers, newPrefix(t, brokers))
	a, b := openLog(t, cfg), openLog(t, cfg)
	ca := consume(t, a, pushlog.TopicPush, "dispatch")
	ma := newMember("a", ca)
	mb := newMember("b", consume(t, b, pushlog.TopicPush, "dispatch"))
	waitStable(t, brokers, cfg.TopicPrefix+"dispatch", 2)

	want := appendN(t, a, pushlog.TopicPush, 400)
	// b commits what it fetches, a commits nothing.
	deadline := time.Now().Add(waitTimeout)
	for len(ma.seen)+len(mb.seen) < len(want) && time.Now().Before(deadline) {
		for _, r := range fetchSome(t, ma.c, 200*time.Millisecond) {
			ma.seen[string(r.Value)] = r
		}
		recs := fetchSome(t, mb.c, 200*time.Millisecond)
		for _, r := range recs {
			mb.seen[string(r.Value)] = r
		}
		if len(recs) > 0 {
			if err := mb.c.Commit(t.Context(), recs...); err != nil {
				t.Fatalf("Commit: %v", err)
			}
		}
	}
	if len(ma.seen)+len(mb.seen) != len(want) || len(ma.seen) == 0 {
		t.Fatalf("a fetched %d and b %d records, want %d between them, some by a", len(ma.seen), len(mb.seen), len(want))
	}
	if err := ca.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	lost := make(map[string]bool)
	for v := range ma.seen {
		lost[v] = true
	}
	handOver(t, mb, lost)
}

// memberEnv makes the test binary a group member for
// TestKilledMemberHandsOver: "brokers|prefix".
const memberEnv = "HERALD_KAFKALOG_MEMBER"

// TestMemberProcess is the child process of TestKilledMemberHandsOver: it
// joins the group, prints every record it fetches and never commits, until
// it is killed. Without memberEnv it does nothing.
func TestMemberProcess(t *testing.T) {
	spec := os.Getenv(memberEnv)
	if spec == "" {
		return
	}
	brokers, prefix, _ := strings.Cut(spec, "|")
	l := openLog(t, testConfig(strings.Split(brokers, ","), prefix))
	c := consume(t, l, pushlog.TopicPush, "dispatch")
	fmt.Println("joined")
	for {
		recs, err := c.Fetch(context.Background())
		if err != nil {
			t.Fatalf("Fetch: %v", err)
		}
		for _, r := range recs {
			fmt.Printf("record %s\n", r.Value)
		}
	}
}

// TestKilledMemberHandsOver kills (SIGKILL) a member process that fetched
// without committing: after the session timeout the survivor owns its
// partitions and fetches its records again.
func TestKilledMemberHandsOver(t *testing.T) {
	brokers := enginetest.Kafka(t)
	cfg := testConfig(brokers, newPrefix(t, brokers))
	b := openLog(t, cfg)

	cmd := exec.Command(os.Args[0], "-test.run=^TestMemberProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), memberEnv+"="+strings.Join(brokers, ",")+"|"+cfg.TopicPrefix)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = cmd.Process.Kill()
		}
		_ = cmd.Wait()
	})
	lines := make(chan string, 1024)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case l := <-lines:
		if l != "joined" {
			t.Fatalf("member process said %q", l)
		}
	case <-time.After(waitTimeout):
		t.Fatal("member process did not start")
	}

	mb := newMember("b", consume(t, b, pushlog.TopicPush, "dispatch"))
	waitStable(t, brokers, cfg.TopicPrefix+"dispatch", 2)
	want := appendN(t, b, pushlog.TopicPush, 400)

	child := make(map[string]bool)
	deadline := time.Now().Add(waitTimeout)
	for len(child)+len(mb.seen) < len(want) {
		if time.Now().After(deadline) {
			t.Fatalf("member process fetched %d and b %d records, want %d between them", len(child), len(mb.seen), len(want))
		}
	drain:
		for {
			select {
			case l := <-lines:
				v, ok := strings.CutPrefix(l, "record ")
				if !ok || !want[v] || child[v] {
					t.Fatalf("member process printed %q", l)
				}
				child[v] = true
			default:
				break drain
			}
		}
		recs := fetchSome(t, mb.c, 200*time.Millisecond)
		for _, r := range recs {
			if child[string(r.Value)] {
				t.Fatalf("record %s fetched by both members", r.Value)
			}
			mb.seen[string(r.Value)] = r
		}
		if len(recs) > 0 {
			if err := mb.c.Commit(t.Context(), recs...); err != nil {
				t.Fatalf("Commit: %v", err)
			}
		}
	}
	if len(child) == 0 {
		t.Fatal("the member process fetched nothing")
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed = true
	start := time.Now()
	handOver(t, mb, child)
	t.Logf("survivor fetched the %d lost records %v after the kill", len(child), time.Since(start).Round(time.Millisecond))
}

// TestEnsureTopics checks that EnsureTopics creates the topics with the
// configured partitions, and leaves existing ones alone.
func TestEnsureTopics(t *testing.T) {
	brokers := enginetest.Kafka(t)
	cfg := testConfig(brokers, newPrefix(t, brokers))
	cfg.Partitions = 3
	l := openLog(t, cfg)
	if err := l.EnsureTopics(t.Context(), pushlog.TopicPush, pushlog.TopicReceipts); err != nil {
		t.Fatalf("EnsureTopics: %v", err)
	}
	cfg.Partitions = 5 // another process configured differently: the topic keeps 3
	l2 := openLog(t, cfg)
	if err := l2.EnsureTopics(t.Context(), pushlog.TopicPush); err != nil {
		t.Fatalf("EnsureTopics of an existing topic: %v", err)
	}
	// l2 can write to it at once, though it did not create it.
	if err := l2.Append(t.Context(), pushlog.TopicPush, pushlog.Record{Key: []byte("k"), Value: []byte("v")}); err != nil {
		t.Fatalf("Append: %v", err)
	}
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Transport: tr}
	md, err := client.Metadata(t.Context(), &kafka.MetadataRequest{
		Topics: []string{cfg.TopicPrefix + pushlog.TopicPush, cfg.TopicPrefix + pushlog.TopicReceipts},
	})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, tp := range md.Topics {
		if tp.Error != nil {
			t.Errorf("topic %s: %v", tp.Name, tp.Error)
		}
		got = append(got, fmt.Sprintf("%s:%d", strings.TrimPrefix(tp.Name, cfg.TopicPrefix), len(tp.Partitions)))
	}
	slices.Sort(got)
	if want := []string{"push:3", "receipts:3"}; !slices.Equal(got, want) {
		t.Errorf("topics %v, want %v", got, want)
	}
}

// TestPartitionsMatchJavaClient checks that keys land in the partitions
// the Java client's default partitioner picks (murmur2), so producers in
// other languages agree with Herald on where a device's records go.
func TestPartitionsMatchJavaClient(t *testing.T) {
	brokers := enginetest.Kafka(t)
	cfg := testConfig(brokers, newPrefix(t, brokers))
	cfg.Partitions = 16
	l := openLog(t, cfg)
	// murmur2 values of org.apache.kafka.common.utils.Utils.murmur2, as
	// listed in librdkafka's rdmurmur2.c tests; the partitioner takes
	// toPositive(murmur2(key)) % partitions.
	murmur2 := map[string]uint32{
		"kafka": 0xd067cf64, "giberish123456789": 0x8f552b0c, "1234": 0x9fc97b14,
		"234": 0xe7c009ca, "34": 0x873930da, "4": 0x5a4b5ca1,
	}
	var recs []pushlog.Record
	for k := range murmur2 {
		recs = append(recs, pushlog.Record{Key: []byte(k), Value: []byte(k)})
	}
	if err := l.Append(t.Context(), "keys", recs...); err != nil {
		t.Fatal(err)
	}
	m := newMember("c", consume(t, l, "keys", "g"))
	want := make(map[string]bool)
	for k := range murmur2 {
		want[k] = true
	}
	fetchAll(t, want, false, m)
	for k, h := range murmur2 {
		if got, want := m.seen[k].Partition, int(h&0x7fffffff)%16; got != want {
			t.Errorf("key %q in partition %d, the Java client puts it in %d", k, got, want)
		}
	}
}

func benchOpen(tb testing.TB) pushlog.Log {
	brokers := enginetest.Kafka(tb)
	cfg := testConfig(brokers, newPrefix(tb, brokers))
	cfg.Partitions = 16
	return openLog(tb, cfg)
}

func BenchmarkAppend(b *testing.B) { logtest.AppendBenchmark(b, benchOpen, false) }

func BenchmarkAppendParallel(b *testing.B) { logtest.AppendBenchmark(b, benchOpen, true) }

// TestCloseStopsGoroutines checks that a closed log leaves no goroutine
// behind, with a consumer that was blocked in Fetch.
func TestCloseStopsGoroutines(t *testing.T) {
	brokers := enginetest.Kafka(t)
	cfg := testConfig(brokers, newPrefix(t, brokers))
	before := runtime.NumGoroutine()
	l, err := kafkalog.New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	want := appendN(t, l, pushlog.TopicPush, 10)
	c, err := l.Consume(t.Context(), pushlog.TopicPush, "g")
	if err != nil {
		t.Fatal(err)
	}
	fetchAll(t, want, true, newMember("c", c))
	fetched := make(chan error, 1)
	go func() {
		_, err := c.Fetch(context.Background())
		fetched <- err
	}()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-fetched; !errors.Is(err, herald.ErrClosed) {
		t.Errorf("Fetch = %v, want ErrClosed", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines after Close, %d before New:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
}

// TestAppendRecreatesDeletedTopic deletes a topic behind the log's back:
// the next Append creates it again and succeeds.
func TestAppendRecreatesDeletedTopic(t *testing.T) {
	brokers := enginetest.Kafka(t)
	cfg := testConfig(brokers, newPrefix(t, brokers))
	l := openLog(t, cfg)
	topic := pushlog.UpstreamTopic("chat")
	appendN(t, l, topic, 5)
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Transport: tr}
	if _, err := client.DeleteTopics(t.Context(), &kafka.DeleteTopicsRequest{Topics: []string{cfg.TopicPrefix + topic}}); err != nil {
		t.Fatal(err)
	}
	want := appendN(t, l, topic, 3)
	fetchAll(t, want, false, newMember("c", consume(t, l, topic, "g")))
}
