// Package kafkalog implements pushlog.Log on Apache Kafka with
// github.com/segmentio/kafka-go.
//
// A Herald topic t is the Kafka topic TopicPrefix+t; a consumer group g is
// the Kafka group TopicPrefix+g, so several Herald deployments (or test
// runs) can share one cluster.
//
// Append is synchronous and durable: the producer asks for acks from all
// in-sync replicas (RequiredAcks -1) and Append returns only when Kafka has
// acknowledged every record. Concurrent Appends share produce requests: the
// log has one kafka.Writer, with its own Transport, that batches records per
// partition for at most BatchTimeout. Records are partitioned with the
// murmur2 hash of their key, as the Java client's default partitioner does,
// so a Java or librdkafka producer sends the same key to the same
// partition; records without a key go to a random partition. The producer
// is not idempotent (kafka-go has no idempotent producer): a retried
// produce request can write a record twice, and when one produce request
// for a partition fails for good while a later one succeeds, records of a
// key can be reordered. Both only happen when Kafka fails, and consumers
// already deduplicate by message id.
//
// Topics are created on first use (Append, Consume or EnsureTopics) with the
// configured partitions and replication factor; a topic that already exists
// is used as it is, and one deleted while in use is created again by the
// next Append.
//
// Fetch returns a batch: it waits for a first record, then collects what
// else arrives within MaxWait (fetch linger), up to MaxBatch records.
//
// Consume joins a Kafka consumer group (kafka-go's Reader with a GroupID):
// members of one group split the partitions, and when one leaves or dies
// (after SessionTimeout) the others take its partitions over and start at
// the committed offsets, so what was fetched but not committed is fetched
// again (at-least-once). A group that never committed starts at the first
// offset still in the topic.
package kafkalog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	metadataapi "github.com/segmentio/kafka-go/protocol/metadata"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/pushlog"
)

// Config configures a Log. Zero fields take the defaults given.
type Config struct {
	// Brokers are the bootstrap brokers, host:port.
	Brokers []string
	// TopicPrefix is prepended to every topic and group name. Default
	// "herald.".
	TopicPrefix string
	// Partitions of a topic the log creates. Default 16.
	Partitions int
	// ReplicationFactor of a topic the log creates. Default 1.
	ReplicationFactor int
	// ClientID is sent to the brokers. Default "herald".
	ClientID string
	// WriteTimeout bounds one produce request, including the wait for
	// the in-sync replicas' acks, and other requests to the cluster.
	// Default 10s.
	WriteTimeout time.Duration
	// BatchTimeout is how long the producer waits for more records to
	// fill a partition's batch before sending it. Default 2ms.
	BatchTimeout time.Duration
	// MaxBatch is the most records one Fetch returns, and the most
	// records in one produce batch. Default 512.
	MaxBatch int
	// MaxWait is how long Fetch keeps collecting records after the first
	// one arrived (fetch linger). Default 10ms.
	MaxWait time.Duration
	// SessionTimeout is how long a group member may go silent before the
	// group coordinator hands its partitions to the others. The broker
	// bounds it (group.min.session.timeout.ms, 6s by default). Default 10s.
	SessionTimeout time.Duration
	// HeartbeatInterval is how often a member heartbeats, and so how soon
	// it notices a rebalance. Default 1s.
	HeartbeatInterval time.Duration
	// RebalanceTimeout is how long the coordinator waits for the members
	// to rejoin during a rebalance. Default 5s.
	RebalanceTimeout time.Duration
}

// Defaults.
const (
	DefaultTopicPrefix       = "herald."
	DefaultPartitions        = 16
	DefaultReplicationFactor = 1
	DefaultClientID          = "herald"
	DefaultWriteTimeout      = 10 * time.Second
	DefaultBatchTimeout      = 2 * time.Millisecond
	DefaultMaxBatch          = 512
	DefaultMaxWait           = 10 * time.Millisecond
	DefaultSessionTimeout    = 10 * time.Second
	DefaultHeartbeatInterval = time.Second
	DefaultRebalanceTimeout  = 5 * time.Second
)

