package worker

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/tmc-runner/tmc-runner/broker"
	"github.com/tmc-runner/tmc-runner/follow"
	"github.com/tmc-runner/tmc-runner/messages"
	"github.com/tmc-runner/tmc-runner/talend"
)

// Talend is what the worker needs from the Talend client.
type Talend interface {
	RunTask(ctx context.Context, run talend.TaskRun) (string, error)
	RunPlan(ctx context.Context, planID string) (string, error)
	// Probe makes a cheap read, used to close an open breaker.
	Probe(ctx context.Context) error
	// StopExecution stops a running task execution (cancellation).
	StopExecution(ctx context.Context, executionID string) error
	// ListExecutionsOf lists one executable's executions (reconciliation).
	ListExecutionsOf(ctx context.Context, plan bool, executable string, from, to time.Time, offset, limit int) (talend.ExecutionPage, error)
}

// Follower registers accepted executions to be followed to their end.
type Follower interface {
	Track(ctx context.Context, rec follow.Record) error
}

// Slots is the fleet's cap on running executions.
type Slots interface {
	Full() bool
	Acquire(ctx context.Context, requestID string) (string, error)
	Release(ctx context.Context, slot string) error
}

// Events is what the worker needs to write to JetStream.
type Events interface {
	Event(ctx context.Context, ev *messages.Event) error
	FindEvent(ctx context.Context, route, requestID string, t messages.EventType) (*messages.Event, error)
	DeadLetter(ctx context.Context, orig broker.Original, route, requestID, reason string) error
	ParkTimer(ctx context.Context, orig broker.Original, route, requestID string, at time.Time) error
	Resubmit(ctx context.Context, due broker.Original) error
}

// AttemptCounter counts request-specific failures durably.
type AttemptCounter interface {
	Increment(ctx context.Context, requestID string) (int, error)
}

// Fetcher is a pull consumer (jetstream.Consumer satisfies it).
type Fetcher interface {
	Fetch(batch int, opts ...jetstream.FetchOpt) (jetstream.MessageBatch, error)
}

// Config tunes a Worker; zero values mean the defaults noted.
type Config struct {
	Concurrency   int           // parallel messages (default 64)
	AckWait       time.Duration // of the consumer; in-progress every half of it (default 30s)
	ShutdownGrace time.Duration // in-flight work may finish within it (default 20s)
	MaxAttempts   int           // request-specific failures before giving up (default 5)
	MaxAge        time.Duration // a request older than this ends `failed` (0: no limit)
	BackoffMin    time.Duration // first nak delay (default 1s)
	BackoffMax    time.Duration // largest nak delay (default 5m)
	FetchWait     time.Duration // longest wait of one pull (default 1s)
	// Prefetch is how many fetched messages may wait for a handler
	// (default Concurrency/4, at least 1; negative: none).
	Prefetch int
	// AwaitResult is what a request without awaitResult gets: follow its
	// execution to a result event (true) or end at accepted (false).
	AwaitResult bool
	// FollowDeadline bounds a follow-up when the request sets no timeout;
	// FollowMargin is added to the request's timeout (defaults 24h, 10m).
	FollowDeadline, FollowMargin time.Duration
	// ClaimHeartbeat is how often a claim holder shows it is alive during a
	// call; a claim without a heartbeat for ClaimStale is a dead holder's
	// (defaults 5s, 20s).
	ClaimHeartbeat, ClaimStale time.Duration
	// ReconcileSettle is how long Talend's lists may take to show a run
	// just started; ClockSkew widens the searched window by the clocks'
	// possible disagreement; ReconcileTimeout bounds how long Talend may
	// not answer before the request ends `unknown` (defaults 10s, 5s, 10m).
	ReconcileSettle, ClockSkew, ReconcileTimeout time.Duration
	// CallTimeout is the Talend client's call timeout: a call whose answer
	// was lost may have reached Talend until then (default 30s).
	CallTimeout time.Duration
	// AdmitWithin bounds how long after its call record's time (the
	// claim's CallFrom) a run call may still be admitted by the fleet's
	// rate budget and get its token (default CallTimeout). One that cannot
	// is not sent, and the request is retried with a fresh claim and
	// record. Reconciliation relies on it: a run a call started appears at
	// most AdmitWithin + CallTimeout after its record's time (callSpan).
	AdmitWithin time.Duration
	// FleetUserID is the service account's Talend userId, when known;
	// otherwise it is learnt from executions the fleet owns.
	FleetUserID string
	// ReadyNeedsBreakerClosed makes an open breaker fail readiness.
	ReadyNeedsBreakerClosed bool
	StreamCreated           time.Time // of the request stream, for fallback requestIds
	Decoder                 messages.Decoder
	Topology                broker.Topology
	Logger                  *slog.Logger
	Now                     func() time.Time
	// TracerProvider and MeterProvider receive the worker's spans and
	// metrics (nil: none).
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
}

