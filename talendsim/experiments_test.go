package talendsim

import (
	"net/http"
	"testing"
	"time"
)

// Right after a start, status reads answer 404 for StatusLag (Talend's read
// model lags); then the execution is found. Stopping it works throughout.
func TestStatusLag(t *testing.T) {
	h := newHarness(t, Options{KnowAll: true, StatusLag: 3 * time.Second, RunFor: time.Minute})
	task := h.runTask("t1")
	plan := h.runPlan("p1")
	for _, path := range []string{"/processing/executions/" + task, "/processing/executions/plans/" + plan} {
		resp, body := h.api(http.MethodGet, path, nil)
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("GET %s during the lag: %d %s, want 404", path, resp.StatusCode, body)
		}
		errorBody(t, resp, body)
	}
	h.clock.Advance(2999 * time.Millisecond)
	if resp, _ := h.api(http.MethodGet, "/processing/executions/"+task, nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET just before the lag ends: %d, want 404", resp.StatusCode)
	}
	h.clock.Advance(time.Millisecond)
	for _, path := range []string{"/processing/executions/" + task, "/processing/executions/plans/" + plan} {
		if resp, body := h.api(http.MethodGet, path, nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s after the lag: %d %s, want 200", path, resp.StatusCode, body)
		}
	}

	// A run started later has its own lag; DELETE is not subject to it.
	other := h.runTask("t2")
	if resp, _ := h.api(http.MethodDelete, "/processing/executions/"+other, nil); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE during the lag: %d, want 204", resp.StatusCode)
	}
	if resp, _ := h.api(http.MethodGet, "/processing/executions/"+other, nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET of the second run during its lag: %d, want 404", resp.StatusCode)
	}
	// The simulator's own view is not lagged.
	if info, ok := h.sim.Execution(other); !ok || info.Status != statusTerminated {
		t.Errorf("Execution(%s) = %+v, %v; want terminated", other, info, ok)
	}
}

// Without StatusLag a run is readable at once (the default is unchanged).
func TestStatusLagDefaultZero(t *testing.T) {
	h := newHarness(t, Options{KnowAll: true})
	id := h.runTask("t")
	if st := h.taskStatus(id)["status"]; st != statusDispatching {
		t.Errorf("status %v, want dispatching", st)
	}
}

func TestScaledClock(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := ScaledClock(start, 1000)
	first := clock()
	if first.Before(start) || first.Sub(start) > time.Second {
		t.Fatalf("first reading %s, want just after %s", first, start)
	}
	time.Sleep(20 * time.Millisecond)
	second := clock()
	// 20ms real is at least 20s simulated.
	if d := second.Sub(first); d < 20*time.Second {
		t.Errorf("simulated time advanced %s over 20ms real at factor 1000, want >= 20s", d)
	}

	// A run of 10 simulated minutes ends after well under a real second.
	sim := New(Options{KnowAll: true, Clock: ScaledClock(start, 6000), DispatchFor: time.Minute, RunFor: 10 * time.Minute})
	sim.mu.Lock()
	e := sim.startLocked(kindTask, "t", nil, "", 0)
	sim.mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for {
		info, _ := sim.Execution(e.id)
		if info.Status == statusSuccessful {
			if got := info.Finish.Sub(info.Trigger); got != 11*time.Minute {
				t.Errorf("finish-trigger %s, want 11m of simulated time", got)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %s after 5s real at factor 6000", info.Status)
		}
		time.Sleep(10 * time.Millisecond)
	}

	defer func() {
		if recover() == nil {
			t.Error("ScaledClock(start, 0) did not panic")
		}
	}()
	ScaledClock(start, 0)
}

// Stats.Calls counts list calls under their path templates, and APICalls
// counts every processing and monitoring call but not the token endpoint.
func TestStatsCountListCallsAndAPICalls(t *testing.T) {
	h := newHarness(t, Options{KnowAll: true})
	id := h.runTask("t1")                                                         // 1 API call (+1 token call)
	h.taskStatus(id)                                                              // 2
	h.api(http.MethodGet, "/processing/executables/tasks/executions", nil)        // 3
	h.api(http.MethodGet, "/processing/executables/tasks/t1/executions", nil)     // 4
	h.api(http.MethodGet, "/processing/executables/plans/executions", nil)        // 5
	h.api(http.MethodGet, "/processing/executables/plans/p1/executions", nil)     // 6
	h.api(http.MethodGet, "/monitoring/executions/"+id+"/logs?count=5", nil)      // 7
	h.api(http.MethodGet, "/processing/no/such/endpoint", nil)                    // 8
	h.request(http.MethodGet, "/processing/executions/"+id, nil, nil)             // 9 (401)
	h.tokenRequest("dev-client", "dev-secret", goodTokenBody)                     // not counted
	h.request(http.MethodGet, "/elsewhere", nil, map[string]string{"X-Any": "1"}) // not counted

	st := h.sim.Stats()
	for _, key := range []string{
		"POST /processing/executions 201",
		"GET /processing/executions/{executionId} 200",
		"GET /processing/executables/tasks/executions 200",
		"GET /processing/executables/tasks/{taskId}/executions 200",
		"GET /processing/executables/plans/executions 200",
		"GET /processing/executables/plans/{planId}/executions 200",
		"GET /monitoring/executions/{id}/logs 200",
		"POST /security/oauth/token 200",
	} {
		if st.Calls[key] < 1 {
			t.Errorf("Calls[%q] = %d, want >= 1; calls: %v", key, st.Calls[key], st.Calls)
		}
	}
	if st.APICalls != 9 {
		t.Errorf("APICalls = %d, want 9; calls: %v", st.APICalls, st.Calls)
	}
	if st.TokenRequests != 2 {
		t.Errorf("TokenRequests = %d, want 2", st.TokenRequests)
	}
}