const (
	// maxTopicLen is Kafka's limit on topic names.
	maxTopicLen = 249
	// metadataTTL bounds how long the producer's transport works from a
	// stale view of the cluster (kafka-go's default is 6s).
	metadataTTL = 2 * time.Second
	// topicWait bounds how long Append retries while a freshly created
	// topic is not yet known to the broker that answers metadata.
	topicWait = 10 * time.Second
	// pollWait is how long one fetch request waits at the broker for
	// data. It also bounds how long closing a consumer takes.
	pollWait = 500 * time.Millisecond
	// partitionWatch is how often a group checks its topic for added
	// partitions.
	partitionWatch = 10 * time.Second
	// joinBackoff is the wait before rejoining a group after an error.
	joinBackoff = time.Second
)

func (c *Config) setDefaults() {
	if c.TopicPrefix == "" {
		c.TopicPrefix = DefaultTopicPrefix
	}
	if c.Partitions == 0 {
		c.Partitions = DefaultPartitions
	}
	if c.ReplicationFactor == 0 {
		c.ReplicationFactor = DefaultReplicationFactor
	}
	if c.ClientID == "" {
		c.ClientID = DefaultClientID
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.BatchTimeout == 0 {
		c.BatchTimeout = DefaultBatchTimeout
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = DefaultMaxBatch
	}
	if c.MaxWait == 0 {
		c.MaxWait = DefaultMaxWait
	}
	if c.SessionTimeout == 0 {
		c.SessionTimeout = DefaultSessionTimeout
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if c.RebalanceTimeout == 0 {
		c.RebalanceTimeout = DefaultRebalanceTimeout
	}
}

func (c *Config) validate() error {
	var errs []error
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("no brokers"))
	}
	for _, b := range c.Brokers {
		if _, _, err := net.SplitHostPort(b); err != nil {
			errs = append(errs, fmt.Errorf("broker %q: %w", b, err))
		}
	}
	if !validName(c.TopicPrefix) {
		errs = append(errs, fmt.Errorf("topic prefix %q: only [a-zA-Z0-9._-] allowed", c.TopicPrefix))
	}
	if c.Partitions < 0 || c.Partitions > 1<<20 {
		errs = append(errs, fmt.Errorf("partitions %d out of range", c.Partitions))
	}
	if c.ReplicationFactor < 0 || c.ReplicationFactor > 1<<10 {
		errs = append(errs, fmt.Errorf("replication factor %d out of range", c.ReplicationFactor))
	}
	if c.MaxBatch < 0 {
		errs = append(errs, fmt.Errorf("max batch %d is negative", c.MaxBatch))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"write timeout", c.WriteTimeout}, {"batch timeout", c.BatchTimeout}, {"max wait", c.MaxWait},
		{"session timeout", c.SessionTimeout}, {"heartbeat interval", c.HeartbeatInterval},
		{"rebalance timeout", c.RebalanceTimeout},
	} {
		if d.v < 0 || d.v > 24*time.Hour {
			errs = append(errs, fmt.Errorf("%s %v out of range", d.name, d.v))
		}
	}
	if c.HeartbeatInterval > 0 && c.SessionTimeout > 0 && c.HeartbeatInterval >= c.SessionTimeout {
		errs = append(errs, fmt.Errorf("heartbeat interval %v must be shorter than the session timeout %v", c.HeartbeatInterval, c.SessionTimeout))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("kafkalog: config: %w: %w", err, herald.ErrInvalidArgument)
	}
	return nil
}

// validName reports whether s only holds characters Kafka allows in topic
// names.
func validName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
		if !ok {
			return false
		}
	}
	return true
}

// Log implements pushlog.Log on a Kafka cluster.
type Log struct {
	cfg    Config
	logger *slog.Logger

	addr      net.Addr
	transport *kafka.Transport // the writer's and the admin client's
	client    *kafka.Client
	writer    *kafka.Writer
	dialer    *kafka.Dialer // the readers'

	topicsMu sync.Mutex
	topics   map[string]*topicState

	mu        sync.Mutex
	closed    bool
	consumers map[*consumer]struct{}
}

