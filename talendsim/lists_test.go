package talendsim

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

type listAnswer struct {
	Items []struct {
		ExecutionID string `json:"executionId"`
		TaskID      string `json:"taskId"`
		PlanID      string `json:"planId"`
		Status      string `json:"status"`
		UserType    string `json:"userType"`
	} `json:"items"`
	Limit, Offset, Total int
}

func (h *harness) list(path string) (int, listAnswer) {
	h.t.Helper()
	resp, body := h.api(http.MethodGet, path, nil)
	var la listAnswer
	if resp.StatusCode == 200 {
		mustUnmarshal(h.t, body, &la)
	} else {
		errorBody(h.t, resp, body)
	}
	return resp.StatusCode, la
}

func ms(t time.Time) int64 { return t.UnixMilli() }

func TestListOverlap(t *testing.T) {
	h := newHarness(t, Options{KnowAll: true, RunFor: time.Minute, DispatchFor: time.Second})
	t0 := h.clock.Now()
	// old: ran [t0-2h, t0-2h+61s]; human: [t0-10m, ...]; ours still running at t0+30s.
	old := h.sim.AddForeignExecution("t1", "SERVICE", "scheduler", t0.Add(-2*time.Hour))
	human := h.sim.AddForeignExecution("t1", "HUMAN", "jane", t0.Add(-10*time.Minute))
	h.clock.Advance(30 * time.Second)
	ours := h.runTask("t1")
	h.clock.Advance(time.Millisecond)
	other := h.runTask("t2")
	now := h.clock.Now()

	tests := []struct {
		name string
		path string
		want []string
	}{
		{"running is in every window", fmt.Sprintf("/processing/executables/tasks/t1/executions?from=%d&to=%d", ms(now), ms(now)), []string{ours}},
		{"window over the old run", fmt.Sprintf("/processing/executables/tasks/t1/executions?from=%d&to=%d", ms(t0.Add(-3*time.Hour)), ms(t0.Add(-119*time.Minute))), []string{old}},
		{"window after the old run ended", fmt.Sprintf("/processing/executables/tasks/t1/executions?from=%d&to=%d", ms(t0.Add(-118*time.Minute)), ms(t0.Add(-11*time.Minute))), nil},
		{"window catches a run that ended inside", fmt.Sprintf("/processing/executables/tasks/t1/executions?from=%d&to=%d", ms(t0.Add(-9*time.Minute-30*time.Second)), ms(t0.Add(-time.Minute))), []string{human}},
		{"default window, newest first", "/processing/executables/tasks/t1/executions", []string{ours, human, old}},
		{"all tasks", "/processing/executables/tasks/executions?lastDays=1", []string{other, ours, human, old}},
		{"status filter", "/processing/executables/tasks/t1/executions?status=dispatching", []string{ours}},
		{"workspace filter match", "/processing/executables/tasks/executions?workspaceId=" + simWorkspaceID + "&status=execution_successful", []string{human, old}},
		{"workspace filter other", "/processing/executables/tasks/executions?workspaceId=other", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, la := h.list(tc.path)
			if status != 200 {
				t.Fatalf("status %d", status)
			}
			var got []string
			for _, it := range la.Items {
				got = append(got, it.ExecutionID)
			}
			if len(got) != len(tc.want) || la.Total != len(tc.want) {
				t.Fatalf("got %v (total %d), want %v", got, la.Total, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("got %v, want %v", got, tc.want)
				}
			}
		})
	}
	_, la := h.list("/processing/executables/tasks/t1/executions")
	if la.Items[1].UserType != "HUMAN" || la.Items[0].UserType != "SERVICE" || la.Items[0].TaskID != "t1" {
		t.Errorf("items %+v", la.Items)
	}
}

func TestListLag(t *testing.T) {
	h := newHarness(t, Options{KnowAll: true, ListLag: 2 * time.Second})
	id := h.runTask("t1")
	if _, la := h.list("/processing/executables/tasks/t1/executions"); la.Total != 0 {
		t.Fatalf("listed before the lag: %+v", la)
	}
	h.clock.Advance(1999 * time.Millisecond)
	if _, la := h.list("/processing/executables/tasks/t1/executions"); la.Total != 0 {
		t.Fatalf("listed before the lag: %+v", la)
	}
	h.clock.Advance(time.Millisecond)
	if _, la := h.list("/processing/executables/tasks/t1/executions"); la.Total != 1 || la.Items[0].ExecutionID != id {
		t.Fatalf("not listed after the lag: %+v", la)
	}
}

