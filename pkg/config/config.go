// Package config loads Herald's configuration: built-in defaults, then a YAML
// file, then HERALD_* environment variables, then command-line flags, each
// layer overriding the one before. Validate checks the result.
// docs/configuration.md is the reference for every field.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Targets: the roles one herald process can run.
const (
	TargetAll        = "all"
	TargetGateway    = "gateway"
	TargetRouter     = "router"
	TargetDispatcher = "dispatcher"
	TargetAPI        = "api"
)

// Gateway I/O models (gateway.io).
const (
	GatewayIOGoroutine = "goroutine" // one reader goroutine per connection
	GatewayIOEventLoop = "eventloop" // epoll event loops and a worker pool
)

// Backends.
const (
	BackendMemory    = "memory"    // router
	BackendEtcd      = "etcd"      // router
	BackendRedis     = "redis"     // router
	BackendPebble    = "pebble"    // store, queue (embedded)
	BackendCassandra = "cassandra" // store
	BackendKafka     = "kafka"     // queue
)

// EnvPrefix starts every environment variable Herald reads.
const EnvPrefix = "HERALD_"

// EnvConfigFile names the config file when -config is not given.
const EnvConfigFile = "HERALD_CONFIG"

// Config is the whole configuration of one herald process.
type Config struct {
	// Target is the role this process runs: all, gateway, router, dispatcher or api.
	Target string `yaml:"target"`
	// NodeID names this process in the cluster; Load sets "<hostname>-<target>" when empty.
	NodeID string `yaml:"node_id"`
	// DataDir holds the embedded stores, the push log and the generated admin token.
	DataDir string `yaml:"data_dir"`
	// AdminToken authenticates the admin API. When empty with target all or
	// api, main generates one into <data_dir>/admin-token.
	AdminToken string     `yaml:"admin_token"`
	Log        Log        `yaml:"log"`
	Ops        Ops        `yaml:"ops"`
	API        API        `yaml:"api"`
	Gateway    Gateway    `yaml:"gateway"`
	Dispatcher Dispatcher `yaml:"dispatcher"`
	Scheduler  Scheduler  `yaml:"scheduler"`
	Receipts   Receipts   `yaml:"receipts"`
	LogStore   LogStore   `yaml:"log_store"`
	Router     Router     `yaml:"router"`
	Etcd       Etcd       `yaml:"etcd"`
	Store      Store      `yaml:"store"`
	Queue      Queue      `yaml:"queue"`
	Discovery  Discovery  `yaml:"discovery"`

	// CheckOnly is set by -check-config: main validates, prints "config ok" and exits.
	CheckOnly bool `yaml:"-"`
	// File is the config file that was read, "" when none.
	File string `yaml:"-"`
}

// Log configures the process logger.
type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // text, json
}

// Ops configures the operations HTTP endpoint (/healthz, /readyz, /metrics).
type Ops struct {
	Addr string `yaml:"addr"` // "" disables the endpoint
}

// API configures the business-facing REST and gRPC server.
type API struct {
	HTTPAddr        string        `yaml:"http_addr"`
	GRPCAddr        string        `yaml:"grpc_addr"`
	MaxTargets      int           `yaml:"max_targets"`       // device ids / aliases per send
	MaxPayloadBytes int           `yaml:"max_payload_bytes"` // encoded message body per send
	MaxBodyBytes    int           `yaml:"max_body_bytes"`    // whole HTTP request body
	DefaultTTL      time.Duration `yaml:"default_ttl"`
	MaxTTL          time.Duration `yaml:"max_ttl"`
	// DefaultRateLimit is the sends per second an app may make when its own
	// rate_limit_per_second is 0; 0 = unlimited.
	DefaultRateLimit int `yaml:"default_rate_limit"`
	// MaxSendAhead bounds send_at: at most this far in the future.
	MaxSendAhead time.Duration `yaml:"max_send_ahead"`
	// MaxSpread bounds spread_over_seconds of a group send.
	MaxSpread time.Duration `yaml:"max_spread"`
}

