package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// buildHerald compiles cmd/herald once per test binary run.
var buildHerald = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "herald-e2e-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "herald")
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Dir(filepath.Dir(file))
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/herald")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/herald: %v\n%s", err, out)
	}
	return bin, nil
})

// freePort returns a loopback address with a port that was free a moment ago.
func freePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// child is herald running as a separate process.
type child struct {
	cmd  *exec.Cmd
	done chan error
}

// startChild runs the herald binary with the given environment and waits
// until its REST API answers /readyz.
func startChild(t testing.TB, env []string, api string) *child {
	t.Helper()
	return startChildURL(t, env, "http://"+api+"/readyz")
}

// startChildOps is startChild for roles without the REST API: it waits on
// the ops endpoint's /readyz.
func startChildOps(t testing.TB, env []string, ops string) *child {
	t.Helper()
	return startChildURL(t, env, "http://"+ops+"/readyz")
}

func startChildURL(t testing.TB, env []string, readyURL string) *child {
	t.Helper()
	bin, err := buildHerald()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, done: make(chan error, 1)}
	var logMu sync.Mutex
	var logTail []string
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logMu.Lock()
			logTail = append(logTail, sc.Text())
			if len(logTail) > 50 {
				logTail = logTail[1:]
			}
			logMu.Unlock()
		}
	}()
	go func() { c.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-c.done
		if t.Failed() {
			logMu.Lock()
			t.Logf("herald child log tail:\n%s", strings.Join(logTail, "\n"))
			logMu.Unlock()
		}
	})
	client := newAPI(readyURL)
	eventually(t, 60*time.Second, "herald child ready", func() (bool, string) {
		select {
		case err := <-c.done:
			c.done <- err
			t.Fatalf("herald child exited: %v", err)
		default:
		}
		code, _, err := client.doE("GET", "", nil, nil, nil)
		return err == nil && code == 200, fmt.Sprint(code, err)
	})
	return c
}

// kill sends SIGKILL: no shutdown code runs.
func (c *child) kill(t testing.TB) {
	t.Helper()
	if err := c.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-c.done
	c.done <- nil
}

// Acceptance 3: herald as a child process; 1,000 messages accepted for
// offline devices and 1,000 for online devices, some still in flight;
// SIGKILL; restart on the same data dir; every message is delivered (the SDK
// de-duplicates repeats). Nothing accepted is lost.
func TestCrashLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills a herald process")
	}
	apiAddr, grpcAddr, gwAddr := freePort(t), freePort(t), freePort(t)
	env := []string{
		"HERALD_DATA_DIR=" + t.TempDir(),
		"HERALD_ADMIN_TOKEN=" + adminToken,
		"HERALD_API_HTTP_ADDR=" + apiAddr,
		"HERALD_API_GRPC_ADDR=" + grpcAddr,
		"HERALD_GATEWAY_ADDR=" + gwAddr,
		"HERALD_OPS_ADDR=" + freePort(t),
		"HERALD_ETCD_CLIENT_ADDR=" + freePort(t),
		"HERALD_ETCD_PEER_ADDR=" + freePort(t),
		"HERALD_GATEWAY_ACK_TIMEOUT=2s",
		"HERALD_NODE_ID=gw-crash",
	}
	proc := startChild(t, env, apiAddr)
	api := newAPI("http://" + apiAddr)
	ap := api.createApp(t, "crash")

	const perDevice = 10
	online := make([]*device, 100)
	offline := make([]*device, 100)
	for i := range online {
		id := fmt.Sprintf("on-%03d", i)
		online[i] = newDevice(ap, id, api.registerDevice(t, ap, id), gwAddr)
		id = fmt.Sprintf("off-%03d", i)
		offline[i] = newDevice(ap, id, api.registerDevice(t, ap, id), gwAddr)
	}
	// Half the online devices have an app that does not finish handling
	// (and so does not ack) until after the crash: their messages are
	// pushed and in flight when the process dies.
	release := make(chan struct{})
	for i, d := range online {
		if i%2 == 0 {
			d.hold = release
		}
		d.connect(t)
	}
	defer func() {
		for _, d := range append(online, offline...) {
			d.disconnect(t)
		}
	}()

	// 2,000 sends from 32 workers; the kill comes right after the last 202,
	// while the dispatcher still has online deliveries in flight.
	var both []*device
	for i := range online {
		both = append(both, online[i], offline[i])
	}
	want := sendToEach(t, api, ap, both, perDevice)
	inFlight := 0
	for _, d := range online {
		inFlight += perDevice - d.count()
	}
	proc.kill(t)
	close(release)
	t.Logf("SIGKILL with %d of %d online messages not yet handled by the app", inFlight, len(online)*perDevice)

	startChild(t, env, apiAddr)
	for _, d := range offline {
		d.connect(t)
	}
	all := append(append([]*device(nil), online...), offline...)
	expectExactly(t, all, want, 90*time.Second)
	// Status survived the crash and settles to the truth.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for dev, ids := range want {
		for id := range ids {
			for {
				st := api.status(t, ap, id)
				if st.Counts == (counts{Targeted: 1, Delivered: 1}) {
					break
				}
				if ctx.Err() != nil {
					t.Fatalf("message %s to %s: %+v after restart", id, dev, st.Counts)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
}