// Deps are the parts a Worker drives.
type Deps struct {
	Talend   Talend
	Events   Events
	Attempts AttemptCounter
	Claims   Claims   // required: one request, one run
	Follower Follower // nil: nothing is followed
	Slots    Slots    // nil: no running cap
	Requests Fetcher  // the shared durable consumer of TMC_RUNS
	Timers   Fetcher  // the durable consumer of due timers
	// BreakerOpen and CredentialsValid gate fetching; Connected feeds
	// readiness. Nil means "fine".
	BreakerOpen      func() bool
	CredentialsValid func() bool
	Connected        func() bool
	// Pending reports the request consumer's backlog (messages not yet
	// delivered) for the consumer-pending gauge; nil: not reported.
	Pending func(ctx context.Context) (uint64, error)
}

// Worker processes run requests. Create it with New, start it with Run.
type Worker struct {
	cfg     Config
	deps    Deps
	log     *slog.Logger
	now     func() time.Time
	tracer  trace.Tracer
	metrics *instruments

	handlers     sync.WaitGroup // the handler pool; Run waits for it
	running      atomic.Bool
	shuttingDown atomic.Bool
	pausedFor    atomic.Value // string: why fetching is paused, "" if not
}

// New returns a worker.
func New(cfg Config, deps Deps) (*Worker, error) {
	if deps.Talend == nil || deps.Events == nil || deps.Requests == nil || deps.Claims == nil {
		return nil, errors.New("worker: Talend, Events, Requests and Claims are required")
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 64
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = 30 * time.Second
	}
	if cfg.ShutdownGrace <= 0 {
		cfg.ShutdownGrace = 20 * time.Second
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 5
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = time.Second
	}
	if cfg.BackoffMax < cfg.BackoffMin {
		cfg.BackoffMax = max(5*time.Minute, cfg.BackoffMin)
	}
	if cfg.ClaimHeartbeat <= 0 {
		cfg.ClaimHeartbeat = 5 * time.Second
	}
	if cfg.ClaimStale < 2*cfg.ClaimHeartbeat {
		cfg.ClaimStale = 4 * cfg.ClaimHeartbeat
	}
	if cfg.ReconcileSettle <= 0 {
		cfg.ReconcileSettle = 10 * time.Second
	}
	if cfg.ClockSkew <= 0 {
		cfg.ClockSkew = 5 * time.Second
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 30 * time.Second
	}
	if cfg.AdmitWithin <= 0 {
		cfg.AdmitWithin = cfg.CallTimeout
	}
	if cfg.ReconcileTimeout <= 0 {
		cfg.ReconcileTimeout = 10 * time.Minute
	}
	if cfg.FollowDeadline <= 0 {
		cfg.FollowDeadline = 24 * time.Hour
	}
	if cfg.FollowMargin <= 0 {
		cfg.FollowMargin = 10 * time.Minute
	}
	if cfg.FetchWait <= 0 {
		cfg.FetchWait = time.Second
	}
	cfg.Topology = cfg.Topology.Defaults()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	always := func() bool { return true }
	if deps.CredentialsValid == nil {
		deps.CredentialsValid = always
	}
	if deps.Connected == nil {
		deps.Connected = always
	}
	if deps.BreakerOpen == nil {
		deps.BreakerOpen = func() bool { return false }
	}
	if cfg.TracerProvider == nil {
		cfg.TracerProvider = tracenoop.NewTracerProvider()
	}
	w := &Worker{cfg: cfg, deps: deps, log: cfg.Logger, now: cfg.Now,
		tracer: cfg.TracerProvider.Tracer(scope)}
	w.metrics = newInstruments(cfg.MeterProvider, deps.Pending)
	w.pausedFor.Store("")
	return w, nil
}

// Ready returns nil when the worker can take work: running, connected to
// NATS, credentials accepted, not shutting down (and, if configured, the
// breaker closed).
func (w *Worker) Ready() error {
	switch {
	case w.shuttingDown.Load():
		return errors.New("shutting down")
	case !w.running.Load():
		return errors.New("consumer not bound yet")
	case !w.deps.Connected():
		return errors.New("not connected to NATS")
	case !w.deps.CredentialsValid():
		return errors.New("Talend credentials rejected by the token endpoint")
	case w.cfg.ReadyNeedsBreakerClosed && w.deps.BreakerOpen():
		return errors.New("Talend circuit breaker open")
	}
	return nil
}

// Run fetches and processes requests until ctx ends, then shuts down
// gracefully: it stops fetching, lets in-flight messages finish within the
// grace period, naks what is left at once, and returns when everything it
// started has ended.
func (w *Worker) Run(ctx context.Context) error {
	// Work outlives ctx by the grace period: a Talend call already sent must
	// get its answer and event if it can.
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()

	var helpers sync.WaitGroup
	helpers.Go(func() { w.probeBreaker(ctx) })
	if w.deps.Timers != nil {
		helpers.Go(func() { w.moveDueTimers(ctx) })
	}

	w.running.Store(true)
	w.log.Info("worker started", "concurrency", w.cfg.Concurrency, "consumer", w.cfg.Topology.Consumer)
	w.fetchLoop(ctx, workCtx)
	w.shuttingDown.Store(true)

	done := make(chan struct{})
	go func() { w.handlers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(w.cfg.ShutdownGrace):
		w.log.Warn("shutdown grace period over, giving back unfinished messages", "grace", w.cfg.ShutdownGrace)
		cancelWork()
		<-done
	}
	helpers.Wait()
	w.running.Store(false)
	w.log.Info("worker stopped")
	return nil
}

