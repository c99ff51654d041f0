//go:build integration

package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/segmentio/kafka-go"
)

// dropClusterData deletes what a cluster test created on the shared
// engines: its Kafka topics and consumer groups (by prefix) and its
// Cassandra keyspace. Best effort: failures are logged.
func dropClusterData(t *testing.T, brokers []string, topicPrefix string, hosts []string, keyspace string) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Transport: tr}
	if md, err := client.Metadata(ctx, &kafka.MetadataRequest{}); err == nil {
		var topics []string
		for _, tp := range md.Topics {
			if strings.HasPrefix(tp.Name, topicPrefix) {
				topics = append(topics, tp.Name)
			}
		}
		if len(topics) > 0 {
			if _, err := client.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: topics}); err != nil {
				t.Logf("delete test topics: %v", err)
			}
		}
	}
	if lg, err := client.ListGroups(ctx, &kafka.ListGroupsRequest{}); err == nil {
		var groups []string
		for _, g := range lg.Groups {
			if strings.HasPrefix(g.GroupID, topicPrefix) {
				groups = append(groups, g.GroupID)
			}
		}
		if len(groups) > 0 {
			if _, err := client.DeleteGroups(ctx, &kafka.DeleteGroupsRequest{GroupIDs: groups}); err != nil {
				t.Logf("delete test consumer groups: %v", err)
			}
		}
	}
	cl := gocql.NewCluster(hosts...)
	cl.Timeout = 30 * time.Second
	cl.ProtoVersion = 4
	session, err := cl.CreateSession()
	if err != nil {
		t.Logf("drop keyspace %s: %v", keyspace, err)
		return
	}
	defer session.Close()
	if err := session.Query("DROP KEYSPACE IF EXISTS " + keyspace).ExecContext(ctx); err != nil {
		t.Logf("drop keyspace %s: %v", keyspace, err)
	}
}
