package kafkalog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/segmentio/kafka-go"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/pushlog"
)

// Consume joins the consumer group on topic (creating the topic if needed)
// and returns the member. Any number of members of one group may be open,
// in this process or others: they split the topic's partitions.
func (l *Log) Consume(ctx context.Context, topic, group string) (pushlog.Consumer, error) {
	name, err := l.kafkaTopic(topic)
	if err != nil {
		return nil, err
	}
	groupID := l.cfg.TopicPrefix + group
	if group == "" || len(groupID) > maxTopicLen {
		return nil, fmt.Errorf("kafkalog: group name must be 1 to %d bytes with the prefix: %w", maxTopicLen, herald.ErrInvalidArgument)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("kafkalog: consume: %w", err)
	}
	if l.isClosed() {
		return nil, fmt.Errorf("kafkalog: consume: %w", herald.ErrClosed)
	}
	// The group's leader assigns only the partitions it sees: the topic
	// must exist before the first member joins.
	if err := l.ensureTopic(ctx, name); err != nil {
		return nil, err
	}
	rc := kafka.ReaderConfig{
		Brokers:                l.cfg.Brokers,
		GroupID:                groupID,
		Topic:                  name,
		Dialer:                 l.dialer,
		QueueCapacity:          l.cfg.MaxBatch,
		MinBytes:               1,
		MaxBytes:               10 << 20,
		MaxWait:                pollWait,
		HeartbeatInterval:      l.cfg.HeartbeatInterval,
		SessionTimeout:         l.cfg.SessionTimeout,
		RebalanceTimeout:       l.cfg.RebalanceTimeout,
		JoinGroupBackoff:       joinBackoff,
		WatchPartitionChanges:  true,
		PartitionWatchInterval: partitionWatch,
		CommitInterval:         0, // synchronous commits
		StartOffset:            kafka.FirstOffset,
		Logger:                 kafkaLogger(l.logger, slog.LevelDebug, "kafka consumer"),
		// The reader retries; errors during rebalances are routine.
		ErrorLogger: kafkaLogger(l.logger, slog.LevelInfo, "kafka consumer error"),
	}
	if err := rc.Validate(); err != nil { // kafka.NewReader panics on a bad config
		return nil, fmt.Errorf("kafkalog: consume %s/%s: %w: %w", name, groupID, err, herald.ErrInvalidArgument)
	}
	c := &consumer{
		log: l, topic: name, group: groupID,
		reader:    kafka.NewReader(rc),
		committed: make(map[int]int64),
		done:      make(chan struct{}),
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		_ = c.reader.Close()
		return nil, fmt.Errorf("kafkalog: consume: %w", herald.ErrClosed)
	}
	l.consumers[c] = struct{}{}
	l.mu.Unlock()
	l.logger.Debug("joined consumer group", "topic", name, "group", groupID)
	return c, nil
}

// consumer is one member of a consumer group.
type consumer struct {
	log          *Log
	topic, group string
	reader       *kafka.Reader

	closeOnce sync.Once
	done      chan struct{} // closed by Close

	commitMu  sync.Mutex
	committed map[int]int64 // per partition, the offset this member last committed
}

func (c *consumer) isClosed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// Fetch blocks until a record is available, then collects more for up to
// Config.MaxWait or until it has Config.MaxBatch. Errors of the cluster are
// logged and waited out (the reader reconnects and rejoins by itself):
// Fetch only returns an error when ctx ends or the consumer is closed.
func (c *consumer) Fetch(ctx context.Context) ([]pushlog.Record, error) {
	first, err := c.next(ctx)
	if err != nil {
		return nil, err
	}
	recs := make([]pushlog.Record, 1, min(c.log.cfg.MaxBatch, 64))
	recs[0] = record(first)
	linger, cancel := context.WithTimeout(ctx, c.log.cfg.MaxWait)
	defer cancel()
	for len(recs) < c.log.cfg.MaxBatch {
		m, err := c.reader.FetchMessage(linger)
		if err != nil {
			if linger.Err() == nil && !errors.Is(err, io.EOF) {
				c.log.logger.Warn("fetch failed", "topic", c.topic, "group", c.group, "error", err)
			}
			break // return what we have; the next Fetch sees a lasting error
		}
		recs = append(recs, record(m))
	}
	return recs, nil
}