// fetched is a message the fetch loop holds for a handler; its in-progress
// signals run from the moment it is fetched, not only once a handler takes
// it.
type fetched struct {
	msg       jetstream.Msg
	stopAlive func()
}

// handleEach handles messages from work until it is closed, freeing a
// slot after each. Once stopping is done (shutdown began), messages still
// waiting are given back at once rather than started.
func (w *Worker) handleEach(stopping, ctx context.Context, work <-chan fetched, slots <-chan struct{}, idle *atomic.Int32) {
	for {
		idle.Add(1)
		f, ok := <-work
		idle.Add(-1)
		if !ok {
			return
		}
		if stopping.Err() != nil {
			f.stopAlive()
			_ = f.msg.Nak()
		} else {
			w.handle(ctx, f.msg, f.stopAlive)
		}
		w.metrics.inflight.Add(context.Background(), -1)
		<-slots
	}
}

// prefetch is how many messages the worker may hold beyond those being
// handled: a handler that finishes takes the next message at once instead
// of waiting a pull's round trip for it.
func (w *Worker) prefetch() int {
	switch {
	case w.cfg.Prefetch < 0:
		return 0
	case w.cfg.Prefetch > 0:
		return w.cfg.Prefetch
	}
	return max(1, w.cfg.Concurrency/4)
}

// fetchLoop pulls at most as many messages as there are free slots:
// Concurrency being handled plus Prefetch waiting for a handler. The next
// pull goes out while the handlers still have messages waiting, so a
// pull's round trip does not leave slots idle; what waits is bounded, and
// keeps its message alive with in-progress signals.
//
// Messages go to a pool of long-lived handler goroutines (at most
// Concurrency, started as needed) rather than a goroutine each: a handler's
// stack has grown once to what the Talend call, the spans and the NATS
// writes need, instead of growing again for every message. The pool ends
// when the loop returns and the handlers finish what they hold.
func (w *Worker) fetchLoop(ctx, workCtx context.Context) {
	prefetch := w.prefetch()
	slots := make(chan struct{}, w.cfg.Concurrency+prefetch)
	work := make(chan fetched, prefetch)
	defer close(work)
	var idle atomic.Int32
	handlers := 0
	for ctx.Err() == nil {
		if reason := w.pauseReason(); reason != "" {
			if w.pausedFor.Swap(reason) != reason {
				w.log.Warn("fetching paused", "reason", reason)
			}
			sleep(ctx, 250*time.Millisecond)
			continue
		}
		if w.pausedFor.Swap("") != "" {
			w.log.Info("fetching resumed")
		}
		// One free slot is needed; take every other free one too, so a busy
		// worker pulls in batches rather than one message per round trip.
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		n := 1
		for n < cap(slots) {
			select {
			case slots <- struct{}{}:
				n++
				continue
			default:
			}
			break
		}
		batch, err := w.deps.Requests.Fetch(n, jetstream.FetchMaxWait(w.cfg.FetchWait))
		if err != nil {
			releaseSlots(slots, n)
			w.log.Warn("fetch failed", "error", err)
			sleep(ctx, 500*time.Millisecond)
			continue
		}
		got := 0
		for msg := range batch.Messages() {
			got++
			if ctx.Err() != nil {
				// Shutdown began while this pull was open: give it back now
				// rather than letting it wait out its ack wait.
				_ = msg.Nak()
				<-slots
				continue
			}
			w.metrics.inflight.Add(ctx, 1)
			if handlers < w.cfg.Concurrency && idle.Load() == 0 {
				handlers++
				w.handlers.Go(func() { w.handleEach(ctx, workCtx, work, slots, &idle) })
			}
			// Never blocks for long: a slot was free for this message, so a
			// handler or a place in the buffer is.
			work <- fetched{msg: msg, stopAlive: w.keepAlive(msg)}
		}
		releaseSlots(slots, n-got)
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, nats.ErrTimeout) {
			w.log.Debug("fetch ended", "error", err)
		}
	}
}

func (w *Worker) pauseReason() string {
	switch {
	case !w.deps.CredentialsValid():
		return "Talend credentials rejected"
	case w.deps.BreakerOpen():
		return "Talend circuit breaker open"
	case w.deps.Slots != nil && w.deps.Slots.Full():
		return "running cap reached"
	}
	return ""
}

// probeBreaker closes an open breaker with cheap reads instead of messages.
func (w *Worker) probeBreaker(ctx context.Context) {
	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		if !w.deps.BreakerOpen() || !w.deps.CredentialsValid() {
			continue
		}
		probeCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := w.deps.Talend.Probe(probeCtx)
		cancel()
		if err == nil {
			w.log.Info("Talend probe succeeded")
		}
	}
}

func releaseSlots(slots chan struct{}, n int) {
	for range n {
		<-slots
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
