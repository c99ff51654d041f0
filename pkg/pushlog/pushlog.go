// Package pushlog defines Herald's durable logs: the push log the api writes
// and dispatchers consume, and the upstream and receipt logs. pebblelog is the
// embedded engine; logtest is the contract suite every implementation passes.
package pushlog

import "context"

// Topics used by Herald.
const (
	TopicPush     = "push"
	TopicReceipts = "receipts"
)

// UpstreamTopic is the log an UPSTREAM frame of the given channel goes to.
func UpstreamTopic(channel string) string { return "upstream." + channel }

// Record is one log entry. Partition and Offset are set by the log.
type Record struct {
	Key       []byte // records with the same key go to the same partition, in order
	Value     []byte
	Partition int
	Offset    int64
}

// Appender writes records durably.
type Appender interface {
	// Append returns only once every record is durable (synced locally, or
	// acknowledged by all in-sync replicas), or an error wrapping
	// herald.ErrUnavailable when the log cannot take writes.
	Append(ctx context.Context, topic string, recs ...Record) error
}

// Consumer reads a topic as a member of a consumer group.
type Consumer interface {
	// Fetch blocks until records are available (or ctx ends) and returns a
	// batch in offset order per partition, starting after the group's
	// committed offsets (at-least-once: records not committed before a
	// crash are fetched again).
	Fetch(ctx context.Context) ([]Record, error)
	// Commit marks the given records, and everything before each in its
	// partition, as processed.
	Commit(ctx context.Context, recs ...Record) error
	Close() error
}

// Log is a set of durable topics.
type Log interface {
	Appender
	// Consume joins the consumer group on the topic.
	Consume(ctx context.Context, topic, group string) (Consumer, error)
	Close() error
}
