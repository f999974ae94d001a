package worker

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/broker"
	"github.com/tmc-runner/tmc-runner/claims"
	"github.com/tmc-runner/tmc-runner/messages"
	"github.com/tmc-runner/tmc-runner/talend"
	"github.com/tmc-runner/tmc-runner/talendsim"
)

// simEnv is env with the real Talend client against the simulator, so that
// reconciliation reads the simulator's execution lists.
type simEnv struct {
	*env
	sim    *talendsim.Simulator
	client *talend.Client
	kv     jetstream.KeyValue
}

const task = "task-rec"

func newSimEnv(t *testing.T, opts talendsim.Options, tune func(*Config)) *simEnv {
	t.Helper()
	opts.KnowAll = true
	sim := talendsim.New(opts)
	hs := httptest.NewServer(sim)
	t.Cleanup(hs.Close)
	client, err := talend.NewClient(talend.Config{
		BaseURL: hs.URL,
		API:     &http.Client{Timeout: 500 * time.Millisecond},
		Credentials: func() (talend.Credentials, error) {
			return talend.Credentials{ClientID: "dev-client", Secret: "dev-secret"}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.Close)
	e := newEnv(t, client, func(c *Config) {
		c.ReconcileTimeout = time.Minute
		if tune != nil {
			tune(c)
		}
	})
	kv, err := e.js.KeyValue(context.Background(), e.topo.ClaimsBucket)
	if err != nil {
		t.Fatal(err)
	}
	return &simEnv{env: e, sim: sim, client: client, kv: kv}
}

// run starts the worker; it is stopped before the servers go away.
func (e *simEnv) run(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
}

func (e *simEnv) publishBody(t *testing.T, body string) {
	t.Helper()
	msg := nats.NewMsg(e.topo.RequestSubject("default"))
	msg.Data = []byte(body)
	if _, err := e.js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
}

// startRun starts an execution of task through the API, as a worker of the
// fleet would have before it crashed.
func (e *simEnv) startRun(t *testing.T) string {
	t.Helper()
	id, err := e.client.RunTask(context.Background(), talend.TaskRun{Executable: task})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// crashClaim writes the claim a holder that died leaves behind: its call
// window [from, to], its last heartbeat at to.
func (e *simEnv) crashClaim(t *testing.T, holder, id string, state claims.State, from, to time.Time) claims.Claim {
	t.Helper()
	ctx := context.Background()
	s := claims.NewStore(e.kv, holder, func() time.Time { return from })
	c, acquired, err := s.Acquire(ctx, id, task, "task")
	if err != nil || !acquired {
		t.Fatalf("crash claim %s: acquired %v, %v", id, acquired, err)
	}
	c.State, c.Heartbeat = state, to.UnixMilli()
	if state == claims.Uncertain {
		c.CallTo = to.UnixMilli()
	}
	if err := s.Save(ctx, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

func (e *simEnv) store() *claims.Store { return claims.NewStore(e.kv, "test", nil) }

func (e *simEnv) executions() int { return e.sim.Stats().Executions[task] }

func (e *simEnv) listCalls() int {
	n := 0
	for k, v := range e.sim.Stats().Calls {
		if strings.HasPrefix(k, "GET /processing/executables/tasks/{taskId}/executions") {
			n += v
		}
	}
	return n
}

// idle waits until the request consumer has nothing pending or unacked:
// every message got its final ack or term.
func (e *simEnv) idle(t *testing.T) {
	t.Helper()
	cons, err := e.js.Consumer(context.Background(), e.topo.RunsStream, e.topo.Consumer)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "request consumer idle", func() bool {
		info, err := cons.Info(context.Background())
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
}

func (e *simEnv) waitEvent(t *testing.T, id string, typ messages.EventType) *messages.Event {
	t.Helper()
	var ev *messages.Event
	waitFor(t, 15*time.Second, string(typ)+" event of "+id, func() bool {
		ev = e.event(t, id, typ)
		return ev != nil
	})
	return ev
}

func (e *simEnv) noEvents(t *testing.T, id string, types ...messages.EventType) {
	t.Helper()
	for _, typ := range types {
		if ev := e.event(t, id, typ); ev != nil {
			t.Errorf("unexpected %s event for %s: %+v", typ, id, ev)
		}
	}
}

func (e *simEnv) wantOwner(t *testing.T, executionID, requestID string) {
	t.Helper()
	calls, err := e.store().InCalls(context.Background(), claims.ExecutableKey("task", task), time.Now().Add(-time.Hour), time.Now().Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	owner := ""
	for _, c := range calls {
		if c.ExecutionID == executionID {
			if owner != "" {
				t.Errorf("execution %s owned twice: %q and %q", executionID, owner, c.RequestID)
			}
			owner = c.RequestID
		}
	}
	if owner != requestID {
		t.Errorf("execution %s owned by %q, want %q", executionID, owner, requestID)
	}
}

// own records that requestID started executionID with a call from callFrom.
func (e *simEnv) own(t *testing.T, executionID, requestID string, callFrom time.Time) {
	t.Helper()
	rec := claims.InCall{RequestID: requestID, Route: "default", CallFrom: callFrom.UnixMilli(), ExecutionID: executionID}
	if err := e.store().Own(context.Background(), claims.ExecutableKey("task", task), rec); err != nil {
		t.Fatal(err)
	}
}

// long ago enough that the crash claim is stale and settled at once.
func crashWindow() (from, to time.Time) {
	now := time.Now()
	return now.Add(-3 * time.Second), now.Add(-2 * time.Second)
}

// None: no execution in the window — the dead holder's call never reached
// Talend — so the worker starts the run now, once.
func TestReconcileNoneStartsTheRun(t *testing.T) {
	for _, state := range []claims.State{claims.Starting, claims.Uncertain} {
		t.Run(string(state), func(t *testing.T) {
			e := newSimEnv(t, talendsim.Options{}, nil)
			from, to := crashWindow()
			e.crashClaim(t, "dead", "none-1", state, from, to)
			e.run(t)
			e.publish(t, "none-1", task)
			ev := e.waitEvent(t, "none-1", messages.Accepted)
			e.idle(t)
			if n := e.executions(); n != 1 {
				t.Fatalf("%d executions of %s, want 1", n, task)
			}
			if e.listCalls() == 0 {
				t.Error("the claim was not reconciled against Talend's list")
			}
			e.wantOwner(t, ev.ExecutionID, "none-1")
			e.noEvents(t, "none-1", messages.Unknown, messages.Failed)
			// The claim now belongs to the worker, with a fresh window.
			c, err := e.store().Get(context.Background(), "none-1")
			if err != nil || c == nil {
				t.Fatalf("claim after the run: %+v, %v", c, err)
			}
			if c.Holder != "test-worker" || c.CallFrom < to.UnixMilli() {
				t.Errorf("claim after the run = %+v, want held by test-worker with a new call window", c)
			}
		})
	}
}

// One: the dead holder's call did start a run — adopted, not repeated.
func TestReconcileOneAdopts(t *testing.T) {
	e := newSimEnv(t, talendsim.Options{}, nil)
	from := time.Now().Add(-100 * time.Millisecond)
	execID := e.startRun(t)
	e.crashClaim(t, "dead", "one-1", claims.Uncertain, from, time.Now())
	e.run(t)
	e.publish(t, "one-1", task)
	ev := e.waitEvent(t, "one-1", messages.Accepted)
	e.idle(t)
	if ev.ExecutionID != execID {
		t.Fatalf("accepted executionId %q, want the adopted %q", ev.ExecutionID, execID)
	}
	if n := e.executions(); n != 1 {
		t.Fatalf("%d executions, want 1 (adopted, not rerun)", n)
	}
	e.wantOwner(t, execID, "one-1")
	e.noEvents(t, "one-1", messages.Unknown, messages.Failed)
}

// A crash between recording the owner and publishing accepted: the run the
// request owns is adopted, even beside another unowned run of the fleet in
// the same window (which alone would make it ambiguous).
func TestReconcileOwnRunAdopted(t *testing.T) {
	e := newSimEnv(t, talendsim.Options{}, nil)
	from := time.Now().Add(-100 * time.Millisecond)
	other := e.startRun(t)
	mine := e.startRun(t)
	e.own(t, mine, "own-1", from)
	e.crashClaim(t, "dead", "own-1", claims.Starting, from, time.Now())
	e.run(t)
	e.publish(t, "own-1", task)
	ev := e.waitEvent(t, "own-1", messages.Accepted)
	e.idle(t)
	if ev.ExecutionID != mine {
		t.Fatalf("accepted executionId %q, want the owned %q (other unowned run %q)", ev.ExecutionID, mine, other)
	}
	if n := e.executions(); n != 2 {
		t.Fatalf("%d executions, want the 2 started before", n)
	}
	e.wantOwner(t, mine, "own-1")
	e.wantOwner(t, other, "")
	e.noEvents(t, "own-1", messages.Unknown)
}

// Scheduled and human runs of the same task, and another request's run,
// are never candidates: the request's run did not start, so it starts now.
func TestReconcileForeignRunsAreNotCandidates(t *testing.T) {
	e := newSimEnv(t, talendsim.Options{}, nil)
	from, _ := crashWindow()
	mid := from.Add(500 * time.Millisecond)
	foreign := []string{
		e.sim.AddForeignExecution(task, "HUMAN", "alice", mid),
		e.sim.AddForeignExecution(task, "SERVICE", "sa-tmc-runner", mid), // the account's schedule
		e.sim.AddForeignExecution(task, "SERVICE", "sa-other", mid),
	}
	owned := e.startRun(t)
	e.own(t, owned, "other-request", from)
	// The window covers the owned run too.
	e.crashClaim(t, "dead", "foreign-1", claims.Uncertain, from, time.Now())
	e.run(t)
	e.publish(t, "foreign-1", task)
	ev := e.waitEvent(t, "foreign-1", messages.Accepted)
	e.idle(t)
	for _, id := range append(foreign, owned) {
		if ev.ExecutionID == id {
			t.Fatalf("adopted %s, which is not this request's", id)
		}
	}
	if n := e.executions(); n != 2 {
		t.Fatalf("%d API executions, want 2 (other-request's and the new one)", n)
	}
	info, ok := e.sim.Execution(ev.ExecutionID)
	if !ok || info.UserType != "SERVICE" || info.Trigger.Before(time.UnixMilli(from.UnixMilli())) {
		t.Fatalf("accepted execution %+v is not a new run", info)
	}
	e.wantOwner(t, ev.ExecutionID, "foreign-1")
	e.wantOwner(t, owned, "other-request")
	e.noEvents(t, "foreign-1", messages.Unknown)
}

// Several unowned runs of the fleet in the window: which one is this
// request's cannot be told — one unknown event, no run (default), or a
// new run with onUnknown: rerun.
func TestReconcileSeveralCandidates(t *testing.T) {
	t.Run("report", func(t *testing.T) {
		e := newSimEnv(t, talendsim.Options{}, nil)
		from := time.Now().Add(-100 * time.Millisecond)
		a, b := e.startRun(t), e.startRun(t)
		e.crashClaim(t, "dead", "several-1", claims.Uncertain, from, time.Now())
		e.run(t)
		e.publish(t, "several-1", task)
		ev := e.waitEvent(t, "several-1", messages.Unknown)
		e.idle(t)
		if n := e.executions(); n != 2 {
			t.Fatalf("%d executions, want 2 (no new run)", n)
		}
		if !strings.Contains(ev.Detail, "2 executions") {
			t.Errorf("unknown detail %q does not say what was found", ev.Detail)
		}
		e.noEvents(t, "several-1", messages.Accepted, messages.Failed)
		e.wantOwner(t, a, "")
		e.wantOwner(t, b, "")
		// A republished copy is acked on the unknown event: still no run.
		e.publish(t, "several-1", task)
		e.idle(t)
		if n := e.executions(); n != 2 {
			t.Fatalf("%d executions after a republish, want 2", n)
		}
	})
	t.Run("rerun", func(t *testing.T) {
		e := newSimEnv(t, talendsim.Options{}, nil)
		from := time.Now().Add(-100 * time.Millisecond)
		a, b := e.startRun(t), e.startRun(t)
		e.crashClaim(t, "dead", "several-2", claims.Uncertain, from, time.Now())
		e.run(t)
		e.publishBody(t, `{"requestId":"several-2","executable":"`+task+`","onUnknown":"rerun"}`)
		ev := e.waitEvent(t, "several-2", messages.Accepted)
		e.idle(t)
		if ev.ExecutionID == a || ev.ExecutionID == b {
			t.Fatalf("rerun adopted %s instead of starting a new run", ev.ExecutionID)
		}
		if n := e.executions(); n != 3 {
			t.Fatalf("%d executions, want 3 (a rerun)", n)
		}
		e.wantOwner(t, ev.ExecutionID, "several-2")
		e.noEvents(t, "several-2", messages.Unknown)
	})
}

// Talend not answering: the message is given back while the bound runs;
// Talend back in time → reconciled normally.
func TestReconcileTalendUnavailableWithinBound(t *testing.T) {
	e := newSimEnv(t, talendsim.Options{}, nil) // ReconcileTimeout 1m
	from, to := crashWindow()
	e.crashClaim(t, "dead", "down-1", claims.Uncertain, from, to)
	e.sim.SetOutage(true)
	e.run(t)
	e.publish(t, "down-1", task)
	waitFor(t, 15*time.Second, "three refused list calls", func() bool {
		return e.sim.Stats().Calls["GET /processing/executables/tasks/{taskId}/executions 503"] >= 3
	})
	e.noEvents(t, "down-1", messages.Unknown, messages.Accepted, messages.Failed)
	if n := e.executions(); n != 0 {
		t.Fatalf("%d executions during the outage", n)
	}
	e.sim.SetOutage(false)
	ev := e.waitEvent(t, "down-1", messages.Accepted)
	e.idle(t)
	if n := e.executions(); n != 1 {
		t.Fatalf("%d executions, want 1", n)
	}
	e.wantOwner(t, ev.ExecutionID, "down-1")
	e.noEvents(t, "down-1", messages.Unknown)
}

// Talend not answering beyond ReconcileTimeout: one unknown event, no run.
func TestReconcileTalendUnavailableBeyondBound(t *testing.T) {
	cases := map[string]func(*talendsim.Simulator){
		"outage": func(s *talendsim.Simulator) { s.SetOutage(true) },
		"list fault": func(s *talendsim.Simulator) {
			s.InjectFault(talendsim.Fault{Status: http.StatusBadGateway})
		},
		"no answer": func(s *talendsim.Simulator) {
			s.InjectFault(talendsim.Fault{Delay: 5 * time.Second}) // beyond the client's timeout
		},
	}
	for name, fault := range cases {
		t.Run(name, func(t *testing.T) {
			const bound = 400 * time.Millisecond
			e := newSimEnv(t, talendsim.Options{}, func(c *Config) { c.ReconcileTimeout = bound })
			from, to := crashWindow()
			e.crashClaim(t, "dead", "down-2", claims.Uncertain, from, to)
			fault(e.sim)
			e.run(t)
			e.publish(t, "down-2", task)
			ev := e.waitEvent(t, "down-2", messages.Unknown)
			e.idle(t)
			c, err := e.store().Get(context.Background(), "down-2")
			if err != nil || c == nil || c.ReconcilingSince == 0 {
				t.Fatalf("claim %+v, %v: no reconciliation start recorded", c, err)
			}
			if waited := ev.Time.Sub(time.UnixMilli(c.ReconcilingSince)); waited < bound {
				t.Errorf("unknown after %s of reconciliation, before the %s bound", waited, bound)
			}
			if !strings.Contains(ev.Detail, "could not be asked") {
				t.Errorf("unknown detail %q", ev.Detail)
			}
			e.sim.SetOutage(false)
			e.sim.ClearFaults()
			e.publish(t, "down-2", task) // a republished copy
			e.idle(t)
			if n := e.executions(); n != 0 {
				t.Fatalf("%d executions, want none after unknown", n)
			}
			e.noEvents(t, "down-2", messages.Accepted, messages.Failed)
		})
	}
}

// A claim held by a live worker (fresh heartbeat) makes this one wait
// without asking Talend; once the heartbeat stops and goes stale, the claim
// is reconciled.
func TestLiveHolderMakesOthersWait(t *testing.T) {
	e := newSimEnv(t, talendsim.Options{}, nil)
	ctx := context.Background()
	live := claims.NewStore(e.kv, "live", nil)
	c, _, err := live.Acquire(ctx, "live-1", task, "task")
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var beats sync.WaitGroup
	beats.Go(func() {
		t := time.NewTicker(40 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				_ = live.Beat(ctx, &c)
			}
		}
	})
	e.run(t)
	e.publish(t, "live-1", task)
	waitFor(t, 10*time.Second, "several deliveries finding the live claim", func() bool {
		return strings.Count(e.logs.String(), `"outcome":"claimed"`) >= 3
	})
	if calls := e.sim.Stats().APICalls; calls != 0 {
		t.Errorf("%d Talend calls while the holder was alive", calls)
	}
	e.noEvents(t, "live-1", messages.Accepted, messages.Unknown, messages.Failed)
	close(stop)
	beats.Wait()

	ev := e.waitEvent(t, "live-1", messages.Accepted)
	e.idle(t)
	if e.listCalls() == 0 {
		t.Error("the stale claim was not reconciled against Talend's list")
	}
	if n := e.executions(); n != 1 {
		t.Fatalf("%d executions, want 1", n)
	}
	e.wantOwner(t, ev.ExecutionID, "live-1")
}

// A run started just before the crash shows in lists only after ListLag:
// the worker waits ReconcileSettle (≥ ListLag) before listing, finds and
// adopts it instead of starting a second one.
func TestReconcileWaitsForListsToSettle(t *testing.T) {
	const lag = 400 * time.Millisecond
	e := newSimEnv(t, talendsim.Options{ListLag: lag}, func(c *Config) { c.ReconcileSettle = lag + 100*time.Millisecond })
	from := time.Now().Add(-50 * time.Millisecond)
	execID := e.startRun(t)
	e.crashClaim(t, "dead", "lag-1", claims.Uncertain, from, time.Now())
	e.run(t)
	e.publish(t, "lag-1", task)
	ev := e.waitEvent(t, "lag-1", messages.Accepted)
	e.idle(t)
	if ev.ExecutionID != execID {
		t.Fatalf("accepted %q, want the lagging run %q adopted", ev.ExecutionID, execID)
	}
	if n := e.executions(); n != 1 {
		t.Fatalf("%d executions, want 1 (no duplicate)", n)
	}
	if !strings.Contains(e.logs.String(), `"outcome":"reconcile_wait"`) {
		t.Error("the worker did not wait for the lists to settle")
	}
}

// A republished request whose accepted event exists is acked without any
// Talend call.
func TestRedeliveryAfterAcceptedCallsNoTalend(t *testing.T) {
	e := newSimEnv(t, talendsim.Options{}, nil)
	e.run(t)
	e.publish(t, "dup-1", task)
	first := e.waitEvent(t, "dup-1", messages.Accepted)
	e.idle(t)
	calls := e.sim.Stats().APICalls
	e.publish(t, "dup-1", task)
	e.idle(t)
	waitFor(t, 5*time.Second, "duplicate decision", func() bool {
		return strings.Contains(e.logs.String(), `"outcome":"duplicate"`)
	})
	if got := e.sim.Stats().APICalls; got != calls {
		t.Errorf("%d Talend calls for the republished request", got-calls)
	}
	if n := e.executions(); n != 1 {
		t.Fatalf("%d executions, want 1", n)
	}
	if ev := e.event(t, "dup-1", messages.Accepted); ev.ExecutionID != first.ExecutionID || ev.Attempt != first.Attempt {
		t.Errorf("accepted event changed: %+v", ev)
	}
}

// onUnknown: rerun also covers Talend not answering within the bound: no
// unknown event; the run is started anew, once, when Talend is back.
func TestReconcileTalendUnavailableRerun(t *testing.T) {
	e := newSimEnv(t, talendsim.Options{}, func(c *Config) { c.ReconcileTimeout = 300 * time.Millisecond })
	from, to := crashWindow()
	e.crashClaim(t, "dead", "down-rerun", claims.Uncertain, from, to)
	e.sim.SetOutage(true)
	e.run(t)
	e.publishBody(t, `{"requestId":"down-rerun","executable":"`+task+`","onUnknown":"rerun"}`)
	waitFor(t, 15*time.Second, "a rerun attempted after the bound", func() bool {
		return e.sim.Stats().Calls["POST /processing/executions 503"] >= 1
	})
	e.noEvents(t, "down-rerun", messages.Unknown, messages.Accepted, messages.Failed)
	e.sim.SetOutage(false)
	ev := e.waitEvent(t, "down-rerun", messages.Accepted)
	e.idle(t)
	if n := e.executions(); n != 1 {
		t.Fatalf("%d executions, want 1", n)
	}
	e.wantOwner(t, ev.ExecutionID, "down-rerun")
	e.noEvents(t, "down-rerun", messages.Unknown)
}

// Two requests on one executable lost their calls in overlapping windows
// and Talend shows one run: it cannot be attributed, so neither adopts it
// nor starts another — both end unknown. (Found by the chaos suite: the
// first to reconcile adopted the other's run, which then started a second.)
func TestReconcileRivalOnSameExecutable(t *testing.T) {
	e := newSimEnv(t, talendsim.Options{}, nil)
	from := time.Now().Add(-100 * time.Millisecond)
	run := e.startRun(t)
	st := e.store()
	for _, id := range []string{"rival-a", "rival-b"} {
		e.crashClaim(t, "dead", id, claims.Uncertain, from, time.Now())
		if err := st.EnterCall(context.Background(), claims.ExecutableKey("task", task), claims.InCall{RequestID: id, Route: "default", CallFrom: from.UnixMilli()}); err != nil {
			t.Fatal(err)
		}
	}
	e.run(t)
	e.publish(t, "rival-a", task)
	e.publish(t, "rival-b", task)
	e.waitEvent(t, "rival-a", messages.Unknown)
	e.waitEvent(t, "rival-b", messages.Unknown)
	e.idle(t)
	if n := e.executions(); n != 1 {
		t.Fatalf("%d executions, want 1 (no second run)", n)
	}
	e.wantOwner(t, run, "")
	e.noEvents(t, "rival-a", messages.Accepted)
	e.noEvents(t, "rival-b", messages.Accepted)
}

// A rival being reconciled elsewhere is not a call in flight: waiting for
// it would let two reconciliations wait for each other forever (found by
// the chaos suite). It counts as an unresolved rival instead.
func TestReconcileDoesNotWaitForAReconcilingRival(t *testing.T) {
	e := newSimEnv(t, talendsim.Options{}, nil)
	from := time.Now().Add(-100 * time.Millisecond)
	e.startRun(t)
	st := e.store()
	ek := claims.ExecutableKey("task", task)
	e.crashClaim(t, "dead", "mine", claims.Uncertain, from, time.Now())
	rival := e.crashClaim(t, "dead", "other", claims.Uncertain, from, time.Now())
	for _, id := range []string{"mine", "other"} {
		if err := st.EnterCall(context.Background(), ek, claims.InCall{RequestID: id, Route: "default", CallFrom: from.UnixMilli()}); err != nil {
			t.Fatal(err)
		}
	}
	// Another replica is reconciling "other" and keeps its claim fresh.
	reconciler := claims.NewStore(e.kv, "elsewhere", nil)
	if err := reconciler.TakeOver(context.Background(), &rival); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
				_ = reconciler.Beat(context.Background(), &rival)
			}
		}
	}()
	e.run(t)
	e.publish(t, "mine", task)
	e.waitEvent(t, "mine", messages.Unknown)
	if n := e.executions(); n != 1 {
		t.Fatalf("%d executions, want 1", n)
	}
}

// Reconciliation that finds no run does not start a request that has
// expired meanwhile: it ends failed (expired).
func TestReconcileDoesNotStartAnExpiredRequest(t *testing.T) {
	e := newSimEnv(t, talendsim.Options{}, nil)
	from := time.Now().Add(-100 * time.Millisecond)
	e.crashClaim(t, "dead", "late", claims.Uncertain, from, time.Now())
	e.run(t)
	e.publishBody(t, `{"requestId":"late","executable":"`+task+`","expiresAt":"`+time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)+`"}`)
	ev := e.waitEvent(t, "late", messages.Failed)
	if ev.Reason != messages.ReasonExpired {
		t.Errorf("failed with reason %q, want expired", ev.Reason)
	}
	e.idle(t)
	if n := e.executions(); n != 0 {
		t.Fatalf("%d executions of an expired request", n)
	}
}

// A rival whose accepted event names the run while its call record names
// nothing (the record is written first, so only a record lost or restored
// from an older copy of the bucket looks like this): the event is enough,
// the run is the rival's. The request whose call was lost started nothing,
// so it starts its run now instead of adopting it.
func TestReconcileRivalEventNamesItsRun(t *testing.T) {
	e := newSimEnv(t, talendsim.Options{}, nil)
	from := time.Now().Add(-100 * time.Millisecond)
	run := e.startRun(t)
	ek := claims.ExecutableKey("task", task)
	e.crashClaim(t, "dead", "evented", claims.Uncertain, from, time.Now())
	if err := e.store().EnterCall(context.Background(), ek, claims.InCall{RequestID: "evented", Route: "default", CallFrom: from.UnixMilli()}); err != nil {
		t.Fatal(err)
	}
	ev := messages.NewEvent(messages.Accepted, &messages.Request{RequestID: "evented", Route: "default", Executable: task, Kind: messages.KindTask}, 1, time.Now())
	ev.ExecutionID = run
	if err := e.w.deps.Events.Event(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	e.crashClaim(t, "dead", "lost", claims.Uncertain, from, time.Now())
	e.run(t)
	e.publish(t, "lost", task)
	got := e.waitEvent(t, "lost", messages.Accepted)
	e.idle(t)
	if got.ExecutionID == run {
		t.Fatalf("adopted %s, which the rival's accepted event names", run)
	}
	if n := e.executions(); n != 2 {
		t.Fatalf("%d executions, want 2 (the rival's and a new one)", n)
	}
	e.wantOwner(t, got.ExecutionID, "lost")
	e.noEvents(t, "lost", messages.Unknown)
}

// A rival recorded well before this request's window still counts when
// its call may have waited for the budget since: a call leaves up to
// AdmitWithin after its record and its run appears up to CallTimeout
// after that. (Counting only CallTimeout back, this request adopted a run
// the rival may have started.)
func TestReconcileRivalThatWaitedForBudget(t *testing.T) {
	e := newSimEnv(t, talendsim.Options{}, nil) // CallTimeout 300ms, AdmitWithin the same
	from := time.Now().Add(-100 * time.Millisecond)
	rivalFrom := from.Add(-500 * time.Millisecond) // past one CallTimeout, within AdmitWithin + CallTimeout
	e.startRun(t)
	st := e.store()
	e.crashClaim(t, "dead", "late-rival", claims.Uncertain, rivalFrom, time.Now())
	e.crashClaim(t, "dead", "this", claims.Uncertain, from, time.Now())
	for id, callFrom := range map[string]time.Time{"late-rival": rivalFrom, "this": from} {
		if err := st.EnterCall(context.Background(), claims.ExecutableKey("task", task), claims.InCall{RequestID: id, Route: "default", CallFrom: callFrom.UnixMilli()}); err != nil {
			t.Fatal(err)
		}
	}
	e.run(t)
	e.publish(t, "this", task)
	e.waitEvent(t, "this", messages.Unknown)
	e.idle(t)
	e.noEvents(t, "this", messages.Accepted)
	if n := e.executions(); n != 1 {
		t.Fatalf("%d executions, want 1", n)
	}
}

// A holder whose claim is taken over while its call waits for the budget
// (its heartbeats were not stored) leaves the request to the new holder:
// it deletes no call record and releases no claim that are no longer its
// own, and counts no attempt.
func TestClaimTakenOverBeforeTheCallLeavesItAlone(t *testing.T) {
	sim := talendsim.New(talendsim.Options{KnowAll: true})
	hs := httptest.NewServer(sim)
	t.Cleanup(hs.Close)
	admitting := make(chan struct{}, 1)
	client, err := talend.NewClient(talend.Config{
		BaseURL: hs.URL,
		API:     &http.Client{Timeout: 500 * time.Millisecond},
		Credentials: func() (talend.Credentials, error) {
			return talend.Credentials{ClientID: "dev-client", Secret: "dev-secret"}, nil
		},
		// The budget never comes.
		Admit: func(ctx context.Context, path string, by time.Time) error {
			select {
			case admitting <- struct{}{}:
			default:
			}
			<-ctx.Done()
			return ctx.Err()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.Close)
	e := &simEnv{env: newEnv(t, client, func(c *Config) { c.AdmitWithin = time.Minute }), sim: sim, client: client}
	e.kv, _ = e.js.KeyValue(context.Background(), e.topo.ClaimsBucket)
	e.run(t)
	e.publish(t, "taken", task)
	<-admitting

	// Another replica takes the claim over, as if this one's heartbeats had
	// stopped being stored.
	other := claims.NewStore(e.kv, "other", nil)
	c, err := other.Get(context.Background(), "taken")
	if err != nil || c == nil {
		t.Fatalf("claim: %v %v", c, err)
	}
	if err := other.TakeOver(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the worker to see its claim lost", func() bool {
		return strings.Contains(e.logs.String(), `"outcome":"claimed"`)
	})
	calls, err := other.InCalls(context.Background(), claims.ExecutableKey("task", task), time.Now().Add(-time.Minute), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(calls) != 1 || calls[0].RequestID != "taken" {
		t.Errorf("call records %+v, want the request's one left for the new holder", calls)
	}
	if now, err := other.Get(context.Background(), "taken"); err != nil || now == nil || now.Holder != "other" {
		t.Errorf("claim %+v (%v), want it still held by the new holder", now, err)
	}
	if n, err := broker.NewAttempts(e.kv).Increment(context.Background(), "taken"); err != nil || n != 1 {
		t.Errorf("attempt counter reads %d after one more (%v): the lost claim counted an attempt", n, err)
	}
	e.noEvents(t, "taken", messages.Failed, messages.Accepted)
	if e.sim.Stats().ExecutionsTotal != 0 {
		t.Error("a run was started")
	}
}
