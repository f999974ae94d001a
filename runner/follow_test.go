package runner

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tmc-runner/tmc-runner/follow"
	"github.com/tmc-runner/tmc-runner/messages"
	"github.com/tmc-runner/tmc-runner/talendsim"
)

func fastFollow() *follow.Config {
	return &follow.Config{
		MinInterval: 50 * time.Millisecond, MaxInterval: 200 * time.Millisecond,
		StartupLag: 500 * time.Millisecond, LeaseTTL: 3 * time.Second, Tick: 20 * time.Millisecond,
	}
}

// With results on, a request ends with accepted (followed), its status
// changes in order, and one result.
func TestPipelineFollowsToResult(t *testing.T) {
	h := newHarness(t, func(_ *harness, o *talendsim.Options) {
		o.DispatchFor, o.RunFor = 300*time.Millisecond, 600*time.Millisecond
	})
	h.follow = fastFollow()
	h.sim.SetBehaviour("failing", talendsim.Behaviour{Outcome: "execution_failed"})
	h.start()
	h.request("ok-run", "task-a", nil)
	h.request("failing-run", "failing", nil)
	h.request("plan-run", "plan-p", map[string]any{"kind": "plan"})
	h.request("not-followed", "task-b", map[string]any{"awaitResult": false})
	evs := h.waitTerminal(30*time.Second, "ok-run", "failing-run", "plan-run", "not-followed")

	check := func(id string, want []messages.EventType) []*messages.Event {
		t.Helper()
		got := evs[id]
		if !slices.Equal(typesOf(got), want) {
			t.Errorf("%s: events %v, want %v", id, typesOf(got), want)
		}
		return got
	}
	okRun := check("ok-run", []messages.EventType{messages.Accepted, messages.Status, messages.Status, messages.Result})
	if len(okRun) == 4 {
		if okRun[1].Status != "dispatching" || okRun[2].Status != "executing" {
			t.Errorf("status events %q, %q: want dispatching then executing", okRun[1].Status, okRun[2].Status)
		}
		res := okRun[3]
		if res.Status != "execution_successful" || res.OK == nil || !*res.OK || res.ExecutionID != okRun[0].ExecutionID || res.FinishTime == nil {
			t.Errorf("result %+v", res)
		}
		if okRun[0].Followed == nil || !*okRun[0].Followed {
			t.Error("accepted event does not say it is followed")
		}
	}
	failing := evs["failing-run"]
	if res := failing[len(failing)-1]; res.Type != messages.Result || res.OK == nil || *res.OK || res.Status != "execution_failed" || len(res.Logs) == 0 || res.ErrorMessage == "" {
		t.Errorf("failing run result %+v: want ok false, execution_failed, an error message and logs\n%s", res, h.logs.Tail(20))
	}
	plan := evs["plan-run"]
	if res := plan[len(plan)-1]; res.Type != messages.Result || res.Status != "execution_successful" {
		t.Errorf("plan result %+v", res)
	}
	check("not-followed", []messages.EventType{messages.Accepted})
	h.assertDrained()
}

// Cancel before the run starts: a parked request ends failed (cancelled)
// without reaching Talend. Cancel during the run: the execution is stopped
// and the result reports it terminated.
func TestPipelineCancel(t *testing.T) {
	h := newHarness(t)
	h.follow = fastFollow()
	h.sim.SetBehaviour("forever", talendsim.Behaviour{NeverEnds: true})
	h.start()

	h.request("later", "task-later", map[string]any{"notBefore": time.Now().Add(3 * time.Second).UTC().Format(time.RFC3339)})
	h.request("running", "forever", nil)
	h.eventually(10*time.Second, "the never-ending run accepted", func() bool {
		return len(h.allEvents()["running"]) > 0
	})
	h.cancelRequest("default", "later")
	h.cancelRequest("default", "running")

	evs := h.waitTerminal(30*time.Second, "later", "running")
	later := evs["later"]
	if len(later) != 1 || later[0].Type != messages.Failed || later[0].Reason != messages.ReasonCancelled {
		t.Errorf("cancelled before start: %v %+v", typesOf(later), later)
	}
	if n := h.sim.Stats().Executions["task-later"]; n != 0 {
		t.Errorf("cancelled request ran %d times", n)
	}
	running := evs["running"]
	res := running[len(running)-1]
	if res.Type != messages.Result || res.Status != "terminated" || res.OK == nil || *res.OK {
		t.Errorf("cancelled run ended %v %+v, want a result with status terminated", typesOf(running), res)
	}
	h.assertDrained()
}

func (h *harness) cancelRequest(route, id string) {
	h.t.Helper()
	msg := nats.NewMsg(h.topo.CancelSubject(route, id))
	msg.Data = []byte(`{"requestId":"` + id + `"}`)
	if _, err := h.js.PublishMsg(context.Background(), msg); err != nil {
		h.t.Fatal(err)
	}
}