func TestListPaging(t *testing.T) {
	h := newHarness(t, Options{KnowAll: true})
	var ids []string
	for range 7 {
		ids = append([]string{h.runTask("t1")}, ids...) // newest first
		h.clock.Advance(time.Millisecond)
	}
	tests := []struct {
		query     string
		wantFirst int // index into ids, -1 for none
		wantN     int
		limit     int
	}{
		{"", 0, 7, 100},
		{"?limit=3", 0, 3, 3},
		{"?limit=3&offset=3", 3, 3, 3},
		{"?limit=3&offset=6", 6, 1, 3},
		{"?offset=7", -1, 0, 100},
		{"?limit=100&offset=100", -1, 0, 100},
	}
	for _, tc := range tests {
		t.Run(tc.query, func(t *testing.T) {
			status, la := h.list("/processing/executables/tasks/t1/executions" + tc.query)
			if status != 200 || len(la.Items) != tc.wantN || la.Total != 7 || la.Limit != tc.limit {
				t.Fatalf("status %d, %+v", status, la)
			}
			if tc.wantFirst >= 0 && la.Items[0].ExecutionID != ids[tc.wantFirst] {
				t.Errorf("first %s, want %s", la.Items[0].ExecutionID, ids[tc.wantFirst])
			}
		})
	}
}

func TestListBadQueries(t *testing.T) {
	h := newHarness(t, Options{KnowAll: true})
	now := h.clock.Now()
	tests := []struct {
		name, path string
		want       int
	}{
		{"limit 0", "/processing/executables/tasks/executions?limit=0", 400},
		{"limit 101", "/processing/executables/tasks/executions?limit=101", 400},
		{"limit text", "/processing/executables/tasks/executions?limit=ten", 400},
		{"limit 100", "/processing/executables/tasks/executions?limit=100", 200},
		{"offset negative", "/processing/executables/tasks/t1/executions?offset=-1", 400},
		{"from text", "/processing/executables/tasks/t1/executions?from=yesterday", 400},
		{"from after to", fmt.Sprintf("/processing/executables/tasks/t1/executions?from=%d&to=%d", ms(now), ms(now.Add(-time.Second))), 400},
		{"range over 60 days", fmt.Sprintf("/processing/executables/tasks/t1/executions?from=%d&to=%d", ms(now.Add(-61*24*time.Hour)), ms(now)), 400},
		{"range of 60 days", fmt.Sprintf("/processing/executables/tasks/t1/executions?from=%d&to=%d", ms(now.Add(-60*24*time.Hour)), ms(now)), 200},
		{"bad task status", "/processing/executables/tasks/executions?status=running", 400},
		{"plan status on tasks", "/processing/executables/tasks/executions?status=execution_misfired", 400},
		{"lastDays 0", "/processing/executables/tasks/executions?lastDays=0", 400},
		{"bad plan limit", "/processing/executables/plans/p1/executions?limit=0", 400},
		{"task status on plans", "/processing/executables/plans/p1/executions?status=dispatching", 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if status, _ := h.list(tc.path); status != tc.want {
				t.Errorf("status %d, want %d", status, tc.want)
			}
		})
	}
}

func TestListUnknownExecutable(t *testing.T) {
	h := newHarness(t, Options{})
	h.sim.AddTask("known")
	h.sim.AddForeignExecution("foreign", "HUMAN", "jane", h.clock.Now())
	for path, want := range map[string]int{
		"/processing/executables/tasks/known/executions":   200,
		"/processing/executables/tasks/foreign/executions": 200,
		"/processing/executables/tasks/nope/executions":    404,
		"/processing/executables/plans/nope/executions":    404,
		"/processing/executables/tasks/executions":         200,
		"/processing/executables/plans/executions":         200,
	} {
		if status, _ := h.list(path); status != want {
			t.Errorf("%s: %d, want %d", path, status, want)
		}
	}
}

func TestListPlans(t *testing.T) {
	h := newHarness(t, Options{KnowAll: true})
	h.sim.SetBehaviour("p2", Behaviour{Outcome: statusFailed})
	a := h.runPlan("p1")
	h.clock.Advance(time.Millisecond)
	b := h.runPlan("p2")
	h.runTask("t1")
	h.clock.Advance(time.Second)
	tests := []struct {
		path string
		want []string
	}{
		{"/processing/executables/plans/p1/executions", []string{a}},
		{"/processing/executables/plans/executions", []string{b, a}},
		{"/processing/executables/plans/executions?status=execution_failed", []string{b}},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			_, la := h.list(tc.path)
			if len(la.Items) != len(tc.want) {
				t.Fatalf("%+v", la)
			}
			for i, id := range tc.want {
				if la.Items[i].ExecutionID != id || la.Items[i].PlanID == "" {
					t.Errorf("item %d: %+v, want %s", i, la.Items[i], id)
				}
			}
		})
	}
}
