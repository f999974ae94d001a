package talend

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"
	"github.com/tmc-runner/tmc-runner/talendsim"
)

// breakerEnv is a simulator, a client whose API calls go through a
// breaker, and the breaker's recorded transitions.
type breakerEnv struct {
	*simEnv
	breaker *Breaker
	mu      sync.Mutex
	changes []string
	drop    atomic.Bool // when set, API calls (not token calls) lose their connection
	// hold, when set, makes probe reads wait: each arrival is reported on
	// arrived and waits for release to be closed.
	hold    atomic.Bool
	hits    atomic.Int32 // API requests (not token requests) that reached the server
	arrived chan struct{}
	release chan struct{}
}

func (e *breakerEnv) transitions() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.changes...)
}

func newBreakerEnv(t *testing.T, failures uint32, openFor, apiTimeout time.Duration) *breakerEnv {
	t.Helper()
	be := &breakerEnv{}
	be.breaker = NewBreaker(http.DefaultTransport.(*http.Transport).Clone(), BreakerSettings{
		ConsecutiveFailures: failures,
		OpenFor:             openFor,
		OnStateChange: func(from, to gobreaker.State) {
			be.mu.Lock()
			be.changes = append(be.changes, from.String()+"->"+to.String())
			be.mu.Unlock()
		},
	})
	be.arrived, be.release = make(chan struct{}, 16), make(chan struct{})
	dropper := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// Read the body before the simulator sleeps in a delay fault: the
			// server notices a client going away only once the body is read.
			if r.URL.Path != "/security/oauth/token" {
				be.hits.Add(1)
			}
			body, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(body))
			if be.hold.Load() && r.Method == http.MethodGet {
				be.arrived <- struct{}{}
				<-be.release
			}
			if be.drop.Load() && r.URL.Path != "/security/oauth/token" {
				conn, _, err := http.NewResponseController(w).Hijack()
				if err == nil {
					_ = conn.Close()
				}
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	be.simEnv = newSimEnv(t, talendsim.Options{}, dropper, func(c *Config) {
		c.API = &http.Client{Transport: be.breaker}
		c.CallTimeout = apiTimeout
	})
	// Fetch the token first so that breaker tests count API calls only.
	if _, err := be.client.Tokens().Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	return be
}

// apiCalls counts the run-task calls that reached the simulator.
func apiCalls(st talendsim.Stats) int {
	n := 0
	for k, v := range st.Calls {
		if strings.HasPrefix(k, "POST /processing/executions ") {
			n += v
		}
	}
	return n
}

func TestBreakerOpensOnSystemicFailures(t *testing.T) {
	t.Parallel()
	const failures = 3
	for _, tc := range []struct {
		name  string
		fault func(*breakerEnv)
		check func(error) bool
	}{
		{"503", func(e *breakerEnv) { e.sim.SetOutage(true) }, nil},
		{"500", func(e *breakerEnv) { e.sim.InjectFault(talendsim.Fault{Status: 500}) }, nil},
		{"connection lost", func(e *breakerEnv) { e.drop.Store(true) }, nil},
		{"timeout", func(e *breakerEnv) { e.sim.InjectFault(talendsim.Fault{Delay: 5 * time.Second}) }, func(err error) bool {
			var ne interface{ Timeout() bool }
			return errors.As(err, &ne) && ne.Timeout()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newBreakerEnv(t, failures, time.Hour, 300*time.Millisecond)
			tc.fault(e)
			for i := range failures {
				_, err := e.client.RunTask(context.Background(), TaskRun{Executable: "t"})
				if err == nil || errors.Is(err, ErrBreakerOpen) || !IsSystemic(err) {
					t.Fatalf("failure %d: %v, want a systemic failure from the server", i, err)
				}
				if tc.check != nil && !tc.check(err) {
					t.Fatalf("failure %d: %v is not the expected kind", i, err)
				}
			}
			if st := e.breaker.State(); st != gobreaker.StateOpen || !e.breaker.Open() {
				t.Fatalf("breaker %v after %d systemic failures, want open", st, failures)
			}
			n := e.hits.Load()
			for range 10 {
				_, err := e.client.RunTask(context.Background(), TaskRun{Executable: "t"})
				if !errors.Is(err, ErrBreakerOpen) || !IsSystemic(err) {
					t.Fatalf("call through an open breaker: %v, want systemic ErrBreakerOpen", err)
				}
			}
			if got := e.hits.Load(); got != n || n != failures {
				t.Fatalf("%d calls reached the server, want %d", got, failures)
			}
			if got := e.transitions(); len(got) != 1 || got[0] != "closed->open" {
				t.Fatalf("state changes %v, want [closed->open]", got)
			}
		})
	}
}

