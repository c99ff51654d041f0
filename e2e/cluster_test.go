//go:build integration

package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/heraldpush/herald/pkg/enginetest"
)

// clusterSpec says how to lay a cluster out on the real engines.
type clusterSpec struct {
	router      string // redis | etcd
	gateways    int
	dispatchers int
}

// proc is one herald role process of a cluster.
type proc struct {
	name string
	env  []string
	ops  string
	c    *child
	// role addresses (set for the roles that have them)
	api, gw string
}

// cluster is herald as separate role processes on Kafka, Cassandra,
// Redis or etcd, and etcd discovery: what `make cluster-up` starts.
type cluster struct {
	t      *testing.T
	common []string
	// etcdPrefix scopes this cluster's etcd keys (discovery.etcd_prefix),
	// so clusters of concurrent tests (or CI runs) never see each other.
	etcdPrefix string
	api        *proc
	router     *proc
	gateways   []*proc
	disps      []*proc
}

func randomSuffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// startCluster migrates a fresh keyspace and topic prefix, then starts the
// role processes and waits until each is ready.
func startCluster(t *testing.T, spec clusterSpec) *cluster {
	t.Helper()
	kafka := enginetest.Kafka(t)
	cass := enginetest.Cassandra(t)
	etcd := enginetest.Etcd(t)
	run := randomSuffix()
	common := []string{
		"HERALD_ADMIN_TOKEN=" + adminToken,
		"HERALD_STORE_BACKEND=cassandra",
		"HERALD_STORE_CASSANDRA_HOSTS=" + strings.Join(cass, ","),
		"HERALD_STORE_CASSANDRA_KEYSPACE=herald_e2e_" + run,
		"HERALD_QUEUE_BACKEND=kafka",
		"HERALD_QUEUE_KAFKA_BROKERS=" + strings.Join(kafka, ","),
		"HERALD_QUEUE_KAFKA_TOPIC_PREFIX=e2e" + run + ".",
		"HERALD_QUEUE_KAFKA_PARTITIONS=8",
		"HERALD_DISCOVERY_ETCD_ENDPOINTS=" + strings.Join(etcd, ","),
		"HERALD_DISCOVERY_LEASE_TTL=3s",
		"HERALD_DISCOVERY_ETCD_PREFIX=/herald-e2e-" + run + "/",
		"HERALD_ROUTER_BACKEND=" + spec.router,
		"HERALD_ROUTER_LEASE_TTL=3s",
		"HERALD_GATEWAY_ACK_TIMEOUT=2s",
		"HERALD_ETCD_EMBEDDED=false",
		"HERALD_LOG_LEVEL=info",
	}
	switch spec.router {
	case "redis":
		common = append(common, "HERALD_ROUTER_REDIS_ADDR="+enginetest.Redis(t))
	case "etcd":
		common = append(common, "HERALD_ROUTER_ETCD_ENDPOINTS="+strings.Join(etcd, ","))
	}
	cl := &cluster{t: t, common: common, etcdPrefix: "/herald-e2e-" + run + "/"}
	// Registered first, so it runs last: after every role process is gone.
	t.Cleanup(func() { dropClusterData(t, kafka, "e2e"+run+".", cass, "herald_e2e_"+run) })
	cl.migrate()

	cl.api = cl.start("api", "api-"+run, func(p *proc) []string {
		p.api = freePort(t)
		return []string{"HERALD_API_HTTP_ADDR=" + p.api, "HERALD_API_GRPC_ADDR=" + freePort(t)}
	})
	cl.router = cl.start("router", "router-"+run, nil)
	for i := 0; i < spec.gateways; i++ {
		cl.gateways = append(cl.gateways, cl.start("gateway", fmt.Sprintf("gw%d-%s", i, run), func(p *proc) []string {
			p.gw = freePort(t)
			return []string{"HERALD_GATEWAY_ADDR=" + p.gw, "HERALD_DISCOVERY_GATEWAY_GRPC_ADDR=" + freePort(t)}
		}))
	}
	for i := 0; i < spec.dispatchers; i++ {
		cl.disps = append(cl.disps, cl.start("dispatcher", fmt.Sprintf("disp%d-%s", i, run), nil))
	}
	return cl
}

// migrate runs `herald migrate`: keyspace, tables and topics.
func (cl *cluster) migrate() {
	t := cl.t
	bin, err := buildHerald()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "migrate")
	cmd.Env = append(os.Environ(), append(cl.common, "HERALD_DATA_DIR="+t.TempDir())...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("herald migrate: %v\n%s", err, out)
	}
}

// start runs one role process and waits for its /readyz.
func (cl *cluster) start(target, node string, extra func(*proc) []string) *proc {
	t := cl.t
	p := &proc{name: node, ops: freePort(t)}
	env := append([]string{}, cl.common...)
	env = append(env, "HERALD_TARGET="+target, "HERALD_NODE_ID="+node, "HERALD_OPS_ADDR="+p.ops, "HERALD_DATA_DIR="+t.TempDir())
	if extra != nil {
		env = append(env, extra(p)...)
	}
	p.env = env
	p.c = startChildOps(t, env, p.ops)
	return p
}

// restart starts the process again with the same environment.
func (cl *cluster) restart(p *proc) {
	p.c = startChildOps(cl.t, p.env, p.ops)
}

func (cl *cluster) gatewayAddrs() []string {
	var out []string
	for _, g := range cl.gateways {
		out = append(out, g.gw)
	}
	return out
}

// waitGatewaysRegistered polls the endpoint list until n gateways show.
func (cl *cluster) waitEndpoints(api *apiClient, ap app, n int) {
	cl.t.Helper()
	eventually(cl.t, 30*time.Second, "gateways in the endpoint list", func() (bool, string) {
		var out struct {
			Endpoints []struct {
				Addr string `json:"addr"`
			} `json:"endpoints"`
		}
		code, raw, err := api.doE("GET", "/v1/endpoints?app_key="+ap.Key+"&device_id=probe", nil, nil, &out)
		return err == nil && code == 200 && len(out.Endpoints) == n, fmt.Sprintf("%d %s %v", code, raw, err)
	})
}
