package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
)

// TestMain lets the test binary act as a heraldbench worker: the controller
// re-executes os.Executable(), which under `go test` is this binary.
func TestMain(m *testing.M) {
	switch os.Getenv(workerEnv) {
	case roleWorker:
		os.Exit(workerMain(context.Background()))
	case roleRawServer:
		os.Exit(rawServerMain(context.Background()))
	}
	os.Exit(m.Run())
}

func TestFitLine(t *testing.T) {
	tests := []struct {
		name      string
		xs, ys    []float64
		slope, ic float64
		wantErr   bool
	}{
		{name: "exact line", xs: []float64{0, 2000, 10000, 19000}, ys: []float64{1e6, 1e6 + 2000*1500, 1e6 + 10000*1500, 1e6 + 19000*1500}, slope: 1500, ic: 1e6},
		{name: "two points", xs: []float64{1, 3}, ys: []float64{10, 20}, slope: 5, ic: 5},
		{name: "noisy", xs: []float64{1, 2, 3}, ys: []float64{1, 3, 2}, slope: 0.5, ic: 1},
		{name: "one point", xs: []float64{1}, ys: []float64{1}, wantErr: true},
		{name: "same x", xs: []float64{2, 2}, ys: []float64{1, 3}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := FitLine(tt.xs, tt.ys)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if err == nil && (math.Abs(f.Slope-tt.slope) > 1e-6 || math.Abs(f.Intercept-tt.ic) > 1e-3) {
				t.Fatalf("fit = %+v, want slope %v intercept %v", f, tt.slope, tt.ic)
			}
		})
	}
}

func TestPercentile(t *testing.T) {
	tests := []struct {
		name string
		vals []float64
		p    float64
		want float64
	}{
		{"empty", nil, 50, 0},
		{"single", []float64{7}, 99, 7},
		{"median of ten", []float64{10, 9, 8, 7, 6, 5, 4, 3, 2, 1}, 50, 5},
		{"p90 of ten", []float64{10, 9, 8, 7, 6, 5, 4, 3, 2, 1}, 90, 9},
		{"p100", []float64{3, 1, 2}, 100, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Percentile(tt.vals, tt.p); got != tt.want {
				t.Fatalf("Percentile(%v) = %v, want %v", tt.p, got, tt.want)
			}
		})
	}
}

func TestHistogramQuantiles(t *testing.T) {
	var a, b Histogram
	for i := 1; i <= 1000; i++ { // 1..1000 µs, split over two histograms
		h := &a
		if i%2 == 0 {
			h = &b
		}
		h.Record(time.Duration(i) * time.Microsecond)
	}
	a.Merge(b)
	if a.Total() != 1000 {
		t.Fatalf("total = %d, want 1000", a.Total())
	}
	for _, q := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Microsecond}, {0.99, 990 * time.Microsecond}, {0.001, time.Microsecond}} {
		got := a.Quantile(q.q)
		if rel := math.Abs(float64(got-q.want)) / float64(q.want); rel > 0.07 {
			t.Errorf("quantile %v = %v, want %v within 7%%", q.q, got, q.want)
		}
	}
	for i := range 2000 { // bucket bounds are ordered and every value lands in its bucket
		us := uint64(i * 37)
		idx := histIndex(us)
		if us < histLower(idx) || us >= histLower(idx+1) {
			t.Fatalf("%d µs in bucket %d [%d, %d)", us, idx, histLower(idx), histLower(idx+1))
		}
	}
}

func TestParseProc(t *testing.T) {
	cpu, err := parseStatCPU("1234 (my (odd) prog) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 4 0 100")
	if err != nil || math.Abs(cpu-4.0) > 1e-9 {
		t.Fatalf("parseStatCPU = %v, %v; want 4.0 s", cpu, err)
	}
	inuse, mem := parseSockstat("sockets: used 300\nTCP: inuse 42 orphan 0 tw 7 alloc 50 mem 3\nUDP: inuse 1 mem 9\n")
	if inuse != 42 || mem != 3*int64(os.Getpagesize()) {
		t.Fatalf("parseSockstat = %d, %d", inuse, mem)
	}
}

