package worker

import (
	"context"
	"github.com/tmc-runner/tmc-runner/internal/testlog"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/broker"
	"github.com/tmc-runner/tmc-runner/claims"
	"github.com/tmc-runner/tmc-runner/internal/testnats"
	"github.com/tmc-runner/tmc-runner/messages"
	"github.com/tmc-runner/tmc-runner/talend"
)

// fakeTalend is a hand-written Talend stand-in for the worker's own tests;
// the end-to-end tests in package runner use the simulator.
type fakeTalend struct {
	calls  atomic.Int64
	panics atomic.Int64 // panic on this many calls first
	block  chan struct{}
}

func (f *fakeTalend) RunTask(ctx context.Context, run talend.TaskRun) (string, error) {
	f.calls.Add(1)
	if run.Executable == "task-boom" && f.panics.Add(-1) >= 0 {
		panic("simulated bug while running " + run.Executable)
	}
	if f.block != nil {
		select {
		case <-f.block:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	return "exec-" + run.Executable, nil
}

func (f *fakeTalend) RunPlan(ctx context.Context, id string) (string, error) {
	return "plan-exec-" + id, nil
}

func (f *fakeTalend) Probe(context.Context) error { return nil }

func (f *fakeTalend) StopExecution(context.Context, string) error { return nil }

func (f *fakeTalend) ListExecutionsOf(context.Context, bool, string, time.Time, time.Time, int, int) (talend.ExecutionPage, error) {
	return talend.ExecutionPage{}, nil
}

type env struct {
	js   jetstream.JetStream
	topo broker.Topology
	logs *testlog.Buffer
	w    *Worker
}

func newEnv(t *testing.T, tl Talend, tune func(*Config)) *env {
	t.Helper()
	_, _, js := testnats.JetStream(t)
	ctx := context.Background()
	topo := broker.Topology{}.Defaults()
	if err := broker.Provision(ctx, js, topo); err != nil {
		t.Fatal(err)
	}
	requests, _ := js.Consumer(ctx, topo.RunsStream, topo.Consumer)
	timers, _ := js.Consumer(ctx, topo.TimersStream, topo.TimersConsumer)
	kv, _ := js.KeyValue(ctx, topo.ClaimsBucket)
	logs := &testlog.Buffer{}
	cfg := Config{
		Concurrency: 4, BackoffMin: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
		FetchWait: 100 * time.Millisecond, ShutdownGrace: 5 * time.Second, Topology: topo,
		ClaimHeartbeat: 50 * time.Millisecond, ClaimStale: 200 * time.Millisecond,
		ReconcileSettle: 100 * time.Millisecond, ClockSkew: 10 * time.Millisecond,
		CallTimeout: 300 * time.Millisecond,
		Logger:      slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if tune != nil {
		tune(&cfg)
	}
	w, err := New(cfg, Deps{
		Talend: tl, Events: broker.NewPublisher(js, topo, "test", nil, nil),
		Attempts: broker.NewAttempts(kv), Requests: requests, Timers: timers,
		Claims: claims.NewStore(kv, "test-worker", nil),
	})
	if err != nil {
		t.Fatal(err)
	}
	return &env{js: js, topo: topo, logs: logs, w: w}
}

func (e *env) publish(t *testing.T, id, executable string) {
	t.Helper()
	msg := nats.NewMsg(e.topo.RequestSubject("default"))
	msg.Data = []byte(`{"requestId":"` + id + `","executable":"` + executable + `"}`)
	if _, err := e.js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
}

func (e *env) event(t *testing.T, id string, typ messages.EventType) *messages.Event {
	t.Helper()
	s, err := e.js.Stream(context.Background(), e.topo.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := s.GetLastMsgForSubject(context.Background(), "tmc.runs.events.default."+id+"."+string(typ))
	if err != nil {
		return nil
	}
	ev, err := messages.DecodeEvent(raw.Data)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A panic while handling one message naks it; the worker goes on, and the
// redelivery succeeds.
func TestPanicNaksAndWorkerGoesOn(t *testing.T) {
	tl := &fakeTalend{}
	tl.panics.Store(1)
	e := newEnv(t, tl, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.w.Run(ctx) }()
	e.publish(t, "boom", "task-boom")
	e.publish(t, "calm", "task-calm")
	waitFor(t, 10*time.Second, "both accepted", func() bool {
		return e.event(t, "boom", messages.Accepted) != nil && e.event(t, "calm", messages.Accepted) != nil
	})
	// After the panic's nak, the claim (marked uncertain) is reconciled:
	// nothing was started, so the run starts then.
	if ev := e.event(t, "boom", messages.Accepted); ev.Attempt < 2 {
		t.Errorf("boom accepted on attempt %d, want a later delivery than the panicking one", ev.Attempt)
	}
	if n := tl.calls.Load(); n != 3 {
		t.Errorf("%d Talend calls, want 3 (boom twice, calm once)", n)
	}
	if !strings.Contains(e.logs.String(), "panic while handling a message") || !strings.Contains(e.logs.String(), `"outcome":"panic"`) {
		t.Errorf("panic not logged:\n%s", e.logs.String())
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// Shutdown: in-flight calls that cannot finish within the grace period are
// given back at once (nak), not left to their ack wait; Ready reports the
// shutdown.
func TestShutdownNaksUnfinishedWork(t *testing.T) {
	tl := &fakeTalend{block: make(chan struct{})}
	e := newEnv(t, tl, func(c *Config) { c.ShutdownGrace = 300 * time.Millisecond; c.AckWait = time.Minute })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.w.Run(ctx) }()
	for _, id := range []string{"a", "b", "c"} {
		e.publish(t, id, "t-"+id)
	}
	waitFor(t, 5*time.Second, "three calls in flight", func() bool { return tl.calls.Load() == 3 })
	if err := e.w.Ready(); err != nil {
		t.Fatalf("not ready while working: %v", err)
	}
	cancel()
	waitFor(t, 5*time.Second, "not ready during shutdown", func() bool { return e.w.Ready() != nil })
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after the grace period")
	}
	// Nak'ed: a new pull gets them again at once, instead of after the
	// one-minute ack wait.
	cons, _ := e.js.Consumer(context.Background(), e.topo.RunsStream, e.topo.Consumer)
	batch, err := cons.Fetch(3, jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	redelivered := 0
	for m := range batch.Messages() {
		if meta, _ := m.Metadata(); meta.NumDelivered == 2 {
			redelivered++
		}
	}
	if redelivered != 3 {
		t.Errorf("%d of 3 unfinished messages redelivered at once after shutdown", redelivered)
	}
	if n := strings.Count(e.logs.String(), `"outcome":"shutdown"`); n != 3 {
		t.Errorf("%d shutdown decisions logged, want 3", n)
	}
}
