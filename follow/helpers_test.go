package follow_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/broker"
	"github.com/tmc-runner/tmc-runner/follow"
	"github.com/tmc-runner/tmc-runner/messages"
	"github.com/tmc-runner/tmc-runner/natsembed"
	"github.com/tmc-runner/tmc-runner/talend"
	"github.com/tmc-runner/tmc-runner/talendsim"
)

// fastConfig is the follower configuration of these tests: everything in
// milliseconds.
func fastConfig(holder string) follow.Config {
	return follow.Config{
		MinInterval: 50 * time.Millisecond, MaxInterval: 200 * time.Millisecond,
		StartupLag: 300 * time.Millisecond, LeaseTTL: 2 * time.Second,
		Tick: 20 * time.Millisecond, Holder: holder,
	}
}

// env is one embedded NATS server with the provisioned topology, one Talend
// simulator and a real client talking to it.
type env struct {
	t      *testing.T
	srv    *natsembed.Server
	nc     *nats.Conn
	js     jetstream.JetStream
	kv     jetstream.KeyValue
	topo   broker.Topology
	pub    *broker.Publisher
	events *recorder
	sim    *talendsim.Simulator
	client *talend.Client
}

func newEnv(t *testing.T, opts talendsim.Options) *env {
	t.Helper()
	srv, err := natsembed.Start(natsembed.Options{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	e := &env{t: t, srv: srv, topo: broker.Topology{}.Defaults()}
	e.nc, e.js, e.kv = e.connect()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := broker.Provision(ctx, e.js, e.topo); err != nil {
		t.Fatal(err)
	}
	if e.kv, err = e.js.KeyValue(ctx, e.topo.ClaimsBucket); err != nil {
		t.Fatal(err)
	}
	e.pub = broker.NewPublisher(e.js, e.topo, "test", nil, nil)
	e.events = &recorder{next: e.pub}

	opts.KnowAll = true
	e.sim = talendsim.New(opts)
	hs := httptest.NewServer(e.sim)
	t.Cleanup(hs.Close)
	e.client, err = talend.NewClient(talend.Config{BaseURL: hs.URL, Credentials: func() (talend.Credentials, error) {
		return talend.Credentials{ClientID: "dev-client", Secret: "dev-secret"}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.client.Close)
	return e
}

// connect opens a connection of its own to the server (a replica of the
// fleet); the bucket is returned once provisioned.
func (e *env) connect() (*nats.Conn, jetstream.JetStream, jetstream.KeyValue) {
	e.t.Helper()
	nc, err := nats.Connect(e.srv.URL())
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		e.t.Fatal(err)
	}
	var kv jetstream.KeyValue
	if e.kv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if kv, err = js.KeyValue(ctx, e.topo.ClaimsBucket); err != nil {
			e.t.Fatal(err)
		}
	}
	return nc, js, kv
}

// running is a follower whose Run goroutine the test controls.
type running struct {
	f      *follow.Follower
	cancel context.CancelFunc
	done   chan struct{} // closed when Run returned
	err    error         // what Run returned
}

// stop cancels Run and waits for it to return (lease released).
func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
		if r.err != nil {
			t.Errorf("Run: %v", r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

// start runs a follower on kv (the env's bucket when nil) with tl (the
// env's client when nil) until the test ends or stop is called.
func (e *env) start(cfg follow.Config, kv jetstream.KeyValue, tl follow.Talend) *running {
	e.t.Helper()
	if kv == nil {
		kv = e.kv
	}
	if tl == nil {
		tl = e.client
	}
	f := follow.New(cfg, kv, tl, e.events)
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{f: f, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = f.Run(ctx)
	}()
	e.t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			e.t.Error("Run did not return after its context ended")
		}
	})
	return r
}

// runTask starts a task execution in the simulator and returns the record
// the worker would track for it.
func (e *env) runTask(requestID, executable string) follow.Record {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	id, err := e.client.RunTask(ctx, talend.TaskRun{Executable: executable})
	if err != nil {
		e.t.Fatalf("run task %s: %v", executable, err)
	}
	return record(requestID, executable, messages.KindTask, id)
}

func (e *env) runPlan(requestID, plan string) follow.Record {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	id, err := e.client.RunPlan(ctx, plan)
	if err != nil {
		e.t.Fatalf("run plan %s: %v", plan, err)
	}
	return record(requestID, plan, messages.KindPlan, id)
}

func record(requestID, executable string, kind messages.Kind, executionID string) follow.Record {
	now := time.Now()
	return follow.Record{
		RequestID: requestID, Route: "default", Executable: executable, Kind: kind,
		ExecutionID: executionID, Attempt: 1, Metadata: json.RawMessage(`{"origin":"test"}`),
		AcceptedAt: now, Deadline: now.Add(time.Minute),
	}
}

func track(t *testing.T, f *follow.Follower, rec follow.Record) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.Track(ctx, rec); err != nil {
		t.Fatalf("track %s: %v", rec.RequestID, err)
	}
}