func TestMarkdown(t *testing.T) {
	r := &Result{Started: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Machine: Machine{NProc: 2}, Target: "test",
		Connect: &ConnectResult{Steps: []ConnectStep{{N: 19000, Connected: 19000, HandshakesPerS: 25000}}, BytesPerConn: 1800,
			Heartbeat: &HeartbeatResult{N: 19000, Every: "30s", HeartbeatPct: 2.5}, Projection1MBytes: 2e9},
		Unicast: []UnicastResult{{TargetRate: 0, DeliveredPerS: 50000}, {TargetRate: 20000, DeliveredPerS: 20000, P99Ms: 3}},
		Churn:   &ChurnResult{N: 19000, PerSecond: 10000, MessagesSent: 10, Delivered: 10},
		Fanout:  &FanoutResult{N: 19000, Method: "one broadcast", P50Ms: 150, P90Ms: 170},
		Raw:     &FanoutResult{N: 19000, Method: "raw", P50Ms: 100},
		Sustained: &SustainedResult{N: 19000, Every: "10ms", SendSeconds: 3, Delivered: 570000, Expected: 570000,
			DeliveriesPerS: 90000, CPUMicrosPerDelivery: 12.5, FramesPerWrite: 1},
	}
	markdownHas(t, r,
		"| user-space memory per idle connection (RSS slope, N up to 19000) | 1800 B | <= 2048 B at 19,000 | met |",
		"| 2.50 % of a core | <= 1 % at 19,000 / 30 s | not met |",
		"| handshakes/s, connect ramp | 25000 /s | >= 20,000 /s | met |",
		"| 10000 /s | >= 20,000 /s | not met |",
		"| messages not delivered by the end of the wait (counted lost) | 0 of 10 | 0 | met |",
		"| 50000 /s | >= 100,000 /s | not met |",
		"| unicast p99 at 20000 msg/s (achieved 20000 /s) | 3.00 ms | <= 5 ms at 20,000 msg/s | met |",
		"| fan-out p50 / raw writer p50, 19000 devices | 1.50x | <= 1.2x | not met |",
		"deliveries/s | 90000 /s (570000 of 570000) |",
		"| sustained broadcast: server CPU per delivery | 12.50 µs (1.00 frames per write) |",
		"PROJECTION",
	)
}

func TestMarkdownMultiGateway(t *testing.T) {
	r := &Result{Gateways: 3, Target: "cluster",
		Connect: &ConnectResult{BaselineRSS: []int64{10 << 20, 11 << 20, 12 << 20},
			Steps: []ConnectStep{{N: 3000, Connected: 3000, ProcessRSS: []int64{20 << 20, 21 << 20, 22 << 20}}}, BytesPerConn: 1500},
		Fanout: &FanoutResult{N: 3000, Processes: 3, P50Ms: 100, PerSecond: 30000},
		Raw:    &FanoutResult{N: 3000, Processes: 3, P50Ms: 50, PerSecond: 60000},
	}
	md := markdownHas(t, r,
		"RSS slope, summed over 3 gateways, N up to 3000",
		"| fan-out across 3 gateway processes, 3000 devices: aggregate deliveries/s (devices / p50 completion) | 30000 /s (raw writer over 3 processes: 60000 /s), 50 % of raw | >= 70 % of raw at >= 8 gateways, >= 150,000 | not met at this size",
		"RSS per gateway process at N = 0: 10.0 MiB, 11.0 MiB, 12.0 MiB.",
		"RSS per gateway process at N = 3000: 20.0 MiB, 21.0 MiB, 22.0 MiB.",
	)
	if strings.Contains(md, "<= 1.2x") {
		t.Errorf("multi-gateway markdown states the one-gateway p50 ratio target:\n%s", md)
	}
}

