package talendsim

import (
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestRunTaskStatuses(t *testing.T) {
	tests := []struct {
		name  string
		opts  Options
		setup func(s *Simulator)
		want  int
	}{
		{name: "known with KnowAll", opts: Options{KnowAll: true}, want: 201},
		{name: "added task", setup: func(s *Simulator) { s.AddTask("t1") }, want: 201},
		{name: "behaviour makes it known", setup: func(s *Simulator) { s.SetBehaviour("t1", Behaviour{Outcome: statusFailed}) }, want: 201},
		{name: "unknown", want: 404},
		{name: "added as plan only", setup: func(s *Simulator) { s.AddPlan("t1") }, want: 404},
		{name: "missing beats KnowAll", opts: Options{KnowAll: true}, setup: func(s *Simulator) { s.SetBehaviour("t1", Behaviour{Missing: true}) }, want: 404},
		{name: "forbidden", opts: Options{KnowAll: true}, setup: func(s *Simulator) { s.SetBehaviour("t1", Behaviour{Forbidden: true}) }, want: 403},
		{name: "paused", opts: Options{KnowAll: true}, setup: func(s *Simulator) { s.SetBehaviour("t1", Behaviour{Paused: true}) }, want: 405},
		{name: "not configured", opts: Options{KnowAll: true}, setup: func(s *Simulator) { s.SetBehaviour("t1", Behaviour{NotConfigured: true}) }, want: 501},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.opts)
			if tc.setup != nil {
				tc.setup(h.sim)
			}
			resp, body := h.api(http.MethodPost, "/processing/executions", map[string]any{"executable": "t1"})
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.want, body)
			}
			st := h.sim.Stats()
			if tc.want != 201 {
				errorBody(t, resp, body)
				if st.ExecutionsTotal != 0 {
					t.Errorf("ExecutionsTotal %d, want 0", st.ExecutionsTotal)
				}
				return
			}
			var id executionIdentifier
			mustUnmarshal(t, body, &id)
			info, ok := h.sim.Execution(id.ExecutionID)
			if !ok || info.Executable != "t1" || info.Kind != kindTask || info.UserID != "sa-tmc-runner" || info.UserType != "SERVICE" {
				t.Errorf("execution %+v, %v", info, ok)
			}
			if st.Executions["t1"] != 1 || st.ExecutionsTotal != 1 || st.Calls["POST /processing/executions 201"] != 1 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

func TestRunTaskBodyValidation(t *testing.T) {
	tests := []struct {
		name string
		body any
		want int
	}{
		{"minimal", `{"executable":"t1"}`, 201},
		{"all fields", `{"executable":"t1","logLevel":"WARN","timeout":5,"parameters":{"a":"1","b":""}}`, 201},
		{"empty parameters", `{"executable":"t1","parameters":{}}`, 201},
		{"missing executable", `{"logLevel":"INFO"}`, 400},
		{"empty executable", `{"executable":""}`, 400},
		{"blank executable", `{"executable":"  "}`, 400},
		{"executable number", `{"executable":5}`, 400},
		{"executable null", `{"executable":null}`, 400},
		{"unknown field", `{"executable":"t1","priority":1}`, 400},
		{"bad log level", `{"executable":"t1","logLevel":"DEBUG"}`, 400},
		{"lower-case log level", `{"executable":"t1","logLevel":"info"}`, 400},
		{"timeout zero", `{"executable":"t1","timeout":0}`, 400},
		{"timeout negative", `{"executable":"t1","timeout":-3}`, 400},
		{"timeout fraction", `{"executable":"t1","timeout":1.5}`, 400},
		{"timeout string", `{"executable":"t1","timeout":"5"}`, 400},
		{"timeout beyond int32", `{"executable":"t1","timeout":4294967296}`, 400},
		{"parameters array form", `{"executable":"t1","parameters":[{"name":"a","value":"1"}]}`, 400},
		{"parameter number value", `{"executable":"t1","parameters":{"a":1}}`, 400},
		{"parameter object value", `{"executable":"t1","parameters":{"a":{"b":"c"}}}`, 400},
		{"parameters string", `{"executable":"t1","parameters":"a=1"}`, 400},
		{"not an object", `["t1"]`, 400},
		{"null body", `null`, 400},
		{"empty body", ``, 400},
		{"trailing data", `{"executable":"t1"} {}`, 400},
		{"malformed", `{"executable":"t1"`, 400},
		{"form encoded", rawBody{"application/x-www-form-urlencoded", "executable=t1"}, 400},
		{"text/plain json", rawBody{"text/plain", `{"executable":"t1"}`}, 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Options{KnowAll: true})
			resp, body := h.api(http.MethodPost, "/processing/executions", tc.body)
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.want, body)
			}
			if tc.want == 400 {
				errorBody(t, resp, body)
			}
		})
	}
}

