// Package dispatcher is Herald's message-dispatch role: it consumes the push
// log, looks the target devices up in the routing table in batches, hands
// each gateway its deliveries in one call, and stores in the device's inbox
// whatever was not acked. Priority-normal messages skip the delivery
// attempt: they are stored and the device's gateway drains them when the
// session next wakes. Group messages (tags, topic, all) are kept once in the
// app's topic log and handed to every gateway node, which pushes them to its
// matching sessions. It commits the log only past records that are acked,
// stored, expired, failed, recalled or fanned out, so a crash at any point
// redelivers (devices de-duplicate) and never loses a message.
package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"golang.org/x/sync/semaphore"
	"google.golang.org/protobuf/proto"

	"github.com/heraldpush/herald/pkg/delivery"
	"github.com/heraldpush/herald/pkg/envelope/internalv1"
	"github.com/heraldpush/herald/pkg/pushlog"
	"github.com/heraldpush/herald/pkg/receipt"
	"github.com/heraldpush/herald/pkg/route"
	"github.com/heraldpush/herald/pkg/store"
)

// Gateways reaches the gateway nodes: in one process through Go calls, in a
// cluster through gRPC.
type Gateways interface {
	// Deliver hands a node its deliveries and returns one outcome each.
	Deliver(ctx context.Context, node string, ds []delivery.Delivery) ([]delivery.Outcome, error)
	// Drain asks the node to push the device's inbox to session connID.
	// With lazy set the node drains at the session's next inbound frame
	// (PING, ACK, anything) or after its normal-priority delay, whichever
	// comes first ("deliver when awake", priority NORMAL).
	Drain(ctx context.Context, node, device string, connID uint64, lazy bool) error
	// Nodes lists the gateway nodes currently up.
	Nodes() []string
	// Broadcast hands a node group messages (and recalls of them) in log
	// order; the node pushes them to its matching sessions (each session's
	// plain pushes of the call in one write) and returns how many sessions
	// each matched. A node answers a message it was handed before with its
	// first answer and does not push it again, so a failed call can be
	// made again whole.
	Broadcast(ctx context.Context, node string, envs []*internalv1.Envelope) (matched []int64, err error)
}

// Store is the part of the store the dispatcher uses.
type Store interface {
	DevicesExist(ctx context.Context, appID string, deviceIDs []string) (map[string]bool, error)
	Put(ctx context.Context, appID, deviceID string, e store.InboxEntry) (collapsed string, err error)
	Delete(ctx context.Context, appID, deviceID string, messageIDs ...string) error
	Mark(ctx context.Context, ts ...store.Transition) error
	MessageStates(ctx context.Context, messageIDs []string) (map[string]store.MessageState, error)
	PutBroadcast(ctx context.Context, appID string, b store.Broadcast) error
	RecallBroadcast(ctx context.Context, appID, messageID string) error
}

// Config tunes the dispatcher.
type Config struct {
	Group          string        // consumer group, default "dispatcher"
	CommitInterval time.Duration // default 100ms
	MaxInFlight    int           // records being delivered or settled at once, default 32768
	DeliverTimeout time.Duration // bound on one gateway call, default 15s
	// BroadcastRetry is how long a failing gateway node is retried with one
	// group message before it is skipped (its devices catch up from the
	// topic log when they reconnect); default 30s.
	BroadcastRetry time.Duration
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
	if c.BroadcastRetry <= 0 {
		c.BroadcastRetry = 30 * time.Second
	}
}

// Deps are the dispatcher's collaborators.
type Deps struct {
	Log      pushlog.Log
	Routes   route.Table
	Gateways Gateways
	Store    Store
	Meter    metric.Meter
	// Receipts gets an "expired" or "failed" receipt per (message, device)
	// the dispatcher marks so; nil emits none.
	Receipts *receipt.Emitter
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
			d.process(work, ctx.Done(), recs)
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
	val []byte // the record value: the encoded envelope
	// lazy: priority normal, stored without a delivery attempt; the device
	// gets it when its session next wakes (a lazy drain).
	lazy bool
}

func (j *job) id() string { return j.env.GetPush().GetMessageId() }