// TestEndToEnd runs a tiny connect and unicast against a real herald child.
func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a herald child process")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "herald")
	build := exec.CommandContext(t.Context(), "go", "build", "-o", bin, "../herald")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build herald: %v\n%s", err, out)
	}
	out := filepath.Join(dir, "result")
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), []string{"-preset", "ci", "-herald-bin", bin, "-n", "100,200", "-hb-window", "500ms",
		"-duration", "2s", "-rates", "500", "-per-worker", "150", "-repeats", "2", "-bcast-for", "300ms",
		"-out", out, "connect", "fanout", "broadcast-sustained", "unicast", "raw"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("run = %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	raw, err := os.ReadFile(out + ".json")
	if err != nil {
		t.Fatal(err)
	}
	var res Result
	if err := json.Unmarshal(raw, &res); err != nil {
		t.Fatal(err)
	}
	if res.Workers != 2 {
		t.Errorf("workers = %d, want 2 (200 devices, 150 per worker)", res.Workers)
	}
	c := res.Connect
	if c == nil || len(c.Steps) != 2 || c.Steps[1].Connected != 200 || c.Steps[1].Failed != 0 {
		t.Fatalf("connect = %+v, want 200 connected", c)
	}
	if c.Baseline.RSSBytes <= 0 || c.Steps[1].Server.RSSBytes <= 0 {
		t.Errorf("no RSS readings: %+v", c)
	}
	if len(res.Unicast) != 1 {
		t.Fatalf("unicast runs = %d, want 1", len(res.Unicast))
	}
	u := res.Unicast[0]
	if u.Sent < 500 || u.Delivered != u.Sent || u.SendErrors != 0 {
		t.Errorf("unicast: sent %d, delivered %d, errors %d: want every sent message delivered", u.Sent, u.Delivered, u.SendErrors)
	}
	if u.P50Ms <= 0 || u.P99Ms < u.P50Ms {
		t.Errorf("latency p50 %v p99 %v", u.P50Ms, u.P99Ms)
	}
	if f := res.Fanout; f == nil || len(f.RoundMs) != 2 || f.Incomplete != 0 {
		t.Errorf("fan-out = %+v, want 2 complete broadcast rounds", f)
	}
	if s := res.Sustained; s == nil || s.Broadcasts == 0 || s.Delivered != s.Expected || s.CPUMicrosPerDelivery <= 0 {
		t.Errorf("broadcast-sustained = %+v, want every broadcast delivered to every device", s)
	}
	if r := res.Raw; r == nil || r.N != 200 || len(r.RoundMs) != 2 || r.Incomplete != 0 || r.Processes != 1 {
		t.Errorf("raw = %+v, want 2 complete rounds to 200 devices from 1 raw server process", r)
	}
	if len(res.RawSustained) == 0 || res.RawSustained[0].Delivered != res.RawSustained[0].Expected {
		t.Errorf("raw sustained = %+v, want every frame delivered", res.RawSustained)
	}
	if md, err := os.ReadFile(out + ".md"); err != nil || !strings.Contains(string(md), "| figure | measured | target | verdict |") {
		t.Errorf("markdown file: %v %q", err, md)
	}
}

func TestGatewayFor(t *testing.T) {
	tests := []struct {
		name     string
		gateways []string
		n        int
		want     map[string]int // devices per gateway
	}{
		{name: "one gateway", gateways: []string{"a"}, n: 5, want: map[string]int{"a": 5}},
		{name: "three gateways, even", gateways: []string{"a", "b", "c"}, n: 9, want: map[string]int{"a": 3, "b": 3, "c": 3}},
		{name: "three gateways, remainder to the first", gateways: []string{"a", "b", "c"}, n: 10, want: map[string]int{"a": 4, "b": 3, "c": 3}},
		{name: "eight gateways, 150,000 devices", gateways: []string{"1", "2", "3", "4", "5", "6", "7", "8"}, n: 150000,
			want: map[string]int{"1": 18750, "2": 18750, "3": 18750, "4": 18750, "5": 18750, "6": 18750, "7": 18750, "8": 18750}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := map[string]int{}
			for i := range tt.n {
				got[gatewayFor(tt.gateways, i)]++
			}
			if len(got) != len(tt.want) {
				t.Fatalf("spread = %v, want %v", got, tt.want)
			}
			for g, n := range tt.want {
				if got[g] != n {
					t.Fatalf("spread = %v, want %v", got, tt.want)
				}
			}
		})
	}
	if g := gatewayFor(nil, 3); g != "" {
		t.Fatalf("no gateways: got %q", g)
	}
}