func TestParametersNeverEchoed(t *testing.T) {
	h := newHarness(t, Options{KnowAll: true})
	const secret = "s3cr3t-value"
	resp, body := h.api(http.MethodPost, "/processing/executions", `{"executable":"t1","parameters":{"password":"`+secret+`","n":1}}`)
	if resp.StatusCode != 400 || strings.Contains(string(body), secret) {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	id := h.runTask("t1")
	h.clock.Advance(time.Second)
	for _, path := range []string{"/processing/executions/" + id, "/monitoring/executions/" + id + "/logs"} {
		_, body := h.api(http.MethodGet, path, nil)
		if strings.Contains(string(body), secret) {
			t.Errorf("%s echoes a parameter: %s", path, body)
		}
	}
}

func TestRecordsRequest(t *testing.T) {
	h := newHarness(t, Options{KnowAll: true, ServiceUserID: "sa-x"})
	resp, body := h.api(http.MethodPost, "/processing/executions", `{"executable":"t1","logLevel":"ERROR","timeout":7,"parameters":{"k":"v"}}`)
	if resp.StatusCode != 201 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	var id executionIdentifier
	mustUnmarshal(t, body, &id)
	info, _ := h.sim.Execution(id.ExecutionID)
	if info.LogLevel != "ERROR" || info.Timeout != 7 || info.Parameters["k"] != "v" || info.UserID != "sa-x" ||
		!info.Trigger.Equal(h.clock.Now()) || info.Status != statusDispatching || !info.Finish.IsZero() {
		t.Errorf("info %+v", info)
	}
	m := h.taskStatus(id.ExecutionID)
	if m["apiVersion"] != "2021-03" || m["userType"] != "SERVICE" || m["timeout"] != float64(7) || m["executionType"] != "MANUAL" {
		t.Errorf("status %v", m)
	}
}

func TestTaskProgression(t *testing.T) {
	tests := []struct {
		name      string
		behaviour Behaviour
		timeout   int
		steps     []time.Duration // clock advances before each check
		want      []string
	}{
		{name: "success", steps: []time.Duration{0, 50 * time.Millisecond, 199 * time.Millisecond, time.Millisecond},
			want: []string{statusDispatching, statusExecuting, statusExecuting, statusSuccessful}},
		{name: "failure", behaviour: Behaviour{Outcome: statusFailed}, steps: []time.Duration{0, time.Second},
			want: []string{statusDispatching, statusFailed}},
		{name: "rejected", behaviour: Behaviour{Outcome: statusRejected}, steps: []time.Duration{time.Second},
			want: []string{statusRejected}},
		{name: "deploy failed after dispatch", behaviour: Behaviour{Outcome: statusDeployFail},
			steps: []time.Duration{49 * time.Millisecond, time.Millisecond}, want: []string{statusDispatching, statusDeployFail}},
		{name: "run time override", behaviour: Behaviour{RunFor: time.Minute},
			steps: []time.Duration{time.Second, time.Minute}, want: []string{statusExecuting, statusSuccessful}},
		{name: "never ends", behaviour: Behaviour{NeverEnds: true}, steps: []time.Duration{time.Second, 20 * time.Minute},
			want: []string{statusExecuting, statusExecuting}},
		{name: "timeout cuts a long run", behaviour: Behaviour{NeverEnds: true}, timeout: 1,
			steps: []time.Duration{59 * time.Second, time.Second}, want: []string{statusExecuting, statusTimeout}},
		{name: "unknown outcome passes through", behaviour: Behaviour{Outcome: "stopping"},
			steps: []time.Duration{time.Second}, want: []string{"stopping"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Options{KnowAll: true})
			h.sim.SetBehaviour("t1", tc.behaviour)
			body := map[string]any{"executable": "t1"}
			if tc.timeout > 0 {
				body["timeout"] = tc.timeout
			}
			resp, data := h.api(http.MethodPost, "/processing/executions", body)
			if resp.StatusCode != 201 {
				t.Fatalf("%d %s", resp.StatusCode, data)
			}
			var id executionIdentifier
			mustUnmarshal(t, data, &id)
			for i, step := range tc.steps {
				h.clock.Advance(step)
				m := h.taskStatus(id.ExecutionID)
				if m["status"] != tc.want[i] {
					t.Fatalf("step %d: status %v, want %s", i, m["status"], tc.want[i])
				}
				if d := detailedTaskStatus(tc.want[i]); m["executionStatus"] != d {
					t.Errorf("step %d: executionStatus %v, want %s", i, m["executionStatus"], d)
				}
				_, hasFinish := m["finishTimestamp"]
				_, hasStart := m["startTimestamp"]
				running := tc.want[i] == statusDispatching || tc.want[i] == statusExecuting
				if hasFinish == running {
					t.Errorf("step %d: finishTimestamp present=%v for %s", i, hasFinish, tc.want[i])
				}
				if wantStart := tc.want[i] != statusDispatching && tc.want[i] != statusDeployFail; hasStart != wantStart {
					t.Errorf("step %d: startTimestamp present=%v for %s", i, hasStart, tc.want[i])
				}
				if _, hasErr := m["errorType"]; hasErr != (tc.want[i] == statusFailed || tc.want[i] == statusDeployFail || tc.want[i] == statusTimeout) {
					t.Errorf("step %d: errorType present=%v for %s", i, hasErr, tc.want[i])
				}
				if tc.want[i] == statusRejected && m["numberOfRejectedRows"].(float64) < 1 {
					t.Errorf("rejected run without rejected rows: %v", m)
				}
			}
		})
	}
}

