package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldpush/herald/api/heraldv1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// target is the herald under test: addresses, admin token and, when known,
// its process ids for /proc measurements. A cluster has several gateway
// processes: device i dials Gateways[i mod len(Gateways)].
type target struct {
	API      string // http://host:port
	GRPC     string
	Gateways []string
	Admin    string
	// PIDs are every herald process of the target: CPU time and system
	// calls are summed over them (and RSS, unless GatewayPIDs is set).
	PIDs []int
	// GatewayPIDs, when set, are the processes that hold the device
	// connections: memory per connection is the slope of their summed RSS.
	GatewayPIDs []int

	cmd  *exec.Cmd
	done chan error
	dir  string
}

const benchAdminToken = "heraldbench-admin-token"

var readyLine = regexp.MustCompile(`herald is ready: REST (\S+)\s+gRPC (\S+)\s+devices (\S+)`)

// startHerald runs bin as an all-in-one child on a temp data dir, every
// listener on a kernel-chosen loopback port, and waits for its ready line.
func startHerald(ctx context.Context, bin string, extraEnv []string) (*target, error) {
	dir, err := os.MkdirTemp("", "heraldbench-")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-data-dir", filepath.Join(dir, "data"), "-ops-addr", "127.0.0.1:0",
		"-api-http-addr", "127.0.0.1:0", "-api-grpc-addr", "127.0.0.1:0", "-gateway-addr", "127.0.0.1:0",
		"-log-level", "warn")
	cmd.Env = append(os.Environ(), "HERALD_ADMIN_TOKEN="+benchAdminToken,
		"HERALD_ETCD_CLIENT_ADDR=127.0.0.1:0", "HERALD_ETCD_PEER_ADDR=127.0.0.1:0",
		"HERALD_GATEWAY_HEARTBEAT_MIN=30s")
	cmd.Env = append(cmd.Env, extraEnv...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	t := &target{Admin: benchAdminToken, PIDs: []int{cmd.Process.Pid}, cmd: cmd, done: make(chan error, 1), dir: dir}
	ready := make(chan []string, 1)
	var tail tailBuf
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			tail.add(line)
			if m := readyLine.FindStringSubmatch(line); m != nil {
				select {
				case ready <- m:
				default:
				}
			}
		}
	}()
	go func() { t.done <- cmd.Wait() }()
	select {
	case m := <-ready:
		t.API, t.GRPC, t.Gateways = m[1], m[2], []string{m[3]}
		return t, nil
	case err := <-t.done:
		t.done <- err
		t.stop()
		return nil, fmt.Errorf("herald exited before ready (%v): %s", err, tail.String())
	case <-time.After(60 * time.Second):
		t.stop()
		return nil, fmt.Errorf("herald not ready after 60s: %s", tail.String())
	case <-ctx.Done():
		t.stop()
		return nil, ctx.Err()
	}
}

// stop ends a child herald (SIGTERM, then SIGKILL after 15 s) and removes its data.
func (t *target) stop() {
	if t.cmd == nil {
		return
	}
	_ = t.cmd.Process.Signal(os.Interrupt)
	select {
	case <-t.done:
	case <-time.After(15 * time.Second):
		_ = t.cmd.Process.Kill()
		<-t.done
	}
	os.RemoveAll(t.dir)
	t.cmd = nil
}

type tailBuf struct {
	mu    sync.Mutex
	lines []string
}

func (b *tailBuf) add(s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lines = append(b.lines, s)
	if len(b.lines) > 20 {
		b.lines = b.lines[1:]
	}
}

func (b *tailBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Join(b.lines, "\n")
}

// procSample is one reading of a process and of the kernel's TCP memory.
type procSample struct {
	RSSBytes   int64   `json:"rss_bytes"`
	CPUSeconds float64 `json:"cpu_seconds"` // utime + stime
	TCPMem     int64   `json:"tcp_mem_bytes"`
	TCPInUse   int64   `json:"tcp_inuse"`
	// SysCR and SysCW count the process's read and write system calls
	// (/proc/<pid>/io: every read/recv and write/send, sockets included).
	SysCR int64 `json:"syscr"`
	SysCW int64 `json:"syscw"`
}

// memPIDs are the processes whose RSS counts as connection memory.
func (t *target) memPIDs() []int {
	if len(t.GatewayPIDs) > 0 {
		return t.GatewayPIDs
	}
	return t.PIDs
}

// sampleProcs reads every process of pids and returns their sum (RSS, CPU
// time and system calls added up; the kernel's TCP figures, which are
// machine-wide, read once) and each reading in the order of pids.
func sampleProcs(pids []int) (procSample, []procSample, error) {
	if len(pids) == 0 {
		return procSample{}, nil, errors.New("no herald pid: pass -herald-pid to measure a running herald")
	}
	var sum procSample
	each := make([]procSample, 0, len(pids))
	for _, pid := range pids {
		s, err := sampleProc(pid)
		if err != nil {
			return sum, nil, fmt.Errorf("pid %d: %w", pid, err)
		}
		each = append(each, s)
	}
	return sumSamples(each), each, nil
}

// sumSamples adds up per-process readings; TCPMem and TCPInUse are
// machine-wide and come from the last reading.
func sumSamples(each []procSample) procSample {
	var sum procSample
	for _, s := range each {
		sum.RSSBytes += s.RSSBytes
		sum.CPUSeconds += s.CPUSeconds
		sum.SysCR += s.SysCR
		sum.SysCW += s.SysCW
		sum.TCPMem, sum.TCPInUse = s.TCPMem, s.TCPInUse
	}
	return sum
}

// clockTicks is USER_HZ, 100 on every Linux this tool targets.
const clockTicks = 100