// A 429 is the fleet over its budget, not Talend failing: it stays a
// systemic error (the request is retried later) but never opens the
// breaker, however many come in a row.
func TestBreakerIgnoresRateLimits(t *testing.T) {
	t.Parallel()
	const failures = 2
	e := newBreakerEnv(t, failures, time.Hour, 10*time.Second)
	e.sim.InjectFault(talendsim.Fault{Status: 429, RetryAfter: "1"})
	for i := range 5 * failures {
		_, err := e.client.RunTask(context.Background(), TaskRun{Executable: "t"})
		var apiErr *APIError
		if !errors.As(err, &apiErr) || apiErr.StatusCode != 429 || !IsSystemic(err) || RetryAfter(err) != time.Second {
			t.Fatalf("call %d: %v, want a systemic 429 with its Retry-After", i, err)
		}
	}
	if st := e.breaker.State(); st != gobreaker.StateClosed {
		t.Fatalf("breaker %v after %d 429s, want closed", st, 5*failures)
	}
	// Systemic failures still count (the 429s did not reset anything).
	e.sim.ClearFaults()
	e.sim.SetOutage(true)
	for range failures {
		_, _ = e.client.RunTask(context.Background(), TaskRun{Executable: "t"})
	}
	if st := e.breaker.State(); st != gobreaker.StateOpen {
		t.Fatalf("breaker %v after %d 503s following the 429s, want open", st, failures)
	}
}

func TestBreakerIgnoresRequestFailures(t *testing.T) {
	t.Parallel()
	const failures = 2
	for _, tc := range []struct {
		name   string
		setup  func(*breakerEnv)
		run    TaskRun
		status int
	}{
		{"400", nil, TaskRun{Executable: "t", LogLevel: "LOUD"}, 400},
		{"403", func(e *breakerEnv) { e.sim.SetBehaviour("t", talendsim.Behaviour{Forbidden: true}) }, TaskRun{Executable: "t"}, 403},
		{"404", func(e *breakerEnv) { e.sim.SetBehaviour("t", talendsim.Behaviour{Missing: true}) }, TaskRun{Executable: "t"}, 404},
		{"405", func(e *breakerEnv) { e.sim.SetBehaviour("t", talendsim.Behaviour{Paused: true}) }, TaskRun{Executable: "t"}, 405},
		{"422", func(e *breakerEnv) { e.sim.InjectFault(talendsim.Fault{Status: 422}) }, TaskRun{Executable: "t"}, 422},
		{"501", func(e *breakerEnv) { e.sim.SetBehaviour("t", talendsim.Behaviour{NotConfigured: true}) }, TaskRun{Executable: "t"}, 501},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newBreakerEnv(t, failures, time.Hour, 10*time.Second)
			if tc.setup != nil {
				tc.setup(e)
			}
			for range 5 * failures {
				_, err := e.client.RunTask(context.Background(), tc.run)
				var apiErr *APIError
				if !errors.As(err, &apiErr) || apiErr.StatusCode != tc.status {
					t.Fatalf("RunTask = %v, want HTTP %d", err, tc.status)
				}
			}
			if st := e.breaker.State(); st != gobreaker.StateClosed {
				t.Fatalf("breaker %v after %d answers, want closed", st, tc.status)
			}
			if got := apiCalls(e.sim.Stats()); got != 5*failures {
				t.Fatalf("%d calls reached the server, want %d", got, 5*failures)
			}
		})
	}
}

func TestBreakerIgnoresCancellations(t *testing.T) {
	t.Parallel()
	const failures = 2
	e := newBreakerEnv(t, failures, time.Hour, 10*time.Second)
	e.sim.InjectFault(talendsim.Fault{Delay: 10 * time.Second, Count: 5 * failures})
	for range 5 * failures {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(20*time.Millisecond, cancel)
		_, err := e.client.RunTask(ctx, TaskRun{Executable: "t"})
		cancel()
		if !errors.Is(err, context.Canceled) || IsSystemic(err) {
			t.Fatalf("cancelled call = %v, want non-systemic context.Canceled", err)
		}
	}
	if st := e.breaker.State(); st != gobreaker.StateClosed {
		t.Fatalf("breaker %v after cancellations, want closed", st)
	}
	e.sim.ClearFaults()
	if _, err := e.client.RunTask(context.Background(), TaskRun{Executable: "t"}); err != nil {
		t.Fatalf("call after cancellations: %v", err)
	}
}