func TestDelete(t *testing.T) {
	h := newHarness(t, Options{KnowAll: true})
	h.sim.SetBehaviour("long", Behaviour{NeverEnds: true})
	running := h.runTask("long")
	done := h.runTask("short")
	h.clock.Advance(time.Second)

	for _, tc := range []struct {
		name, id, want string
		status         int
	}{
		{"running becomes terminated", running, statusTerminated, 204},
		{"finished stays as it was", done, statusSuccessful, 204},
		{"unknown", "no-such-id", "", 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := h.api(http.MethodDelete, "/processing/executions/"+tc.id, nil)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			if tc.status != 204 {
				errorBody(t, resp, body)
				return
			}
			if len(body) != 0 {
				t.Errorf("204 with a body: %s", body)
			}
			m := h.taskStatus(tc.id)
			if m["status"] != tc.want {
				t.Errorf("status %v, want %s", m["status"], tc.want)
			}
			info, _ := h.sim.Execution(tc.id)
			if info.Finish.IsZero() {
				t.Error("no finish time")
			}
		})
	}
	h.clock.Advance(time.Hour)
	if info, _ := h.sim.Execution(running); info.Status != statusTerminated || !info.Finish.Equal(info.Trigger.Add(time.Second)) {
		t.Errorf("after an hour: %+v", info)
	}
}

func TestGetExecutionNotFound(t *testing.T) {
	h := newHarness(t, Options{KnowAll: true})
	planExec := h.runPlan("p1")
	for _, path := range []string{"/processing/executions/nope", "/processing/executions/" + planExec} {
		resp, body := h.api(http.MethodGet, path, nil)
		if resp.StatusCode != 404 {
			t.Errorf("%s: %d %s", path, resp.StatusCode, body)
		}
	}
}

