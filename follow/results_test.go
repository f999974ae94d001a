package follow_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/messages"
	"github.com/tmc-runner/tmc-runner/talend"
	"github.com/tmc-runner/tmc-runner/talendsim"
)

// Every terminal status ends a followed run with exactly one result event
// carrying what Talend said, and the follow record is deleted.
func TestResultPerTerminalStatus(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name         string
		kind         messages.Kind
		outcome      string
		rejectedIsOK bool
		ok           bool
		failed       bool // error message and logs expected
		rows         bool // row counts expected
	}{
		{name: "task successful", kind: messages.KindTask, outcome: "execution_successful", ok: true, rows: true},
		{name: "task rejected ok", kind: messages.KindTask, outcome: "execution_rejected", rejectedIsOK: true, ok: true, rows: true},
		{name: "task rejected not ok", kind: messages.KindTask, outcome: "execution_rejected", rows: true},
		{name: "task failed", kind: messages.KindTask, outcome: "execution_failed", failed: true, rows: true},
		{name: "task deploy failed", kind: messages.KindTask, outcome: "deploy_failed", failed: true},
		{name: "task terminated", kind: messages.KindTask, outcome: "terminated", rows: true, failed: true},
		{name: "task terminated timeout", kind: messages.KindTask, outcome: "terminated_timeout", failed: true, rows: true},
		{name: "task terminated shutdown", kind: messages.KindTask, outcome: "terminated_shutdown", failed: true, rows: true},
		{name: "plan successful", kind: messages.KindPlan, outcome: "execution_successful", ok: true},
		{name: "plan failed", kind: messages.KindPlan, outcome: "execution_failed"},
		{name: "plan misfired", kind: messages.KindPlan, outcome: "execution_misfired"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, talendsim.Options{DispatchFor: 50 * time.Millisecond, RunFor: 150 * time.Millisecond})
			e.sim.SetBehaviour("job", talendsim.Behaviour{Outcome: tc.outcome})
			cfg := fastConfig("a")
			cfg.RejectedIsOK = tc.rejectedIsOK
			r := e.start(cfg, nil, nil)

			var rec = e.runTask("req-1", "job")
			if tc.kind == messages.KindPlan {
				rec = e.runPlan("req-1", "job")
			}
			track(t, r.f, rec)
			res := e.waitResults(20*time.Second, rec.RequestID)[rec.RequestID]
			settle()

			if got := e.events.of(rec.RequestID, messages.Result); len(got) != 1 {
				t.Errorf("follower published %d result events, want 1", len(got))
			}
			var stored []*messages.Event
			for _, ev := range e.stored(rec.RequestID) {
				if ev.Type == messages.Result {
					stored = append(stored, ev)
				}
			}
			if len(stored) != 1 {
				t.Fatalf("%d result events stored, want 1", len(stored))
			}
			// What is stored is what the follower published (times to the
			// millisecond).
			if s := stored[0]; s.Status != res.Status || s.ExecutionID != res.ExecutionID || *s.OK != *res.OK || len(s.Logs) != len(res.Logs) {
				t.Errorf("stored result %+v differs from the published %+v", s, res)
			}
			res = stored[0]

			if res.Status != tc.outcome {
				t.Errorf("status %q, want %q", res.Status, tc.outcome)
			}
			if res.OK == nil || *res.OK != tc.ok {
				t.Errorf("ok %v, want %v", deref(res.OK), tc.ok)
			}
			if res.TimedOut == nil || *res.TimedOut {
				t.Errorf("timedOut %v, want false", deref(res.TimedOut))
			}
			if res.ExecutionID != rec.ExecutionID || res.RequestID != rec.RequestID || res.Route != "default" ||
				res.Executable != "job" || res.Kind != tc.kind || res.Attempt != 1 || string(res.Metadata) != `{"origin":"test"}` {
				t.Errorf("result does not echo the request: %+v", res)
			}
			if res.FinishTime == nil {
				t.Error("no finish time")
			}
			if tc.outcome != "deploy_failed" && res.StartTime == nil {
				t.Error("no start time")
			}

			ctx := context.Background()
			if tc.kind == messages.KindTask {
				want, err := e.client.GetExecution(ctx, rec.ExecutionID)
				if err != nil {
					t.Fatal(err)
				}
				if !sameTime(res.StartTime, want.StartTime) || !sameTime(res.FinishTime, want.FinishTime) {
					t.Errorf("times %v–%v, Talend says %v–%v", res.StartTime, res.FinishTime, want.StartTime, want.FinishTime)
				}
				if res.ErrorType != want.ErrorType || res.ErrorMessage != want.ErrorMessage {
					t.Errorf("error %q %q, Talend says %q %q", res.ErrorType, res.ErrorMessage, want.ErrorType, want.ErrorMessage)
				}
				if !samePtr(res.ProcessedRows, want.ProcessedRows) || !samePtr(res.RejectedRows, want.RejectedRows) {
					t.Errorf("rows %v/%v, Talend says %v/%v", deref(res.ProcessedRows), deref(res.RejectedRows), deref(want.ProcessedRows), deref(want.RejectedRows))
				}
				if tc.rows && res.ProcessedRows == nil {
					t.Error("no processed row count")
				}
				if tc.failed && tc.outcome != "terminated" && res.ErrorMessage == "" {
					t.Error("no error message for a failed run")
				}
				if tc.outcome == "execution_rejected" && deref(res.RejectedRows) == 0 {
					t.Error("no rejected rows for execution_rejected")
				}
			} else {
				want, err := e.client.GetPlanExecution(ctx, rec.ExecutionID)
				if err != nil {
					t.Fatal(err)
				}
				if !sameTime(res.StartTime, want.StartTime) || !sameTime(res.FinishTime, want.FinishTime) {
					t.Errorf("times %v–%v, Talend says %v–%v", res.StartTime, res.FinishTime, want.StartTime, want.FinishTime)
				}
			}
			if tc.failed {
				if len(res.Logs) == 0 {
					t.Error("no logs attached to a failed run")
				}
				for i, l := range res.Logs {
					if l.Message == "" || l.Severity == "" || l.Time.IsZero() {
						t.Errorf("log line %d incomplete: %+v", i, l)
					}
					if i > 0 && l.Time.Before(res.Logs[i-1].Time) {
						t.Errorf("log lines not oldest first: %v after %v", l.Time, res.Logs[i-1].Time)
					}
				}
			} else if len(res.Logs) != 0 {
				t.Errorf("%d log lines attached to a %s run", len(res.Logs), tc.outcome)
			}
			if _, err := e.kv.Get(ctx, "follow."+rec.RequestID); !errors.Is(err, jetstream.ErrKeyNotFound) {
				t.Errorf("follow record after the result: %v, want ErrKeyNotFound", err)
			}
			if tracked, err := r.f.Tracked(ctx, rec.RequestID); err != nil || tracked {
				t.Errorf("Tracked = %v, %v after the result", tracked, err)
			}
		})
	}
}