// Gateway configures the device connection server.
type Gateway struct {
	Addr             string        `yaml:"addr"`
	MaxFrameBytes    int           `yaml:"max_frame_bytes"`
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	Heartbeat        time.Duration `yaml:"heartbeat"` // used when the client asks for none
	HeartbeatMin     time.Duration `yaml:"heartbeat_min"`
	HeartbeatMax     time.Duration `yaml:"heartbeat_max"`
	AckTimeout       time.Duration `yaml:"ack_timeout"`
	Window           int           `yaml:"window"`        // unacked pushes per session
	DrainTimeout     time.Duration `yaml:"drain_timeout"` // reconnects spread over this on shutdown
	// IO is the connection I/O model: goroutine (a reader goroutine per
	// connection) or eventloop (epoll event loops and a worker pool).
	IO string `yaml:"io"`
	// NormalMaxDelay bounds how long a priority-normal push waits for the
	// device's next inbound frame before it is written anyway.
	NormalMaxDelay time.Duration `yaml:"normal_max_delay"`
	// ReplayLookback is how far before a device's broadcast cursor the
	// group-message replay on connect starts (paced or deferred pushes
	// older than the cursor may still be on their way).
	ReplayLookback time.Duration `yaml:"replay_lookback"`
}

// Dispatcher configures the push-log consumer.
type Dispatcher struct {
	BatchSize      int           `yaml:"batch_size"`
	CommitInterval time.Duration `yaml:"commit_interval"`
	MaxInFlight    int           `yaml:"max_in_flight"` // records being delivered or settled at once
}

// Scheduler configures the send_at scheduler (runs with the dispatcher).
type Scheduler struct {
	Interval time.Duration `yaml:"interval"` // how often due messages are looked for
}

// Receipts configures the receipt consumers (run with the dispatcher).
type Receipts struct {
	WebhookTimeout time.Duration `yaml:"webhook_timeout"` // one webhook POST
}

// LogStore configures the embedded push log.
type LogStore struct {
	Partitions int           `yaml:"partitions"`
	Retention  time.Duration `yaml:"retention"`
}

// Router configures the routing table.
type Router struct {
	Backend string `yaml:"backend"` // memory, etcd or redis
	// RedisAddr is the Redis server of backend redis.
	RedisAddr string `yaml:"redis_addr"`
	// RouteTTL bounds how long a Redis route outlives a dead gateway that
	// could not unbind it; gateways refresh routes well within it.
	RouteTTL time.Duration `yaml:"route_ttl"`
	// EtcdEndpoints are the etcd client URLs; empty with backend etcd means
	// the embedded etcd server (etcd.client_addr).
	EtcdEndpoints []string      `yaml:"etcd_endpoints"`
	LeaseTTL      time.Duration `yaml:"lease_ttl"`
}

// Store configures where apps, devices, inboxes and message status live.
type Store struct {
	Backend   string    `yaml:"backend"` // pebble (embedded, target all only) or cassandra
	Cassandra Cassandra `yaml:"cassandra"`
}

// Cassandra configures the Cassandra store.
type Cassandra struct {
	Hosts             []string      `yaml:"hosts"`
	Keyspace          string        `yaml:"keyspace"`
	Consistency       string        `yaml:"consistency"` // one, local_quorum, quorum
	ReplicationFactor int           `yaml:"replication_factor"`
	Timeout           time.Duration `yaml:"timeout"`
}

// Queue configures the push, upstream and receipt logs.
type Queue struct {
	Backend string `yaml:"backend"` // pebble (embedded, target all only) or kafka
	Kafka   Kafka  `yaml:"kafka"`
}

// Kafka configures the Kafka logs.
type Kafka struct {
	Brokers           []string `yaml:"brokers"`
	TopicPrefix       string   `yaml:"topic_prefix"`
	Partitions        int      `yaml:"partitions"`
	ReplicationFactor int      `yaml:"replication_factor"`
}