// process settles every record of a batch: delivered, stored, expired,
// failed, recalled, or (group messages) kept in the topic log and handed to
// every gateway. It retries store failures until they succeed: a record is
// never marked done while its message is neither on record nor stored.
// stopping closes when the dispatcher is asked to stop: failing gateways
// are then no longer retried.
func (d *Dispatcher) process(ctx context.Context, stopping <-chan struct{}, recs []pushlog.Record) {
	start := d.now()
	var unicast, group []*job
	for _, r := range recs {
		var env internalv1.Envelope
		if err := proto.Unmarshal(r.Value, &env); err != nil || env.GetPush().GetMessageId() == "" {
			d.log.Error("skipping undecodable push record", "partition", r.Partition, "offset", r.Offset, "err", err)
			continue
		}
		j := &job{env: &env, val: r.Value}
		if env.GetAudience() != nil {
			group = append(group, j)
			continue
		}
		j.key = route.Key(env.GetAppId(), env.GetDeviceId())
		unicast = append(unicast, j)
	}
	now := d.now()
	var live, expired []*job
	for _, j := range unicast {
		if isExpired(j.env, now) {
			expired = append(expired, j)
			continue
		}
		live = append(live, j)
	}
	group = slices.DeleteFunc(group, func(j *job) bool { return isExpired(j.env, now) })
	d.mark(ctx, expired, store.StateExpired)

	// One state lookup for the records that need one: group messages (a
	// cancelled or recalled one is not sent) and scheduled unicast records
	// (the message may have been cancelled after the scheduler fired it).
	var check []*job
	for _, j := range live {
		if j.env.GetScheduled() {
			check = append(check, j)
		}
	}
	check = append(check, group...)
	states := d.states(ctx, check)
	var cancelled []*job
	live = slices.DeleteFunc(live, func(j *job) bool {
		if j.env.GetScheduled() && stopped(states[j.id()]) {
			cancelled = append(cancelled, j)
			return true
		}
		return false
	})
	group = slices.DeleteFunc(group, func(j *job) bool { return !j.env.GetRecall() && stopped(states[j.id()]) })
	// A cancelled message's targets are recalled, not failed: nothing went
	// wrong with the devices.
	d.mark(ctx, cancelled, store.StateRecalled)

	var wg sync.WaitGroup
	if len(group) > 0 {
		wg.Go(func() { d.fanOut(ctx, stopping, group) })
	}
	var high, normal []*job
	for _, j := range live {
		if j.env.GetPriority() == internalv1.Priority_PRIORITY_NORMAL && !j.env.GetOnlineOnly() {
			j.lazy = true
			normal = append(normal, j)
			continue
		}
		high = append(high, j)
	}
	offline := d.deliver(ctx, high)
	d.settleOffline(ctx, append(offline, normal...))
	wg.Wait()
	d.m.latency.Record(ctx, d.now().Sub(start).Seconds())
	d.m.processed.Add(ctx, int64(len(recs)))
}

// isExpired: the message's TTL passed. Online-only messages carry no expiry.
func isExpired(env *internalv1.Envelope, now time.Time) bool {
	return !env.GetOnlineOnly() && env.GetExpiresAtMs() > 0 && now.UnixMilli() >= env.GetExpiresAtMs()
}

// stopped: the message must not be sent (any more).
func stopped(s store.MessageState) bool {
	return s == store.MessageCancelled || s == store.MessageRecalled
}

// states looks the jobs' message states up, retrying store errors. Absent
// messages are missing from the map (and count as active).
func (d *Dispatcher) states(ctx context.Context, jobs []*job) map[string]store.MessageState {
	if len(jobs) == 0 {
		return nil
	}
	ids := make([]string, 0, len(jobs))
	seen := make(map[string]bool, len(jobs))
	for _, j := range jobs {
		if !seen[j.id()] {
			seen[j.id()] = true
			ids = append(ids, j.id())
		}
	}
	var got map[string]store.MessageState
	d.retry(ctx, "message states", func(ctx context.Context) error {
		var err error
		got, err = d.deps.Store.MessageStates(ctx, ids)
		return err
	})
	return got
}

