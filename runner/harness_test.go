package runner

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/tmc-runner/tmc-runner/internal/testlog"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/tmc-runner/tmc-runner/broker"
	"github.com/tmc-runner/tmc-runner/config"
	"github.com/tmc-runner/tmc-runner/follow"
	"github.com/tmc-runner/tmc-runner/messages"
	"github.com/tmc-runner/tmc-runner/natsembed"
	"github.com/tmc-runner/tmc-runner/talendsim"
	"github.com/tmc-runner/tmc-runner/telemetry"
	"github.com/tmc-runner/tmc-runner/worker"
)

const (
	testClientID = "it-client"
	testSecret   = "it-secret-5b1f0c"
)

// harness is the real pipeline for one test: an embedded nats-server with
// JetStream, the Talend simulator behind a real HTTP server, and a Runner
// wired exactly as `tmc-runner worker` wires it.
type harness struct {
	t      testing.TB
	srv    *natsembed.Server
	nc     *nats.Conn
	js     jetstream.JetStream
	sim    *talendsim.Simulator
	simURL string
	topo   broker.Topology
	cfg    config.Config
	logs   *testlog.Buffer
	// seen records every Authorization header the simulator received, so
	// tests can search output for the tokens actually issued.
	seenMu sync.Mutex
	seen   map[string]bool

	quiet bool // log warnings only (benchmarks)
	// follow, when set, turns results on with these fast intervals.
	follow *follow.Config
	// tuneWorker, when set, adjusts the worker's configuration further.
	tuneWorker func(*worker.Config)
	// spans records every span of the runner (nil in benchmarks: tracing
	// off, as in production without OTEL_* settings).
	spans  *tracetest.SpanRecorder
	runner *Runner
	cancel context.CancelFunc
	done   chan error
}

type harnessOption func(*harness, *talendsim.Options)

func newHarness(t testing.TB, opts ...harnessOption) *harness {
	t.Helper()
	h := &harness{t: t, logs: &testlog.Buffer{}, seen: map[string]bool{}}
	srv, err := natsembed.Start(natsembed.Options{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	h.srv = srv
	t.Cleanup(srv.Stop)
	h.nc, err = nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.nc.Close)
	h.js, err = jetstream.New(h.nc)
	if err != nil {
		t.Fatal(err)
	}
	simOpts := talendsim.Options{
		KnowAll:     true,
		Clients:     map[string]string{testClientID: testSecret},
		DispatchFor: 10 * time.Millisecond,
		RunFor:      20 * time.Millisecond,
	}
	for _, o := range opts {
		o(h, &simOpts)
	}
	h.sim = talendsim.New(simOpts)
	httpSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a := r.Header.Get("Authorization"); a != "" {
			h.seenMu.Lock()
			h.seen[a] = true
			h.seenMu.Unlock()
		}
		h.sim.ServeHTTP(w, r)
	}))
	t.Cleanup(httpSrv.Close)
	h.simURL = httpSrv.URL

	cfg, err := config.Load(map[string]string{
		"TALEND_API_URL":       h.simURL,
		"TALEND_CLIENT_ID":     testClientID,
		"TALEND_CLIENT_SECRET": testSecret,
		"TMC_LOG_LEVEL":        "debug",
		"TMC_ADMIN_ADDR":       "",
		"TMC_CONCURRENCY":      "16",
		"TMC_BACKOFF_MIN":      "50ms",
		"TMC_BACKOFF_MAX":      "400ms",
		"TMC_BREAKER_OPEN_FOR": "500ms",
		"TMC_SHUTDOWN_GRACE":   "5s",
		// The start path is what most tests look at; follow tests turn
		// results on.
		"TMC_AWAIT_RESULT": "false",
		// Budgets are tested where they matter; elsewhere they would only
		// slow the tests down.
		"TMC_RATE_LIMIT": "0",
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg.NATS.URL = srv.URL()
	h.cfg = cfg
	h.topo = cfg.Worker.Topology()
	return h
}

// start runs a Runner until the test ends (or stop is called).
func (h *harness) start(tune ...func(*config.Config)) {
	h.t.Helper()
	cfg := h.cfg
	if h.follow != nil {
		cfg.Worker.AwaitResult = true
	}
	for _, f := range tune {
		f(&cfg)
	}
	level := slog.LevelDebug
	if h.quiet {
		level = slog.LevelWarn
	}
	log := slog.New(telemetry.TraceHandler{Handler: slog.NewJSONHandler(h.logs, &slog.HandlerOptions{Level: level})})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		h.t.Fatal(err)
	}
	var tp trace.TracerProvider
	if !h.quiet {
		h.spans = tracetest.NewSpanRecorder()
		tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(h.spans))
	}
	ctx, cancel := context.WithCancel(context.Background())
	r, err := New(ctx, Options{
		Config: cfg, Conn: h.nc, Logger: log, AdminListener: ln, TracerProvider: tp,
		Tune: func(c *worker.Config) {
			c.FetchWait = 200 * time.Millisecond
			if h.tuneWorker != nil {
				h.tuneWorker(c)
			}
		},
		TuneFollow: func(c *follow.Config) {
			if h.follow != nil {
				c.MinInterval, c.MaxInterval, c.StartupLag = h.follow.MinInterval, h.follow.MaxInterval, h.follow.StartupLag
				c.LeaseTTL, c.Tick = h.follow.LeaseTTL, h.follow.Tick
			}
		},
	})
	if err != nil {
		cancel()
		_ = ln.Close()
		h.t.Fatalf("runner: %v", err)
	}
	h.runner, h.cancel, h.done = r, cancel, make(chan error, 1)
	go func() { h.done <- r.Run(ctx) }()
	h.t.Cleanup(h.stop)
}

