package main

import (
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/internal/testenv"
	"github.com/tmc-runner/tmc-runner/messages"
	"github.com/tmc-runner/tmc-runner/talendsim"
)

// runCmd runs the binary to its end and returns stdout, stderr and the
// exit code.
func runCmd(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = env
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("%v still running after 60s\nstdout:\n%s\nstderr:\n%s", args, stdout.String(), stderr.String())
	}
	return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
}

// status of a finished request prints its stored events in stream order
// and a summary, and exits 0; status never waits for more. An unknown id,
// or the right id on the wrong route, exits 1.
func TestStatusOfFinishedAndUnknownRequests(t *testing.T) {
	w := newWorkerEnv(t, 0)
	p := start(t, w.env(), "worker")
	p.waitFor(t, 30*time.Second, "worker started")

	out, errOut, code := runCmd(t, w.env(), "submit", "--executable", "fine", "--request-id", "sc-1", "--wait", "--wait-timeout", "30s")
	if code != exitOK {
		t.Fatalf("submit --wait: exit %d\n%s%s", code, out, errOut)
	}
	// stdout stays the requestId and JSON events, whatever progress says on
	// stderr (a pipe here, so plain lines, never control characters).
	submitted := strings.Split(strings.TrimSpace(out), "\n")
	if submitted[0] != "sc-1" {
		t.Fatalf("submit printed %q first, want the requestId", submitted[0])
	}
	if strings.ContainsAny(errOut, "\r\x1b") {
		t.Errorf("control characters on a non-terminal stderr: %q", errOut)
	}

	start := time.Now()
	out, errOut, code = runCmd(t, w.env(), "status", "sc-1")
	if code != 0 {
		t.Fatalf("status sc-1: exit %d\n%s%s", code, out, errOut)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("status took %s: it must read what is stored, not wait", d)
	}
	stored := w.events(t)["sc-1"]
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != len(stored) || len(stored) == 0 {
		t.Fatalf("status printed %d lines for %d stored events:\n%s", len(lines), len(stored), out)
	}
	for i, line := range lines {
		ev, err := messages.DecodeEvent([]byte(line))
		if err != nil {
			t.Fatalf("line %d: %v\n%s", i, err, line)
		}
		if ev.RequestID != "sc-1" || ev.Type != stored[i].Type {
			t.Errorf("line %d: %s of %s, want %s of sc-1 (stream order)", i, ev.Type, ev.RequestID, stored[i].Type)
		}
	}
	// The last line printed by submit --wait is the terminal event; status
	// prints the same.
	if got, want := lines[len(lines)-1], submitted[len(submitted)-1]; got != want {
		t.Errorf("status ends with\n%s\nsubmit ended with\n%s", got, want)
	}
	if !strings.HasPrefix(strings.TrimSpace(errOut), "sc-1: ") || !strings.Contains(errOut, " event") {
		t.Errorf("summary %q, want \"sc-1: ... (N events)\"", errOut)
	}
	if last := stored[len(stored)-1]; last.Type == messages.Result && !strings.Contains(errOut, "result execution_successful ok") {
		t.Errorf("summary %q does not say the run succeeded", errOut)
	}

	// The route narrows the search: right route found, wrong route not.
	if out, errOut, code := runCmd(t, w.env(), "status", "sc-1", "--route", "default"); code != 0 || len(strings.Split(strings.TrimSpace(out), "\n")) != len(stored) {
		t.Errorf("status sc-1 --route default: exit %d\n%s%s", code, out, errOut)
	}
	if out, errOut, code := runCmd(t, w.env(), "status", "--route", "team-b", "sc-1"); code != 1 || out != "" || !strings.Contains(errOut, "no events") {
		t.Errorf("status sc-1 on the wrong route: exit %d, stdout %q, stderr %q; want 1 and \"no events\"", code, out, errOut)
	}
	if out, errOut, code := runCmd(t, w.env(), "status", "no-such-request"); code != 1 || out != "" || !strings.Contains(errOut, "no-such-request: no events") {
		t.Errorf("status of an unknown id: exit %d, stdout %q, stderr %q; want 1 and \"no events\"", code, out, errOut)
	}
	// Usage errors exit 2.
	for _, args := range [][]string{{"status"}, {"status", "a", "b"}, {"status", "bad.id"}, {"cancel", "x", "--route", "bad route"}} {
		if _, errOut, code := runCmd(t, w.env(), args...); code != 2 {
			t.Errorf("%v: exit %d, want 2\n%s", args, code, errOut)
		}
	}

	// cancel --wait of a request that has already ended replays its
	// terminal event and exits with submit's code at once.
	out, errOut, code = runCmd(t, w.env(), "cancel", "sc-1", "--wait", "--wait-timeout", "20s")
	if code != exitOK || !strings.HasPrefix(out, "cancel requested for sc-1\n") {
		t.Errorf("cancel --wait of a finished request: exit %d\n%s%s", code, out, errOut)
	}
	if got := strings.Split(strings.TrimSpace(out), "\n"); got[len(got)-1] != lines[len(lines)-1] {
		t.Errorf("cancel --wait ended with %q, want the terminal event", got[len(got)-1])
	}
}