// Discovery configures how the roles of a cluster find each other.
type Discovery struct {
	// EtcdEndpoints are the etcd client URLs where gateways register; empty
	// means the embedded etcd server (target all).
	EtcdEndpoints []string `yaml:"etcd_endpoints"`
	// GatewayGRPCAddr is where a gateway serves dispatchers and the api.
	GatewayGRPCAddr string `yaml:"gateway_grpc_addr"`
	// AdvertiseAddr is the device address a gateway publishes in the
	// endpoint list; empty means gateway.addr with its host filled in.
	AdvertiseAddr string `yaml:"advertise_addr"`
	// LeaseTTL is how long a dead gateway stays registered.
	LeaseTTL time.Duration `yaml:"lease_ttl"`
	// EtcdPrefix scopes every etcd key of this cluster (gateway
	// registrations, the scheduler election, etcd routes), so clusters can
	// share one etcd. Starts and ends with "/".
	EtcdPrefix string `yaml:"etcd_prefix"`
}

// Etcd configures the embedded etcd server.
type Etcd struct {
	Embedded   bool   `yaml:"embedded"` // start it (target all only)
	ClientAddr string `yaml:"client_addr"`
	PeerAddr   string `yaml:"peer_addr"`
}

// Default returns the built-in configuration.
func Default() Config {
	return Config{
		Target:  TargetAll,
		DataDir: "./data",
		Log:     Log{Level: "info", Format: "text"},
		Ops:     Ops{Addr: "127.0.0.1:9100"},
		API: API{
			HTTPAddr:        ":8080",
			GRPCAddr:        ":9090",
			MaxTargets:      1000,
			MaxPayloadBytes: 4096,
			MaxBodyBytes:    1 << 20,
			DefaultTTL:      24 * time.Hour,
			MaxTTL:          240 * time.Hour,
			MaxSendAhead:    168 * time.Hour,
			MaxSpread:       time.Hour,
		},
		Gateway: Gateway{
			Addr:             ":5222",
			MaxFrameBytes:    64 << 10,
			HandshakeTimeout: 10 * time.Second,
			Heartbeat:        4 * time.Minute,
			HeartbeatMin:     30 * time.Second,
			HeartbeatMax:     10 * time.Minute,
			AckTimeout:       10 * time.Second,
			Window:           64,
			DrainTimeout:     10 * time.Second,
			IO:               GatewayIOEventLoop,
			NormalMaxDelay:   10 * time.Minute,
			ReplayLookback:   70 * time.Minute,
		},
		Dispatcher: Dispatcher{
			BatchSize:      512,
			CommitInterval: 100 * time.Millisecond,
			MaxInFlight:    32768,
		},
		Scheduler: Scheduler{Interval: 200 * time.Millisecond},
		Receipts:  Receipts{WebhookTimeout: 5 * time.Second},
		LogStore:  LogStore{Partitions: 8, Retention: 168 * time.Hour},
		Router: Router{Backend: BackendMemory, EtcdEndpoints: []string{}, LeaseTTL: 15 * time.Second,
			RedisAddr: "127.0.0.1:6379", RouteTTL: 30 * time.Minute},
		// The embedded server stays off etcd's usual 2379/2380, which a
		// real etcd (make deps-up) holds.
		Etcd: Etcd{Embedded: true, ClientAddr: "127.0.0.1:2389", PeerAddr: "127.0.0.1:2390"},
		Store: Store{Backend: BackendPebble, Cassandra: Cassandra{
			Hosts: []string{"127.0.0.1:9042"}, Keyspace: "herald", Consistency: "local_quorum",
			ReplicationFactor: 1, Timeout: 12 * time.Second,
		}},
		Queue: Queue{Backend: BackendPebble, Kafka: Kafka{
			Brokers: []string{"127.0.0.1:9092"}, TopicPrefix: "herald.", Partitions: 16, ReplicationFactor: 1,
		}},
		Discovery: Discovery{EtcdEndpoints: []string{}, GatewayGRPCAddr: ":9091", LeaseTTL: 10 * time.Second, EtcdPrefix: "/herald/"},
	}
}

// Runs reports whether this process runs the given role (target all runs every role).
func (c Config) Runs(target string) bool {
	return c.Target == TargetAll || c.Target == target
}

