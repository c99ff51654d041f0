// Package pebblelog implements pushlog.Log on the embedded Pebble database
// (pkg/pebbledb): partitioned, durable topics with consumer groups.
//
// Append returns only after its records are synced to Pebble's WAL. Appends
// go through one group-commit goroutine: it takes every Append waiting at
// that moment, assigns their offsets, writes them in one batch and syncs
// once, so concurrent appenders share syncs and offsets become visible in
// order (a consumer never skips a record written after a later offset).
//
// Records are partitioned by the FNV-1a hash of their key (round-robin when
// they have none). Each (topic, group) has one consumer at a time; it reads
// every partition from the group's committed offsets. Committed offsets are
// written synced; because the store shares the database and its WAL, a
// durable commit implies every earlier store write is durable too.
//
// A background loop deletes records below every committing group's offset,
// and records older than Options.Retention in any case.
//
// The key layout is documented in keys.go.
package pebblelog

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/pebbledb"
	"github.com/heraldpush/herald/pkg/pushlog"
)

// Options configure a Log. The zero value is usable.
type Options struct {
	// Partitions per topic. Default 8. Fixed when the database is first
	// used: a different value on a later start is ignored with a warning.
	Partitions int
	// MaxBatch is the most records one Fetch returns. Default 512.
	MaxBatch int
	// Retention deletes records older than this even if a group has not
	// committed them. Default 7 days.
	Retention time.Duration
	// CleanupInterval is how often retention runs. Default 1 minute.
	CleanupInterval time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// maxGroupRecords bounds the records of one group commit.
const maxGroupRecords = 16384

// Log implements pushlog.Log on a Pebble database it does not own.
type Log struct {
	db     *pebble.DB
	opts   Options
	logger *slog.Logger

	reqs     chan *appendReq
	stop     chan struct{} // closed by Close
	stopOnce sync.Once
	wg       sync.WaitGroup

	// closeMu is held shared by every operation touching the database and
	// exclusively by Close, so that after Close nothing touches it.
	closeMu sync.RWMutex
	closed  bool

	// Owned by the group-commit goroutine.
	next map[topicPartition]int64
	rr   map[string]uint32

	mu        sync.Mutex
	consumers map[topicGroup]*consumer
	wake      map[string]chan struct{}
}

type topicPartition struct {
	topic     string
	partition int
}

type topicGroup struct{ topic, group string }

type appendReq struct {
	topic string
	recs  []pushlog.Record
	done  chan error
}

var _ pushlog.Log = (*Log)(nil)

// New returns a log on db and starts its group-commit and retention loops;
// Close stops them. The caller keeps ownership of db and closes it after
// Close.
func New(db *pebble.DB, opts Options, logger *slog.Logger) (*Log, error) {
	if opts.Partitions <= 0 {
		opts.Partitions = 8
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 512
	}
	if opts.Retention <= 0 {
		opts.Retention = 7 * 24 * time.Hour
	}
	if opts.CleanupInterval <= 0 {
		opts.CleanupInterval = time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	l := &Log{
		db: db, opts: opts, logger: logger,
		reqs:      make(chan *appendReq),
		stop:      make(chan struct{}),
		next:      make(map[topicPartition]int64),
		rr:        make(map[string]uint32),
		consumers: make(map[topicGroup]*consumer),
		wake:      make(map[string]chan struct{}),
	}
	if err := l.fixPartitions(); err != nil {
		return nil, err
	}
	l.wg.Add(2)
	go l.commitLoop()
	go l.cleanupLoop()
	return l, nil
}

// fixPartitions makes the partition count of the first start permanent:
// changing it would move keys to other partitions and strand records.
func (l *Log) fixPartitions() error {
	k := []byte{pebbledb.PrefixLog, tablePartitions}
	v, closer, err := l.db.Get(k)
	switch {
	case errors.Is(err, pebble.ErrNotFound):
		if err := l.db.Set(k, binary.BigEndian.AppendUint32(nil, uint32(l.opts.Partitions)), pebble.Sync); err != nil {
			return fmt.Errorf("pebblelog: store partition count: %w", err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("pebblelog: read partition count: %w", err)
	}
	defer closer.Close()
	if len(v) != 4 {
		return errors.New("pebblelog: corrupt partition count")
	}
	if stored := int(binary.BigEndian.Uint32(v)); stored != l.opts.Partitions {
		l.logger.Warn("partition count is fixed at first start, ignoring the configured one",
			"configured", l.opts.Partitions, "using", stored)
		l.opts.Partitions = stored
	}
	return nil
}

// Close stops the log: later calls fail with herald.ErrClosed, blocked
// Fetches return, and the database is no longer touched once Close returns.
// It does not close the database.
func (l *Log) Close() error {
	// Stopping first ends the loops, blocked Appends and Fetches, and a
	// running cleanup; then the exclusive lock waits out what is in flight.
	l.stopOnce.Do(func() { close(l.stop) })
	l.closeMu.Lock()
	l.closed = true
	l.closeMu.Unlock()
	l.wg.Wait()
	return nil
}

// enter registers an operation on the database; the caller calls
// l.closeMu.RUnlock when done.
func (l *Log) enter() error {
	l.closeMu.RLock()
	if l.closed {
		l.closeMu.RUnlock()
		return herald.ErrClosed
	}
	return nil
}

// ---- append ----

// Append writes recs to topic and returns once they are synced.
func (l *Log) Append(ctx context.Context, topic string, recs ...pushlog.Record) error {
	if err := checkName("topic", topic); err != nil {
		return err
	}
	if len(recs) == 0 {
		return nil
	}
	req := &appendReq{topic: topic, recs: recs, done: make(chan error, 1)}
	if err := l.enter(); err != nil {
		return fmt.Errorf("pebblelog: append: %w: %w", err, herald.ErrUnavailable)
	}
	select {
	case l.reqs <- req:
	case <-l.stop:
		l.closeMu.RUnlock()
		return fmt.Errorf("pebblelog: append: %w: %w", herald.ErrClosed, herald.ErrUnavailable)
	case <-ctx.Done():
		l.closeMu.RUnlock()
		return fmt.Errorf("pebblelog: append: %w", ctx.Err())
	}
	l.closeMu.RUnlock()
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("pebblelog: append: gave up waiting, records may still be written: %w", ctx.Err())
	}
}

// commitLoop is the group-commit goroutine: it writes every Append waiting
// at the time in one synced batch.
func (l *Log) commitLoop() {
	defer l.wg.Done()
	for {
		var group []*appendReq
		select {
		case <-l.stop:
			return
		case r := <-l.reqs:
			group = append(group, r)
		}
		n := len(group[0].recs)
	collect:
		for n < maxGroupRecords {
			select {
			case r := <-l.reqs:
				group = append(group, r)
				n += len(r.recs)
			default:
				break collect
			}
		}
		err := l.write(group)
		for _, r := range group {
			r.done <- err
		}
	}
}

// write assigns offsets to the group's records and writes them synced.
func (l *Log) write(group []*appendReq) error {
	b := l.db.NewBatch()
	defer b.Close()
	now := l.opts.Now().UnixNano()
	before := make(map[topicPartition]int64) // next offsets before this batch, to roll back
	for _, r := range group {
		for _, rec := range r.recs {
			tp := topicPartition{r.topic, l.partition(r.topic, rec.Key)}
			off, err := l.nextOffset(tp)
			if err != nil {
				l.rollback(before)
				return fmt.Errorf("pebblelog: append: %w: %w", err, herald.ErrUnavailable)
			}
			if _, ok := before[tp]; !ok {
				before[tp] = off
			}
			_ = b.Set(recordKey(tp.topic, tp.partition, off), encodeValue(now, rec.Key, rec.Value), nil)
			l.next[tp] = off + 1
		}
	}
	for tp := range before {
		_ = b.Set(partitionKey(tableNext, tp.topic, tp.partition), be64(l.next[tp]), nil)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		l.rollback(before)
		l.logger.Error("push log append failed", "error", err)
		return fmt.Errorf("pebblelog: append: %w: %w", err, herald.ErrUnavailable)
	}
	woken := make(map[string]bool, 1)
	for _, r := range group {
		if !woken[r.topic] {
			woken[r.topic] = true
			l.wakeUp(r.topic)
		}
	}
	return nil
}

func (l *Log) rollback(before map[topicPartition]int64) {
	for tp, off := range before {
		l.next[tp] = off
	}
}

// nextOffset returns the next offset of tp, loading it on first use.
func (l *Log) nextOffset(tp topicPartition) (int64, error) {
	if off, ok := l.next[tp]; ok {
		return off, nil
	}
	off, err := l.getCounter(partitionKey(tableNext, tp.topic, tp.partition))
	if err != nil {
		return 0, err
	}
	l.next[tp] = off
	return off, nil
}

// getCounter reads a be64 value, 0 when absent.
func (l *Log) getCounter(k []byte) (int64, error) {
	v, closer, err := l.db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer closer.Close()
	return readBE64(v)
}

func (l *Log) partition(topic string, key []byte) int {
	if len(key) == 0 {
		n := l.rr[topic]
		l.rr[topic] = n + 1
		return int(n % uint32(l.opts.Partitions))
	}
	h := fnv.New32a()
	_, _ = h.Write(key)
	return int(h.Sum32() % uint32(l.opts.Partitions))
}

// waitChan returns a channel closed at the next append to topic.
func (l *Log) waitChan(topic string) <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	ch, ok := l.wake[topic]
	if !ok {
		ch = make(chan struct{})
		l.wake[topic] = ch
	}
	return ch
}

func (l *Log) wakeUp(topic string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ch, ok := l.wake[topic]; ok {
		close(ch)
		delete(l.wake, topic)
	}
}

// ---- consume ----

// Consume joins group on topic. Only one consumer per (topic, group) may be
// open at a time in this engine: a second one fails with herald.ErrConflict
// until the first is closed.
func (l *Log) Consume(ctx context.Context, topic, group string) (pushlog.Consumer, error) {
	if err := checkName("topic", topic); err != nil {
		return nil, err
	}
	if err := checkName("group", group); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("pebblelog: consume: %w", err)
	}
	if err := l.enter(); err != nil {
		return nil, fmt.Errorf("pebblelog: consume: %w", err)
	}
	defer l.closeMu.RUnlock()
	c := &consumer{
		log: l, topic: topic, group: group,
		pos:       make([]int64, l.opts.Partitions),
		committed: make([]int64, l.opts.Partitions),
		done:      make(chan struct{}),
	}
	for p := range c.committed {
		off, err := l.getCounter(commitKey(topic, group, p))
		if err != nil {
			return nil, fmt.Errorf("pebblelog: consume %s/%s: %w", topic, group, err)
		}
		c.committed[p], c.pos[p] = off, off
	}
	tg := topicGroup{topic, group}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, busy := l.consumers[tg]; busy {
		return nil, fmt.Errorf("pebblelog: consume %s/%s: the group already has a consumer: %w", topic, group, herald.ErrConflict)
	}
	l.consumers[tg] = c
	return c, nil
}

type consumer struct {
	log          *Log
	topic, group string
	done         chan struct{}
	closeOnce    sync.Once

	mu    sync.Mutex // pos, start
	pos   []int64    // next offset to read, per partition
	start int        // partition read first by the next Fetch (fairness)

	commitMu  sync.Mutex
	committed []int64
}

func (c *consumer) closedErr() error {
	select {
	case <-c.done:
		return herald.ErrClosed
	default:
		return nil
	}
}

// Fetch returns the next records of the group's partitions, blocking until
// there is at least one.
func (c *consumer) Fetch(ctx context.Context) ([]pushlog.Record, error) {
	for {
		if err := c.closedErr(); err != nil {
			return nil, fmt.Errorf("pebblelog: fetch: %w", err)
		}
		wake := c.log.waitChan(c.topic) // before reading: an append after the read wakes us
		recs, err := c.read()
		if err != nil || len(recs) > 0 {
			return recs, err
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, fmt.Errorf("pebblelog: fetch: %w", ctx.Err())
		case <-c.done:
			return nil, fmt.Errorf("pebblelog: fetch: %w", herald.ErrClosed)
		case <-c.log.stop:
			return nil, fmt.Errorf("pebblelog: fetch: %w", herald.ErrClosed)
		}
	}
}

// read returns up to MaxBatch records after the read positions and
// advances them, starting at a rotating partition so none starves.
func (c *consumer) read() (recs []pushlog.Record, err error) {
	l := c.log
	if err := l.enter(); err != nil {
		return nil, fmt.Errorf("pebblelog: fetch: %w", err)
	}
	defer l.closeMu.RUnlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	prefix := topicPrefix(tableRecord, c.topic, 0)
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: upperBound(prefix)})
	if err != nil {
		return nil, fmt.Errorf("pebblelog: fetch: %w", err)
	}
	defer func() {
		if cerr := it.Close(); err == nil && cerr != nil {
			recs, err = nil, fmt.Errorf("pebblelog: fetch: %w", cerr)
		}
	}()
	n := len(c.pos)
	for i := 0; i < n && len(recs) < l.opts.MaxBatch; i++ {
		p := (c.start + i) % n
		pp := partitionKey(tableRecord, c.topic, p)
		for ok := it.SeekGE(recordKey(c.topic, p, c.pos[p])); ok && bytes.HasPrefix(it.Key(), pp) && len(recs) < l.opts.MaxBatch; ok = it.Next() {
			v, err := it.ValueAndErr()
			if err != nil {
				return nil, fmt.Errorf("pebblelog: fetch: %w", err)
			}
			_, key, value, err := decodeValue(v)
			if err != nil {
				return nil, err
			}
			off := recordOffset(it.Key())
			buf := make([]byte, len(key)+len(value))
			copy(buf, key)
			copy(buf[len(key):], value)
			rec := pushlog.Record{Value: buf[len(key):len(buf):len(buf)], Partition: p, Offset: off}
			if len(key) > 0 {
				rec.Key = buf[:len(key):len(key)]
			}
			recs = append(recs, rec)
			c.pos[p] = off + 1
		}
		if err := it.Error(); err != nil {
			return nil, fmt.Errorf("pebblelog: fetch: %w", err)
		}
	}
	c.start = (c.start + 1) % n
	return recs, nil
}

