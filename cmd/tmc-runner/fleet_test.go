package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tmc-runner/tmc-runner/messages"
	"github.com/tmc-runner/tmc-runner/talendsim"
)

// startFleet starts n worker processes one after the other.
func startFleet(t *testing.T, w *workerEnv, n int, extra ...string) []*process {
	t.Helper()
	var fleet []*process
	for range n {
		p := start(t, w.env(extra...), "worker")
		p.waitFor(t, 30*time.Second, "worker started")
		fleet = append(fleet, p)
	}
	return fleet
}

func (w *workerEnv) publishRequests(t *testing.T, prefix string, n int, executable func(i int) string) []string {
	t.Helper()
	var ids []string
	for i := range n {
		id := fmt.Sprintf("%s-%03d", prefix, i)
		msg := nats.NewMsg("tmc.runs.request.default")
		msg.Data, _ = json.Marshal(map[string]string{"requestId": id, "executable": executable(i)})
		if _, err := w.js.PublishMsg(context.Background(), msg); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// waitAccepted waits until every id has exactly its accepted event and
// fails on any other terminal event.
func (w *workerEnv) waitAccepted(t *testing.T, ids []string, timeout time.Duration, fleet []*process) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		evs := w.events(t)
		done := 0
		for _, id := range ids {
			for _, e := range evs[id] {
				switch e.Type {
				case messages.Accepted:
					done++
				case messages.Failed, messages.Rejected, messages.Unknown:
					t.Fatalf("%s ended %s: %+v", id, e.Type, e)
				}
			}
		}
		if done == len(ids) {
			return
		}
		if time.Now().After(deadline) {
			var out strings.Builder
			for _, p := range fleet {
				out.WriteString(p.output())
			}
			t.Fatalf("%d of %d accepted after %s\n%s", done, len(ids), timeout, out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Three workers against a Talend that allows 600 processing calls a
// minute, with the fleet's budget at 80% of it: every request is accepted,
// Talend never answers 429, and the fleet fetches one token per token
// lifetime, not one per replica.
func TestFleetSharesBudgetAndToken(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three workers for several token lifetimes")
	}
	const life = 8 * time.Second
	w := newWorkerEnvWith(t, talendsim.Options{KnowAll: true, TokenLifetime: life})
	w.sim.SetRateLimit(20, 2*time.Second) // 600/min, enforced over any 2 s
	fleet := startFleet(t, w, 3, "TMC_AWAIT_RESULT=false", "TMC_RATE_LIMIT=480", "TMC_TOKEN_REFRESH_BEFORE=2s")
	started := time.Now()
	ids := w.publishRequests(t, "budget", 120, func(i int) string { return fmt.Sprintf("task-%d", i) })
	w.waitAccepted(t, ids, 90*time.Second, fleet)
	elapsed := time.Since(started)
	st := w.sim.Stats()
	if st.RateLimited != 0 {
		t.Errorf("Talend answered 429 %d times: the fleet went over its budget", st.RateLimited)
	}
	if st.ExecutionsTotal != len(ids) {
		t.Errorf("%d executions for %d requests", st.ExecutionsTotal, len(ids))
	}
	// One token for the whole fleet per lifetime: ceil(elapsed / life) + 1
	// at most (the first, and one refresh per lifetime since).
	if maxTokens := int(elapsed/life) + 2; st.TokensIssued > maxTokens {
		t.Errorf("%d tokens issued in %s of %s tokens for 3 replicas, want at most %d", st.TokensIssued, elapsed.Round(time.Second), life, maxTokens)
	}
	t.Logf("120 requests in %s by 3 workers: %.1f requests/s against a budget of 8/s; %d tokens", elapsed.Round(100*time.Millisecond), float64(len(ids))/elapsed.Seconds(), st.TokensIssued)
}

// Three workers with a cap of 4 running executions: Talend never sees
// more than 4 running at once, and every request still ends.
func TestFleetRunningCap(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three workers")
	}
	w := newWorkerEnvWith(t, talendsim.Options{KnowAll: true, DispatchFor: 200 * time.Millisecond, RunFor: 800 * time.Millisecond})
	fleet := startFleet(t, w, 3, "TMC_AWAIT_RESULT=false", "TMC_MAX_RUNNING=4",
		"TMC_FOLLOW_MIN_INTERVAL=100ms", "TMC_FOLLOW_MAX_INTERVAL=300ms", "TMC_FOLLOW_STARTUP_LAG=2s")
	ids := w.publishRequests(t, "cap", 24, func(i int) string { return fmt.Sprintf("task-%d", i) })
	w.waitAccepted(t, ids, 90*time.Second, fleet)
	st := w.sim.Stats()
	if st.MaxRunning > 4 {
		t.Errorf("Talend saw %d executions running at once, cap 4", st.MaxRunning)
	}
	if st.ExecutionsTotal != len(ids) {
		t.Errorf("%d executions for %d requests", st.ExecutionsTotal, len(ids))
	}
	if st.MaxRunning < 2 {
		t.Errorf("at most %d running at once: the cap test did not run executions in parallel", st.MaxRunning)
	}
	// Nothing was failed or nak-looped: the capped requests waited in the
	// stream while fetching was paused.
	capped := 0
	for _, p := range fleet {
		capped += strings.Count(p.output(), `"outcome":"capped"`)
	}
	if capped > len(ids) {
		t.Errorf("%d capped naks for %d requests: requests are being nak-looped", capped, len(ids))
	}
}