// topicState makes sure a topic exists before the log first uses it.
type topicState struct {
	ready atomic.Bool
	lock  chan struct{} // holds a token while creating; waiting honours ctx
}

var _ pushlog.Log = (*Log)(nil)

// New returns a log on the cluster cfg.Brokers point at. It does not
// connect: a cluster that is down makes Append fail with
// herald.ErrUnavailable, not New.
func New(cfg Config, logger *slog.Logger) (*Log, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "kafkalog")
	addr := kafka.TCP(cfg.Brokers...)
	transport := &kafka.Transport{
		DialTimeout: min(cfg.WriteTimeout, 5*time.Second),
		MetadataTTL: metadataTTL,
		ClientID:    cfg.ClientID,
	}
	l := &Log{
		cfg:       cfg,
		logger:    logger,
		addr:      addr,
		transport: transport,
		client:    &kafka.Client{Addr: addr, Transport: transport, Timeout: cfg.WriteTimeout},
		writer: &kafka.Writer{
			Addr:         addr,
			Balancer:     kafka.Murmur2Balancer{},
			MaxAttempts:  10,
			BatchSize:    cfg.MaxBatch,
			BatchTimeout: cfg.BatchTimeout,
			ReadTimeout:  cfg.WriteTimeout,
			WriteTimeout: cfg.WriteTimeout,
			RequiredAcks: kafka.RequireAll,
			// Topics are created by ensureTopic, with the configured
			// partitions, never by the broker's defaults.
			AllowAutoTopicCreation: false,
			Transport:              transport,
			// Failed attempts are retried; Append logs what fails for good.
			ErrorLogger: kafkaLogger(logger, slog.LevelDebug, "kafka producer"),
		},
		dialer: &kafka.Dialer{
			ClientID:  cfg.ClientID,
			Timeout:   min(cfg.WriteTimeout, 10*time.Second),
			DualStack: true,
		},
		topics:    make(map[string]*topicState),
		consumers: make(map[*consumer]struct{}),
	}
	return l, nil
}

// kafkaLogger adapts kafka-go's printf logging to slog.
func kafkaLogger(l *slog.Logger, level slog.Level, msg string) kafka.LoggerFunc {
	return func(format string, args ...any) {
		ctx := context.Background()
		if l.Enabled(ctx, level) {
			l.Log(ctx, level, msg, "detail", fmt.Sprintf(format, args...))
		}
	}
}

// Close closes the log's consumers and its producer. Appends and Fetches
// after Close fail with herald.ErrClosed. Close waits for produce requests
// in flight.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	consumers := make([]*consumer, 0, len(l.consumers))
	for c := range l.consumers {
		consumers = append(consumers, c)
	}
	l.mu.Unlock()

	var wg sync.WaitGroup
	for _, c := range consumers {
		wg.Go(func() { _ = c.Close() })
	}
	err := l.writer.Close()
	wg.Wait()
	l.transport.CloseIdleConnections()
	if err != nil {
		return fmt.Errorf("kafkalog: close producer: %w", err)
	}
	return nil
}

func (l *Log) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// kafkaTopic returns the Kafka name of a Herald topic.
func (l *Log) kafkaTopic(topic string) (string, error) {
	name := l.cfg.TopicPrefix + topic
	if topic == "" || len(name) > maxTopicLen || !validName(topic) || name == "." || name == ".." {
		return "", fmt.Errorf("kafkalog: topic %q: 1 to %d characters of [a-zA-Z0-9._-] with the prefix: %w",
			topic, maxTopicLen, herald.ErrInvalidArgument)
	}
	return name, nil
}

// EnsureTopics creates the topics that do not exist yet, with the
// configured partitions and replication factor. Topics that exist are
// left as they are. Append and Consume call it on first use of a topic;
// `herald migrate` calls it ahead of time.
func (l *Log) EnsureTopics(ctx context.Context, topics ...string) error {
	names := make([]string, len(topics))
	for i, t := range topics {
		name, err := l.kafkaTopic(t)
		if err != nil {
			return err
		}
		names[i] = name
	}
	for _, name := range names {
		if err := l.ensureTopic(ctx, name); err != nil {
			return err
		}
	}
	return nil
}