// stop shuts the runner down gracefully and waits for it.
func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("runner: %v", err)
		}
	case <-time.After(30 * time.Second):
		h.t.Error("runner did not stop within 30s")
	}
	h.cancel = nil
}

// publish sends a raw request body to a route; msgID may be empty.
func (h *harness) publish(route string, body any, msgID string) {
	h.t.Helper()
	var data []byte
	switch b := body.(type) {
	case string:
		data = []byte(b)
	case []byte:
		data = b
	default:
		var err error
		if data, err = json.Marshal(b); err != nil {
			h.t.Fatal(err)
		}
	}
	msg := &nats.Msg{Subject: h.topo.RequestSubject(route), Header: nats.Header{}, Data: data}
	if msgID != "" {
		msg.Header.Set(nats.MsgIdHdr, msgID)
	}
	if _, err := h.js.PublishMsg(context.Background(), msg); err != nil {
		h.t.Fatalf("publish: %v", err)
	}
}

// request publishes a valid task request with an explicit requestId.
func (h *harness) request(id, executable string, extra map[string]any) {
	h.t.Helper()
	body := map[string]any{"requestId": id, "executable": executable}
	for k, v := range extra {
		body[k] = v
	}
	h.publish("default", body, id)
}

// allEvents reads every stored event, keyed by requestId.
func (h *harness) allEvents() map[string][]*messages.Event {
	h.t.Helper()
	ctx := context.Background()
	out := map[string][]*messages.Event{}
	s, err := h.js.Stream(ctx, h.topo.EventsStream)
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	if info.State.Msgs == 0 {
		return out
	}
	c, err := h.js.OrderedConsumer(ctx, h.topo.EventsStream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		h.t.Fatal(err)
	}
	for got := uint64(0); got < info.State.Msgs; {
		batch, err := c.Fetch(int(min(info.State.Msgs-got, 500)), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			h.t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			ev, err := messages.DecodeEvent(m.Data())
			if err != nil {
				h.t.Fatalf("event on %s: %v", m.Subject(), err)
			}
			out[ev.RequestID] = append(out[ev.RequestID], ev)
		}
		if n == 0 {
			h.t.Fatalf("read %d of %d events", got, info.State.Msgs)
		}
		got += uint64(n)
	}
	return out
}

// terminalTypes are the event types that end a request not followed.
var terminalTypes = map[messages.EventType]bool{
	messages.Accepted: true, messages.Failed: true, messages.Rejected: true,
	messages.Unknown: true, messages.Result: true,
}

// waitTerminal waits until every id has a terminal event and returns all
// events.
func (h *harness) waitTerminal(timeout time.Duration, ids ...string) map[string][]*messages.Event {
	h.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		evs := h.allEvents()
		missing := 0
		for _, id := range ids {
			if !hasTerminal(evs[id]) {
				missing++
			}
		}
		if missing == 0 {
			return evs
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%d of %d requests without a terminal event after %s\nlogs:\n%s", missing, len(ids), timeout, h.logs.Tail(40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func hasTerminal(evs []*messages.Event) bool {
	for _, e := range evs {
		if e.Type == messages.Accepted && e.Followed != nil && *e.Followed {
			continue // a result is still to come
		}
		if terminalTypes[e.Type] {
			return true
		}
	}
	return false
}

// eventually polls cond until it holds or the timeout passes.
func (h *harness) eventually(timeout time.Duration, what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out after %s waiting for %s\nlogs:\n%s", timeout, what, h.logs.Tail(40))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// streamMsgs is the number of messages in a stream.
func (h *harness) streamMsgs(name string) uint64 {
	h.t.Helper()
	s, err := h.js.Stream(context.Background(), name)
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		h.t.Fatal(err)
	}
	return info.State.Msgs
}

// consumerInfo is the request consumer's state.
func (h *harness) consumerInfo() *jetstream.ConsumerInfo {
	h.t.Helper()
	c, err := h.js.Consumer(context.Background(), h.topo.RunsStream, h.topo.Consumer)
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := c.Info(context.Background())
	if err != nil {
		h.t.Fatal(err)
	}
	return info
}

// assertDrained checks that nothing is left pending: the work queue is
// empty and no message awaits an ack.
func (h *harness) assertDrained() {
	h.t.Helper()
	h.eventually(10*time.Second, "request stream drained", func() bool {
		info := h.consumerInfo()
		return h.streamMsgs(h.topo.RunsStream) == 0 && info.NumAckPending == 0 && info.NumPending == 0
	})
}

// tokens returns the bearer tokens the simulator saw.
func (h *harness) tokens() []string {
	h.seenMu.Lock()
	defer h.seenMu.Unlock()
	var out []string
	for a := range h.seen {
		if tok, ok := strings.CutPrefix(a, "Bearer "); ok {
			out = append(out, tok)
		}
	}
	return out
}

func ids(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%04d", prefix, i)
	}
	return out
}

func typesOf(evs []*messages.Event) []messages.EventType {
	var out []messages.EventType
	for _, e := range evs {
		out = append(out, e.Type)
	}
	return out
}
