package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/broker"
	"github.com/tmc-runner/tmc-runner/claims"
	"github.com/tmc-runner/tmc-runner/config"
	"github.com/tmc-runner/tmc-runner/messages"
	"github.com/tmc-runner/tmc-runner/talendsim"
	"github.com/tmc-runner/tmc-runner/worker"
)

// Many valid requests: exactly one accepted event and one Talend execution
// each, and nothing left pending.
func TestPipelineManyValidRequests(t *testing.T) {
	h := newHarness(t)
	h.start()
	n := 300
	if testing.Short() {
		n = 60
	}
	all := ids("many", n)
	var wg sync.WaitGroup
	for i, id := range all {
		extra := map[string]any{"parameters": map[string]string{"p": "v"}, "metadata": map[string]any{"i": i}}
		if i%3 == 0 {
			extra = map[string]any{"parameters": []map[string]any{{"name": "p", "value": "v", "encrypted": true}}}
		}
		wg.Go(func() { h.request(id, "task-"+id, extra) })
	}
	wg.Wait()
	evs := h.waitTerminal(60*time.Second, all...)
	h.assertDrained()
	stats := h.sim.Stats()
	for _, id := range all {
		got := evs[id]
		if len(got) != 1 || got[0].Type != messages.Accepted || got[0].ExecutionID == "" {
			t.Fatalf("%s: events %v, want exactly one accepted with an executionId", id, typesOf(got))
		}
		if got[0].Followed == nil || *got[0].Followed {
			t.Errorf("%s: followed = %v, want false", id, got[0].Followed)
		}
		if c := stats.Executions["task-"+id]; c != 1 {
			t.Errorf("%s: %d Talend executions, want 1", id, c)
		}
		exec, ok := h.sim.Execution(got[0].ExecutionID)
		if !ok || exec.Executable != "task-"+id || exec.Parameters["p"] != "v" {
			t.Errorf("%s: simulator has %+v for the accepted executionId", id, exec)
		}
	}
	if stats.ExecutionsTotal != n {
		t.Errorf("simulator saw %d executions, want %d", stats.ExecutionsTotal, n)
	}
	if stats.TokensIssued != 1 {
		t.Errorf("%d tokens issued for one process, want 1", stats.TokensIssued)
	}
}

// Invalid requests end with one rejected event naming each problem, are
// terminated, and never reach Talend.
func TestPipelineRejectsInvalidRequests(t *testing.T) {
	h := newHarness(t)
	h.start()
	cases := []struct {
		id     string
		body   string
		fields []string
	}{
		{"bad-json", `{"executable": "x"`, []string{""}},
		{"unknown-field", `{"requestId":"unknown-field","executable":"x","colour":"red"}`, []string{"colour"}},
		{"wrong-type", `{"requestId":"wrong-type","executable":"x","timeout":"soon"}`, []string{"timeout"}},
		{"bad-level", `{"requestId":"bad-level","executable":"x","logLevel":"LOUD"}`, []string{"logLevel"}},
		{"dup-param", `{"requestId":"dup-param","executable":"x","parameters":[{"name":"a","value":"1"},{"name":"a","value":"2"}]}`, []string{"parameters[1].name"}},
		{"empty-exec", `{"requestId":"empty-exec","executable":""}`, []string{"executable"}},
		{"plan-params", `{"requestId":"plan-params","executable":"p","kind":"plan","logLevel":"WARN","timeout":5}`, []string{"logLevel", "timeout"}},
		{"two-problems", `{"requestId":"two-problems","executable":"x","logLevel":"LOUD","onUnknown":"panic"}`, []string{"logLevel", "onUnknown"}},
		{"oversize", `{"requestId":"oversize","executable":"x","metadata":{"pad":"` + strings.Repeat("x", 70<<10) + `"}}`, []string{""}},
	}
	for _, c := range cases {
		h.publish("default", c.body, c.id)
	}
	var want []string
	for _, c := range cases {
		want = append(want, c.id)
	}
	evs := h.waitTerminal(30*time.Second, want...)
	for _, c := range cases {
		t.Run(c.id, func(t *testing.T) {
			got := evs[c.id]
			if len(got) != 1 || got[0].Type != messages.Rejected {
				t.Fatalf("events %v, want one rejected", typesOf(got))
			}
			var fields []string
			for _, p := range got[0].Errors {
				if p.Message == "" {
					t.Errorf("problem %+v has no message", p)
				}
				fields = append(fields, p.Field)
			}
			if !slices.Equal(fields, c.fields) {
				t.Errorf("problem fields %q, want %q (%+v)", fields, c.fields, got[0].Errors)
			}
		})
	}
	h.assertDrained()
	if n := h.sim.Stats().ExecutionsTotal; n != 0 {
		t.Errorf("%d Talend executions for invalid requests", n)
	}
	if n := h.streamMsgs(h.topo.DeadStream); n != 0 {
		t.Errorf("%d dead letters for rejected requests; only Talend failures are dead-lettered", n)
	}
}