func TestPlans(t *testing.T) {
	tests := []struct {
		name  string
		opts  Options
		setup func(s *Simulator)
		body  any
		want  int
	}{
		{name: "known", opts: Options{KnowAll: true}, body: `{"executable":"p1"}`, want: 201},
		{name: "added", setup: func(s *Simulator) { s.AddPlan("p1") }, body: `{"executable":"p1"}`, want: 201},
		{name: "unknown", body: `{"executable":"p1"}`, want: 404},
		{name: "task is not a plan", setup: func(s *Simulator) { s.AddTask("p1") }, body: `{"executable":"p1"}`, want: 404},
		{name: "paused", opts: Options{KnowAll: true}, setup: func(s *Simulator) { s.SetBehaviour("p1", Behaviour{Paused: true}) }, body: `{"executable":"p1"}`, want: 405},
		{name: "forbidden", opts: Options{KnowAll: true}, setup: func(s *Simulator) { s.SetBehaviour("p1", Behaviour{Forbidden: true}) }, body: `{"executable":"p1"}`, want: 403},
		{name: "not configured", opts: Options{KnowAll: true}, setup: func(s *Simulator) { s.SetBehaviour("p1", Behaviour{NotConfigured: true}) }, body: `{"executable":"p1"}`, want: 501},
		{name: "parameters not allowed", opts: Options{KnowAll: true}, body: `{"executable":"p1","parameters":{}}`, want: 400},
		{name: "logLevel not allowed", opts: Options{KnowAll: true}, body: `{"executable":"p1","logLevel":"INFO"}`, want: 400},
		{name: "missing executable", opts: Options{KnowAll: true}, body: `{}`, want: 400},
		{name: "rerun flag type", opts: Options{KnowAll: true}, body: `{"executable":"p1","rerunOnlyFailedTasks":"yes"}`, want: 400},
		{name: "rerun without step", opts: Options{KnowAll: true}, body: `{"executable":"p1","executionPlanId":"x"}`, want: 400},
		{name: "rerun of unknown execution", opts: Options{KnowAll: true}, body: `{"executable":"p1","executionPlanId":"x","stepId":"s"}`, want: 422},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.opts)
			if tc.setup != nil {
				tc.setup(h.sim)
			}
			resp, body := h.api(http.MethodPost, "/processing/executions/plans", tc.body)
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.want, body)
			}
			if tc.want != 201 {
				errorBody(t, resp, body)
			}
		})
	}
}

func TestPlanProgressionAndRerun(t *testing.T) {
	for _, outcome := range []string{statusSuccessful, statusFailed, statusMisfired} {
		t.Run(outcome, func(t *testing.T) {
			h := newHarness(t, Options{KnowAll: true})
			h.sim.SetBehaviour("p1", Behaviour{Outcome: outcome})
			id := h.runPlan("p1")
			get := func() map[string]any {
				resp, body := h.api(http.MethodGet, "/processing/executions/plans/"+id, nil)
				if resp.StatusCode != 200 {
					t.Fatalf("%d %s", resp.StatusCode, body)
				}
				var m map[string]any
				mustUnmarshal(t, body, &m)
				return m
			}
			if m := get(); m["status"] != statusExecuting || m["executionStatus"] != "STARTED" || m["planId"] != "p1" {
				t.Errorf("running plan: %v", m)
			}
			rerun := `{"executable":"p1","executionPlanId":"` + id + `","stepId":"s1"}`
			if resp, _ := h.api(http.MethodPost, "/processing/executions/plans", rerun); resp.StatusCode != 422 {
				t.Errorf("rerun of a running plan: %d, want 422", resp.StatusCode)
			}
			h.clock.Advance(time.Second)
			m := get()
			if m["status"] != outcome || m["executionStatus"] != planExecutionStatus[outcome] || m["finishTimestamp"] == nil {
				t.Errorf("finished plan: %v", m)
			}
			want := 201
			if outcome == statusSuccessful {
				want = 422
			}
			if resp, body := h.api(http.MethodPost, "/processing/executions/plans", rerun); resp.StatusCode != want {
				t.Errorf("rerun after %s: %d, want %d: %s", outcome, resp.StatusCode, want, body)
			}
			if resp, _ := h.api(http.MethodGet, "/processing/executions/plans/nope", nil); resp.StatusCode != 404 {
				t.Errorf("unknown plan execution: %d", resp.StatusCode)
			}
		})
	}
}

func TestRoutingErrors(t *testing.T) {
	h := newHarness(t, Options{KnowAll: true})
	tests := []struct {
		method, path string
		want         int
	}{
		{http.MethodGet, "/nope", 404},
		{http.MethodGet, "/processing/executions", 405},
		{http.MethodPut, "/processing/executions/abc", 405},
		{http.MethodGet, "/security/oauth/token", 405},
		{http.MethodGet, "/processing/executions/a/b/c", 404},
	}
	for _, tc := range tests {
		t.Run(tc.method+tc.path, func(t *testing.T) {
			resp, body := h.api(tc.method, tc.path, nil)
			if resp.StatusCode != tc.want {
				t.Fatalf("%d %s", resp.StatusCode, body)
			}
			errorBody(t, resp, body)
			if tc.want == 405 && resp.Header.Get("Allow") == "" {
				t.Error("405 without Allow")
			}
		})
	}
}

