// Command heraldbench is Herald's load tool. It starts an all-in-one herald
// child (or targets a running one), registers devices through the REST API,
// drives many lightweight device connections from worker processes (it
// re-executes itself as `heraldbench worker`) bound to source addresses
// 127.0.0.2-254, and writes a JSON result and a markdown table.
//
//	heraldbench [flags] [mode ...]
//
// Modes: connect, fanout, unicast, churn, broadcast-sustained, raw (default:
// all of them, in that order, in one session). -preset ci|quick|full picks
// sizes and durations.
// docs/benchmarks.md explains the method and the figures.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case roleWorker:
			os.Exit(workerMain(context.Background()))
		case roleRawServer:
			os.Exit(rawServerMain(context.Background()))
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

var presets = map[string]options{
	"ci": {Steps: []int{200, 1000}, HBWindow: 3 * time.Second, Repeats: 3, Rates: []float64{0, 1000},
		UnicastFor: 2 * time.Second, ChurnFor: 2 * time.Second, ChurnRate: 200, BcastEvery: 10 * time.Millisecond, BcastFor: time.Second},
	"quick": {Steps: []int{2000, 6000, 10000}, HBWindow: 10 * time.Second, Repeats: 5, Rates: []float64{0, 2000},
		UnicastFor: 5 * time.Second, ChurnFor: 5 * time.Second, ChurnRate: 1000, BcastEvery: 10 * time.Millisecond, BcastFor: time.Second},
	"full": {Steps: []int{2000, 10000, 19000}, HBWindow: 30 * time.Second, Repeats: 10, Rates: []float64{0, 20000},
		UnicastFor: 20 * time.Second, ChurnFor: 10 * time.Second, ChurnRate: 2000, BcastEvery: 10 * time.Millisecond, BcastFor: 2 * time.Second},
}

