package enginetest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

// DropKafkaPrefix deletes the topics and consumer groups whose names start
// with prefix: what one test created on the shared Kafka. Best effort:
// failures are logged, not fatal.
func DropKafkaPrefix(tb testing.TB, brokers []string, prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Transport: tr}
	if md, err := client.Metadata(ctx, &kafka.MetadataRequest{}); err == nil {
		var topics []string
		for _, t := range md.Topics {
			if strings.HasPrefix(t.Name, prefix) {
				topics = append(topics, t.Name)
			}
		}
		if len(topics) > 0 {
			if _, err := client.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: topics}); err != nil {
				tb.Logf("delete test topics: %v", err)
			}
		}
	}
	if lg, err := client.ListGroups(ctx, &kafka.ListGroupsRequest{}); err == nil {
		var groups []string
		for _, g := range lg.Groups {
			if strings.HasPrefix(g.GroupID, prefix) {
				groups = append(groups, g.GroupID)
			}
		}
		if len(groups) > 0 {
			if _, err := client.DeleteGroups(ctx, &kafka.DeleteGroupsRequest{GroupIDs: groups}); err != nil {
				tb.Logf("delete test groups: %v", err)
			}
		}
	}
}