// Commit makes each partition's committed offset the larger of the stored
// one and the highest given record's offset + 1, synced.
func (c *consumer) Commit(ctx context.Context, recs ...pushlog.Record) error {
	if err := c.closedErr(); err != nil {
		return fmt.Errorf("pebblelog: commit: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("pebblelog: commit: %w", err)
	}
	c.commitMu.Lock()
	defer c.commitMu.Unlock()
	updates := make(map[int]int64)
	for _, r := range recs {
		if r.Partition < 0 || r.Partition >= len(c.committed) || r.Offset < 0 {
			return fmt.Errorf("pebblelog: commit: record partition %d offset %d out of range: %w",
				r.Partition, r.Offset, herald.ErrInvalidArgument)
		}
		if off := r.Offset + 1; off > c.committed[r.Partition] && off > updates[r.Partition] {
			updates[r.Partition] = off
		}
	}
	if len(updates) == 0 {
		return nil
	}
	l := c.log
	if err := l.enter(); err != nil {
		return fmt.Errorf("pebblelog: commit: %w", err)
	}
	defer l.closeMu.RUnlock()
	b := l.db.NewBatch()
	defer b.Close()
	for p, off := range updates {
		_ = b.Set(commitKey(c.topic, c.group, p), be64(off), nil)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("pebblelog: commit %s/%s: %w: %w", c.topic, c.group, err, herald.ErrUnavailable)
	}
	for p, off := range updates {
		c.committed[p] = off
	}
	return nil
}

// Close leaves the group; a new Consume of the same group may follow.
func (c *consumer) Close() error {
	c.closeOnce.Do(func() {
		close(c.done)
		l := c.log
		l.mu.Lock()
		if l.consumers[topicGroup{c.topic, c.group}] == c {
			delete(l.consumers, topicGroup{c.topic, c.group})
		}
		l.mu.Unlock()
	})
	return nil
}

// ---- retention ----

func (l *Log) cleanupLoop() {
	defer l.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-l.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	t := time.NewTicker(l.opts.CleanupInterval)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		if err := l.Cleanup(ctx, l.opts.Now()); err != nil && ctx.Err() == nil {
			l.logger.Error("push log retention failed", "error", err)
		}
	}
}