// allModes in the order a full session runs them: broadcast-sustained
// leaves millions of receipts for herald to count, so it comes after the
// modes that time herald (raw needs its frames per write).
var allModes = []string{"connect", "fanout", "unicast", "churn", "broadcast-sustained", "raw"}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("heraldbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	preset := fs.String("preset", "quick", "sizes and durations: ci, quick or full (flags below override)")
	bin := fs.String("herald-bin", "bin/herald", "herald binary to start as an all-in-one child (ignored with -api)")
	apiAddr := fs.String("api", "", "REST address of a running herald (then also -grpc, -gateway, -admin-token)")
	grpcAddr := fs.String("grpc", "", "gRPC address of a running herald")
	gwAddr := fs.String("gateway", "", "device address(es) of a running herald, comma-separated: device i dials gateway i mod G (and raw uses G writer processes)")
	adminTok := fs.String("admin-token", "", "admin token of a running herald")
	pidList := fs.String("herald-pid", "", "pid(s) of a running herald, comma-separated: CPU time and system calls are summed over them (RSS too, unless -gateway-pids)")
	gwPidList := fs.String("gateway-pids", "", "pids of the gateway processes, comma-separated: memory per connection is the slope of their summed RSS (default: -herald-pid)")
	steps := fs.String("n", "", "connect: comma-separated N values; the largest is every mode's N (at most ~19000 per gateway process)")
	perWorker := fs.Int("per-worker", 10000, "device connections per worker process (at most ~18000: 20,000 open files per process)")
	conc := fs.Int("concurrency", 128, "dials in flight per worker")
	regConc := fs.Int("register-concurrency", 64, "device registrations in flight")
	ping := fs.Duration("ping-every", 30*time.Second, "heartbeat interval of every device")
	pingAligned := fs.Bool("ping-aligned", false, "every device pings at the same instants (one burst per interval) instead of a random phase")
	hbWindow := fs.Duration("hb-window", 0, "CPU measurement window for heartbeats")
	repeats := fs.Int("repeats", 0, "fan-out and raw rounds")
	rates := fs.String("rates", "", "unicast target rates per second, comma-separated; 0 = flat out")
	uniFor := fs.Duration("duration", 0, "length of each unicast run")
	senders := fs.Int("senders", 128, "unicast API calls in flight")
	churnFor := fs.Duration("churn-duration", 0, "length of the reconnect storm")
	churnRate := fs.Float64("churn-rate", -1, "messages per second sent during the storm")
	bcastEvery := fs.Duration("bcast-every", 0, "broadcast-sustained: interval between broadcasts")
	bcastFor := fs.Duration("bcast-for", 0, "broadcast-sustained: how long broadcasts are sent")
	bcastTTL := fs.Int64("bcast-ttl", 0, "TTL in seconds of fan-out and sustained broadcasts (0 = online only: no topic-log write, no replay on reconnect)")
	rawBatch := fs.String("raw-batch", "", "raw sustained: frames per write, comma-separated (default: 1, herald's measured frames per write, 10); 0 skips raw sustained")
	out := fs.String("out", "", "write <out>.json and <out>.md as well as the table on stdout")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	opt, ok := presets[*preset]
	if !ok {
		fmt.Fprintf(stderr, "heraldbench: unknown preset %q\n", *preset)
		return 2
	}
	opt.PerWorker, opt.Concurrency, opt.RegisterConc, opt.PingEvery, opt.Senders = *perWorker, *conc, *regConc, *ping, *senders
	opt.DeliverWait = 30 * time.Second
	opt.PingAligned = *pingAligned
	var err error
	if *steps != "" {
		if opt.Steps, err = parseList(*steps, strconv.Atoi); err != nil {
			fmt.Fprintln(stderr, "heraldbench: -n:", err)
			return 2
		}
	}
	if *rates != "" {
		if opt.Rates, err = parseList(*rates, func(s string) (float64, error) { return strconv.ParseFloat(s, 64) }); err != nil {
			fmt.Fprintln(stderr, "heraldbench: -rates:", err)
			return 2
		}
	}
	if *rawBatch != "" {
		if opt.RawBatches, err = parseList(*rawBatch, strconv.Atoi); err != nil {
			fmt.Fprintln(stderr, "heraldbench: -raw-batch:", err)
			return 2
		}
	}
	if *bcastEvery > 0 {
		opt.BcastEvery = *bcastEvery
	}
	if *bcastFor > 0 {
		opt.BcastFor = *bcastFor
	}
	opt.BcastTTL = *bcastTTL
	if *hbWindow > 0 {
		opt.HBWindow = *hbWindow
	}
	if *repeats > 0 {
		opt.Repeats = *repeats
	}
	if *uniFor > 0 {
		opt.UnicastFor = *uniFor
	}
	if *churnFor > 0 {
		opt.ChurnFor = *churnFor
	}
	if *churnRate >= 0 {
		opt.ChurnRate = *churnRate
	}
	if opt.PerWorker < 1 || opt.PerWorker > 18000 {
		fmt.Fprintln(stderr, "heraldbench: -per-worker must be in [1, 18000]")
		return 2
	}
	modes := fs.Args()
	if len(modes) == 0 {
		modes = allModes
	}
	for _, m := range modes {
		if !contains(allModes, m) {
			fmt.Fprintf(stderr, "heraldbench: unknown mode %q (want %s)\n", m, strings.Join(allModes, ", "))
			return 2
		}
	}

	res := &Result{Started: time.Now().UTC(), Machine: machine()}
	b := &bench{opt: opt, res: res, log: stderr}
	if *apiAddr != "" {
		t := &target{API: *apiAddr, GRPC: *grpcAddr, Admin: *adminTok}
		for g := range strings.SplitSeq(*gwAddr, ",") {
			if g = strings.TrimSpace(g); g != "" {
				t.Gateways = append(t.Gateways, g)
			}
		}
		if len(t.Gateways) == 0 {
			fmt.Fprintln(stderr, "heraldbench: -api needs -gateway")
			return 2
		}
		if *pidList != "" {
			if t.PIDs, err = parseList(*pidList, strconv.Atoi); err != nil {
				fmt.Fprintln(stderr, "heraldbench: -herald-pid:", err)
				return 2
			}
		}
		if *gwPidList != "" {
			if t.GatewayPIDs, err = parseList(*gwPidList, strconv.Atoi); err != nil {
				fmt.Fprintln(stderr, "heraldbench: -gateway-pids:", err)
				return 2
			}
		}
		b.tgt = t
		res.Target = fmt.Sprintf("running herald at %s, %d gateway process(es) %s", *apiAddr, len(t.Gateways), strings.Join(t.Gateways, " "))
	} else {
		b.logf("starting %s (all-in-one, temp data dir)", *bin)
		b.tgt, err = startHerald(ctx, *bin, nil)
		if err != nil {
			fmt.Fprintln(stderr, "heraldbench:", err)
			return 1
		}
		defer b.tgt.stop()
		res.Target = "all-in-one child " + *bin + " (embedded pebble log and store, memory routes)"
	}
	res.Gateways = len(b.tgt.Gateways)
	failed := false
	if err := b.setup(ctx); err != nil {
		res.Problems = append(res.Problems, err.Error())
		failed = true
	} else {
		for _, m := range modes {
			err := b.runMode(ctx, m)
			b.noteWriteErrors(ctx, m)
			if err != nil {
				b.logf("%s failed: %v", m, err)
				res.Problems = append(res.Problems, m+": "+err.Error())
				failed = true
				if ctx.Err() != nil {
					break
				}
			}
		}
	}
	b.close()
	res.WriteMarkdown(stdout)
	if *out != "" {
		if err := writeResult(*out, res); err != nil {
			fmt.Fprintln(stderr, "heraldbench:", err)
			return 1
		}
	}
	if failed {
		return 1
	}
	return 0
}

func (b *bench) runMode(ctx context.Context, m string) error {
	switch m {
	case "connect":
		return b.runConnect(ctx)
	case "fanout":
		return b.runFanout(ctx)
	case "broadcast-sustained":
		return b.runSustained(ctx)
	case "unicast":
		return b.runUnicast(ctx)
	case "churn":
		return b.runChurn(ctx)
	case "raw":
		return b.runRaw(ctx)
	}
	return errNoMode
}

func writeResult(base string, res *Result) error {
	raw, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(base+".json", append(raw, '\n'), 0o644); err != nil {
		return err
	}
	f, err := os.Create(base + ".md")
	if err != nil {
		return err
	}
	res.WriteMarkdown(f)
	return f.Close()
}

func parseList[T any](s string, parse func(string) (T, error)) ([]T, error) {
	var out []T
	for f := range strings.SplitSeq(s, ",") {
		v, err := parse(strings.TrimSpace(f))
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, errors.New("empty list")
	}
	return out, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func machine() Machine {
	m := Machine{NProc: runtime.NumCPU(), GoVersion: runtime.Version()}
	if raw, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(raw), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				if f := strings.Fields(rest); len(f) > 0 {
					kb, _ := strconv.ParseInt(f[0], 10, 64)
					m.MemBytes = kb * 1024
				}
			}
		}
	}
	if raw, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(raw))
	}
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) == nil {
		m.FileLimit = rl.Cur
	}
	return m
}