// Talend's refusals (400, 403, 404, 405, 422-like, 501) end with a failed
// event carrying the status and Talend's body, a dead letter, and a term.
func TestPipelineTalendRefusalsFail(t *testing.T) {
	h := newHarness(t)
	h.sim.SetBehaviour("missing-task", talendsim.Behaviour{Missing: true})
	h.sim.SetBehaviour("paused-task", talendsim.Behaviour{Paused: true})
	h.sim.SetBehaviour("unconfigured-task", talendsim.Behaviour{NotConfigured: true})
	h.sim.SetBehaviour("forbidden-task", talendsim.Behaviour{Forbidden: true})
	h.start()
	cases := map[string]int{"missing-task": 404, "paused-task": 405, "unconfigured-task": 501, "forbidden-task": 403}
	for exec := range cases {
		h.request("req-"+exec, exec, nil)
	}
	// A 400 from Talend (a body it refuses) cannot be provoked by a valid
	// request: inject it.
	h.eventually(10*time.Second, "the four refusals", func() bool { return h.streamMsgs(h.topo.DeadStream) == 4 })
	h.sim.InjectFault(talendsim.Fault{Status: http.StatusBadRequest, Count: 1})
	h.request("req-bad-request", "any-task", nil)
	cases["any-task"] = 400

	idOf := func(exec string) string {
		if exec == "any-task" {
			return "req-bad-request"
		}
		return "req-" + exec
	}
	var all []string
	for exec := range cases {
		all = append(all, idOf(exec))
	}
	evs := h.waitTerminal(30*time.Second, all...)
	for exec, status := range cases {
		id := idOf(exec)
		got := evs[id]
		if len(got) != 1 || got[0].Type != messages.Failed {
			t.Fatalf("%s: events %v, want one failed", id, typesOf(got))
		}
		ev := got[0]
		if ev.Reason != messages.ReasonTalendError || ev.HTTPStatus != status || ev.TalendError == nil || ev.TalendError.Status != status {
			t.Errorf("%s: reason %q http %d talendError %+v, want talend_error %d", id, ev.Reason, ev.HTTPStatus, ev.TalendError, status)
		}
		dead, err := h.deadLetter("default", id)
		if err != nil {
			t.Errorf("%s: dead letter: %v", id, err)
			continue
		}
		if dead.Header.Get(broker.HeaderDeadReason) != messages.ReasonTalendError {
			t.Errorf("%s: dead letter reason %q", id, dead.Header.Get(broker.HeaderDeadReason))
		}
	}
	h.assertDrained()
	if n := h.streamMsgs(h.topo.DeadStream); n != uint64(len(cases)) {
		t.Errorf("%d dead letters, want %d", n, len(cases))
	}
}

func (h *harness) deadLetter(route, id string) (*jetstream.RawStreamMsg, error) {
	s, err := h.js.Stream(context.Background(), h.topo.DeadStream)
	if err != nil {
		return nil, err
	}
	return s.GetLastMsgForSubject(context.Background(), h.topo.DeadSubject(route, id))
}

