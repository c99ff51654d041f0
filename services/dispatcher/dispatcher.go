// Package dispatcher is Herald's message-dispatch role: it consumes the push
// log, looks the target devices up in the routing table in batches, hands
// each gateway its deliveries in one call, and stores in the device's inbox
// whatever was not acked. It commits the log only past records that are
// acked, stored, expired or failed, so a crash at any point redelivers
// (devices de-duplicate) and never loses a message.
package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"golang.org/x/sync/semaphore"
	"google.golang.org/protobuf/proto"

	"github.com/heraldpush/herald/pkg/delivery"
	"github.com/heraldpush/herald/pkg/envelope/internalv1"
	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/pkg/route"
	"github.com/heraldpush/herald/pkg/store"
)

// Gateways reaches the gateway nodes: in one process through Go calls, in a
// cluster through gRPC.
type Gateways interface {
	// Deliver hands a node its deliveries and returns one outcome each.
	Deliver(ctx context.Context, node string, ds []delivery.Delivery) ([]delivery.Outcome, error)
	// Drain asks the node to push the device's inbox to session connID.
	Drain(ctx context.Context, node, device string, connID uint64) error
}

// Store is the part of the store the dispatcher uses.
type Store interface {
	DevicesExist(ctx context.Context, appID string, deviceIDs []string) (map[string]bool, error)
	Put(ctx context.Context, appID, deviceID string, e store.InboxEntry) (collapsed string, err error)
	Mark(ctx context.Context, ts ...store.Transition) error
}

// Config tunes the dispatcher.
type Config struct {
	Group          string        // consumer group, default "dispatcher"
	CommitInterval time.Duration // default 100ms
	MaxInFlight    int           // records being delivered or settled at once, default 32768
	DeliverTimeout time.Duration // bound on one gateway call, default 15s
}

func (c *Config) setDefaults() {
	if c.Group == "" {
		c.Group = "dispatcher"
	}
	if c.CommitInterval <= 0 {
		c.CommitInterval = 100 * time.Millisecond
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 32768
	}
	if c.DeliverTimeout <= 0 {
		c.DeliverTimeout = 15 * time.Second
	}
}

// Deps are the dispatcher's collaborators.
type Deps struct {
	Log      pushlog.Log
	Routes   route.Table
	Gateways Gateways
	Store    Store
	Meter    metric.Meter
}

// Dispatcher is the dispatch role.
type Dispatcher struct {
	cfg  Config
	deps Deps
	log  *slog.Logger
	m    metrics
	now  func() time.Time
}

// New returns a dispatcher; Run starts it.
func New(cfg Config, deps Deps, logger *slog.Logger) (*Dispatcher, error) {
	cfg.setDefaults()
	if deps.Log == nil || deps.Routes == nil || deps.Gateways == nil || deps.Store == nil {
		return nil, errors.New("dispatcher: log, routes, gateways and store are required")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	meter := deps.Meter
	if meter == nil {
		meter = noop.NewMeterProvider().Meter("herald/dispatcher")
	}
	m, err := newMetrics(meter)
	if err != nil {
		return nil, err
	}
	return &Dispatcher{cfg: cfg, deps: deps, log: logger.With("role", "dispatcher"), m: m, now: time.Now}, nil
}

// Run consumes the push log until ctx ends. On the way out it finishes the
// batches in hand (storing what it cannot deliver) and commits.
func (d *Dispatcher) Run(ctx context.Context) error {
	cons, err := d.deps.Log.Consume(ctx, pushlog.TopicPush, d.cfg.Group)
	if err != nil {
		return fmt.Errorf("dispatcher: consume %s: %w", pushlog.TopicPush, err)
	}
	defer cons.Close()
	// Work in hand is finished with a context that outlives ctx.
	work := context.WithoutCancel(ctx)
	tr := newTracker()
	// Bound the records in flight, not the batches: a batch waiting for a
	// slow device's ack must not hold back batches behind it.
	sem := semaphore.NewWeighted(int64(d.cfg.MaxInFlight))
	var wg sync.WaitGroup

	commitDone := make(chan struct{})
	stopCommit := make(chan struct{})
	go func() {
		defer close(commitDone)
		t := time.NewTicker(d.cfg.CommitInterval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				d.commit(work, cons, tr)
			case <-stopCommit:
				return
			}
		}
	}()

	var runErr error
	for {
		recs, err := cons.Fetch(ctx)
		if err != nil {
			if ctx.Err() == nil {
				runErr = fmt.Errorf("dispatcher: fetch: %w", err)
			}
			break
		}
		if len(recs) == 0 {
			continue
		}
		tr.add(recs)
		n := min(int64(len(recs)), int64(d.cfg.MaxInFlight))
		// Still process this batch on shutdown: it is fetched and tracked.
		if err := sem.Acquire(work, n); err != nil {
			runErr = err
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer sem.Release(n)
			d.process(work, recs)
			tr.done(recs)
		}()
	}
	wg.Wait()
	close(stopCommit)
	<-commitDone
	d.commit(work, cons, tr)
	return runErr
}

