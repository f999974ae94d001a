package talendsim

import (
	"context"
	"net/http"
	"testing"
	"time"
)

func TestFaults(t *testing.T) {
	type call struct {
		token      bool
		want       int
		retryAfter string
	}
	tests := []struct {
		name  string
		setup func(s *Simulator)
		calls []call
	}{
		{
			name:  "count then normal",
			setup: func(s *Simulator) { s.InjectFault(Fault{Status: 500, Count: 2}) },
			calls: []call{{want: 500}, {want: 500}, {want: 200}},
		},
		{
			name:  "429 with Retry-After",
			setup: func(s *Simulator) { s.InjectFault(Fault{Status: 429, RetryAfter: "7", Count: 1}) },
			calls: []call{{want: 429, retryAfter: "7"}, {want: 200}},
		},
		{
			name:  "Retry-After only on 429 and 503",
			setup: func(s *Simulator) { s.InjectFault(Fault{Status: 502, RetryAfter: "7", Count: 1}) },
			calls: []call{{want: 502}, {want: 200}},
		},
		{
			name: "queue order",
			setup: func(s *Simulator) {
				s.InjectFault(Fault{Status: 503, RetryAfter: "1", Count: 1})
				s.InjectFault(Fault{Status: 502, Count: 1})
			},
			calls: []call{{want: 503, retryAfter: "1"}, {want: 502}, {want: 200}},
		},
		{
			name:  "until cleared",
			setup: func(s *Simulator) { s.InjectFault(Fault{Status: 500}) },
			calls: []call{{want: 500}, {want: 500}, {want: 500}},
		},
		{
			name:  "token faults are separate",
			setup: func(s *Simulator) { s.InjectFault(Fault{Status: 500, Count: 1, Token: true}) },
			calls: []call{{want: 200}, {token: true, want: 500}, {token: true, want: 200}},
		},
		{
			name:  "delay only",
			setup: func(s *Simulator) { s.InjectFault(Fault{Delay: time.Millisecond, Count: 1}) },
			calls: []call{{want: 200}, {want: 200}},
		},
		{
			name:  "outage",
			setup: func(s *Simulator) { s.SetOutage(true) },
			calls: []call{{want: 503}, {token: true, want: 200}},
		},
		{
			name:  "token outage",
			setup: func(s *Simulator) { s.SetTokenOutage(true) },
			calls: []call{{token: true, want: 500}, {want: 200}},
		},
		{
			name:  "outage before queued faults",
			setup: func(s *Simulator) { s.SetOutage(true); s.InjectFault(Fault{Status: 429, Count: 1}) },
			calls: []call{{want: 503}},
		},
		{
			name:  "error rate 1",
			setup: func(s *Simulator) { s.SetErrorRate(429, 1, "2") },
			calls: []call{{want: 429, retryAfter: "2"}, {want: 429, retryAfter: "2"}, {token: true, want: 200}},
		},
		{
			name:  "error rate 0",
			setup: func(s *Simulator) { s.SetErrorRate(500, 0, "") },
			calls: []call{{want: 200}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Options{KnowAll: true})
			id := h.runTask("t1")
			h.token()
			tc.setup(h.sim)
			for i, c := range tc.calls {
				var resp *http.Response
				var body []byte
				if c.token {
					resp, body = h.tokenRequest("dev-client", "dev-secret", goodTokenBody)
				} else {
					resp, body = h.api(http.MethodGet, "/processing/executions/"+id, nil)
				}
				if resp.StatusCode != c.want {
					t.Fatalf("call %d: status %d, want %d: %s", i, resp.StatusCode, c.want, body)
				}
				if got := resp.Header.Get("Retry-After"); got != c.retryAfter {
					t.Errorf("call %d: Retry-After %q, want %q", i, got, c.retryAfter)
				}
				if c.want >= 400 {
					errorBody(t, resp, body)
				}
			}
		})
	}
}

func TestClearFaultsAndRecovery(t *testing.T) {
	h := newHarness(t, Options{KnowAll: true})
	h.sim.InjectFault(Fault{Status: 500})
	h.sim.InjectFault(Fault{Status: 500, Token: true})
	h.sim.ClearFaults()
	h.sim.SetOutage(true)
	h.sim.SetOutage(false)
	h.sim.SetTokenOutage(true)
	h.sim.SetTokenOutage(false)
	h.runTask("t1") // fetches a token and runs: both must work
	if st := h.sim.Stats(); st.Calls["POST /processing/executions 201"] != 1 {
		t.Errorf("calls %v", st.Calls)
	}
}

func TestOutageCounted(t *testing.T) {
	h := newHarness(t, Options{KnowAll: true})
	h.token()
	h.sim.SetOutage(true)
	h.api(http.MethodPost, "/processing/executions", `{"executable":"t1"}`)
	st := h.sim.Stats()
	if st.Calls["POST /processing/executions 503"] != 1 || st.ExecutionsTotal != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestLatencyHonoursCancellation checks that a slow answer gives up when
// the client does, instead of holding the handler.
func TestLatencyHonoursCancellation(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(s *Simulator)
	}{
		{"latency", func(s *Simulator) { s.SetLatency(time.Hour) }},
		{"fault delay", func(s *Simulator) { s.InjectFault(Fault{Delay: time.Hour, Status: 500}) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Options{KnowAll: true})
			tok := h.token()
			tc.setup(h.sim)
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.srv.URL+"/processing/executables/tasks/executions", nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			if _, err := h.srv.Client().Do(req); err == nil {
				t.Fatal("expected the request to be cancelled")
			}
			// Closing the server waits for handlers; it must not take an hour.
			done := make(chan struct{})
			go func() { h.srv.Close(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("handler still sleeping after the client went away")
			}
		})
	}
}

func TestLatencyApplies(t *testing.T) {
	h := newHarness(t, Options{KnowAll: true, Latency: 20 * time.Millisecond})
	start := time.Now()
	h.token()
	if time.Since(start) < 20*time.Millisecond {
		t.Error("token endpoint answered before the configured latency")
	}
}