// waitResults waits until every request has a result event (as the
// follower published it), then for its record to be gone.
func (e *env) waitResults(timeout time.Duration, requestIDs ...string) map[string]*messages.Event {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	out := map[string]*messages.Event{}
	for _, id := range requestIDs {
		for {
			if evs := e.events.of(id, messages.Result); len(evs) > 0 {
				out[id] = evs[0]
				break
			}
			if time.Now().After(deadline) {
				e.t.Fatalf("no result for %s within %s (events so far: %v)", id, timeout, e.events.types(id))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for _, id := range requestIDs {
		for {
			_, err := e.kv.Get(context.Background(), "follow."+id)
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				break
			}
			if time.Now().After(deadline) {
				e.t.Fatalf("follow record of %s still there after its result (err %v)", id, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return out
}

// stored returns the events stored in TMC_EVENTS for one request, in
// stream order.
func (e *env) stored(requestID string) []*messages.Event {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	filter := e.topo.EventsFilter("default", requestID)
	s, err := e.js.Stream(ctx, e.topo.EventsStream)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		e.t.Fatal(err)
	}
	n := 0
	for _, c := range info.State.Subjects {
		n += int(c)
	}
	if n == 0 {
		return nil
	}
	cons, err := e.js.OrderedConsumer(ctx, e.topo.EventsStream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	if err != nil {
		e.t.Fatal(err)
	}
	var out []*messages.Event
	for len(out) < n {
		batch, err := cons.Fetch(n-len(out), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			e.t.Fatal(err)
		}
		got := 0
		for msg := range batch.Messages() {
			ev, err := messages.DecodeEvent(msg.Data())
			if err != nil {
				e.t.Fatalf("stored event on %s: %v", msg.Subject(), err)
			}
			if want := ev.Subject(e.topo.EventsPrefix()); msg.Subject() != want {
				e.t.Errorf("event stored on %s, its subject is %s", msg.Subject(), want)
			}
			out = append(out, ev)
			got++
		}
		if got == 0 {
			e.t.Fatalf("read %d of %d stored events of %s", len(out), n, requestID)
		}
	}
	return out
}

// settle gives a follower a few more rounds in which a duplicate would show.
func settle() { time.Sleep(300 * time.Millisecond) }

// recorder wraps the real publisher and remembers every event it stored,
// in the order the follower published them.
type recorder struct {
	next follow.Events
	mu   sync.Mutex
	evs  []*messages.Event
}

func (r *recorder) Event(ctx context.Context, ev *messages.Event) error {
	if err := r.next.Event(ctx, ev); err != nil {
		return err
	}
	cp := *ev
	r.mu.Lock()
	r.evs = append(r.evs, &cp)
	r.mu.Unlock()
	return nil
}

func (r *recorder) of(requestID string, t messages.EventType) []*messages.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*messages.Event
	for _, ev := range r.evs {
		if ev.RequestID == requestID && ev.Type == t {
			out = append(out, ev)
		}
	}
	return out
}

func (r *recorder) types(requestID string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, ev := range r.evs {
		if ev.RequestID == requestID {
			out = append(out, fmt.Sprintf("%s:%s", ev.Type, ev.Status))
		}
	}
	return out
}

// countingTalend counts the calls a follower makes to Talend; listErr, when
// set, answers every list call instead of Talend.
type countingTalend struct {
	follow.Talend
	calls, lists, gets atomic.Int64
	mu                 sync.Mutex
	listErr            error        // guarded by mu
	firstCall          atomic.Int64 // unix ns of the first call
}

func (c *countingTalend) setListErr(err error) {
	c.mu.Lock()
	c.listErr = err
	c.mu.Unlock()
}

func (c *countingTalend) count() {
	c.calls.Add(1)
	c.firstCall.CompareAndSwap(0, time.Now().UnixNano())
}

func (c *countingTalend) GetExecution(ctx context.Context, id string) (talend.Execution, error) {
	c.count()
	c.gets.Add(1)
	return c.Talend.GetExecution(ctx, id)
}

func (c *countingTalend) GetPlanExecution(ctx context.Context, id string) (talend.PlanExecution, error) {
	c.count()
	c.gets.Add(1)
	return c.Talend.GetPlanExecution(ctx, id)
}

func (c *countingTalend) ListTaskExecutions(ctx context.Context, from, to time.Time, offset, limit int) (talend.ExecutionPage, error) {
	c.count()
	c.lists.Add(1)
	c.mu.Lock()
	listErr := c.listErr
	c.mu.Unlock()
	if listErr != nil {
		return talend.ExecutionPage{}, listErr
	}
	return c.Talend.ListTaskExecutions(ctx, from, to, offset, limit)
}

func (c *countingTalend) ExecutionLogs(ctx context.Context, id string, count int) ([]talend.LogLine, error) {
	c.count()
	return c.Talend.ExecutionLogs(ctx, id, count)
}

// eventually polls cond until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
