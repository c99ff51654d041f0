//go:build integration

package e2e

import (
	"context"
	"testing"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"

	"github.com/heraldpush/herald/pkg/enginetest"
)

// dropClusterData deletes what a cluster test created on the shared
// engines: its Kafka topics and consumer groups (by prefix) and its
// Cassandra keyspace. Best effort: failures are logged.
func dropClusterData(t *testing.T, brokers []string, topicPrefix string, hosts []string, keyspace string) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	enginetest.DropKafkaPrefix(t, brokers, topicPrefix)
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