func (l *Log) ensureTopic(ctx context.Context, name string) error {
	l.topicsMu.Lock()
	ts, ok := l.topics[name]
	if !ok {
		ts = &topicState{lock: make(chan struct{}, 1)}
		l.topics[name] = ts
	}
	l.topicsMu.Unlock()
	if ts.ready.Load() {
		return nil
	}
	select {
	case ts.lock <- struct{}{}:
	case <-ctx.Done():
		return l.unavailable(ctx, "create topic "+name, ctx.Err())
	}
	defer func() { <-ts.lock }()
	if ts.ready.Load() {
		return nil
	}
	if err := l.createTopic(ctx, name); err != nil {
		return err
	}
	ts.ready.Store(true)
	return nil
}

// createTopic creates the topic unless it exists, and returns once the
// producer's transport knows it.
func (l *Log) createTopic(ctx context.Context, name string) error {
	resp, err := l.client.CreateTopics(ctx, &kafka.CreateTopicsRequest{
		Topics: []kafka.TopicConfig{{
			Topic:             name,
			NumPartitions:     l.cfg.Partitions,
			ReplicationFactor: l.cfg.ReplicationFactor,
		}},
	})
	if err != nil {
		return l.unavailable(ctx, "create topic "+name, err)
	}
	err = resp.Errors[name]
	switch {
	case err == nil:
		l.logger.Info("created topic", "topic", name, "partitions", l.cfg.Partitions,
			"replication_factor", l.cfg.ReplicationFactor)
		return nil // the transport refreshed its metadata to include it
	case errors.Is(err, kafka.TopicAlreadyExists):
	case errors.Is(err, kafka.InvalidTopic), errors.Is(err, kafka.InvalidPartitionNumber),
		errors.Is(err, kafka.InvalidReplicationFactor), errors.Is(err, kafka.PolicyViolation):
		return fmt.Errorf("kafkalog: create topic %s: %w: %w", name, err, herald.ErrInvalidArgument)
	default:
		return l.unavailable(ctx, "create topic "+name, err)
	}
	// The topic existed: make the transport fetch its metadata unless
	// it has it (a metadata request that allows auto creation is sent to
	// the broker when the topic is not cached, and refreshes the cache).
	_, err = l.transport.RoundTrip(ctx, l.addr, &metadataapi.Request{
		TopicNames:             []string{name},
		AllowAutoTopicCreation: true,
	})
	if err != nil {
		return l.unavailable(ctx, "topic metadata "+name, err)
	}
	return nil
}

// unavailable wraps err from a call to the cluster: herald.ErrUnavailable,
// and the context's error when it ended.
func (l *Log) unavailable(ctx context.Context, op string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
		return fmt.Errorf("kafkalog: %s: %w (%w): %w", op, ctxErr, err, herald.ErrUnavailable)
	}
	return fmt.Errorf("kafkalog: %s: %w: %w", op, err, herald.ErrUnavailable)
}