// fanOut sends group messages (and recalls of them): each is first kept in
// its app's topic log (the replay source of devices that connect later),
// then handed to every gateway node.
func (d *Dispatcher) fanOut(ctx context.Context, stopping <-chan struct{}, jobs []*job) {
	var kept []*job
	for _, j := range jobs {
		if j.env.GetRecall() || j.env.GetOnlineOnly() {
			continue
		}
		b := store.Broadcast{MessageID: j.id(), Body: j.val}
		if ms := j.env.GetExpiresAtMs(); ms > 0 {
			b.ExpiresAt = time.UnixMilli(ms)
		}
		d.retry(ctx, "store broadcast", func(ctx context.Context) error {
			return d.deps.Store.PutBroadcast(ctx, j.env.GetAppId(), b)
		})
		kept = append(kept, j)
	}
	// A recall that raced with the store above found nothing to flag: look
	// again now that the messages are kept, and flag those recalled since.
	states := d.states(ctx, kept)
	recalled := make(map[*job]bool)
	for _, j := range kept {
		if states[j.id()] == store.MessageRecalled {
			recalled[j] = true
			d.retry(ctx, "recall broadcast", func(ctx context.Context) error {
				return d.deps.Store.RecallBroadcast(ctx, j.env.GetAppId(), j.id())
			})
		}
	}
	jobs = slices.DeleteFunc(jobs, func(j *job) bool { return recalled[j] })
	if len(jobs) == 0 {
		return
	}
	var wg sync.WaitGroup
	for _, node := range d.deps.Gateways.Nodes() {
		wg.Go(func() { d.broadcastTo(ctx, stopping, node, jobs) })
	}
	wg.Wait()
	d.m.broadcasts.Add(ctx, int64(len(jobs)))
}

// Bounds on one Gateways.Broadcast call; a batch with more group messages
// is handed over in several calls, in order.
const (
	maxBroadcastBatch      = 64
	maxBroadcastBatchBytes = 4 << 20
)

