package gateway

import (
	"fmt"
	"net/netip"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
)

// benchConns is how many sessions BenchmarkSessionIdle holds, fewer when
// the file descriptor limit is low (each connection takes two here).
func benchConns(tb testing.TB, want int) int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && int(lim.Cur) < 2*want+200 {
		n := max((int(lim.Cur)-200)/2, 10)
		tb.Logf("RLIMIT_NOFILE %d: %d connections instead of %d", lim.Cur, n, want)
		return n
	}
	return want
}

// dialFD connects a blocking socket outside the Go runtime's poller, so the
// client side of a benchmark costs the Go heap nothing.
func dialFD(addr netip.AddrPort) (int, error) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := syscall.Connect(fd, &syscall.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}); err != nil {
		_ = syscall.Close(fd)
		return -1, err
	}
	return fd, nil
}

// handshakeFD sends CONNECT and reads up to the end of the CONNACK frame.
func handshakeFD(fd int, connect []byte) error {
	if _, err := syscall.Write(fd, connect); err != nil {
		return err
	}
	var buf [256]byte
	n := 0
	for {
		k, err := syscall.Read(fd, buf[n:])
		if err != nil {
			return err
		}
		if k == 0 {
			return fmt.Errorf("closed after %d bytes", n)
		}
		n += k
		f, used, err := frame.Decode(buf[:n], len(buf))
		if err != nil {
			return err
		}
		if used > 0 {
			if f.Type != frame.TypeConnAck {
				return fmt.Errorf("got %s, want CONNACK", f.Type)
			}
			return nil
		}
	}
}

func heapAndStack() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}

// BenchmarkSessionIdle reports the gateway's memory per idle authenticated
// session (session, route entry, I/O state: goroutine stack and read
// buffer, or event-loop state) over a few thousand loopback connections.
// The client sockets live outside the Go runtime and cost nothing here.
func BenchmarkSessionIdle(b *testing.B) {
	for _, model := range ioModels {
		b.Run(model, func(b *testing.B) {
			n := benchConns(b, 5000)
			e := startEnv(b, model)
			connects := make([][]byte, n)
			for i := range connects {
				id := "idle-" + strconv.Itoa(i)
				e.registerDevice(b, id)
				connects[i] = connectFrame(b, id)
			}
			addr, err := netip.ParseAddrPort(e.gw.Addr())
			if err != nil {
				b.Fatal(err)
			}
			fds := make([]int, n)
			b.Cleanup(func() {
				for _, fd := range fds {
					if fd > 0 {
						_ = syscall.Close(fd)
					}
				}
			})
			before := heapAndStack()
			start := time.Now()
			// Handshakes from a few clients at once, like a reconnect wave.
			const clients = 8
			var g errgroup.Group
			for c := range clients {
				g.Go(func() error {
					for i := c; i < n; i += clients {
						fd, err := dialFD(addr)
						if err != nil {
							return err
						}
						fds[i] = fd
						if err := handshakeFD(fd, connects[i]); err != nil {
							return fmt.Errorf("handshake %d: %w", i, err)
						}
					}
					return nil
				})
			}
			if err := g.Wait(); err != nil {
				b.Fatal(err)
			}
			elapsed := time.Since(start)
			for e.gw.Sessions() < n {
				time.Sleep(time.Millisecond)
			}
			after := heapAndStack()
			for b.Loop() {
				runtime.KeepAlive(fds)
			}
			b.ReportMetric(float64(int64(after)-int64(before))/float64(n), "bytes/conn")
			b.ReportMetric(float64(n)/elapsed.Seconds(), "handshakes/s")
			b.ReportMetric(float64(runtime.NumGoroutine())/float64(n), "goroutines/conn")
		})
	}
}

// BenchmarkFanoutWrite writes one PUSH frame, encoded once, to N live
// sessions; an op is the whole fan-out.
func BenchmarkFanoutWrite(b *testing.B) {
	const n = 500
	for _, model := range ioModels {
		b.Run(model, func(b *testing.B) {
			e := startEnv(b, model)
			sessions := make([]*session, 0, n)
			for i := range n {
				id := "fan-" + strconv.Itoa(i)
				e.connectIdle(b, id)
				s := e.gw.lookup("app-rpc/" + id)
				if s == nil {
					b.Fatal("no session")
				}
				sessions = append(sessions, s)
			}
			push, err := frame.AppendMessage(nil, frame.TypePush, &devicev1.Push{
				MessageId: "01HZYABCDEFGHJKMNPQRSTVWXY", Kind: devicev1.Kind_KIND_NOTIFICATION,
				Notification: &devicev1.Notification{Title: "Hello", Body: "A message body of a typical size"},
			})
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(push) * n))
			b.ReportAllocs()
			for b.Loop() {
				for _, s := range sessions {
					if err := s.write(push); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/session")
		})
	}
}