// 5xx and 429 bursts are retried with backoff, Retry-After honoured, and
// every request is finally accepted, once.
func TestPipelineRetriesSystemicFaults(t *testing.T) {
	h := newHarness(t)
	h.start(func(c *config.Config) { c.Talend.BreakerFailures = 1000 }) // this test is about naks, not the breaker
	for _, f := range []talendsim.Fault{
		{Status: 503, Count: 4},
		{Status: 500, Count: 3},
		{Status: 429, Count: 3, RetryAfter: "1"},
		{Status: 429, Count: 3},
		{Status: 502, Count: 2},
	} {
		h.sim.InjectFault(f)
	}
	all := ids("burst", 10)
	for _, id := range all {
		h.request(id, "task-"+id, nil)
	}
	evs := h.waitTerminal(60*time.Second, all...)
	h.assertDrained()
	for _, id := range all {
		if got := evs[id]; len(got) != 1 || got[0].Type != messages.Accepted {
			t.Errorf("%s: events %v, want one accepted", id, typesOf(got))
		}
		if c := h.sim.Stats().Executions["task-"+id]; c != 1 {
			t.Errorf("%s: %d executions", id, c)
		}
	}
	if n := h.logs.Count(`"outcome":"retry"`); n < 15 {
		t.Errorf("%d retry decisions logged, want >= 15 (one per injected fault)", n)
	}
	// Retry-After: 1 => at least one nak delayed by exactly 1s.
	if n := h.logs.Count(`"outcome":"retry"`, `"delay":1000000000`); n == 0 {
		t.Errorf("no nak honoured Retry-After: 1\n%s", h.logs.Tail(30))
	}
}

// A token that goes stale mid-run is refreshed once; no request fails.
func TestPipelineTokenExpiresMidRun(t *testing.T) {
	h := newHarness(t)
	h.start()
	first := ids("before", 20)
	for _, id := range first {
		h.request(id, "t", nil)
	}
	h.waitTerminal(30*time.Second, first...)
	h.sim.ExpireTokens()
	second := ids("after", 40)
	for _, id := range second {
		h.request(id, "t", nil)
	}
	evs := h.waitTerminal(30*time.Second, second...)
	for _, id := range append(first, second...) {
		if got := evs[id]; len(got) != 1 || got[0].Type != messages.Accepted {
			t.Errorf("%s: events %v, want one accepted", id, typesOf(got))
		}
	}
	st := h.sim.Stats()
	if st.TokensIssued != 2 {
		t.Errorf("%d tokens issued, want 2 (one refresh after the stale one)", st.TokensIssued)
	}
	if st.Unauthorized == 0 {
		t.Error("the simulator never answered 401: the test did not exercise a stale token")
	}
	if st.ExecutionsTotal != len(first)+len(second) {
		t.Errorf("%d executions, want %d", st.ExecutionsTotal, len(first)+len(second))
	}
}

// Short-lived tokens are refreshed ahead of expiry, by one fetch each time.
func TestPipelineTokenRefreshAhead(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for token lifetimes")
	}
	h := newHarness(t, func(_ *harness, o *talendsim.Options) { o.TokenLifetime = 3 * time.Second })
	h.start(func(c *config.Config) { c.Talend.TokenRefresh = time.Second })
	var all []string
	start := time.Now()
	for i := 0; time.Since(start) < 7*time.Second; i++ {
		id := fmt.Sprintf("tick-%03d", i)
		all = append(all, id)
		h.request(id, "t", nil)
		time.Sleep(100 * time.Millisecond)
	}
	evs := h.waitTerminal(30*time.Second, all...)
	for _, id := range all {
		if got := evs[id]; len(got) != 1 || got[0].Type != messages.Accepted {
			t.Errorf("%s: %v", id, typesOf(got))
		}
	}
	st := h.sim.Stats()
	if st.Unauthorized != 0 {
		t.Errorf("%d calls with an expired token: refresh did not happen ahead of expiry", st.Unauthorized)
	}
	// ~7s of traffic with 3s tokens refreshed 1s ahead: 3 to 5 fetches.
	if st.TokensIssued < 3 || st.TokensIssued > 5 {
		t.Errorf("%d tokens issued over ~7s of 3s tokens", st.TokensIssued)
	}
}