// RunsEmbeddedEtcd reports whether this process starts the embedded etcd server.
func (c Config) RunsEmbeddedEtcd() bool {
	return c.Etcd.Embedded && c.Target == TargetAll
}

// NewLogger returns a logger writing to w at the configured level and format.
// It assumes Validate accepted the configuration (unknown values mean info/text).
func (l Log) NewLogger(w io.Writer) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.Level)); err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if l.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// flagDef maps a command-line flag to a configuration path.
type flagDef struct {
	name  string
	path  string // yaml path of the field it sets
	usage string
}

func flagDefs() []flagDef {
	return []flagDef{
		{"target", "target", "role to run: all, gateway, router, dispatcher or api"},
		{"node-id", "node_id", `name of this process in the cluster (default "<hostname>-<target>")`},
		{"data-dir", "data_dir", "directory for the embedded stores and the generated admin token"},
		{"log-level", "log.level", "log level: debug, info, warn or error"},
		{"log-format", "log.format", "log format: text or json"},
		{"ops-addr", "ops.addr", `address of /healthz, /readyz and /metrics ("" disables)`},
		{"api-http-addr", "api.http_addr", "address of the REST API"},
		{"api-grpc-addr", "api.grpc_addr", "address of the gRPC API"},
		{"gateway-addr", "gateway.addr", "address devices connect to"},
	}
}

// flags is the parsed command line.
type flags struct {
	fs         *flag.FlagSet
	configFile *string
	checkOnly  *bool
	values     map[string]*string // flag name -> value
	paths      map[string]string  // flag name -> yaml path
}

func newFlags() *flags {
	def := Default()
	fs := flag.NewFlagSet("herald", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f := &flags{
		fs:         fs,
		configFile: fs.String("config", "", "YAML config file (or $"+EnvConfigFile+")"),
		checkOnly:  fs.Bool("check-config", false, `validate the configuration, print "config ok" and exit`),
		values:     map[string]*string{},
		paths:      map[string]string{},
	}
	for _, d := range flagDefs() {
		shown := ""
		if v, ok := lookup(&def, d.path); ok {
			shown = formatValue(v)
		}
		f.values[d.name] = fs.String(d.name, shown, d.usage)
		f.paths[d.name] = d.path
	}
	return f
}

// Usage writes the command-line help to w.
func Usage(w io.Writer) {
	f := newFlags()
	fmt.Fprintf(w, "Usage: herald [flags]\n\nEvery setting is also read from a YAML file (-config) and from %s* environment\nvariables; flags win over the environment, which wins over the file.\nSee docs/configuration.md.\n\nFlags:\n", EnvPrefix)
	f.fs.SetOutput(w)
	f.fs.PrintDefaults()
}

// Load builds the configuration from the defaults, the YAML file named by
// -config (or $HERALD_CONFIG), the HERALD_* variables read through getenv,
// and the flags in args (the command line without the program name), each
// overriding the one before. It does not validate: call Validate.
// -h and -help return an error wrapping flag.ErrHelp; print Usage then.
func Load(args []string, getenv func(string) string) (Config, error) {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	f := newFlags()
	if err := f.fs.Parse(args); err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	if f.fs.NArg() > 0 {
		return Config{}, fmt.Errorf("config: unexpected argument %q (flags only)", f.fs.Arg(0))
	}
	set := map[string]bool{}
	f.fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })

	cfg := Default()
	file := getenv(EnvConfigFile)
	if set["config"] {
		file = *f.configFile
	}
	if file != "" {
		if err := loadFile(&cfg, file); err != nil {
			return Config{}, err
		}
		cfg.File = file
	}
	if err := applyEnv(&cfg, getenv); err != nil {
		return Config{}, err
	}
	for _, d := range flagDefs() {
		if !set[d.name] {
			continue
		}
		if err := setPath(&cfg, d.path, *f.values[d.name]); err != nil {
			return Config{}, fmt.Errorf("config: flag -%s: %w", d.name, err)
		}
	}
	cfg.CheckOnly = *f.checkOnly
	if cfg.NodeID == "" {
		cfg.NodeID = defaultNodeID(cfg.Target)
	}
	return cfg, nil
}

