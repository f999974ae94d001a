package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/internal/testenv"
	"github.com/tmc-runner/tmc-runner/messages"
	"github.com/tmc-runner/tmc-runner/talendsim"
)

const (
	runsStream   = "TMC_RUNS"
	eventsStream = "TMC_EVENTS"
	consumerName = "tmc-runner"
	subject      = "tmc.runs.request.default"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// counters of the faults injected.
type counters struct {
	kills, killsDuringCalls, killsAfterStart, serverRestarts, bursts5xx, storms429, latencySpikes, tokenOutages atomic.Int64
	publishRetries                                                                                              atomic.Int64
}

// suite is one chaos run: the processes, the simulator, the suite's record.
type suite struct {
	t       *testing.T
	dir     string
	nats    *natsProc
	sim     *talendsim.Simulator
	book    *execBook
	fronts  []*front
	workers []*workerProc
	faults  counters
	nc      *nats.Conn
	js      jetstream.JetStream
	events  *eventLog
	killMu  sync.Mutex
}

// TestChaos is the chaos suite (see doc.go). CHAOS_REQUESTS sets the size
// (default 1,000: the variant inside `make test`; `make chaos` runs 10,000),
// CHAOS_SEED replays a schedule, CHAOS_DIR keeps the logs, CHAOS_WORKERS,
// CHAOS_SHARED (percent of requests on the shared executable),
// CHAOS_RATE_LIMIT and CHAOS_LOG_LEVEL tune the run.
//
// Known finding (2026-12-04, CHAOS_REQUESTS=3000, seed 1796405434986711284):
// reconciliation can give one request's run to another request of the same
// executable. Both chaos-00953 and chaos-00550 (executable shared-task) had
// their run call in flight on worker 2 when it was killed (17:30:48.52);
// only chaos-00953's call reached Talend (execution 8310ac00…, triggered
// 17:30:48.569, rid=chaos-00953). Then:
//
//	17:30:55.314 worker 0: chaos-00550 "request accepted" executionId 8310ac00… reason "reconciled: adopted"
//	17:30:55.841 Talend: execution f28b6f62… of shared-task, rid=chaos-00953
//	17:30:55.956 worker 2: chaos-00953 "request accepted" executionId f28b6f62… reason "reconciled: not started"
//
// chaos-00550 never ran but reports chaos-00953's run; chaos-00953 ran
// twice. The rule "exactly one unowned candidate: adopt it" ignores other
// requests of the same executable whose claims are just as uncertain over
// an overlapping window. The suite counts this as duplicated and fails; it
// recurs only on shared executables (CHAOS_SHARED=0 leaves them out).
//
// Known finding 2 (2026-12-04, CHAOS_REQUESTS=3000, seed
// 1796405965059719053): a request on its own executable ran twice after a
// nats-server restart and a kill. chaos-01221 (task-01221):
//
//	≤17:39:38.00 worker 1: claim taken, call window opened, POST /processing/executions sent
//	17:39:38.003 nats-server SIGKILLed (down 1.03s): heartbeats and the owner write cannot be stored
//	17:39:38.495 Talend: execution edc07f39… started (rid=chaos-01221); worker 1 gets the answer,
//	             its owner write (Claims.Own) waits on the dead connection, no log line
//	17:39:42.266 worker 1 SIGKILLed, owner and accepted event never stored
//	17:39:45.296 Talend: execution eaf4f239… started by worker 0 (rid=chaos-01221)
//	17:39:45.387 worker 0: "request accepted" executionId eaf4f239… reason "reconciled: not started"
//
// reconcile bounds the window by the last *stored* heartbeat (+ skew +
// settle); the call went on after the heartbeats stopped being stored, so
// the run it started fell outside the window and was taken for "not
// started". The window's end must cover the whole call: at least
// CallFrom + TMC_TALEND_TIMEOUT (+ skew) while CallTo is unknown — and,
// since a call may also wait for the fleet's budget first (admitted within
// another TMC_TALEND_TIMEOUT or not sent), CallFrom + twice that.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos suite: skipped with -short")
	}
	n := envInt("CHAOS_REQUESTS", 1000)
	nWorkers := envInt("CHAOS_WORKERS", 3)
	seed := uint64(time.Now().UnixNano())
	if v, err := strconv.ParseUint(os.Getenv("CHAOS_SEED"), 10, 64); err == nil {
		seed = v
	}
	// Publishing lasts at least 30s (room for the faults), at most 150/s.
	window := max(30*time.Second, time.Duration(n)*time.Second/150)
	t.Logf("chaos: %d requests over %s, %d workers, seed %d (replay the schedule with CHAOS_SEED=%d)", n, window, nWorkers, seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0x7c3a05))
	sharedPct := 10 // CHAOS_SHARED=0 takes the shared executable out
	if v, err := strconv.Atoi(os.Getenv("CHAOS_SHARED")); err == nil && v >= 0 && v <= 100 {
		sharedPct = v
	}
	reqs := makeRequests(rng, n, float64(sharedPct)/100)
	plan := makePlan(rng, window, nWorkers)

	s := newSuite(t, nWorkers)
	began := time.Now()

	// Publisher and chaos driver run together over the window.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { s.publish(ctx, reqs, window) })
	wg.Go(func() { s.drive(ctx, plan) })
	stopPoll := make(chan struct{})
	var pollWG sync.WaitGroup
	pollWG.Go(func() {
		for {
			select {
			case <-stopPoll:
				return
			case <-time.After(time.Second):
			}
			if err := s.events.poll(ctx); err != nil {
				continue
			}
		}
	})
	wg.Wait()
	published := time.Since(began)
	t.Logf("publishing and chaos done after %s", published.Round(time.Millisecond))

	// Calm: no more faults; every slot has a running worker.
	s.calm()
	for _, w := range s.workers {
		if !w.running() {
			if err := w.start(); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Every request must end, then nothing may stay pending.
	deadline := time.Now().Add(2*time.Minute + time.Duration(n)*5*time.Millisecond)
	lastLog := time.Now()
	for {
		if err := s.events.poll(ctx); err == nil {
			ended := s.events.endedCount(reqs)
			if ended == len(reqs) {
				break
			}
			if time.Since(lastLog) > 10*time.Second {
				t.Logf("waiting: %d of %d requests ended", ended, len(reqs))
				lastLog = time.Now()
			}
		}
		if time.Now().After(deadline) {
			t.Errorf("not every request ended within the deadline")
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	drainErr := s.waitDrained(ctx, 90*time.Second)
	close(stopPoll)
	pollWG.Wait()
	// A last, complete read of the events, then the verdict.
	time.Sleep(time.Second)
	if err := s.events.pollAll(ctx); err != nil {
		t.Fatalf("reading %s: %v", eventsStream, err)
	}
	elapsed := time.Since(began)
	v := s.judge(reqs)
	if drainErr != nil {
		t.Error(drainErr)
	}
	s.report(v, reqs, elapsed)
}

func newSuite(t *testing.T, nWorkers int) *suite {
	t.Helper()
	// CHAOS_DIR keeps the logs (worker, nats-server, summary.md) after the run.
	dir := os.Getenv("CHAOS_DIR")
	if dir == "" {
		dir = t.TempDir()
	} else {
		dir = filepath.Join(dir, time.Now().Format("20060102-150405"))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("logs in %s", dir)
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	s := &suite{t: t, dir: dir, book: newExecBook()}
	rateLimit := strconv.Itoa(envInt("CHAOS_RATE_LIMIT", 60000))
	logLevel := "info" // CHAOS_LOG_LEVEL=debug logs every retry too
	if l := os.Getenv("CHAOS_LOG_LEVEL"); l != "" {
		logLevel = l
	}
	s.nats = &natsProc{bin: natsBin, storeDir: filepath.Join(dir, "jetstream"), logDir: dir, port: port}
	if err := s.nats.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.nats.kill(syscall.SIGTERM) })

	s.sim = talendsim.New(talendsim.Options{
		KnowAll: true, ListLag: 200 * time.Millisecond,
		DispatchFor: 50 * time.Millisecond, RunFor: 300 * time.Millisecond,
		Clients: map[string]string{"chaos-client": "chaos-secret"},
	})
	for i := range nWorkers {
		f := newFront(i, s.sim, s.book)
		t.Cleanup(f.srv.Close)
		s.fronts = append(s.fronts, f)
		s.workers = append(s.workers, &workerProc{idx: i, bin: runnerBin, logDir: dir, env: testenv.Clean(
			"NATS_URL="+s.nats.url(),
			"TALEND_API_URL="+f.srv.URL,
			"TALEND_CLIENT_ID=chaos-client",
			"TALEND_CLIENT_SECRET=chaos-secret",
			"TMC_ADMIN_ADDR=127.0.0.1:0",
			"TMC_LOG_LEVEL="+logLevel,
			"TMC_CONCURRENCY=32",
			"TMC_ACK_WAIT=5s",
			"TMC_CLAIM_HEARTBEAT=200ms",
			"TMC_CLAIM_STALE=5s", // must exceed TMC_TALEND_TIMEOUT + TMC_CLAIM_HEARTBEAT
			"TMC_RECONCILE_SETTLE=500ms",
			"TMC_CLOCK_SKEW=100ms",
			"TMC_RECONCILE_TIMEOUT=2m",
			"TMC_BACKOFF_MIN=100ms",
			"TMC_BACKOFF_MAX=1s",
			"TMC_BREAKER_OPEN_FOR=1s",
			"TMC_TALEND_TIMEOUT=4s", // above latency spikes (≤ 3s + base)
			"TMC_FOLLOW_MIN_INTERVAL=200ms",
			"TMC_FOLLOW_MAX_INTERVAL=1s",
			"TMC_FOLLOW_STARTUP_LAG=2s",
			"TMC_FOLLOW_LEASE_TTL=3s",
			"TMC_SHUTDOWN_GRACE=2s",
			// The simulator enforces no rate limit; the fleet's limiter stays
			// on, far above what the suite sends (CHAOS_RATE_LIMIT overrides).
			"TMC_RATE_LIMIT="+rateLimit,
		)})
	}
	t.Cleanup(func() {
		for _, w := range s.workers {
			if w.running() {
				_ = w.signal(syscall.SIGTERM, 10*time.Second)
			}
		}
		if t.Failed() {
			for _, w := range s.workers {
				if p := w.currentLog(); p != "" {
					t.Logf("--- tail of %s ---\n%s", p, tail(p, 40))
				}
			}
		}
	})
	// The first worker provisions alone; the others join once it has.
	for i, w := range s.workers {
		if err := w.start(); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if err := w.waitStarted(60 * time.Second); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, w := range s.workers[1:] {
		if err := w.waitStarted(60 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	s.nc, err = nats.Connect(s.nats.url(), nats.Name("chaos suite"), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.nc.Close)
	s.js, _ = jetstream.New(s.nc)
	s.events = &eventLog{js: s.js, byReq: map[string][]*messages.Event{}}
	return s
}

// publish sends every request at a steady pace over window, each with
// Nats-Msg-Id = requestId, retrying the same message (through server
// restarts) until JetStream acknowledges it.
func (s *suite) publish(ctx context.Context, reqs []reqSpec, window time.Duration) {
	queue := make(chan reqSpec)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for r := range queue {
				for try := 0; ; try++ {
					msg := nats.NewMsg(subject)
					msg.Header.Set(nats.MsgIdHdr, r.id)
					msg.Data = r.body()
					pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
					_, err := s.js.PublishMsg(pctx, msg)
					cancel()
					if err == nil || ctx.Err() != nil {
						break
					}
					s.faults.publishRetries.Add(1)
					time.Sleep(200 * time.Millisecond)
				}
			}
		})
	}
	every := window / time.Duration(len(reqs))
	start := time.Now()
	for i, r := range reqs {
		if d := time.Until(start.Add(time.Duration(i) * every)); d > 0 {
			time.Sleep(d)
		}
		queue <- r
	}
	close(queue)
	wg.Wait()
}

// drive carries out the chaos plan. Every fault runs in its own goroutine,
// so they overlap as they would in real life.
func (s *suite) drive(ctx context.Context, plan []chaosEvent) {
	start := time.Now()
	var wg sync.WaitGroup
	var serverMu sync.Mutex
	for _, e := range plan {
		if d := time.Until(start.Add(e.at)); d > 0 {
			time.Sleep(d)
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			switch e.kind {
			case kindKill:
				s.killWorker(e)
			case kindRestart:
				serverMu.Lock()
				defer serverMu.Unlock()
				s.nats.kill(syscall.SIGKILL)
				s.faults.serverRestarts.Add(1)
				s.t.Logf("chaos %s: nats-server killed (SIGKILL), down for %s", time.Now().UTC().Format("15:04:05.000"), e.downtime)
				time.Sleep(e.downtime)
				if err := s.nats.start(); err != nil {
					s.t.Errorf("restart nats-server: %v", err)
				}
			case kind5xx:
				s.sim.InjectFault(talendsim.Fault{Status: e.status, RetryAfter: e.retryAfter, Count: e.count})
				s.faults.bursts5xx.Add(1)
			case kind429:
				s.sim.SetErrorRate(429, e.rate, e.retryAfter)
				s.faults.storms429.Add(1)
				time.Sleep(e.dur)
				s.sim.SetErrorRate(0, 0, "")
			case kindLatency:
				s.sim.SetLatency(e.latency)
				s.faults.latencySpikes.Add(1)
				time.Sleep(e.dur)
				s.sim.SetLatency(0)
			case kindTokenOut:
				s.sim.SetTokenOutage(true)
				s.sim.ExpireTokens()
				s.faults.tokenOutages.Add(1)
				time.Sleep(e.dur)
				s.sim.SetTokenOutage(false)
			}
		})
	}
	wg.Wait()
}

// killWorker kills a worker with SIGKILL while its Talend run calls are in
// flight, then starts it again after downtime. It prefers the planned
// worker; after a second without calls there it takes any worker with calls
// in flight; after 3s it kills the planned (or any running) one anyway.
func (s *suite) killWorker(e chaosEvent) {
	// One kill at a time: two must not pick the same worker.
	s.killMu.Lock()
	defer s.killMu.Unlock()
	pick := func(busy bool) *workerProc {
		for i := range s.workers {
			c := s.workers[(e.worker+i)%len(s.workers)]
			if c.running() && (!busy || s.fronts[c.idx].inflight.Load() > 0) {
				return c
			}
		}
		return nil
	}
	if e.afterStart {
		// Hold the answers of runs this worker starts, and kill it as soon
		// as one run has started and its answer is held.
		if p := s.workers[e.worker]; p.running() {
			f := s.fronts[p.idx]
			f.hold.Store(int64(2 * time.Second))
			deadline := time.Now().Add(5 * time.Second)
			for f.holding.Load() == 0 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			held := f.holding.Load()
			if held == 0 {
				s.t.Logf("chaos: no started run held on worker %d within 5s (calls %d, in flight %d)", p.idx, f.calls.Load(), f.inflight.Load())
			}
			if held > 0 {
				if err := p.signal(syscall.SIGKILL, 10*time.Second); err != nil {
					s.t.Errorf("kill worker %d: %v", p.idx, err)
				}
			}
			f.hold.Store(0)
			if held > 0 {
				s.faults.kills.Add(1)
				s.faults.killsDuringCalls.Add(1)
				s.faults.killsAfterStart.Add(1)
				s.t.Logf("chaos %s: worker %d killed (SIGKILL) with %d started runs' answers held back, down for %s", time.Now().UTC().Format("15:04:05.000"), p.idx, held, e.downtime)
				time.Sleep(e.downtime)
				if err := p.start(); err != nil {
					s.t.Errorf("restart worker %d: %v", p.idx, err)
				}
				return
			}
		}
	}
	began := time.Now()
	var w *workerProc
	for {
		if p := s.workers[e.worker]; p.running() && s.fronts[p.idx].inflight.Load() > 0 {
			w = p
		} else if time.Since(began) > time.Second {
			w = pick(true)
		}
		if w != nil {
			break
		}
		if time.Since(began) > 3*time.Second {
			if w = pick(false); w == nil {
				return
			}
			break
		}
		time.Sleep(time.Millisecond)
	}
	inflight := s.fronts[w.idx].inflight.Load()
	if err := w.signal(syscall.SIGKILL, 10*time.Second); err != nil {
		s.t.Errorf("kill worker %d: %v", w.idx, err)
	}
	s.faults.kills.Add(1)
	if inflight > 0 {
		s.faults.killsDuringCalls.Add(1)
	}
	s.t.Logf("chaos %s: worker %d killed (SIGKILL) with %d run calls in flight, down for %s", time.Now().UTC().Format("15:04:05.000"), w.idx, inflight, e.downtime)
	time.Sleep(e.downtime)
	if err := w.start(); err != nil {
		s.t.Errorf("restart worker %d: %v", w.idx, err)
	}
}

// calm ends every fault.
func (s *suite) calm() {
	s.sim.ClearFaults()
	s.sim.SetErrorRate(0, 0, "")
	s.sim.SetOutage(false)
	s.sim.SetTokenOutage(false)
	s.sim.SetLatency(0)
}

// waitDrained waits until TMC_RUNS holds no message and the durable
// consumer has nothing pending or unacknowledged.
func (s *suite) waitDrained(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		msgs, pending, ackPending, err := s.backlog(cctx)
		cancel()
		if err == nil {
			last = fmt.Sprintf("%s: %d messages; consumer %s: %d pending, %d ack pending", runsStream, msgs, consumerName, pending, ackPending)
			if msgs == 0 && pending == 0 && ackPending == 0 {
				return nil
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("messages left after %s: %s", timeout, last)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func (s *suite) backlog(ctx context.Context) (msgs, pending uint64, ackPending int, err error) {
	st, err := s.js.Stream(ctx, runsStream)
	if err != nil {
		return 0, 0, 0, err
	}
	si, err := st.Info(ctx)
	if err != nil {
		return 0, 0, 0, err
	}
	c, err := st.Consumer(ctx, consumerName)
	if err != nil {
		return 0, 0, 0, err
	}
	ci, err := c.Info(ctx)
	if err != nil {
		return 0, 0, 0, err
	}
	return si.State.Msgs, ci.NumPending, ci.NumAckPending, nil
}

// eventLog is every event of TMC_EVENTS, read incrementally by sequence.
type eventLog struct {
	js    jetstream.JetStream
	mu    sync.Mutex
	next  uint64
	byReq map[string][]*messages.Event
	total int
	bad   []string
}

// poll reads the events stored since the last read.
func (l *eventLog) poll(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	cfg := jetstream.OrderedConsumerConfig{}
	if l.next > 1 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, l.next
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := l.js.OrderedConsumer(cctx, eventsStream, cfg)
	if err != nil {
		return err
	}
	for {
		batch, err := c.Fetch(1000, jetstream.FetchMaxWait(300*time.Millisecond))
		if err != nil {
			return err
		}
		got := 0
		for m := range batch.Messages() {
			meta, err := m.Metadata()
			if err != nil || meta.Sequence.Stream < l.next {
				continue
			}
			l.next = meta.Sequence.Stream + 1
			got++
			l.total++
			ev, err := messages.DecodeEvent(m.Data())
			if err != nil {
				l.bad = append(l.bad, fmt.Sprintf("%s: %v", m.Subject(), err))
				continue
			}
			l.byReq[ev.RequestID] = append(l.byReq[ev.RequestID], ev)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		if got == 0 {
			return nil
		}
	}
}

// pollAll reads until the stream's last sequence has been seen.
func (l *eventLog) pollAll(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := l.poll(ctx)
		if err == nil {
			st, serr := l.js.Stream(ctx, eventsStream)
			if serr == nil {
				info, ierr := st.Info(ctx)
				if ierr == nil {
					l.mu.Lock()
					next := l.next
					l.mu.Unlock()
					if next > info.State.LastSeq {
						return nil
					}
				}
			}
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = errors.New("events stream not read to its end")
			}
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// terminal reports whether ev ends its request.
func terminal(ev *messages.Event) bool {
	if ev.Type == messages.Accepted {
		return ev.Followed != nil && !*ev.Followed
	}
	return ev.Type != messages.Status
}

func (l *eventLog) endedCount(reqs []reqSpec) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	ended := 0
	for _, r := range reqs {
		for _, ev := range l.byReq[r.id] {
			if terminal(ev) {
				ended++
				break
			}
		}
	}
	return ended
}

// verdict is what the suite found.
type verdict struct {
	lost, duplicated, wrong, misattributed, stray []string
	unknownShared, unknownUnexplained             []string
	malformed, shared, await                      int
	executions, simExecutions                     int
	reconciled                                    map[string]map[string]bool // reason -> request ids
	dataRaces, unexpectedExits                    []string
	lostAnswers                                   int64
	unknownStarted                                int
}

func (s *suite) judge(reqs []reqSpec) *verdict {
	v := &verdict{reconciled: map[string]map[string]bool{}}
	byRID, ridOf, total := s.book.snapshot()
	v.executions, v.simExecutions = total, s.sim.Stats().ExecutionsTotal
	for _, f := range s.fronts {
		v.lostAnswers += f.lost.Load()
	}
	published := map[string]bool{}
	l := s.events
	for _, r := range reqs {
		published[r.id] = true
		switch {
		case r.malformed != "":
			v.malformed++
		case r.shared:
			v.shared++
		}
		if r.await {
			v.await++
		}
		var terms []*messages.Event
		for _, ev := range l.byReq[r.id] {
			if terminal(ev) {
				terms = append(terms, ev)
			}
			if ev.ExecutionID != "" && ridOf[ev.ExecutionID] != r.id {
				v.misattributed = append(v.misattributed, fmt.Sprintf("%s: %s event names execution %s, started for rid=%q", r.id, ev.Type, ev.ExecutionID, ridOf[ev.ExecutionID]))
			}
		}
		execs := byRID[r.id]
		if len(terms) == 0 {
			v.lost = append(v.lost, r.id)
		}
		if len(terms) > 1 || len(execs) > 1 {
			v.duplicated = append(v.duplicated, fmt.Sprintf("%s: %d terminal events %v, %d executions %v", r.id, len(terms), types(terms), len(execs), execs))
		}
		if len(terms) >= 1 {
			got := terms[0].Type
			switch {
			case got == r.want:
			case got == messages.Unknown && r.shared:
				v.unknownShared = append(v.unknownShared, r.id)
				if len(execs) > 0 {
					v.unknownStarted++
				}
				if len(v.unknownShared) <= 3 {
					s.t.Logf("unknown (allowed, %s): %s: %s", sharedTask, r.id, terms[0].Detail)
				}
			case got == messages.Unknown:
				v.unknownUnexplained = append(v.unknownUnexplained, fmt.Sprintf("%s (%s): unknown: %s", r.id, r.executable, terms[0].Detail))
			default:
				v.wrong = append(v.wrong, fmt.Sprintf("%s: ended %s (%s %s), want %s", r.id, got, terms[0].Reason, terms[0].Detail, r.want))
			}
		}
		if r.malformed != "" && len(execs) > 0 {
			v.stray = append(v.stray, fmt.Sprintf("%s: malformed request has executions %v", r.id, execs))
		}
	}
	for id := range l.byReq {
		if !published[id] {
			v.stray = append(v.stray, fmt.Sprintf("events for a request never published: %s", id))
		}
	}
	for rid, ids := range byRID {
		if !published[rid] {
			v.stray = append(v.stray, fmt.Sprintf("executions %v with rid=%q, never published", ids, rid))
		}
	}
	for _, b := range l.bad {
		v.stray = append(v.stray, "undecodable event "+b)
	}
	// What the workers said: reconciliations, data races, unplanned exits.
	for _, w := range s.workers {
		w.mu.Lock()
		v.unexpectedExits = append(v.unexpectedExits, w.unexpected...)
		w.mu.Unlock()
		for _, path := range w.allLogs() {
			scanLog(path, func(line string, rec map[string]any) {
				if strings.Contains(line, "DATA RACE") {
					v.dataRaces = append(v.dataRaces, path)
				}
				if rec == nil {
					return
				}
				reason, _ := rec["reason"].(string)
				if strings.HasPrefix(reason, "reconciled: ") && rec["outcome"] == "accepted" {
					id, _ := rec["requestId"].(string)
					if v.reconciled[reason] == nil {
						v.reconciled[reason] = map[string]bool{}
					}
					v.reconciled[reason][id] = true
				}
			})
		}
	}
	return v
}

func types(evs []*messages.Event) []messages.EventType {
	var out []messages.EventType
	for _, e := range evs {
		out = append(out, e.Type)
	}
	return out
}

// scanLog calls f for each line of a worker log, with the decoded JSON
// record when the line is one.
func scanLog(path string, f func(line string, rec map[string]any)) {
	file, err := os.Open(path)
	if err != nil {
		return
	}
	defer file.Close()
	sc := bufio.NewScanner(file)
	sc.Buffer(make([]byte, 1<<20), 1<<22)
	for sc.Scan() {
		line := sc.Text()
		var rec map[string]any
		if strings.HasPrefix(line, "{") {
			_ = json.Unmarshal([]byte(line), &rec)
		}
		f(line, rec)
	}
}

// evidence is every worker log line and event about one request.
func (s *suite) evidence(id string) string {
	var b strings.Builder
	for _, ev := range s.events.byReq[id] {
		body, _ := json.Marshal(ev)
		fmt.Fprintf(&b, "  event: %s\n", body)
	}
	byRID, _, _ := s.book.snapshot()
	for _, x := range byRID[id] {
		info, _ := s.sim.Execution(x)
		s.book.mu.Lock()
		slot := s.book.worker[x]
		s.book.mu.Unlock()
		fmt.Fprintf(&b, "  execution: %s %s trigger %s, called by worker slot %d\n", x, info.Executable, info.Trigger.UTC().Format(time.RFC3339Nano), slot)
	}
	for _, w := range s.workers {
		for _, path := range w.allLogs() {
			scanLog(path, func(line string, _ map[string]any) {
				if strings.Contains(line, `"`+id+`"`) {
					fmt.Fprintf(&b, "  %s: %s\n", filepath.Base(path), line)
				}
			})
		}
	}
	return b.String()
}

func (s *suite) report(v *verdict, reqs []reqSpec, elapsed time.Duration) {
	t := s.t
	reconciled, detail := 0, []string{}
	reasons := make([]string, 0, len(v.reconciled))
	for r := range v.reconciled {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	for _, r := range reasons {
		reconciled += len(v.reconciled[r])
		detail = append(detail, fmt.Sprintf("%s %d", strings.TrimPrefix(r, "reconciled: "), len(v.reconciled[r])))
	}
	f := &s.faults
	rows := [][2]string{
		{"requests", fmt.Sprintf("%d (%d on %s, %d followed to a result)", len(reqs), v.shared, sharedTask, v.await)},
		{"malformed", strconv.Itoa(v.malformed)},
		{"kills (during calls; after the run started)", fmt.Sprintf("%d (%d; %d)", f.kills.Load(), f.killsDuringCalls.Load(), f.killsAfterStart.Load())},
		{"server restarts", strconv.FormatInt(f.serverRestarts.Load(), 10)},
		{"5xx bursts", strconv.FormatInt(f.bursts5xx.Load(), 10)},
		{"429 storms", strconv.FormatInt(f.storms429.Load(), 10)},
		{"latency spikes", strconv.FormatInt(f.latencySpikes.Load(), 10)},
		{"token outages", strconv.FormatInt(f.tokenOutages.Load(), 10)},
		{"run answers lost (run started, caller gone)", strconv.FormatInt(v.lostAnswers, 10)},
		{"publish retries", strconv.FormatInt(f.publishRetries.Load(), 10)},
		{"executions (simulator count)", fmt.Sprintf("%d (%d)", v.executions, v.simExecutions)},
		{"lost", strconv.Itoa(len(v.lost))},
		{"duplicated", strconv.Itoa(len(v.duplicated))},
		{"reconciled", fmt.Sprintf("%d (%s)", reconciled, strings.Join(detail, ", "))},
		{"unknown", fmt.Sprintf("%d (all on %s: %t; the run had started for %d of them)", len(v.unknownShared)+len(v.unknownUnexplained), sharedTask, len(v.unknownUnexplained) == 0, v.unknownStarted)},
		{"elapsed", elapsed.Round(100 * time.Millisecond).String()},
	}
	var b strings.Builder
	b.WriteString("\n| chaos | |\n| --- | --- |\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s |\n", r[0], r[1])
	}
	t.Log(b.String())
	_ = os.WriteFile(filepath.Join(s.dir, "summary.md"), []byte(b.String()), 0o644)

	show := func(what string, items []string, withEvidence bool) {
		if len(items) == 0 {
			return
		}
		sort.Strings(items)
		var e strings.Builder
		for i, it := range items {
			if i == 10 {
				fmt.Fprintf(&e, "... and %d more\n", len(items)-10)
				break
			}
			e.WriteString(it + "\n")
			if withEvidence {
				id, _, _ := strings.Cut(it, ":")
				id, _, _ = strings.Cut(id, " ")
				e.WriteString(s.evidence(id))
			}
		}
		t.Errorf("%s: %d\n%s", what, len(items), e.String())
	}
	show("lost requests (no terminal event)", v.lost, true)
	show("duplicated requests (more than one terminal event or execution)", v.duplicated, true)
	show("misattributed executions (an event names a run started for another request)", v.misattributed, true)
	show("unknown outside the shared executable", v.unknownUnexplained, true)
	show("unexpected terminal events", v.wrong, true)
	show("stray events or executions", v.stray, false)
	show("data races reported by workers", v.dataRaces, false)
	show("workers that exited by themselves", v.unexpectedExits, false)
	if v.executions != v.simExecutions {
		t.Errorf("the suite recorded %d executions, the simulator counts %d", v.executions, v.simExecutions)
	}
	if f.killsDuringCalls.Load() < 2 {
		t.Errorf("only %d kills landed during Talend calls; the suite needs at least 2", f.killsDuringCalls.Load())
	}
	if f.serverRestarts.Load() < 1 {
		t.Errorf("no nats-server restart happened")
	}
}
