package main

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tmc-runner/tmc-runner/broker"
	"github.com/tmc-runner/tmc-runner/claims"
	"github.com/tmc-runner/tmc-runner/messages"
	"github.com/tmc-runner/tmc-runner/talendsim"
)

// waitEvent waits until request id has an event of type typ and returns it.
func waitEvent(t *testing.T, w *workerEnv, id string, typ messages.EventType, p *process) *messages.Event {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, ev := range w.events(t)[id] {
			if ev.Type == typ {
				return ev
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s event for %s within 30s; worker output:\n%s", typ, id, p.output())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// noSecrets fails when a parameter value shows up in a command's output.
func noSecrets(t *testing.T, what string, outs ...string) {
	t.Helper()
	for _, out := range outs {
		if strings.Contains(out, "s3cret-value") {
			t.Errorf("%s printed a parameter value:\n%s", what, out)
		}
	}
}

// A request for a paused task fails and is dead-lettered; redrive lists it,
// and once the cause is fixed re-sends it as ID-r1 (then ID-r2) with
// redriveOf naming the original and the parameters intact.
func TestRedriveDeadLetter(t *testing.T) {
	w := newWorkerEnv(t, 0)
	const task = "paused-task"
	w.sim.SetBehaviour(task, talendsim.Behaviour{Paused: true})
	p := start(t, w.env("TMC_AWAIT_RESULT=false"), "worker")
	p.waitFor(t, 30*time.Second, "worker started")

	// No dead letters yet: the list says so and exits 0.
	out, errOut, code := runCmd(t, w.env(), "redrive")
	if code != 0 || !strings.Contains(errOut, "no dead letters") {
		t.Fatalf("redrive on an empty stream: exit %d\n%s%s", code, out, errOut)
	}

	const id = "rd-1"
	params := map[string]string{"user": "alice", "password": "s3cret-value"}
	body, _ := json.Marshal(map[string]any{"requestId": id, "executable": task, "parameters": params,
		"metadata": map[string]string{"origin": "billing"}})
	if _, err := w.js.Publish(context.Background(), "tmc.runs.request.default", body); err != nil {
		t.Fatal(err)
	}
	failed := waitEvent(t, w, id, messages.Failed, p)
	if failed.Reason != messages.ReasonTalendError {
		t.Fatalf("failed event reason %q, want talend_error", failed.Reason)
	}

	waitDead := time.Now().Add(10 * time.Second)
	for {
		out, errOut, code = runCmd(t, w.env(), "redrive")
		if code != 0 {
			t.Fatalf("redrive (list): exit %d\n%s%s", code, out, errOut)
		}
		if strings.Contains(out, id) || time.Now().After(waitDead) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	var line string
	for l := range strings.SplitSeq(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == id {
			line = l
		}
	}
	if line == "" {
		t.Fatalf("redrive does not list %s:\n%s", id, out)
	}
	f := strings.Fields(line)
	if len(f) < 5 || f[1] != "default" || f[2] != "talend_error" || f[4] != task {
		t.Errorf("list line %q: want id, route default, reason talend_error, time, executable %s", line, task)
	}
	if _, err := time.Parse(time.RFC3339, f[3]); err != nil {
		t.Errorf("list line %q: died %q is not a time: %v", line, f[3], err)
	}
	noSecrets(t, "redrive (list)", out, errOut)

	// The operator fixes the cause and redrives.
	w.sim.SetBehaviour(task, talendsim.Behaviour{})
	for n, want := range []string{id + "-r1", id + "-r2"} {
		out, errOut, code = runCmd(t, w.env(), "redrive", id)
		if code != 0 || !strings.Contains(out, "redriven "+id+" as "+want) {
			t.Fatalf("redrive %s (#%d): exit %d, want %q\n%s%s", id, n+1, code, "redriven "+id+" as "+want, out, errOut)
		}
		noSecrets(t, "redrive ID", out, errOut)
		acc := waitEvent(t, w, want, messages.Accepted, p)
		if acc.RedriveOf != id {
			t.Errorf("%s accepted with redriveOf %q, want %q", want, acc.RedriveOf, id)
		}
		if string(acc.Metadata) != `{"origin":"billing"}` {
			t.Errorf("%s metadata %s, want the original's", want, acc.Metadata)
		}
		exec, ok := w.sim.Execution(acc.ExecutionID)
		if !ok {
			t.Fatalf("%s: execution %s unknown to the simulator", want, acc.ExecutionID)
		}
		if !maps.Equal(exec.Parameters, params) {
			t.Errorf("%s: parameters %v reached Talend, want the original's", want, slices.Sorted(maps.Keys(exec.Parameters)))
		}
	}
	// The list now says the dead letter was redriven.
	out, _, _ = runCmd(t, w.env(), "redrive", "--route", "default")
	if !strings.Contains(out, "redriven as "+id+"-r2") {
		t.Errorf("list does not show the latest redrive:\n%s", out)
	}
	if n := w.sim.Stats().ExecutionsTotal; n != 2 {
		t.Errorf("%d executions, want 2 (one per redrive)", n)
	}
}

// A dead letter whose original started an execution is refused (the rest
// goes on, the exit code says so); --all redrives every other dead letter
// once, and a second --all skips those already redriven; --dry-run
// publishes nothing.
func TestRedriveRefusesStartedAndAll(t *testing.T) {
	w := newWorkerEnv(t, 0)
	p := start(t, w.env("TMC_AWAIT_RESULT=false"), "worker")
	p.waitFor(t, 30*time.Second, "worker started")
	ctx := context.Background()
	topo := broker.Topology{}.Defaults()
	pub := broker.NewPublisher(w.js, topo, "test", nil, nil)
	dead := func(route, id string) {
		t.Helper()
		h := nats.Header{}
		h.Set(nats.MsgIdHdr, id)
		data, _ := json.Marshal(map[string]any{"requestId": id, "executable": "task-" + id,
			"parameters": map[string]string{"password": "s3cret-value"}})
		orig := broker.Original{Subject: topo.RequestSubject(route), Header: h, Data: data}
		if err := pub.DeadLetter(ctx, orig, route, id, messages.ReasonRetriesExhausted); err != nil {
			t.Fatal(err)
		}
	}
	dead("default", "rd-a")
	dead("team-b", "rd-b")
	dead("default", "rd-started")
	dead("default", "rd-owned")
	// rd-started has an accepted event; rd-owned owns an execution.
	if _, err := w.js.Publish(ctx, "tmc.runs.events.default.rd-started.accepted", []byte(`{"requestId":"rd-started","type":"accepted"}`)); err != nil {
		t.Fatal(err)
	}
	kv, err := w.js.KeyValue(ctx, topo.ClaimsBucket)
	if err != nil {
		t.Fatal(err)
	}
	owned := claims.InCall{RequestID: "rd-owned", Route: "default", CallFrom: time.Now().UnixMilli(), ExecutionID: "ex-owned"}
	if err := claims.NewStore(kv, "test", nil).Own(ctx, claims.ExecutableKey("task", "t"), owned); err != nil {
		t.Fatal(err)
	}
	// A call record without an execution (in flight, or lost) is no owner.
	if err := claims.NewStore(kv, "test", nil).EnterCall(ctx, claims.ExecutableKey("task", "t"), claims.InCall{RequestID: "rd-a", Route: "default", CallFrom: time.Now().UnixMilli()}); err != nil {
		t.Fatal(err)
	}

	out, errOut, code := runCmd(t, w.env(), "redrive", "rd-started")
	if code == 0 || !strings.Contains(errOut, "refused rd-started") || strings.Contains(out, "redriven") {
		t.Errorf("redrive rd-started: exit %d, want a refusal\n%s%s", code, out, errOut)
	}

	// Dry run: says what would happen, publishes nothing.
	out, errOut, code = runCmd(t, w.env(), "redrive", "--dry-run", "rd-a")
	if code != 0 || !strings.Contains(out, "would redrive rd-a as rd-a-r1") {
		t.Errorf("redrive --dry-run rd-a: exit %d\n%s%s", code, out, errOut)
	}
	time.Sleep(300 * time.Millisecond)
	if evs := w.events(t)["rd-a-r1"]; len(evs) != 0 {
		t.Errorf("--dry-run published: %d events for rd-a-r1", len(evs))
	}

	// --route limits the list.
	out, _, _ = runCmd(t, w.env(), "redrive", "--route", "team-b")
	if !strings.Contains(out, "rd-b") || strings.Contains(out, "rd-a") {
		t.Errorf("redrive --route team-b lists:\n%s", out)
	}

	out, errOut, code = runCmd(t, w.env(), "redrive", "--all")
	if code == 0 {
		t.Errorf("redrive --all with refusals exited 0\n%s%s", out, errOut)
	}
	for _, want := range []string{"redriven rd-a as rd-a-r1", "redriven rd-b as rd-b-r1"} {
		if strings.Count(out, want) != 1 {
			t.Errorf("redrive --all: want %q once\n%s%s", want, out, errOut)
		}
	}
	for _, want := range []string{"refused rd-started", "refused rd-owned"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("redrive --all: no %q\n%s%s", want, out, errOut)
		}
	}
	noSecrets(t, "redrive --all", out, errOut)
	for _, c := range []struct{ id, orig, route string }{{"rd-a-r1", "rd-a", "default"}, {"rd-b-r1", "rd-b", "team-b"}} {
		acc := waitEvent(t, w, c.id, messages.Accepted, p)
		if acc.RedriveOf != c.orig || acc.Route != c.route {
			t.Errorf("%s accepted with redriveOf %q on %s, want %q on %s", c.id, acc.RedriveOf, acc.Route, c.orig, c.route)
		}
	}

	// A second --all redrives nothing again.
	out, errOut, _ = runCmd(t, w.env(), "redrive", "--all")
	if strings.Contains("\n"+out, "\nredriven ") || !strings.Contains(out, "skipped rd-a: already redriven as rd-a-r1") {
		t.Errorf("second redrive --all:\n%s%s", out, errOut)
	}
	if n := w.sim.Stats().ExecutionsTotal; n != 2 {
		t.Errorf("%d executions, want 2", n)
	}
}

func TestRedriveRewriteBody(t *testing.T) {
	in := `{"executable":"t","parameters":{"a":"x\u00e9 y","b":"1"},"requestId":"old","timeout": 5}`
	got, err := rewriteBody([]byte(in), map[string]string{"requestId": "old-r1", "redriveOf": "old"})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"executable":"t","parameters":{"a":"x\u00e9 y","b":"1"},"requestId":"old-r1","timeout":5,"redriveOf":"old"}`
	if string(got) != want {
		t.Errorf("rewriteBody:\n got %s\nwant %s", got, want)
	}
	for _, bad := range []string{`[]`, `"x"`, `{"a":1} {}`, `{"a":`} {
		if _, err := rewriteBody([]byte(bad), map[string]string{"requestId": "x"}); err == nil {
			t.Errorf("rewriteBody(%s): no error", bad)
		}
	}
}