// Append writes recs to topic and returns once Kafka acknowledged every
// one from all in-sync replicas. When the context ends first the records
// may still be written.
func (l *Log) Append(ctx context.Context, topic string, recs ...pushlog.Record) error {
	name, err := l.kafkaTopic(topic)
	if err != nil {
		return err
	}
	if len(recs) == 0 {
		return nil
	}
	if l.isClosed() {
		return fmt.Errorf("kafkalog: append: %w: %w", herald.ErrClosed, herald.ErrUnavailable)
	}
	if err := l.ensureTopic(ctx, name); err != nil {
		return err
	}
	now := time.Now() // a zero timestamp would make retention drop the records
	msgs := make([]kafka.Message, len(recs))
	for i, r := range recs {
		msgs[i] = kafka.Message{Topic: name, Value: r.Value, Time: now}
		if len(r.Key) > 0 {
			msgs[i].Key = r.Key
		}
	}
	deadline := time.Now().Add(topicWait)
	for attempt := 1; ; attempt++ {
		err := l.writer.WriteMessages(ctx, msgs...)
		if err == nil {
			return nil
		}
		failed, retry := retriable(err, msgs)
		if !retry || time.Now().After(deadline) || ctx.Err() != nil {
			return l.appendErr(ctx, name, err)
		}
		l.logger.Debug("retrying append", "topic", name, "records", len(failed), "attempt", attempt, "error", err)
		msgs = failed
		if !sleep(ctx, time.Duration(attempt)*50*time.Millisecond) {
			return l.appendErr(ctx, name, ctx.Err())
		}
		if writeErrIs(err, unknownTopic) {
			// Not in the transport's cached metadata yet, or deleted
			// behind our back: ensureTopic creates it, or refreshes
			// the cache when it exists.
			l.forgetTopic(name)
			if err := l.ensureTopic(ctx, name); err != nil {
				return err
			}
		}
	}
}

// unknownTopic reports whether err says the topic does not exist, as the
// broker or the transport's cached metadata sees it.
func unknownTopic(err error) bool {
	return errors.Is(err, kafka.UnknownTopicOrPartition) || errors.Is(err, protocol.ErrNoTopic)
}

// writeErrIs reports whether is holds for err, or for one of the
// per-message errors of a kafka.WriteErrors.
func writeErrIs(err error, is func(error) bool) bool {
	var werr kafka.WriteErrors
	if !errors.As(err, &werr) {
		return is(err)
	}
	for _, e := range werr {
		if e != nil && is(e) {
			return true
		}
	}
	return false
}

// forgetTopic makes the next use of the topic check that it exists.
func (l *Log) forgetTopic(name string) {
	l.topicsMu.Lock()
	defer l.topicsMu.Unlock()
	if ts, ok := l.topics[name]; ok {
		ts.ready.Store(false)
	}
}

// retriable reports whether a failed write is worth retrying at once: the
// topic or its partition leaders are not known yet, as right after the
// topic was created. It returns the messages to write again.
func retriable(err error, msgs []kafka.Message) ([]kafka.Message, bool) {
	transient := func(err error) bool {
		return unknownTopic(err) || errors.Is(err, kafka.LeaderNotAvailable) ||
			errors.Is(err, kafka.NotLeaderForPartition) ||
			// The transport's cached metadata lacks the partition or
			// its leader: kafka-go does not retry these itself.
			errors.Is(err, protocol.ErrNoPartition) || errors.Is(err, protocol.ErrNoLeader)
	}
	var werr kafka.WriteErrors
	if !errors.As(err, &werr) {
		return msgs, transient(err)
	}
	if len(werr) != len(msgs) {
		return nil, false
	}
	var failed []kafka.Message
	for i, e := range werr {
		if e == nil {
			continue
		}
		if !transient(e) {
			return nil, false
		}
		failed = append(failed, msgs[i])
	}
	return failed, len(failed) > 0
}

func (l *Log) appendErr(ctx context.Context, topic string, err error) error {
	var werr kafka.WriteErrors
	if errors.As(err, &werr) {
		for _, e := range werr {
			if e != nil {
				err = e // the first failure stands for the rest
				break
			}
		}
	}
	var tooLarge kafka.MessageTooLargeError
	switch {
	case errors.Is(err, io.ErrClosedPipe):
		return fmt.Errorf("kafkalog: append: %w: %w", herald.ErrClosed, herald.ErrUnavailable)
	case errors.As(err, &tooLarge), errors.Is(err, kafka.MessageSizeTooLarge), errors.Is(err, kafka.RecordListTooLarge):
		return fmt.Errorf("kafkalog: append to %s: %w: %w", topic, err, herald.ErrTooLarge)
	}
	l.logger.Warn("append failed", "topic", topic, "error", err)
	return l.unavailable(ctx, "append to "+topic, err)
}

// sleep waits for d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	d = d/2 + rand.N(d/2+1) // jitter
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
