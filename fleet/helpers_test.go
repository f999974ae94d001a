package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/tmc-runner/tmc-runner/internal/testlog"
	"log/slog"
	"net"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/config"
	"github.com/tmc-runner/tmc-runner/follow"
	"github.com/tmc-runner/tmc-runner/messages"
	"github.com/tmc-runner/tmc-runner/runner"
	"github.com/tmc-runner/tmc-runner/talendsim"
	"github.com/tmc-runner/tmc-runner/telemetry"
	"github.com/tmc-runner/tmc-runner/worker"
)

const (
	simClientID = "fleet-client"
	simSecret   = "fleet-secret-7c2e"
)

// sim is the Talend simulator behind a real HTTP server.
func startSim(t testing.TB, opts talendsim.Options) (*talendsim.Simulator, string) {
	t.Helper()
	opts.Clients = map[string]string{simClientID: simSecret}
	opts.KnowAll = true
	if opts.DispatchFor == 0 {
		opts.DispatchFor = 10 * time.Millisecond
	}
	if opts.RunFor == 0 {
		opts.RunFor = 20 * time.Millisecond
	}
	sim := talendsim.New(opts)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	return sim, srv.URL
}

// workerConfig is a worker configuration against the simulator at simURL,
// with env overriding the test defaults.
func workerConfig(t testing.TB, simURL string, env map[string]string) config.Config {
	t.Helper()
	vars := map[string]string{
		"TALEND_API_URL":       simURL,
		"TALEND_CLIENT_ID":     simClientID,
		"TALEND_CLIENT_SECRET": simSecret,
		"TMC_LOG_LEVEL":        "debug",
		"TMC_ADMIN_ADDR":       "",
		"TMC_CONCURRENCY":      "16",
		"TMC_BACKOFF_MIN":      "50ms",
		"TMC_BACKOFF_MAX":      "400ms",
		"TMC_BREAKER_OPEN_FOR": "500ms",
		"TMC_SHUTDOWN_GRACE":   "5s",
		"TMC_AWAIT_RESULT":     "false",
	}
	for k, v := range env {
		vars[k] = v
	}
	cfg, err := config.Load(vars)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// startWorker runs a real tmc-runner worker (runner.Runner, wired as
// `tmc-runner worker` wires it) on nc until the test ends. Its log goes to
// logs.
func startWorker(t testing.TB, cfg config.Config, nc *nats.Conn, logs *testlog.Buffer) {
	t.Helper()
	log := slog.New(telemetry.TraceHandler{Handler: slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r, err := runner.New(ctx, runner.Options{
		Config: cfg, Conn: nc, Logger: log, AdminListener: ln,
		Tune: func(c *worker.Config) { c.FetchWait = 200 * time.Millisecond },
		TuneFollow: func(c *follow.Config) {
			c.MinInterval, c.MaxInterval, c.StartupLag = 50*time.Millisecond, 200*time.Millisecond, 500*time.Millisecond
			c.LeaseTTL, c.Tick = 3*time.Second, 20*time.Millisecond
		},
	})
	if err != nil {
		cancel()
		_ = ln.Close()
		t.Fatalf("runner: %v\nlogs:\n%s", err, logs.Tail(20))
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("runner: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("runner did not stop within 30s")
		}
	})
}

// readEvents reads every event of stream matching filter (all when
// empty) with an ordered consumer, keyed by requestId.
func readEvents(t testing.TB, js jetstream.JetStream, stream, filter string) map[string][]*messages.Event {
	t.Helper()
	out, err := tryReadEvents(js, stream, filter)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// tryReadEvents is readEvents that reports errors (a cluster electing a
// leader answers some calls with errors for a while).
func tryReadEvents(js jetstream.JetStream, stream, filter string) (map[string][]*messages.Event, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, err
	}
	var opts []jetstream.StreamInfoOpt
	if filter != "" {
		opts = append(opts, jetstream.WithSubjectFilter(filter))
	}
	info, err := s.Info(ctx, opts...)
	if err != nil {
		return nil, err
	}
	want := info.State.Msgs
	if filter != "" {
		want = 0
		for _, n := range info.State.Subjects {
			want += n
		}
	}
	out := map[string][]*messages.Event{}
	if want == 0 {
		return out, nil
	}
	cfg := jetstream.OrderedConsumerConfig{MaxResetAttempts: 3}
	if filter != "" {
		cfg.FilterSubjects = []string{filter}
	}
	c, err := js.OrderedConsumer(ctx, stream, cfg)
	if err != nil {
		return nil, err
	}
	for got := uint64(0); got < want; {
		batch, err := c.Fetch(int(min(want-got, 500)), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, fmt.Errorf("read %d of %d events: %w", got, want, err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			ev, err := messages.DecodeEvent(m.Data())
			if err != nil {
				return nil, fmt.Errorf("event on %s: %w", m.Subject(), err)
			}
			out[ev.RequestID] = append(out[ev.RequestID], ev)
		}
		if n == 0 {
			return nil, fmt.Errorf("read %d of %d events: %v", got, want, batch.Error())
		}
		got += uint64(n)
	}
	return out, nil
}

var terminalTypes = map[messages.EventType]bool{
	messages.Accepted: true, messages.Failed: true, messages.Rejected: true,
	messages.Unknown: true, messages.Result: true,
}

func isTerminal(e *messages.Event) bool {
	if e.Type == messages.Accepted && e.Followed != nil && *e.Followed {
		return false // a result is still to come
	}
	return terminalTypes[e.Type]
}

func terminals(evs []*messages.Event) int {
	n := 0
	for _, e := range evs {
		if isTerminal(e) {
			n++
		}
	}
	return n
}

func typesOf(evs []*messages.Event) []messages.EventType {
	var out []messages.EventType
	for _, e := range evs {
		out = append(out, e.Type)
	}
	return out
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func requestBody(t testing.TB, id, executable string, extra map[string]any) []byte {
	t.Helper()
	body := map[string]any{"requestId": id, "executable": executable}
	for k, v := range extra {
		body[k] = v
	}
	data, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