// MaxRunning, kept with a heap of live executions, agrees with counting
// every execution at every trigger, with runs of different lengths, runs
// that never end, and stops that cut runs short.
func TestMaxRunningMatchesACount(t *testing.T) {
	h := newHarness(t, Options{KnowAll: true})
	h.sim.SetBehaviour("short", Behaviour{RunFor: 100 * time.Millisecond})
	h.sim.SetBehaviour("long", Behaviour{RunFor: 2 * time.Second})
	h.sim.SetBehaviour("forever", Behaviour{NeverEnds: true})
	var ids []string
	want := 0
	count := func() {
		now := h.clock.Now()
		n := 0
		for _, id := range ids {
			info, _ := h.sim.Execution(id)
			if !info.Trigger.After(now) && (info.Finish.IsZero() || now.Before(info.Finish)) {
				n++
			}
		}
		want = max(want, n)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 300 {
		exe := []string{"short", "short", "long", "forever"}[rng.IntN(4)]
		ids = append(ids, h.runTask(exe))
		count()
		if i%7 == 0 { // stop one at random
			h.api(http.MethodDelete, "/processing/executions/"+ids[rng.IntN(len(ids))], nil)
		}
		h.clock.Advance(time.Duration(rng.IntN(40)) * time.Millisecond)
	}
	if got := h.sim.Stats().MaxRunning; got != want {
		t.Errorf("MaxRunning %d, counted %d", got, want)
	}
}

func TestStats(t *testing.T) {
	h := newHarness(t, Options{KnowAll: true})
	h.sim.SetBehaviour("long", Behaviour{NeverEnds: true})
	a := h.runTask("long")
	h.runTask("long")
	h.runTask("t2")
	h.clock.Advance(time.Second) // t2 is done; the two long ones still run
	h.runTask("t2")
	h.api(http.MethodDelete, "/processing/executions/"+a, nil)
	h.clock.Advance(time.Millisecond)
	h.runTask("t3")
	h.request(http.MethodGet, "/processing/executions/"+a, nil, nil) // no token

	st := h.sim.Stats()
	want := map[string]int{"long": 2, "t2": 2, "t3": 1}
	for k, v := range want {
		if st.Executions[k] != v {
			t.Errorf("Executions[%s] %d, want %d", k, st.Executions[k], v)
		}
	}
	if st.ExecutionsTotal != 5 || st.MaxRunning != 3 || st.TokensIssued != 1 || st.TokenRequests != 1 || st.Unauthorized != 1 {
		t.Errorf("stats %+v", st)
	}
	calls := map[string]int{
		"POST /security/oauth/token 200":                  1,
		"POST /processing/executions 201":                 5,
		"DELETE /processing/executions/{executionId} 204": 1,
		"GET /processing/executions/{executionId} 401":    1,
	}
	for k, v := range calls {
		if st.Calls[k] != v {
			t.Errorf("Calls[%q] %d, want %d (all: %v)", k, st.Calls[k], v, st.Calls)
		}
	}
	// The snapshot is a copy.
	st.Calls["x"] = 1
	if h.sim.Stats().Calls["x"] != 0 {
		t.Error("Stats shares its maps")
	}
}

func TestConcurrentUse(t *testing.T) {
	h := newHarness(t, Options{KnowAll: true, Clock: time.Now, DispatchFor: time.Millisecond, RunFor: time.Millisecond})
	tok := h.token()
	done := make(chan struct{})
	for i := range 8 {
		go func() {
			defer func() { done <- struct{}{} }()
			for range 20 {
				req, _ := http.NewRequest(http.MethodPost, h.srv.URL+"/processing/executions", strings.NewReader(`{"executable":"t"}`))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Authorization", "Bearer "+tok)
				resp, err := h.srv.Client().Do(req)
				if err == nil {
					resp.Body.Close()
				}
				req, _ = http.NewRequest(http.MethodGet, h.srv.URL+"/processing/executables/tasks/executions", nil)
				req.Header.Set("Authorization", "Bearer "+tok)
				if resp, err = h.srv.Client().Do(req); err == nil {
					resp.Body.Close()
				}
				h.sim.Stats()
				if i == 0 {
					h.sim.SetLatency(0)
					h.sim.InjectFault(Fault{Status: 500, Count: 1})
				}
			}
		}()
	}
	for range 8 {
		<-done
	}
	st := h.sim.Stats()
	if st.ExecutionsTotal+st.Calls["POST /processing/executions 500"] != 160 {
		t.Errorf("stats %+v", st)
	}
}
