package config_test

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/heraldpush/herald/pkg/config"
)

// writeFile writes a YAML config into a temp dir and returns its path.
func writeFile(tb testing.TB, content string) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "herald.yaml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

func envOf(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func TestLoadPrecedence(t *testing.T) {
	file := writeFile(t, `
gateway:
  addr: "file:1"
  heartbeat: 5m
api:
  default_ttl: 1h
router:
  etcd_endpoints: [a:1, b:2]
log:
  level: debug
`)
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want func(c *config.Config)
	}{
		{
			name: "defaults",
			want: func(c *config.Config) {},
		},
		{
			name: "file over defaults",
			args: []string{"-config", file},
			want: func(c *config.Config) {
				c.Gateway.Addr = "file:1"
				c.Gateway.Heartbeat = 5 * time.Minute
				c.API.DefaultTTL = time.Hour
				c.Router.EtcdEndpoints = []string{"a:1", "b:2"}
				c.Log.Level = "debug"
				c.File = file
			},
		},
		{
			name: "env over file",
			args: []string{"-config", file},
			env: map[string]string{
				"HERALD_GATEWAY_ADDR":              "env:2",
				"HERALD_GATEWAY_HEARTBEAT":         "6m",
				"HERALD_ROUTER_ETCD_ENDPOINTS":     "c:3, d:4,",
				"HERALD_DISPATCHER_MAX_IN_FLIGHT":  "3",
				"HERALD_ETCD_EMBEDDED":             "false",
				"HERALD_LOG_STORE_RETENTION":       "2h",
				"HERALD_API_MAX_PAYLOAD_BYTES":     "100",
				"HERALD_ADMIN_TOKEN":               "s3cret-token-value",
				"HERALD_GATEWAY_HANDSHAKE_TIMEOUT": "3s",
				"HERALD_GATEWAY_NORMAL_MAX_DELAY":  "2m",
				"HERALD_API_DEFAULT_RATE_LIMIT":    "50",
				"HERALD_SCHEDULER_INTERVAL":        "500ms",
				"HERALD_RECEIPTS_WEBHOOK_TIMEOUT":  "2s",
			},
			want: func(c *config.Config) {
				c.Gateway.Addr = "env:2"
				c.Gateway.Heartbeat = 6 * time.Minute
				c.API.DefaultTTL = time.Hour
				c.Router.EtcdEndpoints = []string{"c:3", "d:4"}
				c.Dispatcher.MaxInFlight = 3
				c.Etcd.Embedded = false
				c.LogStore.Retention = 2 * time.Hour
				c.API.MaxPayloadBytes = 100
				c.AdminToken = "s3cret-token-value"
				c.Gateway.HandshakeTimeout = 3 * time.Second
				c.Gateway.NormalMaxDelay = 2 * time.Minute
				c.API.DefaultRateLimit = 50
				c.Scheduler.Interval = 500 * time.Millisecond
				c.Receipts.WebhookTimeout = 2 * time.Second
				c.Log.Level = "debug"
				c.File = file
			},
		},
		{
			name: "flag over env over file",
			args: []string{"-config", file, "-gateway-addr", "flag:3", "-log-level=warn", "-target", "gateway", "-node-id", "n1"},
			env:  map[string]string{"HERALD_GATEWAY_ADDR": "env:2", "HERALD_LOG_LEVEL": "error", "HERALD_TARGET": "api"},
			want: func(c *config.Config) {
				c.Gateway.Addr = "flag:3"
				c.Gateway.Heartbeat = 5 * time.Minute
				c.API.DefaultTTL = time.Hour
				c.Router.EtcdEndpoints = []string{"a:1", "b:2"}
				c.Log.Level = "warn"
				c.Target = "gateway"
				c.NodeID = "n1"
				c.File = file
			},
		},
		{
			name: "HERALD_CONFIG names the file",
			env:  map[string]string{"HERALD_CONFIG": file},
			want: func(c *config.Config) {
				c.Gateway.Addr = "file:1"
				c.Gateway.Heartbeat = 5 * time.Minute
				c.API.DefaultTTL = time.Hour
				c.Router.EtcdEndpoints = []string{"a:1", "b:2"}
				c.Log.Level = "debug"
				c.File = file
			},
		},
		{
			name: "-config wins over HERALD_CONFIG",
			args: []string{"-config", file},
			env:  map[string]string{"HERALD_CONFIG": "/does/not/exist.yaml"},
			want: func(c *config.Config) {
				c.Gateway.Addr = "file:1"
				c.Gateway.Heartbeat = 5 * time.Minute
				c.API.DefaultTTL = time.Hour
				c.Router.EtcdEndpoints = []string{"a:1", "b:2"}
				c.Log.Level = "debug"
				c.File = file
			},
		},
		{
			name: "every flag",
			args: []string{
				"-target=api", "-node-id=x", "-data-dir=/var/lib/herald", "-log-level=debug", "-log-format=json",
				"-ops-addr=", "-api-http-addr=:1", "-api-grpc-addr=:2", "-gateway-addr=:3", "-check-config",
			},
			want: func(c *config.Config) {
				c.Target = "api"
				c.NodeID = "x"
				c.DataDir = "/var/lib/herald"
				c.Log = config.Log{Level: "debug", Format: "json"}
				c.Ops.Addr = ""
				c.API.HTTPAddr = ":1"
				c.API.GRPCAddr = ":2"
				c.Gateway.Addr = ":3"
				c.CheckOnly = true
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := config.Load(tt.args, envOf(tt.env))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			want := config.Default()
			tt.want(&want)
			if want.NodeID == "" {
				if !strings.HasSuffix(got.NodeID, "-"+want.Target) {
					t.Errorf("NodeID = %q, want <hostname>-%s", got.NodeID, want.Target)
				}
				want.NodeID = got.NodeID
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Load:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name    string
		file    string // written to a temp file and passed with -config when set
		args    []string
		env     map[string]string
		wantErr string
	}{
		{name: "unknown key", file: "gateway:\n  adress: x:1\n", wantErr: "field adress not found"},
		{name: "unknown section", file: "gatewey: {}\n", wantErr: "field gatewey not found"},
		{name: "duration without unit", file: "gateway:\n  heartbeat: 30\n", wantErr: "time.Duration"},
		{name: "two documents", file: "target: all\n---\ntarget: api\n", wantErr: "more than one YAML document"},
		{name: "missing file", args: []string{"-config", "/does/not/exist.yaml"}, wantErr: "no such file"},
		{name: "unknown flag", args: []string{"-gateway"}, wantErr: "flag provided but not defined: -gateway"},
		{name: "positional argument", args: []string{"gateway"}, wantErr: `unexpected argument "gateway"`},
		{name: "bad env duration", env: map[string]string{"HERALD_GATEWAY_ACK_TIMEOUT": "10"}, wantErr: `HERALD_GATEWAY_ACK_TIMEOUT: "10" is not a duration`},
		{name: "bad env int", env: map[string]string{"HERALD_GATEWAY_WINDOW": "many"}, wantErr: `HERALD_GATEWAY_WINDOW: "many" is not an integer`},
		{name: "bad env bool", env: map[string]string{"HERALD_ETCD_EMBEDDED": "yes please"}, wantErr: "HERALD_ETCD_EMBEDDED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.file != "" {
				args = append([]string{"-config", writeFile(t, tt.file)}, args...)
			}
			_, err := config.Load(args, envOf(tt.env))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Load error = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestLoadEdgeCases(t *testing.T) {
	t.Run("empty file changes nothing", func(t *testing.T) {
		got, err := config.Load([]string{"-config", writeFile(t, "# nothing yet\n")}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got.Gateway != config.Default().Gateway {
			t.Errorf("Gateway = %+v, want defaults", got.Gateway)
		}
	})
	t.Run("empty section keeps defaults", func(t *testing.T) {
		got, err := config.Load([]string{"-config", writeFile(t, "gateway:\napi: {}\n")}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got.Gateway != config.Default().Gateway || got.API != config.Default().API {
			t.Errorf("got %+v %+v, want defaults", got.Gateway, got.API)
		}
	})
	t.Run("help", func(t *testing.T) {
		_, err := config.Load([]string{"-h"}, nil)
		if !errors.Is(err, flag.ErrHelp) {
			t.Fatalf("Load(-h) error = %v, want flag.ErrHelp", err)
		}
		var b strings.Builder
		config.Usage(&b)
		for _, want := range []string{"-check-config", "-gateway-addr", `(default ":5222")`, "HERALD_"} {
			if !strings.Contains(b.String(), want) {
				t.Errorf("Usage lacks %q:\n%s", want, b.String())
			}
		}
	})
	t.Run("node id follows the final target", func(t *testing.T) {
		got, err := config.Load([]string{"-target", "router"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		clusterOf(&got)
		if !strings.HasSuffix(got.NodeID, "-router") {
			t.Errorf("NodeID = %q, want suffix -router", got.NodeID)
		}
		if err := got.Validate(); err != nil {
			t.Errorf("Validate: %v", err)
		}
	})
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(c *config.Config)
		want   []string // substrings of the error; none means valid
	}{
		{name: "defaults", change: func(c *config.Config) {}},
		{name: "every role alone", change: func(c *config.Config) { clusterOf(c); c.Target = config.TargetDispatcher }},
		{name: "one role on embedded engines", change: func(c *config.Config) { c.Target = config.TargetGateway },
			want: []string{"target: gateway runs one role of a cluster", "router.backend: memory serves one process", "discovery.etcd_endpoints:"}},
		{name: "cluster backends", change: func(c *config.Config) {
			clusterOf(c)
			c.Store.Cassandra.Keyspace, c.Store.Cassandra.Consistency, c.Queue.Kafka.Brokers = "9bad", "most", []string{"kafka"}
		}, want: []string{"store.cassandra.keyspace:", "store.cassandra.consistency:", "queue.kafka.brokers[0]:"}},
		{name: "ops disabled", change: func(c *config.Config) { c.Ops.Addr = "" }},
		{name: "ephemeral ports everywhere", change: func(c *config.Config) {
			c.Ops.Addr, c.API.HTTPAddr, c.API.GRPCAddr, c.Gateway.Addr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
			c.Etcd.ClientAddr, c.Etcd.PeerAddr = "127.0.0.1:0", "127.0.0.1:0"
		}},
		{name: "etcd with endpoints", change: func(c *config.Config) {
			c.Router.Backend, c.Router.EtcdEndpoints = "etcd", []string{"10.0.0.1:2379", "https://etcd.example:2379"}
		}},
		{name: "unknown target", change: func(c *config.Config) { c.Target = "broker" },
			want: []string{`target: "broker" is not one of all, gateway, router, dispatcher, api`}},
		{name: "bad node id", change: func(c *config.Config) { c.NodeID = "a/b" }, want: []string{"node_id:"}},
		{name: "empty data dir", change: func(c *config.Config) { c.DataDir = "" }, want: []string{"data_dir: must not be empty"}},
		{name: "log level", change: func(c *config.Config) { c.Log.Level = "verbose" }, want: []string{`log.level: "verbose" is not one of`}},
		{name: "log format", change: func(c *config.Config) { c.Log.Format = "xml" }, want: []string{"log.format:"}},
		{name: "address without port", change: func(c *config.Config) { c.API.HTTPAddr = "localhost" },
			want: []string{`api.http_addr: "localhost" is not host:port (missing port in address)`}},
		{name: "address with bad port", change: func(c *config.Config) { c.Gateway.Addr = ":70000" },
			want: []string{`gateway.addr: ":70000" is not host:port`}},
		{name: "ops address", change: func(c *config.Config) { c.Ops.Addr = "9100" }, want: []string{"ops.addr:"}},
		{name: "port clash", change: func(c *config.Config) { c.Gateway.Addr = "0.0.0.0:8080" },
			want: []string{"gateway.addr: port 8080 is also used by api.http_addr"}},
		{name: "no clash for roles not run", change: func(c *config.Config) {
			clusterOf(c)
			c.Target = config.TargetGateway
			c.Gateway.Addr = ":8080"
		}},
		{name: "sizes must be positive", change: func(c *config.Config) {
			c.API.MaxTargets, c.Gateway.Window, c.Dispatcher.BatchSize, c.Dispatcher.MaxInFlight, c.LogStore.Partitions = 0, -1, 0, 0, 0
		}, want: []string{
			"api.max_targets: 0 must be positive", "gateway.window: -1 must be positive", "dispatcher.batch_size:",
			"dispatcher.max_in_flight:", "log_store.partitions:",
		}},
		{name: "durations must be positive", change: func(c *config.Config) {
			c.Gateway.AckTimeout, c.Gateway.HandshakeTimeout, c.Dispatcher.CommitInterval, c.LogStore.Retention = 0, 0, 0, 0
		}, want: []string{"gateway.ack_timeout: 0s must be positive", "gateway.handshake_timeout:", "dispatcher.commit_interval:", "log_store.retention:"}},
		{name: "negative drain", change: func(c *config.Config) { c.Gateway.DrainTimeout = -time.Second }, want: []string{"gateway.drain_timeout: -1s must be positive"}},
		{name: "heartbeat below min", change: func(c *config.Config) { c.Gateway.Heartbeat = 5 * time.Second },
			want: []string{"gateway.heartbeat: 5s is below gateway.heartbeat_min 30s"}},
		{name: "heartbeat above max", change: func(c *config.Config) { c.Gateway.Heartbeat = 20 * time.Minute },
			want: []string{"gateway.heartbeat: 20m is above gateway.heartbeat_max 10m"}},
		{name: "heartbeat min above max", change: func(c *config.Config) { c.Gateway.HeartbeatMin = 11 * time.Minute },
			want: []string{"gateway.heartbeat_min: 11m is above gateway.heartbeat_max 10m"}},
		{name: "heartbeat fractions", change: func(c *config.Config) { c.Gateway.Heartbeat = 90500 * time.Millisecond },
			want: []string{"gateway.heartbeat: 1m30.5s is not a whole number of seconds"}},
		{name: "default ttl above max", change: func(c *config.Config) { c.API.DefaultTTL = 300 * time.Hour },
			want: []string{"api.default_ttl: 300h is above api.max_ttl 240h"}},
		{name: "frame too small", change: func(c *config.Config) { c.Gateway.MaxFrameBytes = 512 },
			want: []string{"gateway.max_frame_bytes: 512 is outside [1024, 16777216]"}},
		{name: "frame too large", change: func(c *config.Config) { c.Gateway.MaxFrameBytes = 32 << 20 },
			want: []string{"gateway.max_frame_bytes:"}},
		{name: "payload does not fit a frame", change: func(c *config.Config) { c.API.MaxPayloadBytes = 64512 },
			want: []string{"api.max_payload_bytes: 64512 must be below gateway.max_frame_bytes - 1024 (64512)"}},
		{name: "body smaller than payload", change: func(c *config.Config) { c.API.MaxBodyBytes = 100 },
			want: []string{"api.max_body_bytes: 100 is below api.max_payload_bytes 4096"}},
		{name: "router backend", change: func(c *config.Config) { c.Router.Backend = "zookeeper" }, want: []string{`router.backend: "zookeeper" is not one of memory, etcd, redis`}},
		{name: "etcd without endpoints or embedded server", change: func(c *config.Config) {
			c.Router.Backend, c.Etcd.Embedded = "etcd", false
		}, want: []string{"router.etcd_endpoints: empty with router.backend etcd needs etcd.embedded true"}},
		{name: "bad etcd endpoint", change: func(c *config.Config) { c.Router.EtcdEndpoints = []string{"ftp://x:1", ":2379"} },
			want: []string{"router.etcd_endpoints[0]:", "router.etcd_endpoints[1]:"}},
		{name: "lease ttl", change: func(c *config.Config) { c.Router.LeaseTTL = 500 * time.Millisecond }, want: []string{"router.lease_ttl: 500ms is below 1s"}},
		{name: "embedded etcd addresses", change: func(c *config.Config) { c.Etcd.PeerAddr = "nope" }, want: []string{"etcd.peer_addr:"}},
		{name: "embedded etcd addresses unused by other targets", change: func(c *config.Config) {
			clusterOf(c)
			c.Target = "api"
			c.Etcd.PeerAddr = "nope"
		}},
		{name: "send api limits", change: func(c *config.Config) {
			c.API.DefaultRateLimit, c.API.MaxSendAhead, c.API.MaxSpread = -1, 30*time.Second, 1500*time.Millisecond
		}, want: []string{
			"api.default_rate_limit: -1 must be 0 (unlimited) or positive", "api.max_send_ahead: 30s is below 1m",
			"api.max_spread: 1.5s is not a whole number of seconds",
		}},
		{name: "spread of one second and a rate limit", change: func(c *config.Config) { c.API.MaxSpread, c.API.DefaultRateLimit = time.Second, 100 }},
		{name: "no spread", change: func(c *config.Config) { c.API.MaxSpread = 0 }, want: []string{"api.max_spread: 0s is below 1s"}},
		{name: "group push delays", change: func(c *config.Config) {
			c.Gateway.NormalMaxDelay, c.Gateway.ReplayLookback = 0, 0
		}, want: []string{"gateway.normal_max_delay: 0s must be positive", "gateway.replay_lookback: 0s must be positive"}},
		{name: "replay look-back too short", change: func(c *config.Config) { c.Gateway.ReplayLookback = time.Hour },
			want: []string{"gateway.replay_lookback: 1h is below api.max_spread + gateway.normal_max_delay (1h10m)"}},
		{name: "scheduler interval", change: func(c *config.Config) { c.Scheduler.Interval = 2 * time.Second },
			want: []string{"scheduler.interval: 2s is above 1s"}},
		{name: "scheduler and webhook must be positive", change: func(c *config.Config) {
			c.Scheduler.Interval, c.Receipts.WebhookTimeout = 0, -time.Second
		}, want: []string{"scheduler.interval: 0s must be positive", "receipts.webhook_timeout: -1s must be positive"}},
		{name: "admin token with newline", change: func(c *config.Config) { c.AdminToken = "abc\n" }, want: []string{"admin_token:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := config.Default()
			c.NodeID = "node-1"
			tt.change(&c)
			err := c.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate: nil, want %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate error lacks %q:\n%v", w, err)
				}
			}
			var fe *config.FieldError
			if !errors.As(err, &fe) {
				t.Errorf("Validate error %v is not a *FieldError", err)
			}
		})
	}
}

func TestExampleConfig(t *testing.T) {
	c, err := config.Load([]string{"-config", "../../deploy/herald.example.yaml"}, nil)
	if err != nil {
		t.Fatalf("Load example: %v", err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("example config does not validate: %v", err)
	}
	c.File, c.NodeID = "", ""
	want := config.Default()
	if !reflect.DeepEqual(c, want) {
		t.Errorf("the example should spell out the defaults:\n got %+v\nwant %+v", c, want)
	}
}

func TestNewLogger(t *testing.T) {
	var b strings.Builder
	config.Log{Level: "warn", Format: "json"}.NewLogger(&b).Info("hidden")
	config.Log{Level: "warn", Format: "json"}.NewLogger(&b).Warn("shown", "k", 1)
	if strings.Contains(b.String(), "hidden") || !strings.Contains(b.String(), `"msg":"shown"`) {
		t.Errorf("log output = %q", b.String())
	}
}

// clusterOf switches c to the cluster engines, as a single role needs.
func clusterOf(c *config.Config) {
	c.Store.Backend = config.BackendCassandra
	c.Queue.Backend = config.BackendKafka
	c.Router.Backend = config.BackendRedis
	c.Discovery.EtcdEndpoints = []string{"127.0.0.1:2379"}
}
