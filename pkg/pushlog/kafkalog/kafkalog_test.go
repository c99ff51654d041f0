package kafkalog_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/pkg/pushlog/kafkalog"
)

// These tests need no Kafka: they cover what the log decides by itself
// and how it fails when the cluster cannot be reached.

func TestNewValidatesConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  kafkalog.Config
		want string // in the error; "" means valid
	}{
		{"defaults", kafkalog.Config{Brokers: []string{"127.0.0.1:9092"}}, ""},
		{"no brokers", kafkalog.Config{}, "no brokers"},
		{"broker without port", kafkalog.Config{Brokers: []string{"localhost"}}, "localhost"},
		{"bad prefix", kafkalog.Config{Brokers: []string{"127.0.0.1:9092"}, TopicPrefix: "a/b"}, "prefix"},
		{"negative partitions", kafkalog.Config{Brokers: []string{"127.0.0.1:9092"}, Partitions: -1}, "partitions"},
		{"heartbeat too slow", kafkalog.Config{Brokers: []string{"127.0.0.1:9092"},
			SessionTimeout: 6 * time.Second, HeartbeatInterval: 6 * time.Second}, "heartbeat"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := kafkalog.New(tt.cfg, nil)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("New = %v, want a log", err)
				}
				if err := l.Close(); err != nil {
					t.Errorf("Close = %v", err)
				}
				return
			}
			if !errors.Is(err, herald.ErrInvalidArgument) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, want ErrInvalidArgument mentioning %q", err, tt.want)
			}
		})
	}
}

// deadBroker returns an address nothing listens on.
func deadBroker(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func openDead(t testing.TB) *kafkalog.Log {
	t.Helper()
	l, err := kafkalog.New(kafkalog.Config{Brokers: []string{deadBroker(t)}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func TestInvalidNames(t *testing.T) {
	l := openDead(t)
	ctx := t.Context()
	rec := pushlog.Record{Value: []byte("x")}
	consumeErr := func(topic, group string) error {
		c, err := l.Consume(ctx, topic, group)
		if err == nil {
			_ = c.Close()
		}
		return err
	}
	tests := []struct {
		name string
		err  error
	}{
		{"empty topic", l.Append(ctx, "", rec)},
		{"slash in topic", l.Append(ctx, "a/b", rec)},
		{"long topic", l.Append(ctx, strings.Repeat("a", 250), rec)},
		{"consume empty topic", consumeErr("", "g")},
		{"consume empty group", consumeErr(pushlog.TopicPush, "")},
		{"ensure bad topic", l.EnsureTopics(ctx, pushlog.TopicPush, "no spaces")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !errors.Is(tt.err, herald.ErrInvalidArgument) {
				t.Errorf("got %v, want ErrInvalidArgument", tt.err)
			}
		})
	}
}

// TestUnreachableCluster checks that a log whose brokers are down fails
// Appends (and Consume, which must create the topic) with
// herald.ErrUnavailable, within the caller's deadline.
func TestUnreachableCluster(t *testing.T) {
	l := openDead(t)
	const deadline = 3 * time.Second
	tests := []struct {
		name string
		call func(context.Context) error
	}{
		{"append", func(ctx context.Context) error {
			return l.Append(ctx, pushlog.TopicPush, pushlog.Record{Key: []byte("k"), Value: []byte("v")})
		}},
		{"append to a dynamic topic", func(ctx context.Context) error {
			return l.Append(ctx, pushlog.UpstreamTopic("chat"), pushlog.Record{Value: []byte("v")})
		}},
		{"consume", func(ctx context.Context) error {
			c, err := l.Consume(ctx, pushlog.TopicPush, "dispatch")
			if err == nil {
				_ = c.Close()
			}
			return err
		}},
		{"ensure topics", func(ctx context.Context) error {
			return l.EnsureTopics(ctx, pushlog.TopicPush, pushlog.TopicReceipts)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), deadline)
			defer cancel()
			start := time.Now()
			err := tt.call(ctx)
			took := time.Since(start)
			if !errors.Is(err, herald.ErrUnavailable) {
				t.Errorf("err = %v, want ErrUnavailable", err)
			}
			if took > deadline+500*time.Millisecond {
				t.Errorf("took %v, past the %v deadline", took, deadline)
			}
		})
	}
}

func TestClosedLog(t *testing.T) {
	l := openDead(t)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	err := l.Append(t.Context(), pushlog.TopicPush, pushlog.Record{Value: []byte("x")})
	if !errors.Is(err, herald.ErrClosed) || !errors.Is(err, herald.ErrUnavailable) {
		t.Errorf("Append after Close = %v, want ErrClosed and ErrUnavailable", err)
	}
	if _, err := l.Consume(t.Context(), pushlog.TopicPush, "g"); !errors.Is(err, herald.ErrClosed) {
		t.Errorf("Consume after Close = %v, want ErrClosed", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}
