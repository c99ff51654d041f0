// Package enginetest tells integration tests (build tag "integration") where
// the real engines started by `make deps-up` listen, and fails the test with
// a clear message when one is not reachable. It never skips: under the
// integration tag a missing engine is a failure, not a pass.
//
// Addresses come from the environment, defaulting to the ports
// scripts/deps.sh uses:
//
//	HERALD_TEST_KAFKA      127.0.0.1:9092
//	HERALD_TEST_CASSANDRA  127.0.0.1:9042
//	HERALD_TEST_REDIS      127.0.0.1:6379
//	HERALD_TEST_ETCD       127.0.0.1:2379
package enginetest

import (
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

func addr(t testing.TB, env, def, engine string) []string {
	t.Helper()
	v := os.Getenv(env)
	if v == "" {
		v = def
	}
	addrs := strings.Split(v, ",")
	for _, a := range addrs {
		c, err := net.DialTimeout("tcp", a, 3*time.Second)
		if err != nil {
			t.Fatalf("%s is not reachable at %s (%v): start the engines with `make deps-up`, or point %s at them", engine, a, err, env)
		}
		c.Close()
	}
	return addrs
}

// Kafka returns the bootstrap brokers.
func Kafka(t testing.TB) []string { return addr(t, "HERALD_TEST_KAFKA", "127.0.0.1:9092", "Kafka") }

// Cassandra returns the contact points.
func Cassandra(t testing.TB) []string {
	return addr(t, "HERALD_TEST_CASSANDRA", "127.0.0.1:9042", "Cassandra")
}

// Redis returns the Redis server address.
func Redis(t testing.TB) string { return addr(t, "HERALD_TEST_REDIS", "127.0.0.1:6379", "Redis")[0] }

// Etcd returns the etcd client endpoints (host:port).
func Etcd(t testing.TB) []string { return addr(t, "HERALD_TEST_ETCD", "127.0.0.1:2379", "etcd") }