func TestSumSamples(t *testing.T) {
	each := []procSample{
		{RSSBytes: 10 << 20, CPUSeconds: 1.5, SysCR: 100, SysCW: 10, TCPMem: 4096, TCPInUse: 7},
		{RSSBytes: 20 << 20, CPUSeconds: 0.25, SysCR: 1, SysCW: 2, TCPMem: 8192, TCPInUse: 9},
	}
	got := sumSamples(each)
	want := procSample{RSSBytes: 30 << 20, CPUSeconds: 1.75, SysCR: 101, SysCW: 12, TCPMem: 8192, TCPInUse: 9}
	if got != want {
		t.Fatalf("sum = %+v, want %+v (TCP figures are machine-wide: the last reading, not a sum)", got, want)
	}
	// Real processes: this one twice sums to about twice its own reading.
	self := os.Getpid()
	sum, per, err := sampleProcs([]int{self, self})
	if err != nil {
		t.Fatal(err)
	}
	if len(per) != 2 || sum.RSSBytes < per[0].RSSBytes+per[1].RSSBytes/2 || sum.RSSBytes <= 0 {
		t.Fatalf("sampleProcs(self, self) = %+v, %+v", sum, per)
	}
	if _, _, err := sampleProcs(nil); err == nil {
		t.Fatal("sampleProcs(nil): want an error asking for -herald-pid")
	}
}

// TestRawServers runs the multi-process raw writer: 2 raw server processes,
// 2 worker processes, 10 connections spread over the servers, one round.
func TestRawServers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	ctx := t.Context()
	srv, err := startRawServers(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.stop()
	if len(srv.addrs) != 2 || srv.addrs[0] == srv.addrs[1] {
		t.Fatalf("raw server addresses = %v, want 2 distinct", srv.addrs)
	}
	workers, err := startFleet(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer workers.stop()
	const n = 10
	devs := make([]Device, n)
	for i := range devs {
		devs[i] = Device{ID: strconv.Itoa(i)}
	}
	cmds := []Command{
		{Op: "connect", Gateways: srv.addrs, Devices: devs[:n/2], FirstIndex: 0, Raw: true, Concurrency: 4},
		{Op: "connect", Gateways: srv.addrs, Devices: devs[n/2:], FirstIndex: n / 2, Raw: true, Concurrency: 4},
	}
	evs, err := workers.all(ctx, cmds)
	if err != nil {
		t.Fatal(err)
	}
	if evs[0].Connected+evs[1].Connected != n {
		t.Fatalf("connected %d + %d, want %d", evs[0].Connected, evs[1].Connected, n)
	}
	if got, err := srv.waitCount(ctx, n, 10*time.Second); err != nil || got != n {
		t.Fatalf("raw servers accepted %d (%v), want %d", got, err, n)
	}
	per, err := srv.f.same(ctx, Command{Op: "count"})
	if err != nil {
		t.Fatal(err)
	}
	if per[0].Connected != n/2 || per[1].Connected != n/2 {
		t.Fatalf("per server: %d and %d connections, want %d each (device i to server i mod 2)", per[0].Connected, per[1].Connected, n/2)
	}
	for round, passes := range []int{1, 3} {
		key := "t" + strconv.Itoa(round)
		buf, err := frame.AppendMessage(nil, frame.TypePush, &devicev1.Push{MessageId: "m" + key, Kind: devicev1.Kind_KIND_DATA,
			Data: map[string]string{"r": key}})
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.write(ctx, buf, passes); err != nil {
			t.Fatal(err)
		}
		want := n * passes
		var got int
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			tot, err := workers.stats(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got = tot.Rounds[key].Count; got >= want {
				break
			}
		}
		if got != want {
			t.Fatalf("round %s: %d deliveries, want %d (%d passes to %d devices)", key, got, want, passes, n)
		}
	}
}

// markdownHas renders r as markdown, checks that it contains every wanted
// piece, and returns it.
func markdownHas(tb testing.TB, r *Result, wants ...string) string {
	tb.Helper()
	var buf bytes.Buffer
	r.WriteMarkdown(&buf)
	md := buf.String()
	for _, want := range wants {
		if !strings.Contains(md, want) {
			tb.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	return md
}