// Status events follow Talend's progression in order, once per status, and
// never for a terminal status.
func TestStatusEventsInOrder(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		kind messages.Kind
		want []string
	}{
		{name: "task", kind: messages.KindTask, want: []string{"dispatching", "executing"}},
		{name: "plan", kind: messages.KindPlan, want: []string{"executing"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, talendsim.Options{DispatchFor: 400 * time.Millisecond, RunFor: 600 * time.Millisecond})
			r := e.start(fastConfig("a"), nil, nil)
			var ids []string
			for _, id := range []string{"s-1", "s-2", "s-3"} {
				rec := e.runTask(id, "job")
				if tc.kind == messages.KindPlan {
					rec = e.runPlan(id, "plan")
				}
				track(t, r.f, rec)
				ids = append(ids, id)
			}
			e.waitResults(20*time.Second, ids...)
			settle()
			for _, id := range ids {
				var published []string
				for _, ev := range e.events.of(id, messages.Status) {
					published = append(published, ev.Status)
				}
				if !slices.Equal(published, tc.want) {
					t.Errorf("%s: status events %v, want %v", id, published, tc.want)
				}
				var stored []string
				for _, ev := range e.stored(id) {
					if ev.Type == messages.Status {
						stored = append(stored, ev.Status)
					}
				}
				if !slices.Equal(stored, tc.want) {
					t.Errorf("%s: stored status events %v, want %v", id, stored, tc.want)
				}
				if types := e.events.types(id); types[len(types)-1] != "result:execution_successful" {
					t.Errorf("%s: events %v: want the result last", id, types)
				}
			}
		})
	}
}