func (d *Dispatcher) commit(ctx context.Context, cons pushlog.Consumer, tr *tracker) {
	recs := tr.committable()
	if len(recs) == 0 {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := cons.Commit(cctx, recs...); err != nil {
		d.log.Warn("commit push log", "err", err)
		tr.uncommit(recs)
	}
}

// job is one record in flight.
type job struct {
	rec route.Route // current route, if any
	env *internalv1.Envelope
	key string
}

// process settles every record of a batch: delivered, stored, expired or
// failed. It retries store failures until they succeed: a record is never
// marked done while its message is neither on record nor stored.
func (d *Dispatcher) process(ctx context.Context, recs []pushlog.Record) {
	start := d.now()
	jobs := make([]*job, 0, len(recs))
	for _, r := range recs {
		var env internalv1.Envelope
		if err := proto.Unmarshal(r.Value, &env); err != nil || env.GetPush().GetMessageId() == "" {
			d.log.Error("skipping undecodable push record", "partition", r.Partition, "offset", r.Offset, "err", err)
			continue
		}
		jobs = append(jobs, &job{env: &env, key: route.Key(env.GetAppId(), env.GetDeviceId())})
	}
	now := d.now()
	var live, expired []*job
	for _, j := range jobs {
		if !j.env.GetOnlineOnly() && j.env.GetExpiresAtMs() > 0 && now.UnixMilli() >= j.env.GetExpiresAtMs() {
			expired = append(expired, j)
			continue
		}
		live = append(live, j)
	}
	d.mark(ctx, expired, store.StateExpired)

	offline := d.deliver(ctx, live)
	d.settleOffline(ctx, offline)
	d.m.latency.Record(ctx, d.now().Sub(start).Seconds())
	d.m.processed.Add(ctx, int64(len(recs)))
}

// deliver looks routes up and delivers; it returns the jobs that were not acked.
func (d *Dispatcher) deliver(ctx context.Context, jobs []*job) (notAcked []*job) {
	if len(jobs) == 0 {
		return nil
	}
	routes := d.lookup(ctx, jobs)
	byNode := make(map[string][]*job)
	for _, j := range jobs {
		r, ok := routes[j.key]
		if !ok {
			notAcked = append(notAcked, j)
			continue
		}
		j.rec = r
		byNode[r.Node] = append(byNode[r.Node], j)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for node, nj := range byNode {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ds := make([]delivery.Delivery, len(nj))
			for i, j := range nj {
				ds[i] = delivery.Delivery{Device: j.key, ConnID: j.rec.ConnID, Envelope: j.env}
			}
			dctx, cancel := context.WithTimeout(ctx, d.cfg.DeliverTimeout)
			out, err := d.deps.Gateways.Deliver(dctx, node, ds)
			cancel()
			mu.Lock()
			defer mu.Unlock()
			if err != nil || len(out) != len(nj) {
				d.log.Warn("deliver to gateway failed; storing", "node", node, "n", len(nj), "err", err)
				notAcked = append(notAcked, nj...)
				return
			}
			for i, o := range out {
				if o != delivery.Acked {
					notAcked = append(notAcked, nj[i])
				}
			}
			d.m.acked.Add(ctx, int64(len(nj)-countNot(out)))
		}()
	}
	wg.Wait()
	return notAcked
}

func countNot(out []delivery.Outcome) int {
	n := 0
	for _, o := range out {
		if o != delivery.Acked {
			n++
		}
	}
	return n
}

// lookup resolves routes; a routing-table error is treated as "no route"
// (the messages are stored and drained on the device's next connect).
func (d *Dispatcher) lookup(ctx context.Context, jobs []*job) map[string]route.Route {
	keys := make([]string, 0, len(jobs))
	seen := make(map[string]bool, len(jobs))
	for _, j := range jobs {
		if !seen[j.key] {
			seen[j.key] = true
			keys = append(keys, j.key)
		}
	}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	routes, err := d.deps.Routes.Lookup(lctx, keys)
	if err != nil {
		d.log.Warn("route lookup failed; storing", "n", len(keys), "err", err)
		return nil
	}
	return routes
}

// settleOffline stores what was not acked: online-only messages expire,
// messages of deleted devices fail, the rest go to the inbox. Then it
// re-checks the routes of the stored devices: a device that connected
// meanwhile is told to drain, so nothing sits stored while its device is online.
func (d *Dispatcher) settleOffline(ctx context.Context, jobs []*job) {
	if len(jobs) == 0 {
		return
	}
	var onlineOnly, keep []*job
	for _, j := range jobs {
		if j.env.GetOnlineOnly() {
			onlineOnly = append(onlineOnly, j)
		} else {
			keep = append(keep, j)
		}
	}
	d.mark(ctx, onlineOnly, store.StateExpired)
	if len(keep) == 0 {
		return
	}
	exists := d.existing(ctx, keep)
	var gone, stored []*job
	for _, j := range keep {
		if !exists[j.key] {
			gone = append(gone, j)
			continue
		}
		d.put(ctx, j)
		stored = append(stored, j)
	}
	d.mark(ctx, gone, store.StateFailed)
	d.m.stored.Add(ctx, int64(len(stored)))
	if len(stored) == 0 {
		return
	}
	routes := d.lookup(ctx, stored)
	drained := make(map[string]bool)
	for _, j := range stored {
		r, ok := routes[j.key]
		if !ok || drained[j.key] {
			continue
		}
		drained[j.key] = true
		if err := d.deps.Gateways.Drain(ctx, r.Node, j.key, r.ConnID); err != nil {
			d.log.Warn("request drain", "device", j.key, "node", r.Node, "err", err)
		}
	}
}

// existing reports which job devices are still registered, retrying store errors.
func (d *Dispatcher) existing(ctx context.Context, jobs []*job) map[string]bool {
	byApp := make(map[string][]string)
	for _, j := range jobs {
		byApp[j.env.GetAppId()] = append(byApp[j.env.GetAppId()], j.env.GetDeviceId())
	}
	out := make(map[string]bool, len(jobs))
	for app, ids := range byApp {
		var got map[string]bool
		d.retry(ctx, "check devices", func(ctx context.Context) error {
			var err error
			got, err = d.deps.Store.DevicesExist(ctx, app, ids)
			return err
		})
		for id, ok := range got {
			if ok {
				out[route.Key(app, id)] = true
			}
		}
	}
	return out
}

func (d *Dispatcher) put(ctx context.Context, j *job) {
	body, err := proto.Marshal(j.env)
	if err != nil {
		d.log.Error("encode inbox entry", "err", err)
		return
	}
	e := store.InboxEntry{MessageID: j.env.GetPush().GetMessageId(), CollapseID: j.env.GetPush().GetCollapseId(), Body: body}
	if ms := j.env.GetExpiresAtMs(); ms > 0 {
		e.ExpiresAt = time.UnixMilli(ms)
	}
	d.retry(ctx, "store in inbox", func(ctx context.Context) error {
		_, err := d.deps.Store.Put(ctx, j.env.GetAppId(), j.env.GetDeviceId(), e)
		return err
	})
}

func (d *Dispatcher) mark(ctx context.Context, jobs []*job, state store.DeliveryState) {
	if len(jobs) == 0 {
		return
	}
	ts := make([]store.Transition, len(jobs))
	for i, j := range jobs {
		ts[i] = store.Transition{MessageID: j.env.GetPush().GetMessageId(), DeviceID: j.env.GetDeviceId(), State: state}
	}
	d.retry(ctx, "mark "+state.String(), func(ctx context.Context) error {
		return d.deps.Store.Mark(ctx, ts...)
	})
	if state == store.StateExpired {
		d.m.expired.Add(ctx, int64(len(jobs)))
	}
}

// retry runs fn until it succeeds, backing off up to 5 s between tries.
// Giving up would mean committing past a record that is nowhere: never.
func (d *Dispatcher) retry(ctx context.Context, what string, fn func(context.Context) error) {
	backoff := 50 * time.Millisecond
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := fn(cctx)
		cancel()
		if err == nil {
			return
		}
		d.log.Warn("store call failed; retrying", "op", what, "err", err, "retry_in", backoff)
		time.Sleep(backoff)
		backoff = min(2*backoff, 5*time.Second)
	}
}