// cancel publishes {"requestId"} to tmc.runs.cancel.<route>.<id> through
// JetStream, deduplicated by Nats-Msg-Id <id>.cancel, and exits 0.
func TestCancelPublishes(t *testing.T) {
	w := newWorkerEnv(t, 0)
	// No worker: the cancellation must stay in TMC_RUNS for one to come.
	// Provisioning needs NATS only (the deployment's Job mounts no Talend
	// credentials).
	if out, errOut, code := runCmd(t, testenv.Clean("NATS_URL="+w.srv.URL()), "provision"); code != 0 {
		t.Fatalf("provision: exit %d\n%s%s", code, out, errOut)
	}
	sub, err := w.nc.SubscribeSync("tmc.runs.cancel.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := w.nc.Flush(); err != nil {
		t.Fatal(err)
	}

	out, errOut, code := runCmd(t, w.env(), "cancel", "cx-1", "--route", "team-a")
	if code != 0 || out != "cancel requested for cx-1\n" {
		t.Fatalf("cancel: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	m, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("no cancellation seen: %v", err)
	}
	if m.Subject != "tmc.runs.cancel.team-a.cx-1" {
		t.Errorf("subject %q, want tmc.runs.cancel.team-a.cx-1", m.Subject)
	}
	if got := m.Header.Get(nats.MsgIdHdr); got != "cx-1.cancel" {
		t.Errorf("Nats-Msg-Id %q, want cx-1.cancel", got)
	}
	var body map[string]any
	if err := json.Unmarshal(m.Data, &body); err != nil || len(body) != 1 || body["requestId"] != "cx-1" {
		t.Errorf("body %s (%v), want {\"requestId\":\"cx-1\"}", m.Data, err)
	}

	// The default route, and a repeat that the stream deduplicates.
	if out, _, code := runCmd(t, w.env(), "cancel", "cx-2"); code != 0 || out != "cancel requested for cx-2\n" {
		t.Errorf("cancel cx-2: exit %d, %q", code, out)
	}
	if out, _, code := runCmd(t, w.env(), "cancel", "cx-2"); code != 0 || !strings.HasPrefix(out, "cancel requested for cx-2") {
		t.Errorf("repeated cancel cx-2: exit %d, %q", code, out)
	}
	if m, err := sub.NextMsg(10 * time.Second); err != nil || m.Subject != "tmc.runs.cancel.default.cx-2" {
		t.Errorf("second cancellation: %v %v", m, err)
	}

	// Stored in TMC_RUNS, once per request.
	stream, err := w.js.Stream(context.Background(), "TMC_RUNS")
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(context.Background(), jetstream.WithSubjectFilter("tmc.runs.cancel.>"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{"tmc.runs.cancel.team-a.cx-1": 1, "tmc.runs.cancel.default.cx-2": 1}
	if len(info.State.Subjects) != len(want) {
		t.Errorf("TMC_RUNS holds %v, want %v", info.State.Subjects, want)
	}
	for subj, n := range want {
		if info.State.Subjects[subj] != n {
			t.Errorf("TMC_RUNS holds %d on %s, want %d", info.State.Subjects[subj], subj, n)
		}
	}

	// cancel --wait with nothing to end the wait times out with submit's
	// code for it.
	if _, errOut, code := runCmd(t, w.env(), "cancel", "cx-3", "--wait", "--wait-timeout", "1s"); code != exitWaitTimeout {
		t.Errorf("cancel --wait without a worker: exit %d, want %d\n%s", code, exitWaitTimeout, errOut)
	}
}

// A running request: status summarises it as running, and cancel --wait
// stops the run and exits with the code of its (not ok) result.
func TestStatusAndCancelOfRunningRequest(t *testing.T) {
	w := newWorkerEnv(t, 0)
	w.sim.SetBehaviour("long", talendsim.Behaviour{NeverEnds: true})
	p := start(t, w.env(), "worker")
	p.waitFor(t, 30*time.Second, "worker started")
	if out, errOut, code := runCmd(t, w.env(), "submit", "--executable", "long", "--request-id", "run-1"); code != 0 {
		t.Fatalf("submit: exit %d\n%s%s", code, out, errOut)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		evs := w.events(t)["run-1"]
		if len(evs) > 0 && evs[len(evs)-1].Type == messages.Status && evs[len(evs)-1].Status == "executing" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no executing status event within 30s: %v\n%s", evs, p.output())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, errOut, code := runCmd(t, w.env(), "status", "run-1"); code != 0 || !strings.Contains(errOut, "run-1: accepted, running (last status executing)") {
		t.Errorf("status of a running request: exit %d, summary %q", code, errOut)
	}

	out, errOut, code := runCmd(t, w.env(), "cancel", "run-1", "--wait", "--wait-timeout", "30s")
	if code != exitRunNotOK {
		t.Fatalf("cancel --wait of a running request: exit %d, want %d\n%s%s\nworker:\n%s", code, exitRunNotOK, out, errOut, p.output())
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	ev, err := messages.DecodeEvent([]byte(lines[len(lines)-1]))
	if err != nil || ev.Type != messages.Result || ev.Status != "terminated" {
		t.Errorf("last event %+v (%v), want a result with status terminated", ev, err)
	}
}