// A run that never ends gets one timed-out result once its deadline passed,
// with the last status seen. A status outside DESIGN.md's terminal list (a
// value added later, a task "misfire") is reported as a status, not taken
// as an ending.
func TestDeadlineGivesTimedOutResult(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		kind      messages.Kind
		behaviour talendsim.Behaviour
		last      string
	}{
		{name: "task never ends", kind: messages.KindTask, behaviour: talendsim.Behaviour{NeverEnds: true}, last: "executing"},
		{name: "plan never ends", kind: messages.KindPlan, behaviour: talendsim.Behaviour{NeverEnds: true}, last: "executing"},
		{name: "task unknown status", kind: messages.KindTask, behaviour: talendsim.Behaviour{Outcome: "stopping_for_good"}, last: "stopping_for_good"},
		{name: "task misfired", kind: messages.KindTask, behaviour: talendsim.Behaviour{Outcome: "execution_misfired"}, last: "execution_misfired"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, talendsim.Options{DispatchFor: 50 * time.Millisecond, RunFor: 100 * time.Millisecond})
			e.sim.SetBehaviour("forever", tc.behaviour)
			r := e.start(fastConfig("a"), nil, nil)
			rec := e.runTask("slow", "forever")
			if tc.kind == messages.KindPlan {
				rec = e.runPlan("slow", "forever")
			}
			rec.Deadline = rec.AcceptedAt.Add(800 * time.Millisecond)
			track(t, r.f, rec)
			res := e.waitResults(20*time.Second, rec.RequestID)[rec.RequestID]
			settle()
			if n := len(e.events.of(rec.RequestID, messages.Result)); n != 1 {
				t.Errorf("%d result events, want 1", n)
			}
			if res.TimedOut == nil || !*res.TimedOut || res.OK == nil || *res.OK {
				t.Errorf("timedOut %v ok %v, want true, false", deref(res.TimedOut), deref(res.OK))
			}
			if res.Status != tc.last {
				t.Errorf("status %q, want the last seen, %s", res.Status, tc.last)
			}
			if st := e.events.of(rec.RequestID, messages.Status); len(st) == 0 || st[len(st)-1].Status != tc.last {
				t.Errorf("events %v: want a status event for %s", e.events.types(rec.RequestID), tc.last)
			}
			if res.ExecutionID != rec.ExecutionID {
				t.Errorf("executionId %q, want %q", res.ExecutionID, rec.ExecutionID)
			}
			// Wall clocks, as the follower compares them (deadlines travel
			// through the bucket without a monotonic reading): the VM's wall
			// clock can be stepped by a few ms against the monotonic one.
			if res.Time.Round(0).Before(rec.Deadline.Round(0)) {
				t.Errorf("timed out at %v, before the deadline %v", res.Time, rec.Deadline)
			}
			if info, _ := e.sim.Execution(rec.ExecutionID); info.Status != tc.last {
				t.Errorf("simulator says %q, want %q", info.Status, tc.last)
			}
		})
	}
}