// broadcastTo hands one node the group messages in order, in calls of up
// to maxBroadcastBatch messages. A node that fails is retried with backoff
// for up to Config.BroadcastRetry, then skipped for the rest of the batch;
// a node that leaves is skipped at once. Either way its devices replay the
// messages from the topic log when they reconnect.
func (d *Dispatcher) broadcastTo(ctx context.Context, stopping <-chan struct{}, node string, jobs []*job) {
	var giveUp time.Time // set at the first failure
	for from := 0; from < len(jobs); {
		to, size := from, 0
		for to < len(jobs) && to-from < maxBroadcastBatch && (to == from || size+len(jobs[to].val) <= maxBroadcastBatchBytes) {
			size += len(jobs[to].val)
			to++
		}
		envs := make([]*internalv1.Envelope, to-from)
		for i, j := range jobs[from:to] {
			envs[i] = j.env
		}
		backoff := 100 * time.Millisecond
		for {
			bctx, cancel := context.WithTimeout(ctx, d.cfg.DeliverTimeout)
			matched, err := d.deps.Gateways.Broadcast(bctx, node, envs)
			cancel()
			if err == nil && len(matched) != len(envs) {
				err = fmt.Errorf("%d answers for %d messages", len(matched), len(envs))
			}
			if err == nil {
				var n int64
				for _, m := range matched {
					n += m
				}
				d.m.matched.Add(ctx, n)
				break
			}
			now := d.now()
			if giveUp.IsZero() {
				giveUp = now.Add(d.cfg.BroadcastRetry)
			}
			if now.After(giveUp) || !slices.Contains(d.deps.Gateways.Nodes(), node) || isClosed(stopping) {
				d.log.Warn("gateway skipped for group messages", "node", node, "messages", len(jobs)-from, "err", err)
				d.m.skipped.Add(ctx, int64(len(jobs)-from))
				return
			}
			d.log.Warn("broadcast to gateway failed; retrying", "node", node, "messages", len(envs), "first", envs[0].GetPush().GetMessageId(), "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-stopping:
			}
			backoff = min(2*backoff, 5*time.Second)
		}
		from = to
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
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

// settleOffline stores what was not acked (and priority-normal messages,
// never tried): online-only messages expire, recalled messages are marked
// so, messages of deleted devices fail, the rest go to the inbox. Then it
// re-checks the routes of the stored devices: a device that connected
// meanwhile is told to drain (lazily when all it got is priority normal),
// so nothing sits stored while its device is online.
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
	// Recalled (or cancelled) messages are not stored.
	states := d.states(ctx, keep)
	var recalled []*job
	keep = slices.DeleteFunc(keep, func(j *job) bool {
		if stopped(states[j.id()]) {
			recalled = append(recalled, j)
			return true
		}
		return false
	})
	d.mark(ctx, recalled, store.StateRecalled)
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
	stored = d.unstoreRecalled(ctx, stored)
	if len(stored) == 0 {
		return
	}
	routes := d.lookup(ctx, stored)
	lazy := make(map[string]bool)
	for _, j := range stored {
		if _, ok := routes[j.key]; !ok {
			continue
		}
		if l, seen := lazy[j.key]; !seen || l {
			lazy[j.key] = j.lazy
		}
	}
	for key, l := range lazy {
		r := routes[key]
		if err := d.deps.Gateways.Drain(ctx, r.Node, key, r.ConnID, l); err != nil {
			d.log.Warn("request drain", "device", key, "node", r.Node, "lazy", l, "err", err)
		}
	}
}

// unstoreRecalled closes the race with a recall: the api flags the message
// recalled, then deletes its inbox entries. An entry stored after that
// deletion is found here (the flag is set by then) and deleted. It returns
// the stored jobs that remain.
func (d *Dispatcher) unstoreRecalled(ctx context.Context, stored []*job) []*job {
	if len(stored) == 0 {
		return nil
	}
	states := d.states(ctx, stored)
	var recalled []*job
	stored = slices.DeleteFunc(stored, func(j *job) bool {
		if stopped(states[j.id()]) {
			recalled = append(recalled, j)
			return true
		}
		return false
	})
	for _, j := range recalled {
		d.retry(ctx, "delete recalled", func(ctx context.Context) error {
			return d.deps.Store.Delete(ctx, j.env.GetAppId(), j.env.GetDeviceId(), j.id())
		})
	}
	d.mark(ctx, recalled, store.StateRecalled)
	return stored
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
	e := store.InboxEntry{MessageID: j.id(), CollapseID: j.env.GetPush().GetCollapseId(), Body: j.val}
	if ms := j.env.GetExpiresAtMs(); ms > 0 {
		e.ExpiresAt = time.UnixMilli(ms)
	}
	d.retry(ctx, "store in inbox", func(ctx context.Context) error {
		_, err := d.deps.Store.Put(ctx, j.env.GetAppId(), j.env.GetDeviceId(), e)
		return err
	})
}

// mark records a terminal state for each job's (message, device) and emits
// the matching receipts.
func (d *Dispatcher) mark(ctx context.Context, jobs []*job, state store.DeliveryState) {
	if len(jobs) == 0 {
		return
	}
	ts := make([]store.Transition, len(jobs))
	for i, j := range jobs {
		ts[i] = store.Transition{MessageID: j.id(), DeviceID: j.env.GetDeviceId(), State: state}
	}
	d.retry(ctx, "mark "+state.String(), func(ctx context.Context) error {
		return d.deps.Store.Mark(ctx, ts...)
	})
	switch state {
	case store.StateExpired:
		d.m.expired.Add(ctx, int64(len(jobs)))
		d.emit(jobs, receipt.EventExpired)
	case store.StateFailed:
		d.emit(jobs, receipt.EventFailed)
	case store.StateRecalled:
		d.m.recalled.Add(ctx, int64(len(jobs)))
	}
}

func (d *Dispatcher) emit(jobs []*job, event string) {
	if d.deps.Receipts == nil {
		return
	}
	at := d.now().UnixMilli()
	for _, j := range jobs {
		d.deps.Receipts.Emit(receipt.Receipt{
			AppID: j.env.GetAppId(), MessageID: j.id(), DeviceID: j.env.GetDeviceId(),
			Event: event, Count: 1, AtMS: at,
		})
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