// Wrong credentials: nothing is consumed, the worker is not ready; fixing
// the mounted secret file resumes work without a restart.
func TestPipelineWrongCredentials(t *testing.T) {
	h := newHarness(t)
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte("wrong-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h.start(func(c *config.Config) {
		c.Talend.ClientSecret, c.Talend.ClientSecretFile = "", secretFile
	})
	all := ids("creds", 5)
	for _, id := range all {
		h.request(id, "t", nil)
	}
	h.eventually(10*time.Second, "not ready", func() bool {
		err := h.runner.Ready()
		return err != nil && strings.Contains(err.Error(), "credentials")
	})
	resp, err := http.Get("http://" + h.runner.AdminAddr() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("/readyz: %d %s, want 503", resp.StatusCode, body)
	}
	// Give the worker time to do damage if it were going to.
	time.Sleep(1500 * time.Millisecond)
	if evs := h.allEvents(); len(evs) != 0 {
		t.Fatalf("events published with wrong credentials: %v", evs)
	}
	info := h.consumerInfo()
	if info.NumPending+uint64(info.NumAckPending) != uint64(len(all)) || h.streamMsgs(h.topo.RunsStream) != uint64(len(all)) {
		t.Fatalf("requests consumed with wrong credentials: pending %d, ack pending %d", info.NumPending, info.NumAckPending)
	}
	if n := h.logs.Count("rejects the service-account credentials"); n != 1 {
		t.Errorf("%d loud credential log lines, want exactly 1", n)
	}
	if err := os.WriteFile(secretFile, []byte(testSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	evs := h.waitTerminal(30*time.Second, all...)
	for _, id := range all {
		if got := evs[id]; len(got) != 1 || got[0].Type != messages.Accepted {
			t.Errorf("%s: %v", id, typesOf(got))
		}
	}
	if err := h.runner.Ready(); err != nil {
		t.Errorf("not ready after credentials were fixed: %v", err)
	}
	h.assertDrained()
}

// An outage opens the breaker; fetching pauses; a probe closes it when
// Talend is back, and every request is accepted once.
func TestPipelineBreakerPausesFetching(t *testing.T) {
	h := newHarness(t)
	h.start(func(c *config.Config) {
		c.Talend.BreakerFailures = 3
		c.Talend.BreakerOpenFor = 300 * time.Millisecond
	})
	// A first request gets a token while Talend is fine.
	h.request("warm", "t", nil)
	h.waitTerminal(10*time.Second, "warm")
	h.sim.SetOutage(true)
	all := ids("outage", 30)
	for _, id := range all {
		h.request(id, "t-"+id, nil)
	}
	h.eventually(10*time.Second, "breaker open", func() bool { return h.runner.Breaker().Open() })
	h.eventually(10*time.Second, "fetching paused", func() bool {
		return h.logs.Count("fetching paused", "circuit breaker") > 0
	})
	// While paused, run calls stop: only probes (one every second) reach
	// the simulator.
	before := h.runCalls()
	time.Sleep(1500 * time.Millisecond)
	if during := h.runCalls() - before; during > 0 {
		t.Errorf("%d run calls while the breaker was open", during)
	}
	if len(h.allEvents()) != 1 {
		t.Errorf("events published during the outage")
	}
	h.sim.SetOutage(false)
	evs := h.waitTerminal(60*time.Second, all...)
	for _, id := range all {
		if got := evs[id]; len(got) != 1 || got[0].Type != messages.Accepted {
			t.Errorf("%s: %v", id, typesOf(got))
		}
		if c := h.sim.Stats().Executions["t-"+id]; c != 1 {
			t.Errorf("%s: %d executions", id, c)
		}
	}
	if h.logs.Count("fetching resumed") == 0 {
		t.Error("fetching never resumed")
	}
	h.assertDrained()
}

// runCalls counts run-task calls that reached the simulator, any status.
func (h *harness) runCalls() int {
	n := 0
	for k, v := range h.sim.Stats().Calls {
		if strings.HasPrefix(k, "POST /processing/executions ") {
			n += v
		}
	}
	return n
}

// notBefore parks a request as a durable timer; it runs when due.
// expiresAt in the past ends it failed (expired) without a Talend call.
func TestPipelineTimingFields(t *testing.T) {
	h := newHarness(t)
	h.start()
	due := time.Now().Add(3 * time.Second).UTC()
	h.request("later", "t-later", map[string]any{"notBefore": due.Format(time.RFC3339Nano), "metadata": map[string]any{"origin": "billing"}})
	h.request("too-late", "t-late", map[string]any{"expiresAt": time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)})
	h.request("pinned", "t-pin", nil)

	evs := h.waitTerminal(10*time.Second, "too-late", "pinned")
	if got := evs["too-late"]; len(got) != 1 || got[0].Type != messages.Failed || got[0].Reason != messages.ReasonExpired {
		t.Fatalf("too-late: %+v", got)
	}
	if _, err := h.deadLetter("default", "too-late"); err != nil {
		t.Errorf("expired request not dead-lettered: %v", err)
	}
	if len(evs["later"]) != 0 || h.sim.Stats().Executions["t-later"] != 0 {
		t.Fatalf("request ran before its notBefore")
	}
	// Parked in TMC_TIMERS, not pending on the request consumer.
	if info := h.consumerInfo(); info.NumAckPending != 0 {
		t.Errorf("parked request holds %d ack-pending slots", info.NumAckPending)
	}
	evs = h.waitTerminal(15*time.Second, "later")
	ev := evs["later"][0]
	if ev.Type != messages.Accepted || len(evs["later"]) != 1 {
		t.Fatalf("later: %v", typesOf(evs["later"]))
	}
	exec, _ := h.sim.Execution(ev.ExecutionID)
	if exec.Trigger.Before(due.Add(-time.Second)) {
		t.Errorf("ran at %s, notBefore %s", exec.Trigger, due)
	}
	if string(ev.Metadata) != `{"origin":"billing"}` {
		t.Errorf("metadata %s not echoed", ev.Metadata)
	}
	h.assertDrained()
	if n := h.streamMsgs(h.topo.TimersStream); n != 0 {
		t.Errorf("%d messages left in the timers stream", n)
	}
}