// sampleProc reads /proc/<pid>/status, /proc/<pid>/stat and /proc/net/sockstat.
func sampleProc(pid int) (procSample, error) {
	var s procSample
	if pid <= 0 {
		return s, errors.New("no herald pid: pass -herald-pid to measure a running herald")
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				s.RSSBytes = kb * 1024
			}
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	s.CPUSeconds, err = parseStatCPU(string(stat))
	if err != nil {
		return s, err
	}
	if io, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid)); err == nil {
		s.SysCR, s.SysCW = parseProcIO(string(io))
	}
	if sock, err := os.ReadFile("/proc/net/sockstat"); err == nil {
		s.TCPInUse, s.TCPMem = parseSockstat(string(sock))
	}
	return s, nil
}

// parseStatCPU returns utime+stime in seconds from a /proc/<pid>/stat line.
// The command name may hold spaces and parentheses: fields start after the last ")".
func parseStatCPU(stat string) (float64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("stat: no command field")
	}
	f := strings.Fields(stat[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, errors.New("stat: too few fields")
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("stat: %w", err)
	}
	return (ut + st) / clockTicks, nil
}

// parseProcIO returns the syscr and syscw counters of /proc/<pid>/io.
func parseProcIO(s string) (syscr, syscw int64) {
	for line := range strings.SplitSeq(s, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch k {
		case "syscr":
			syscr = n
		case "syscw":
			syscw = n
		}
	}
	return syscr, syscw
}

// parseSockstat returns TCP sockets in use and TCP memory in bytes (the
// "mem" field counts pages) from /proc/net/sockstat.
func parseSockstat(s string) (inuse, mem int64) {
	for line := range strings.SplitSeq(s, "\n") {
		rest, ok := strings.CutPrefix(line, "TCP:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		for i := 0; i+1 < len(f); i += 2 {
			v, _ := strconv.ParseInt(f[i+1], 10, 64)
			switch f[i] {
			case "inuse":
				inuse = v
			case "mem":
				mem = v * int64(os.Getpagesize())
			}
		}
	}
	return inuse, mem
}

// restClient does the setup calls (app, devices) over the REST API.
type restClient struct {
	base string
	http *http.Client
}

func newREST(base string) *restClient {
	if !strings.HasPrefix(base, "http") {
		base = "http://" + base
	}
	return &restClient{base: base, http: &http.Client{Timeout: 30 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 256}}}
}

type appCreds struct {
	Key    string `json:"app_key"`
	Secret string `json:"app_secret"`
}

func (c *restClient) post(ctx context.Context, path string, auth func(*http.Request), body, out any) error {
	raw, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, bytes.NewReader(raw))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	auth(req)
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("POST %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("POST %s: %w", path, err)
	}
	if resp.StatusCode >= 300 {
		return fmt.Errorf("POST %s: %d %s", path, resp.StatusCode, bytes.TrimSpace(b))
	}
	return json.Unmarshal(b, out)
}

func (c *restClient) createApp(ctx context.Context, admin, name string) (appCreds, error) {
	var out appCreds
	err := c.post(ctx, "/v1/apps", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+admin) },
		map[string]string{"name": name}, &out)
	return out, err
}

// registerDevices registers n devices bench-00000.. with conc calls in
// flight, reporting progress through onProgress.
func (c *restClient) registerDevices(ctx context.Context, app appCreds, n, conc int, onProgress func(int)) ([]Device, error) {
	devs := make([]Device, n)
	var next, done atomic.Int64
	var firstErr error
	var errOnce sync.Once
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := make(chan struct{})
	var pw sync.WaitGroup
	pw.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				onProgress(int(done.Load()))
			}
		}
	})
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				id := fmt.Sprintf("bench-%06d", i)
				var out struct {
					Token string `json:"device_token"`
				}
				err := c.post(ctx, "/v1/devices", func(r *http.Request) { r.SetBasicAuth(app.Key, app.Secret) },
					map[string]string{"device_id": id, "platform": "other"}, &out)
				if err != nil {
					errOnce.Do(func() { firstErr = err; cancel() })
					return
				}
				devs[i] = Device{ID: id, Token: out.Token}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	close(stop)
	pw.Wait()
	return devs, firstErr
}

// sender sends messages over gRPC, the API's faster protocol.
type sender struct {
	conn *grpc.ClientConn
	cli  heraldv1.HeraldClient
	auth string
}

func newSender(addr string, app appCreds) (*sender, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("grpc %s: %w", addr, err)
	}
	return &sender{conn: conn, cli: heraldv1.NewHeraldClient(conn),
		auth: "Basic " + base64.StdEncoding.EncodeToString([]byte(app.Key+":"+app.Secret))}, nil
}

// broadcast sends one data message to every device of the app (audience
// "all", the gRPC form of REST's "audience": "all"): one push-log record
// that every gateway fans out. ttl 0 is online-only: nothing goes to the
// app's topic log, so a reconnecting device gets no replay of it.
func (s *sender) broadcast(ctx context.Context, data map[string]string, ttl int64) error {
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", s.auth)
	_, err := s.cli.SendMessage(ctx, &heraldv1.SendMessageRequest{
		Audience: &heraldv1.Audience{All: true},
		Data:     data,
		Options:  &heraldv1.Options{TtlSeconds: &ttl},
	})
	return err
}

// send sends one data message to devices; data carries the timestamps.
func (s *sender) send(ctx context.Context, devices []string, data map[string]string) error {
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", s.auth)
	_, err := s.cli.SendMessage(ctx, &heraldv1.SendMessageRequest{
		Audience: &heraldv1.Audience{DeviceIds: devices},
		Data:     data,
	})
	return err
}

func (s *sender) close() { _ = s.conn.Close() }