// Lists and status reads that lag right after a start are not an ending;
// an execution Talend never knew ends not-found, after the lag only.
func TestStartupLag(t *testing.T) {
	t.Parallel()
	t.Run("lagging executions end normally", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, talendsim.Options{
			DispatchFor: 20 * time.Millisecond, RunFor: 50 * time.Millisecond,
			ListLag: 200 * time.Millisecond, StatusLag: 250 * time.Millisecond,
		})
		e.sim.SetBehaviour("bad", talendsim.Behaviour{Outcome: "execution_failed"})
		r := e.start(fastConfig("a"), nil, nil)
		recs := []struct {
			id, status string
			ok         bool
		}{{"lag-task", "execution_successful", true}, {"lag-failing", "execution_failed", false}, {"lag-plan", "execution_successful", true}}
		track(t, r.f, e.runTask("lag-task", "job"))
		track(t, r.f, e.runTask("lag-failing", "bad"))
		track(t, r.f, e.runPlan("lag-plan", "plan"))
		res := e.waitResults(20*time.Second, "lag-task", "lag-failing", "lag-plan")
		settle()
		for _, want := range recs {
			got := res[want.id]
			if got.Status != want.status || deref(got.OK) != want.ok || deref(got.TimedOut) || got.Detail != "" {
				t.Errorf("%s: result %s ok=%v timedOut=%v detail %q; want %s ok=%v", want.id, got.Status, deref(got.OK), deref(got.TimedOut), got.Detail, want.status, want.ok)
			}
			if n := len(e.events.of(want.id, messages.Result)); n != 1 {
				t.Errorf("%s: %d results", want.id, n)
			}
		}
	})
	t.Run("unknown executions end not found after the lag", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, talendsim.Options{})
		cfg := fastConfig("a")
		r := e.start(cfg, nil, nil)
		task := record("ghost-task", "job", messages.KindTask, "00000000-made-up-task")
		plan := record("ghost-plan", "plan", messages.KindPlan, "00000000-made-up-plan")
		track(t, r.f, task)
		track(t, r.f, plan)
		res := e.waitResults(20*time.Second, task.RequestID, plan.RequestID)
		settle()
		for _, rec := range []struct {
			id       string
			accepted time.Time
		}{{task.RequestID, task.AcceptedAt}, {plan.RequestID, plan.AcceptedAt}} {
			got := res[rec.id]
			if deref(got.OK) || deref(got.TimedOut) || got.OK == nil {
				t.Errorf("%s: ok %v timedOut %v, want false false", rec.id, deref(got.OK), deref(got.TimedOut))
			}
			if !strings.Contains(got.Detail, "404") && !strings.Contains(strings.ToLower(got.Detail), "not found") {
				t.Errorf("%s: detail %q does not say the execution was not found", rec.id, got.Detail)
			}
			if got.Time.Sub(rec.accepted) < cfg.StartupLag {
				t.Errorf("%s: ended %s after acceptance, before the start-up lag %s", rec.id, got.Time.Sub(rec.accepted), cfg.StartupLag)
			}
			if n := len(e.events.of(rec.id, messages.Result)); n != 1 {
				t.Errorf("%s: %d results", rec.id, n)
			}
		}
	})
}