// Provisioning refuses an existing stream whose contract differs.
func TestProvisionRefusesConflictingStream(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	_, err := h.js.CreateStream(ctx, jetstream.StreamConfig{
		Name: h.topo.EventsStream, Subjects: []string{"tmc.runs.events.>"}, MaxAge: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(ctx, Options{Config: h.cfg, Conn: h.nc})
	if !errors.Is(err, broker.ErrConflict) || !strings.Contains(err.Error(), "max age") {
		t.Fatalf("err = %v, want a conflict naming the max age", err)
	}
}

// A Talend call longer than the ack wait keeps its message with
// in-progress signals: no redelivery, no second execution.
func TestPipelineSlowCallKeepsMessage(t *testing.T) {
	h := newHarness(t, func(_ *harness, o *talendsim.Options) { o.Latency = 2500 * time.Millisecond })
	h.start(func(c *config.Config) {
		c.Worker.AckWait = time.Second
		c.Talend.Timeout = 10 * time.Second
	})
	h.request("slow", "t-slow", nil)
	evs := h.waitTerminal(30*time.Second, "slow")
	if got := evs["slow"]; len(got) != 1 || got[0].Type != messages.Accepted || got[0].Attempt != 1 {
		t.Fatalf("events %+v, want one accepted on the first delivery", got)
	}
	if c := h.sim.Stats().Executions["t-slow"]; c != 1 {
		t.Errorf("%d executions, want 1", c)
	}
	if info := h.consumerInfo(); info.Delivered.Consumer != 1 {
		t.Errorf("%d deliveries: in-progress signals did not keep the message", info.Delivered.Consumer)
	}
}

// The worker holds at most Concurrency + Prefetch messages: the prefetched
// ones wait for a handler, kept alive by in-progress signals while they
// wait longer than the ack wait, and none is delivered twice.
func TestPipelinePrefetchIsBoundedAndKeptAlive(t *testing.T) {
	h := newHarness(t, func(_ *harness, o *talendsim.Options) { o.Latency = 2500 * time.Millisecond })
	prefetch := 2
	h.start(func(c *config.Config) {
		c.Worker.AckWait = time.Second
		c.Worker.Concurrency = 1
		c.Worker.Prefetch = &prefetch
		c.Talend.Timeout = 10 * time.Second
	})
	all := ids("prefetch", 6)
	for _, id := range all {
		h.request(id, "t-"+id, nil)
	}
	h.eventually(5*time.Second, "three messages held", func() bool { return h.consumerInfo().NumAckPending == 3 })
	for range 10 {
		if n := h.consumerInfo().NumAckPending; n > 3 {
			t.Fatalf("%d messages held, want at most concurrency 1 + prefetch 2", n)
		}
		time.Sleep(200 * time.Millisecond)
	}
	evs := h.waitTerminal(30*time.Second, all...)
	for _, id := range all {
		if got := evs[id]; len(got) != 1 || got[0].Type != messages.Accepted || got[0].Attempt != 1 {
			t.Errorf("%s: %v, want one accepted on the first delivery", id, typesOf(got))
		}
		if c := h.sim.Stats().Executions["t-"+id]; c != 1 {
			t.Errorf("%s: %d executions", id, c)
		}
	}
	if info := h.consumerInfo(); info.Delivered.Consumer != uint64(len(all)) {
		t.Errorf("%d deliveries of %d requests: a prefetched message was not kept alive while it waited", info.Delivered.Consumer, len(all))
	}
	h.assertDrained()
}

// A request-specific failure that retries may fix (here a 409) is counted
// durably; when the attempts run out the request fails with
// retries_exhausted and is dead-lettered.
func TestPipelineRequestSpecificRetriesRunOut(t *testing.T) {
	h := newHarness(t)
	h.start(func(c *config.Config) { c.Worker.MaxAttempts = 3 })
	h.sim.InjectFault(talendsim.Fault{Status: http.StatusConflict, Count: 3})
	h.request("conflicted", "t", nil)
	evs := h.waitTerminal(30*time.Second, "conflicted")
	got := evs["conflicted"]
	if len(got) != 1 || got[0].Type != messages.Failed || got[0].Reason != messages.ReasonRetriesExhausted || got[0].HTTPStatus != http.StatusConflict {
		t.Fatalf("events %+v, want one failed retries_exhausted with httpStatus 409", got)
	}
	if got[0].Attempt != 3 {
		t.Errorf("failed on delivery %d, want 3", got[0].Attempt)
	}
	if _, err := h.deadLetter("default", "conflicted"); err != nil {
		t.Errorf("not dead-lettered: %v", err)
	}
	if n := h.logs.Count(`"outcome":"attempt"`); n != 2 {
		t.Errorf("%d counted attempts before giving up, want 2", n)
	}
	h.assertDrained()
}

// A run call goes out within AdmitWithin of its call record's time, or not
// at all: reconciliation looks for rivals' records only that far back.
// Behind a budget of one call a second, requests that would wait longer
// are given back and retried with a fresh record, and each still ends with
// one accepted event and one execution.
func TestPipelineCallLeavesSoonAfterItsRecord(t *testing.T) {
	h := newHarness(t)
	h.cfg.Worker.RateLimit = 60 // one call a second for this one replica
	const within = 300 * time.Millisecond
	h.tuneWorker = func(c *worker.Config) { c.AdmitWithin = within }
	h.start()
	all := ids("budget", 4)
	for _, id := range all {
		h.request(id, "task-"+id, nil)
	}
	evs := h.waitTerminal(60*time.Second, all...)
	h.assertDrained()

	kv, err := h.js.KeyValue(context.Background(), h.topo.ClaimsBucket)
	if err != nil {
		t.Fatal(err)
	}
	calls, err := kv.ListKeysFiltered(context.Background(), "incall.>")
	if err != nil {
		t.Fatal(err)
	}
	records := map[string]claims.InCall{}
	for k := range calls.Keys() {
		e, err := kv.Get(context.Background(), k)
		if err != nil {
			t.Fatal(err)
		}
		var c claims.InCall
		if err := json.Unmarshal(e.Value(), &c); err != nil {
			t.Fatal(err)
		}
		if _, dup := records[c.RequestID]; dup {
			t.Errorf("%s: more than one call record left", c.RequestID)
		}
		records[c.RequestID] = c
	}
	retried := 0
	for _, id := range all {
		got := evs[id]
		if len(got) != 1 || got[0].Type != messages.Accepted {
			t.Fatalf("%s: events %v, want exactly one accepted", id, typesOf(got))
		}
		if got[0].Attempt > 1 {
			retried++
		}
		if n := h.sim.Stats().Executions["task-"+id]; n != 1 {
			t.Errorf("%s: %d executions, want 1", id, n)
		}
		rec, ok := records[id]
		if !ok || rec.ExecutionID != got[0].ExecutionID {
			t.Fatalf("%s: call record %+v, want one naming %s", id, rec, got[0].ExecutionID)
		}
		exec, _ := h.sim.Execution(rec.ExecutionID)
		// The call itself takes a few ms here; a second of slack.
		if late := exec.Trigger.Sub(time.UnixMilli(rec.CallFrom)); late > within+time.Second {
			t.Errorf("%s: run triggered %v after its call record's time, want within %v", id, late, within)
		}
	}
	if retried == 0 {
		t.Error("no request was retried: the budget never held a call past its bound, so this test shows nothing")
	}
}