func loadFile(cfg *Config, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // an empty file changes nothing
		}
		return fmt.Errorf("config file %s: %w", path, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return fmt.Errorf("config file %s: more than one YAML document", path)
	}
	return nil
}

// applyEnv sets every field whose HERALD_ variable is non-empty.
func applyEnv(cfg *Config, getenv func(string) string) error {
	var errs []error
	walk(reflect.ValueOf(cfg).Elem(), "", func(path string, v reflect.Value) {
		name := EnvName(path)
		raw := getenv(name)
		if raw == "" {
			return
		}
		if err := setValue(v, raw); err != nil {
			errs = append(errs, fmt.Errorf("config: %s: %w", name, err))
		}
	})
	return errors.Join(errs...)
}

// EnvName returns the environment variable of a yaml path ("api.http_addr" -> "HERALD_API_HTTP_ADDR").
func EnvName(path string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(path, ".", "_"))
}

// walk calls fn for every leaf field under v with its dotted yaml path.
func walk(v reflect.Value, prefix string, fn func(path string, v reflect.Value)) {
	t := v.Type()
	for i := range t.NumField() {
		sf := t.Field(i)
		name, _, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
		if name == "-" || name == "" || !sf.IsExported() {
			continue
		}
		path := name
		if prefix != "" {
			path = prefix + "." + name
		}
		fv := v.Field(i)
		if fv.Kind() == reflect.Struct && fv.Type() != reflect.TypeFor[time.Duration]() {
			walk(fv, path, fn)
			continue
		}
		fn(path, fv)
	}
}

func lookup(cfg *Config, path string) (reflect.Value, bool) {
	var found reflect.Value
	walk(reflect.ValueOf(cfg).Elem(), "", func(p string, v reflect.Value) {
		if p == path {
			found = v
		}
	})
	return found, found.IsValid()
}

func setPath(cfg *Config, path, raw string) error {
	v, ok := lookup(cfg, path)
	if !ok {
		return fmt.Errorf("no setting %q", path)
	}
	return setValue(v, raw)
}

// setValue parses raw into v the way YAML would: Go durations, decimal
// integers, booleans, and comma-separated lists.
func setValue(v reflect.Value, raw string) error {
	switch {
	case v.Type() == reflect.TypeFor[time.Duration]():
		d, err := time.ParseDuration(raw)
		if err != nil {
			return fmt.Errorf("%q is not a duration like 10s or 4m", raw)
		}
		v.SetInt(int64(d))
	case v.Kind() == reflect.String:
		v.SetString(raw)
	case v.Kind() == reflect.Int:
		n, err := strconv.Atoi(raw)
		if err != nil {
			return fmt.Errorf("%q is not an integer", raw)
		}
		v.SetInt(int64(n))
	case v.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(raw)
		if err != nil {
			return fmt.Errorf("%q is not true or false", raw)
		}
		v.SetBool(b)
	case v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.String:
		list := []string{}
		for item := range strings.SplitSeq(raw, ",") {
			if item = strings.TrimSpace(item); item != "" {
				list = append(list, item)
			}
		}
		v.Set(reflect.ValueOf(list))
	default:
		return fmt.Errorf("unsupported setting type %s", v.Type())
	}
	return nil
}

// formatValue renders a field the way a user would write it.
func formatValue(v reflect.Value) string {
	switch {
	case v.Type() == reflect.TypeFor[time.Duration]():
		return fmtDuration(time.Duration(v.Int()))
	case v.Kind() == reflect.Slice:
		parts := make([]string, v.Len())
		for i := range parts {
			parts[i] = fmt.Sprint(v.Index(i).Interface())
		}
		return strings.Join(parts, ",")
	}
	return fmt.Sprint(v.Interface())
}

// fmtDuration prints 4m rather than 4m0s and 24h rather than 24h0m0s.
func fmtDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func defaultNodeID(target string) string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "herald"
	}
	host = strings.Map(func(r rune) rune {
		if isNodeIDRune(r) {
			return r
		}
		return '-'
	}, host)
	return host + "-" + target
}

func isNodeIDRune(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-'
}