func TestBreakerSuccessResetsCount(t *testing.T) {
	t.Parallel()
	const failures = 3
	e := newBreakerEnv(t, failures, time.Hour, 10*time.Second)
	// failures-1 systemic failures, one success, failures-1 again: only
	// consecutive failures count.
	for range 2 {
		e.sim.InjectFault(talendsim.Fault{Status: 503, Count: failures - 1})
		for range failures - 1 {
			if _, err := e.client.RunTask(context.Background(), TaskRun{Executable: "t"}); err == nil {
				t.Fatal("expected a 503")
			}
		}
		if _, err := e.client.RunTask(context.Background(), TaskRun{Executable: "t"}); err != nil {
			t.Fatalf("RunTask: %v", err)
		}
	}
	if st := e.breaker.State(); st != gobreaker.StateClosed {
		t.Fatalf("breaker %v, want closed", st)
	}
}

func TestBreakerHalfOpenProbe(t *testing.T) {
	t.Parallel()
	const failures = 2
	e := newBreakerEnv(t, failures, 100*time.Millisecond, 10*time.Second)
	e.sim.SetOutage(true)
	for range failures {
		_ = e.client.Probe(context.Background())
	}
	if err := e.client.Probe(context.Background()); !errors.Is(err, ErrBreakerOpen) {
		t.Fatalf("Probe on an open breaker = %v, want ErrBreakerOpen", err)
	}

	// Still failing after OpenFor: the probe reaches Talend, fails, and the
	// breaker opens again.
	eventually(t, "half-open", func() bool { return e.breaker.State() == gobreaker.StateHalfOpen })
	if err := e.client.Probe(context.Background()); errors.Is(err, ErrBreakerOpen) || !IsSystemic(err) {
		t.Fatalf("half-open probe = %v, want the server's 503", err)
	}
	if st := e.breaker.State(); st != gobreaker.StateOpen {
		t.Fatalf("breaker %v after a failed probe, want open", st)
	}

	e.sim.SetOutage(false)
	eventually(t, "half-open again", func() bool { return e.breaker.State() == gobreaker.StateHalfOpen })
	if err := e.client.Probe(context.Background()); err != nil {
		t.Fatalf("probe after recovery: %v", err)
	}
	if st := e.breaker.State(); st != gobreaker.StateClosed || e.breaker.Open() {
		t.Fatalf("breaker %v after a successful probe, want closed", st)
	}
	if _, err := e.client.RunTask(context.Background(), TaskRun{Executable: "t"}); err != nil {
		t.Fatalf("RunTask after the breaker closed: %v", err)
	}
	want := []string{"closed->open", "open->half-open", "half-open->open", "open->half-open", "half-open->closed"}
	got := e.transitions()
	if len(got) != len(want) {
		t.Fatalf("state changes %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("state changes %v, want %v", got, want)
		}
	}
	if n := e.sim.Stats().Calls["GET /processing/executables/tasks/executions 200"]; n != 1 {
		t.Fatalf("%d successful probes at the server, want 1", n)
	}
}

func TestBreakerHalfOpenAllowance(t *testing.T) {
	t.Parallel()
	// While the one half-open probe is in flight, other calls fail fast
	// without reaching the server.
	e := newBreakerEnv(t, 1, 50*time.Millisecond, 10*time.Second)
	e.sim.InjectFault(talendsim.Fault{Status: 503, Count: 1})
	_ = e.client.Probe(context.Background())
	eventually(t, "half-open", func() bool { return e.breaker.State() == gobreaker.StateHalfOpen })
	e.hold.Store(true)
	probe := make(chan error, 1)
	go func() { probe <- e.client.Probe(context.Background()) }()
	within(t, "the probe to reach the server", e.arrived)
	n := apiCalls(e.sim.Stats())
	for range 5 {
		if _, err := e.client.RunTask(context.Background(), TaskRun{Executable: "t"}); !errors.Is(err, ErrBreakerOpen) {
			t.Fatalf("RunTask during the half-open probe = %v, want ErrBreakerOpen", err)
		}
	}
	close(e.release)
	if err := within(t, "the probe", probe); err != nil {
		t.Fatalf("probe: %v", err)
	}
	if got := apiCalls(e.sim.Stats()); got != n {
		t.Fatalf("%d calls passed the half-open breaker besides the probe", got-n)
	}
	if st := e.breaker.State(); st != gobreaker.StateClosed {
		t.Fatalf("breaker %v, want closed", st)
	}
}
