package talendsim

import (
	"net/http"
	"reflect"
	"testing"
	"time"
)

func (h *harness) logs(id, query string) (int, logsPage) {
	h.t.Helper()
	resp, body := h.api(http.MethodGet, "/monitoring/executions/"+id+"/logs"+query, nil)
	var lp logsPage
	if resp.StatusCode == 200 {
		mustUnmarshal(h.t, body, &lp)
	} else {
		errorBody(h.t, resp, body)
	}
	return resp.StatusCode, lp
}

func TestLogs(t *testing.T) {
	tests := []struct {
		name      string
		behaviour Behaviour
		lastSev   string
	}{
		{"success", Behaviour{}, "INFO"},
		{"failure ends with ERROR", Behaviour{Outcome: statusFailed}, "ERROR"},
		{"deploy failure ends with ERROR", Behaviour{Outcome: statusDeployFail}, "ERROR"},
		{"rejected", Behaviour{Outcome: statusRejected}, "INFO"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Options{KnowAll: true})
			h.sim.SetBehaviour("t1", tc.behaviour)
			id := h.runTask("t1")
			_, early := h.logs(id, "")
			if early.TotalSize != 1 {
				t.Errorf("dispatching run has %d lines", early.TotalSize)
			}
			h.clock.Advance(time.Second)
			status, lp := h.logs(id, "?count=200&order=DESC")
			if status != 200 || lp.Size != len(lp.Data) || lp.TotalSize != lp.Size || lp.Size < 2 {
				t.Fatalf("status %d, %+v", status, lp)
			}
			if lp.Data[0].Severity != tc.lastSev {
				t.Errorf("last line %+v, want severity %s", lp.Data[0], tc.lastSev)
			}
			for i := 1; i < len(lp.Data); i++ {
				if lp.Data[i].LogTimestamp > lp.Data[i-1].LogTimestamp {
					t.Errorf("DESC not descending: %+v", lp.Data)
				}
			}
			_, asc := h.logs(id, "?order=ASC")
			if asc.Data[len(asc.Data)-1] != lp.Data[0] {
				t.Errorf("ASC is not DESC reversed")
			}
			_, again := h.logs(id, "?count=200&order=DESC")
			if !reflect.DeepEqual(again, lp) {
				t.Errorf("logs not deterministic")
			}
		})
	}
}

func TestLogsPaging(t *testing.T) {
	h := newHarness(t, Options{KnowAll: true})
	id := h.runTask("t1")
	h.clock.Advance(time.Second)
	_, all := h.logs(id, "?order=ASC")
	_, first := h.logs(id, "?order=ASC&count=2")
	if first.Size != 2 || first.NextIndex == nil || *first.NextIndex != 2 || first.TotalSize != all.TotalSize {
		t.Fatalf("first page %+v", first)
	}
	_, rest := h.logs(id, "?order=ASC&count=200&startIndex=2")
	if rest.NextIndex != nil || !reflect.DeepEqual(append(first.Data, rest.Data...), all.Data) {
		t.Errorf("pages %+v + %+v != %+v", first, rest, all)
	}
}

func TestLogsBadQueries(t *testing.T) {
	h := newHarness(t, Options{KnowAll: true})
	id := h.runTask("t1")
	plan := h.runPlan("p1")
	tests := []struct {
		name, id, query string
		want            int
	}{
		{"defaults", id, "", 200},
		{"count 200", id, "?count=200", 200},
		{"count as decimal", id, "?count=10.0", 200},
		{"count 0", id, "?count=0", 400},
		{"count 201", id, "?count=201", 400},
		{"count text", id, "?count=all", 400},
		{"count fraction", id, "?count=1.5", 400},
		{"order", id, "?order=RANDOM", 400},
		{"startIndex negative", id, "?startIndex=-1", 400},
		{"startTime", id, "?startTime=yesterday", 400},
		{"unknown execution", "nope", "", 404},
		{"plan execution", plan, "", 404},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if status, _ := h.logs(tc.id, tc.query); status != tc.want {
				t.Errorf("status %d, want %d", status, tc.want)
			}
		})
	}
}
