package main

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// Result is everything one heraldbench session measured; it is written as
// JSON and rendered as a markdown table.
type Result struct {
	Started time.Time `json:"started"`
	Machine Machine   `json:"machine"`
	Target  string    `json:"target"`
	// Gateways is the number of gateway processes the devices were spread
	// over (1 for the all-in-one).
	Gateways int            `json:"gateways"`
	Workers  int            `json:"workers"`
	Connect  *ConnectResult `json:"connect,omitempty"`
	Fanout   *FanoutResult  `json:"fanout,omitempty"`
	Raw      *FanoutResult  `json:"raw,omitempty"`
	// Sustained is broadcast-sustained; RawSustained its raw-writer ceiling.
	Sustained    *SustainedResult     `json:"broadcast_sustained,omitempty"`
	RawSustained []RawSustainedResult `json:"raw_sustained,omitempty"`
	Unicast      []UnicastResult      `json:"unicast,omitempty"`
	Churn        *ChurnResult         `json:"churn,omitempty"`
	Problems     []string             `json:"problems,omitempty"`
}

// Machine describes where the numbers come from.
type Machine struct {
	NProc     int    `json:"nproc"`
	MemBytes  int64  `json:"mem_bytes"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
	FileLimit uint64 `json:"file_limit"`
}

// ConnectResult is the idle-connection run.
type ConnectResult struct {
	Baseline procSample `json:"baseline"`
	// BaselineRSS is each gateway process's RSS before any connection
	// (only with several; Baseline holds their sum).
	BaselineRSS []int64       `json:"baseline_rss_bytes_per_process,omitempty"`
	Steps       []ConnectStep `json:"steps"`
	// BytesPerConn is the least-squares slope of server RSS over N.
	BytesPerConn float64 `json:"rss_bytes_per_conn"`
	// KernelBytesPerConn is the slope of /proc/net/sockstat TCP memory over
	// N; both ends of every loopback connection are counted.
	KernelBytesPerConn float64          `json:"kernel_tcp_bytes_per_conn"`
	Heartbeat          *HeartbeatResult `json:"heartbeat,omitempty"`
	// Projection1MBytes is baseline + slope * 1,000,000: a projection, not a measurement.
	Projection1MBytes float64 `json:"projection_1m_rss_bytes"`
}

// ConnectStep is one N of the connect run.
type ConnectStep struct {
	N              int        `json:"n"`
	Connected      int        `json:"connected"`
	Failed         int        `json:"failed"`
	Server         procSample `json:"server"`                          // summed over the gateway processes
	ProcessRSS     []int64    `json:"rss_bytes_per_process,omitempty"` // each gateway process, with several
	RampSeconds    float64    `json:"ramp_seconds"`
	HandshakesPerS float64    `json:"handshakes_per_s"` // of this step's new connections
}

// HeartbeatResult is the server CPU spent while N sessions ping every Every.
type HeartbeatResult struct {
	N            int     `json:"n"`
	Every        string  `json:"ping_every"`
	Window       string  `json:"window"`
	IdleCPUPct   float64 `json:"idle_cpu_pct"`      // no connections
	LoadedCPUPct float64 `json:"loaded_cpu_pct"`    // N sessions pinging
	HeartbeatPct float64 `json:"heartbeat_cpu_pct"` // loaded - idle, % of one core
	Pings        uint64  `json:"pings"`             // PINGs written in the loaded window
	// The same sessions with pings paused (QuietWindow, a third of an
	// interval at most) split loaded - idle into holding the sessions
	// (quiet - idle) and answering their pings (loaded - quiet).
	QuietWindow      string  `json:"quiet_window,omitempty"`
	QuietCPUPct      float64 `json:"quiet_cpu_pct"`
	SessionsCPUPct   float64 `json:"sessions_cpu_pct"`
	PingCPUPct       float64 `json:"ping_cpu_pct"`
	PingsPerS        float64 `json:"pings_per_s"`
	CPUMicrosPerPing float64 `json:"cpu_us_per_ping"`
	SyscallsPerPing  float64 `json:"syscalls_per_ping"` // server read+write calls
}

// SustainedResult is broadcast-sustained: a broadcast every Every for
// SendSeconds to all N sessions.
type SustainedResult struct {
	N           int     `json:"n"`
	Every       string  `json:"every"`
	SendSeconds float64 `json:"send_seconds"`
	TTL         int64   `json:"ttl_seconds"`
	Broadcasts  int64   `json:"broadcasts"`
	SendErrors  int64   `json:"send_errors"`
	Expected    uint64  `json:"expected_deliveries"`
	Delivered   uint64  `json:"delivered"`
	Closed      uint64  `json:"sessions_closed_by_server"`
	// Seconds runs from the first send to the last arrival; LagSeconds from
	// the last send to the last arrival.
	Seconds              float64 `json:"seconds"`
	LagSeconds           float64 `json:"lag_seconds"`
	DeliveriesPerS       float64 `json:"deliveries_per_s"`
	P50Ms                float64 `json:"p50_ms"` // send to receive, over every delivery
	P99Ms                float64 `json:"p99_ms"`
	ServerCPUSeconds     float64 `json:"server_cpu_seconds"`
	CPUMicrosPerDelivery float64 `json:"server_cpu_us_per_delivery"`
	WriteSyscalls        int64   `json:"server_write_syscalls"`
	FramesPerWrite       float64 `json:"frames_per_write"` // deliveries / write system calls (all of the server's)
	DriverCPUSeconds     float64 `json:"driver_cpu_seconds"`
}

// RawSustainedResult is the raw writer sending FramesPerConn frames to each
// of N connections, Batch frames per write, flat out.
type RawSustainedResult struct {
	N                    int     `json:"n"`
	Batch                int     `json:"frames_per_write"`
	FramesPerConn        int     `json:"frames_per_conn"`
	Expected             uint64  `json:"expected_deliveries"`
	Delivered            uint64  `json:"delivered"`
	Seconds              float64 `json:"seconds"`
	DeliveriesPerS       float64 `json:"deliveries_per_s"`
	WriterCPUSeconds     float64 `json:"writer_cpu_seconds"`
	CPUMicrosPerDelivery float64 `json:"writer_cpu_us_per_delivery"`
	DriverCPUSeconds     float64 `json:"driver_cpu_seconds"`
}

// FanoutResult is one message to every connected device, repeated.
type FanoutResult struct {
	N          int       `json:"n"`
	Method     string    `json:"method"`
	Repeats    int       `json:"repeats"`
	Processes  int       `json:"server_processes,omitempty"` // gateway or raw writer processes the devices were spread over
	RoundMs    []float64 `json:"round_ms"`                   // send start to the last device receiving
	SendMs     []float64 `json:"send_ms,omitempty"`          // send start to the api's answer (herald rounds)
	Incomplete int       `json:"incomplete_rounds"`
	P50Ms      float64   `json:"p50_ms"`
	P90Ms      float64   `json:"p90_ms"`
	PerSecond  float64   `json:"deliveries_per_s"` // N / p50: aggregate over every server process
}

// UnicastResult is one sustained unicast run.
type UnicastResult struct {
	TargetRate      float64 `json:"target_rate"` // 0: as fast as the senders can go
	Seconds         float64 `json:"seconds"`
	Senders         int     `json:"senders"`
	Sent            uint64  `json:"sent"`
	SendErrors      uint64  `json:"send_errors"`
	Delivered       uint64  `json:"delivered"` // distinct messages received
	Redelivered     uint64  `json:"redelivered"`
	SentPerS        float64 `json:"sent_per_s"`
	DeliveredPerS   float64 `json:"delivered_per_s"`
	P50Ms           float64 `json:"p50_ms"`
	P99Ms           float64 `json:"p99_ms"`
	P999Ms          float64 `json:"p999_ms"`
	ServerCPUPct    float64 `json:"server_cpu_pct"`
	DeliveryTimeout bool    `json:"delivery_timeout,omitempty"`
}

// ChurnResult is a reconnect storm with messages flowing.
type ChurnResult struct {
	N            int     `json:"n"`
	Seconds      float64 `json:"seconds"`
	Handshakes   uint64  `json:"handshakes"`
	PerSecond    float64 `json:"handshakes_per_s"`
	Failed       int     `json:"failed_dials"`
	MessagesSent uint64  `json:"messages_sent"`
	Delivered    uint64  `json:"messages_delivered"`
	Lost         uint64  `json:"messages_lost"`
	// EarlierRedelivered counts messages of earlier runs (already received
	// and acked once) that came again during the storm: at-least-once.
	EarlierRedelivered uint64  `json:"earlier_messages_redelivered"`
	ServerCPUPct       float64 `json:"server_cpu_pct"`
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func mib(b float64) string { return fmt.Sprintf("%.1f MiB", b/(1<<20)) }

func mibList(bs []int64) string {
	parts := make([]string, len(bs))
	for i, v := range bs {
		parts[i] = mib(float64(v))
	}
	return strings.Join(parts, ", ")
}

func verdict(measured, target float64, higherIsBetter bool) string {
	if measured == 0 {
		return "not measured"
	}
	if higherIsBetter == (measured >= target) {
		return "met"
	}
	return "not met"
}

// WriteMarkdown renders the headline figures against the targets, then the details.
func (r *Result) WriteMarkdown(w io.Writer) {
	var b strings.Builder
	fmt.Fprintf(&b, "## heraldbench %s\n\n", r.Started.Format(time.RFC3339))
	fmt.Fprintf(&b, "Machine: %d CPUs, %s memory, kernel %s, %s, open-file limit %d. Target: %s. Driver: %d worker processes on the same machine.\n\n",
		r.Machine.NProc, mib(float64(r.Machine.MemBytes)), r.Machine.Kernel, r.Machine.GoVersion, r.Machine.FileLimit, r.Target, r.Workers)
	gws := ""
	if r.Gateways > 1 {
		gws = fmt.Sprintf(", summed over %d gateways", r.Gateways)
	}
	b.WriteString("| figure | measured | target | verdict |\n|---|---|---|---|\n")
	if c := r.Connect; c != nil && len(c.Steps) > 0 {
		last := c.Steps[len(c.Steps)-1]
		fmt.Fprintf(&b, "| user-space memory per idle connection (RSS slope%s, N up to %d) | %.0f B | <= 2048 B at 19,000 | %s |\n",
			gws, last.N, c.BytesPerConn, verdict(c.BytesPerConn, 2048, false))
		fmt.Fprintf(&b, "| kernel TCP buffer memory per connection (sockstat mem slope, both loopback ends; socket structs not included) | %.0f B | reported apart | — |\n", c.KernelBytesPerConn)
		if hb := c.Heartbeat; hb != nil {
			fmt.Fprintf(&b, "| heartbeat CPU, %d sessions pinging every %s (with sessions minus idle, %s windows) | %.2f %% of a core | <= 1 %% at 19,000 / 30 s | %s |\n",
				hb.N, hb.Every, hb.Window, hb.HeartbeatPct, verdict(max(hb.HeartbeatPct, 1e-9), 1, false))
			if hb.QuietWindow != "" {
				fmt.Fprintf(&b, "| of which answering pings (with pings minus pings paused) / holding the sessions (pings paused minus idle) | %.2f / %.2f %% of a core (%.0f pings/s, %.0f µs and %.1f syscalls each) | — | — |\n",
					hb.PingCPUPct, hb.SessionsCPUPct, hb.PingsPerS, hb.CPUMicrosPerPing, hb.SyscallsPerPing)
			}
		}
		best := 0.0
		for _, s := range c.Steps {
			best = max(best, s.HandshakesPerS)
		}
		fmt.Fprintf(&b, "| handshakes/s, connect ramp | %.0f /s | >= 20,000 /s | %s |\n", best, verdict(best, 20000, true))
	}
	if ch := r.Churn; ch != nil {
		fmt.Fprintf(&b, "| handshakes/s, reconnect storm of %d devices | %.0f /s | >= 20,000 /s | %s |\n", ch.N, ch.PerSecond, verdict(ch.PerSecond, 20000, true))
		lost := "met"
		if ch.Lost > 0 {
			lost = "not met"
		}
		fmt.Fprintf(&b, "| messages not delivered by the end of the wait (counted lost) | %d of %d | 0 | %s |\n", ch.Lost, ch.MessagesSent, lost)
	}
	for _, u := range r.Unicast {
		if u.TargetRate == 0 {
			fmt.Fprintf(&b, "| unicast delivered/s, senders flat out (%d in flight) | %.0f /s | >= 100,000 /s | %s |\n",
				u.Senders, u.DeliveredPerS, verdict(u.DeliveredPerS, 100000, true))
		} else {
			fmt.Fprintf(&b, "| unicast p99 at %.0f msg/s (achieved %.0f /s) | %.2f ms | <= 5 ms at 20,000 msg/s | %s |\n",
				u.TargetRate, u.DeliveredPerS, u.P99Ms, verdict(max(u.P99Ms, 1e-9), 5, false))
		}
	}
	if f := r.Fanout; f != nil {
		line := fmt.Sprintf("| fan-out to %d devices (%s), p50 / p90 | %.1f / %.1f ms | — | — |\n", f.N, f.Method, f.P50Ms, f.P90Ms)
		if rw := r.Raw; rw != nil && rw.P50Ms > 0 && f.P50Ms > 0 {
			line = fmt.Sprintf("| fan-out to %d devices (%s), p50 / p90 | %.1f / %.1f ms (raw TCP writer: %.1f ms, herald at %.0f %% of raw speed) | — | — |\n",
				f.N, f.Method, f.P50Ms, f.P90Ms, rw.P50Ms, 100*rw.P50Ms/f.P50Ms)
		}
		b.WriteString(line)
	}
	if f, rw := r.Fanout, r.Raw; f != nil && rw != nil && rw.P50Ms > 0 && f.P50Ms > 0 {
		if r.Gateways > 1 {
			ratio := f.PerSecond / rw.PerSecond
			v := verdict(ratio, 0.7, true)
			if r.Gateways < 8 || f.N < 150000 {
				v += " at this size (target is for >= 8 gateways, >= 150,000)"
			}
			fmt.Fprintf(&b, "| fan-out across %d gateway processes, %d devices: aggregate deliveries/s (devices / p50 completion) | %.0f /s (raw writer over %d processes: %.0f /s), %.0f %% of raw | >= 70 %% of raw at >= 8 gateways, >= 150,000 | %s |\n",
				r.Gateways, f.N, f.PerSecond, rw.Processes, rw.PerSecond, 100*ratio, v)
		} else {
			fmt.Fprintf(&b, "| fan-out p50 / raw writer p50, %d devices | %.2fx | <= 1.2x | %s |\n", f.N, f.P50Ms/rw.P50Ms, verdict(f.P50Ms/rw.P50Ms, 1.2, false))
		}
	}
	if s := r.Sustained; s != nil {
		fmt.Fprintf(&b, "| sustained broadcast to %d devices, one every %s for %.0f s: deliveries/s | %.0f /s (%d of %d) | reported | — |\n",
			s.N, s.Every, s.SendSeconds, s.DeliveriesPerS, s.Delivered, s.Expected)
		fmt.Fprintf(&b, "| sustained broadcast: server CPU per delivery | %.2f µs (%.2f frames per write) | reported | — |\n", s.CPUMicrosPerDelivery, s.FramesPerWrite)
	}
	for _, rs := range r.RawSustained {
		fmt.Fprintf(&b, "| raw writer, %d frames per write, %d frames to each of %d: deliveries/s, writer CPU per delivery | %.0f /s, %.2f µs | ceiling | — |\n",
			rs.Batch, rs.FramesPerConn, rs.N, rs.DeliveriesPerS, rs.CPUMicrosPerDelivery)
	}
	if c := r.Connect; c != nil && c.Projection1MBytes > 0 {
		fmt.Fprintf(&b, "| PROJECTION: gateway RSS at 1M connections per host (baseline + slope x 1M) | %s | — | projection |\n", mib(c.Projection1MBytes))
	}
	if c := r.Connect; c != nil {
		b.WriteString("\nConnect steps:\n\n| N | connected | failed | server RSS | kernel TCP mem | ramp | handshakes/s |\n|---|---|---|---|---|---|---|\n")
		fmt.Fprintf(&b, "| 0 | 0 | 0 | %s | %s | — | — |\n", mib(float64(c.Baseline.RSSBytes)), mib(float64(c.Baseline.TCPMem)))
		for _, s := range c.Steps {
			fmt.Fprintf(&b, "| %d | %d | %d | %s | %s | %.2f s | %.0f |\n", s.N, s.Connected, s.Failed,
				mib(float64(s.Server.RSSBytes)), mib(float64(s.Server.TCPMem)), s.RampSeconds, s.HandshakesPerS)
		}
		if len(c.BaselineRSS) > 0 {
			fmt.Fprintf(&b, "\nRSS per gateway process at N = 0: %s.\n", mibList(c.BaselineRSS))
		}
		for _, s := range c.Steps {
			if len(s.ProcessRSS) > 0 {
				fmt.Fprintf(&b, "\nRSS per gateway process at N = %d: %s.\n", s.N, mibList(s.ProcessRSS))
			}
		}
	}
	if len(r.Unicast) > 0 {
		b.WriteString("\nUnicast runs:\n\n| target rate | seconds | sent | delivered | redelivered | send errors | sent/s | delivered/s | p50 | p99 | p999 | server CPU |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, u := range r.Unicast {
			rate := "flat out"
			if u.TargetRate > 0 {
				rate = fmt.Sprintf("%.0f /s", u.TargetRate)
			}
			fmt.Fprintf(&b, "| %s | %.1f | %d | %d | %d | %d | %.0f | %.0f | %.2f ms | %.2f ms | %.2f ms | %.0f %% |\n",
				rate, u.Seconds, u.Sent, u.Delivered, u.Redelivered, u.SendErrors, u.SentPerS, u.DeliveredPerS, u.P50Ms, u.P99Ms, u.P999Ms, u.ServerCPUPct)
		}
	}
	for _, f := range []*FanoutResult{r.Fanout, r.Raw} {
		if f == nil {
			continue
		}
		fmt.Fprintf(&b, "\nFan-out (%s), %d devices, %d repeats (%d incomplete): p50 %.1f ms, p90 %.1f ms, %.0f deliveries/s at p50.\n",
			f.Method, f.N, f.Repeats, f.Incomplete, f.P50Ms, f.P90Ms, f.PerSecond)
	}
	if s := r.Sustained; s != nil {
		fmt.Fprintf(&b, "\nBroadcast-sustained: %d broadcasts (%d send errors) to %d devices, %d of %d deliveries in %.1f s (%.0f /s, lag after the last send %.1f s), send-to-receive p50 %.0f ms p99 %.0f ms, server CPU %.2f s (%.2f µs per delivery), %d server write calls (%.2f frames per write), driver CPU %.1f s, %d sessions closed by the server.\n",
			s.Broadcasts, s.SendErrors, s.N, s.Delivered, s.Expected, s.Seconds, s.DeliveriesPerS, s.LagSeconds, s.P50Ms, s.P99Ms,
			s.ServerCPUSeconds, s.CPUMicrosPerDelivery, s.WriteSyscalls, s.FramesPerWrite, s.DriverCPUSeconds, s.Closed)
	}
	for _, rs := range r.RawSustained {
		fmt.Fprintf(&b, "\nRaw sustained, %d frames per write: %d of %d deliveries in %.2f s (%.0f /s), writer CPU %.2f s (%.2f µs per delivery), driver CPU %.1f s.\n",
			rs.Batch, rs.Delivered, rs.Expected, rs.Seconds, rs.DeliveriesPerS, rs.WriterCPUSeconds, rs.CPUMicrosPerDelivery, rs.DriverCPUSeconds)
	}
	if ch := r.Churn; ch != nil {
		fmt.Fprintf(&b, "\nChurn: %d devices, %.1f s, %d handshakes (%.0f /s), %d failed dials, %d/%d messages delivered, %d messages of earlier runs redelivered, server CPU %.0f %%.\n",
			ch.N, ch.Seconds, ch.Handshakes, ch.PerSecond, ch.Failed, ch.Delivered, ch.MessagesSent, ch.EarlierRedelivered, ch.ServerCPUPct)
	}
	for _, p := range r.Problems {
		fmt.Fprintf(&b, "\nProblem: %s\n", p)
	}
	_, _ = io.WriteString(w, b.String())
}