// When listing is refused, task runs are followed one by one.
func TestListingRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, talendsim.Options{DispatchFor: 50 * time.Millisecond, RunFor: 300 * time.Millisecond})
	e.sim.SetBehaviour("bad", talendsim.Behaviour{Outcome: "execution_failed"})
	tl := &countingTalend{Talend: e.client}
	tl.setListErr(&talend.APIError{Op: "list executions", StatusCode: 403})
	r := e.start(fastConfig("a"), nil, tl)
	track(t, r.f, e.runTask("r-ok", "job"))
	track(t, r.f, e.runTask("r-bad", "bad"))
	res := e.waitResults(20*time.Second, "r-ok", "r-bad")
	settle()
	if got := res["r-ok"]; got.Status != "execution_successful" || !deref(got.OK) || got.FinishTime == nil {
		t.Errorf("r-ok: %+v", got)
	}
	if got := res["r-bad"]; got.Status != "execution_failed" || deref(got.OK) || got.ErrorMessage == "" {
		t.Errorf("r-bad: %+v", got)
	}
	for _, id := range []string{"r-ok", "r-bad"} {
		if n := len(e.events.of(id, messages.Result)); n != 1 {
			t.Errorf("%s: %d results", id, n)
		}
		if st := e.events.of(id, messages.Status); len(st) == 0 || st[len(st)-1].Status != "executing" {
			t.Errorf("%s: status events %v, want executing seen one by one", id, e.events.types(id))
		}
	}
	// A refusal is not retried every round.
	if n := tl.lists.Load(); n > 2 {
		t.Errorf("%d list calls after a 403, want the refusal remembered", n)
	}
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func samePtr[T comparable](a, b *T) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return *a == *b
}

func sameTime(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return a.Equal(*b)
}

// A list read that fails for a passing reason (Talend down, throttled) is
// retried on the polling schedule, not on every tick, and following resumes
// when listing works again.
func TestListingFailureRetriedOnSchedule(t *testing.T) {
	t.Parallel()
	e := newEnv(t, talendsim.Options{DispatchFor: 50 * time.Millisecond, RunFor: 300 * time.Millisecond})
	tl := &countingTalend{Talend: e.client}
	tl.setListErr(&talend.APIError{Op: "list executions", StatusCode: 503})
	cfg := fastConfig("a")
	cfg.MinInterval, cfg.MaxInterval = 200*time.Millisecond, 400*time.Millisecond
	r := e.start(cfg, nil, tl)
	track(t, r.f, e.runTask("down", "job"))
	eventually(t, 10*time.Second, "a first list read", func() bool { return tl.lists.Load() > 0 })
	time.Sleep(time.Second)
	// At most one read per MinInterval (about 5 in that second), where a
	// retry on every 20ms tick would make about 50.
	if n := tl.lists.Load(); n > 10 {
		t.Errorf("%d list reads in about a second with a %s interval: failures retried on every tick", n, cfg.MinInterval)
	}
	tl.setListErr(nil)
	res := e.waitResults(20*time.Second, "down")["down"]
	if res.Status != "execution_successful" || !deref(res.OK) {
		t.Errorf("result %s ok=%v after listing recovered", res.Status, deref(res.OK))
	}
}

// A run that ended shortly before its deadline, after the last
// observation, is reported as it ended: one last status read comes before
// a timed-out result.
func TestRunEndingJustBeforeItsDeadlineIsNotTimedOut(t *testing.T) {
	e := newEnv(t, talendsim.Options{DispatchFor: 50 * time.Millisecond, RunFor: 300 * time.Millisecond})
	cfg := fastConfig("a")
	// Observed once at the start, next not before 3 s: the run's end (at
	// ~350 ms) falls between the first look and the deadline (1 s).
	cfg.MinInterval, cfg.MaxInterval = 3*time.Second, 3*time.Second
	r := e.start(cfg, nil, nil)
	rec := e.runTask("ends-in-time", "quick")
	rec.Deadline = rec.AcceptedAt.Add(time.Second)
	track(t, r.f, rec)
	res := e.waitResults(20*time.Second, rec.RequestID)[rec.RequestID]
	if res.TimedOut == nil || *res.TimedOut || res.OK == nil || !*res.OK || res.Status != "execution_successful" {
		t.Fatalf("result timedOut %v ok %v status %q, want the run's own end: false, true, execution_successful",
			deref(res.TimedOut), deref(res.OK), res.Status)
	}
	if res.Time.Round(0).Before(rec.Deadline.Round(0)) {
		t.Errorf("result at %v, before the deadline %v: the run's end was seen by a regular observation, so this test proves nothing", res.Time, rec.Deadline)
	}
}