// Cleanup applies retention once, as of now: in every partition it deletes
// the records below the smallest committed offset of the groups that have
// committed on the topic, and the records appended before now - Retention.
// It runs every Options.CleanupInterval; tests call it directly.
func (l *Log) Cleanup(ctx context.Context, now time.Time) error {
	if err := l.enter(); err != nil {
		return fmt.Errorf("pebblelog: cleanup: %w", err)
	}
	defer l.closeMu.RUnlock()
	minCommit, err := l.minCommits()
	if err != nil {
		return fmt.Errorf("pebblelog: cleanup: %w", err)
	}
	var parts []topicPartition
	np := []byte{pebbledb.PrefixLog, tableNext}
	err = l.scan(np, upperBound(np), func(k, _ []byte) error {
		topic, p, err := parseTopicPartition(k)
		if err == nil {
			parts = append(parts, topicPartition{topic, p})
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("pebblelog: cleanup: %w", err)
	}
	cutoff := now.Add(-l.opts.Retention).UnixNano()
	for _, tp := range parts {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := l.cleanPartition(tp, minCommit, cutoff); err != nil {
			return fmt.Errorf("pebblelog: cleanup %s/%d: %w", tp.topic, tp.partition, err)
		}
	}
	return nil
}

// minCommits returns, per partition of every topic that has committing
// groups, the smallest committed offset over those groups (0 for a group
// that has not committed in that partition).
func (l *Log) minCommits() (map[topicPartition]int64, error) {
	type groupPart struct {
		topicGroup
		partition int
	}
	commits := make(map[groupPart]int64)
	groups := make(map[string]map[string]bool)
	cp := []byte{pebbledb.PrefixLog, tableCommit}
	err := l.scan(cp, upperBound(cp), func(k, v []byte) error {
		topic, group, p, err := parseCommitKey(k)
		if err != nil {
			return err
		}
		off, err := readBE64(v)
		if err != nil {
			return err
		}
		commits[groupPart{topicGroup{topic, group}, p}] = off
		if groups[topic] == nil {
			groups[topic] = make(map[string]bool)
		}
		groups[topic][group] = true
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make(map[topicPartition]int64)
	for topic, gs := range groups {
		for p := range l.opts.Partitions {
			first := true
			var low int64
			for g := range gs {
				off := commits[groupPart{topicGroup{topic, g}, p}]
				if first || off < low {
					low, first = off, false
				}
			}
			out[topicPartition{topic, p}] = low
		}
	}
	return out, nil
}

func (l *Log) cleanPartition(tp topicPartition, minCommit map[topicPartition]int64, cutoff int64) error {
	lowKey := partitionKey(tableLowMark, tp.topic, tp.partition)
	low, err := l.getCounter(lowKey)
	if err != nil {
		return err
	}
	committed, hasGroups := minCommit[tp]
	target := max(low, committed)
	// Age: the first record appended at or after the cutoff bounds it.
	pp := partitionKey(tableRecord, tp.topic, tp.partition)
	aged := target
	err = l.scan(recordKey(tp.topic, tp.partition, target), upperBound(pp), func(k, v []byte) error {
		appended, _, _, err := decodeValue(v)
		if err != nil {
			return err
		}
		if appended >= cutoff {
			return errStop
		}
		aged = recordOffset(k) + 1
		return nil
	})
	if err != nil {
		return err
	}
	if aged > target {
		if hasGroups {
			l.logger.Warn("retention deleted records a group has not committed",
				"topic", tp.topic, "partition", tp.partition, "from", target, "to", aged, "retention", l.opts.Retention)
		}
		target = aged
	}
	if target <= low {
		return nil
	}
	b := l.db.NewBatch()
	defer b.Close()
	_ = b.DeleteRange(recordKey(tp.topic, tp.partition, low), recordKey(tp.topic, tp.partition, target), nil)
	_ = b.Set(lowKey, be64(target), nil)
	return b.Commit(pebble.NoSync)
}

var errStop = errors.New("stop scan")

// scan calls fn for every key in [lower, upper); fn may return errStop.
func (l *Log) scan(lower, upper []byte, fn func(k, v []byte) error) (err error) {
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := it.Close(); err == nil {
			err = cerr
		}
	}()
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return err
		}
		if err := fn(it.Key(), v); err != nil {
			if errors.Is(err, errStop) {
				return nil
			}
			return err
		}
	}
	return it.Error()
}