// next returns the next message, waiting out errors of the cluster.
func (c *consumer) next(ctx context.Context) (kafka.Message, error) {
	for {
		if c.isClosed() {
			return kafka.Message{}, fmt.Errorf("kafkalog: fetch: %w", herald.ErrClosed)
		}
		m, err := c.reader.FetchMessage(ctx)
		switch {
		case err == nil:
			return m, nil
		case ctx.Err() != nil:
			return kafka.Message{}, fmt.Errorf("kafkalog: fetch: %w", ctx.Err())
		case errors.Is(err, io.EOF) || c.isClosed():
			return kafka.Message{}, fmt.Errorf("kafkalog: fetch: %w", herald.ErrClosed)
		}
		c.log.logger.Warn("fetch failed, retrying", "topic", c.topic, "group", c.group, "error", err)
		if !sleep(ctx, joinBackoff) {
			return kafka.Message{}, fmt.Errorf("kafkalog: fetch: %w", ctx.Err())
		}
	}
}

func record(m kafka.Message) pushlog.Record {
	r := pushlog.Record{Value: m.Value, Partition: m.Partition, Offset: m.Offset}
	if len(m.Key) > 0 {
		r.Key = m.Key
	}
	return r
}

// Commit commits, per partition, the highest given offset + 1, unless this
// member already committed as far. It returns once the group coordinator
// stored the offsets.
func (c *consumer) Commit(ctx context.Context, recs ...pushlog.Record) error {
	if c.isClosed() {
		return fmt.Errorf("kafkalog: commit: %w", herald.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("kafkalog: commit: %w", err)
	}
	c.commitMu.Lock()
	defer c.commitMu.Unlock()
	best := make(map[int]int64)
	for _, r := range recs {
		if r.Partition < 0 || r.Offset < 0 {
			return fmt.Errorf("kafkalog: commit: record partition %d offset %d out of range: %w",
				r.Partition, r.Offset, herald.ErrInvalidArgument)
		}
		if done, ok := c.committed[r.Partition]; ok && r.Offset < done {
			continue // committing an earlier record never moves the offset back
		}
		if b, ok := best[r.Partition]; !ok || r.Offset > b {
			best[r.Partition] = r.Offset
		}
	}
	if len(best) == 0 {
		return nil
	}
	msgs := make([]kafka.Message, 0, len(best))
	for p, off := range best {
		msgs = append(msgs, kafka.Message{Topic: c.topic, Partition: p, Offset: off})
	}
	if err := c.reader.CommitMessages(ctx, msgs...); err != nil {
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("kafkalog: commit %s/%s: %w: %w", c.topic, c.group, ctx.Err(), herald.ErrUnavailable)
		case errors.Is(err, io.ErrClosedPipe) || c.isClosed():
			return fmt.Errorf("kafkalog: commit: %w", herald.ErrClosed)
		}
		return fmt.Errorf("kafkalog: commit %s/%s: %w: %w", c.topic, c.group, err, herald.ErrUnavailable)
	}
	for p, off := range best {
		c.committed[p] = off + 1
	}
	return nil
}

// Close leaves the group: the other members take the partitions over and
// start at the committed offsets. Close does not commit.
func (c *consumer) Close() error {
	var err error
	c.closeOnce.Do(func() {
		close(c.done)
		err = c.reader.Close()
		l := c.log
		l.mu.Lock()
		delete(l.consumers, c)
		l.mu.Unlock()
	})
	if err != nil {
		return fmt.Errorf("kafkalog: close consumer: %w", err)
	}
	return nil
}
