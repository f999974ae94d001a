package main

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tmc-runner/tmc-runner/messages"
	"github.com/tmc-runner/tmc-runner/talendsim"
)

// A worker killed (SIGKILL: no shutdown, lease not released) while 50
// executions are in progress, then replaced: every one of the 50 gets
// exactly one result, and nothing runs twice.
func TestKilledWorkerLosesNoFollowUp(t *testing.T) {
	w := newWorkerEnv(t, 0)
	w.sim.SetBehaviour("long", talendsim.Behaviour{RunFor: 6 * time.Second})
	env := w.env(
		"TMC_FOLLOW_MIN_INTERVAL=200ms", "TMC_FOLLOW_MAX_INTERVAL=500ms",
		"TMC_FOLLOW_STARTUP_LAG=2s", "TMC_FOLLOW_LEASE_TTL=3s", "TMC_CONCURRENCY=32",
	)
	first := start(t, env, "worker")
	first.waitFor(t, 30*time.Second, "worker started")
	const n = 50
	for i := range n {
		id := fmt.Sprintf("kill-%02d", i)
		msg := nats.NewMsg("tmc.runs.request.default")
		msg.Data, _ = json.Marshal(map[string]string{"requestId": id, "executable": "long"})
		if _, err := w.js.PublishMsg(context.Background(), msg); err != nil {
			t.Fatal(err)
		}
	}
	countType := func(evs map[string][]*messages.Event, typ messages.EventType) int {
		c := 0
		for _, list := range evs {
			for _, e := range list {
				if e.Type == typ {
					c++
				}
			}
		}
		return c
	}
	deadline := time.Now().Add(30 * time.Second)
	for countType(w.events(t), messages.Accepted) < n {
		if time.Now().After(deadline) {
			t.Fatalf("not all accepted:\n%s", first.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r := countType(w.events(t), messages.Result); r != 0 {
		t.Fatalf("%d results before the kill: runs must still be in progress", r)
	}
	if err := first.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	first.wait(t, 10*time.Second)

	second := start(t, env, "worker")
	second.waitFor(t, 30*time.Second, "worker started")
	deadline = time.Now().Add(60 * time.Second)
	for {
		evs := w.events(t)
		if countType(evs, messages.Result) >= n {
			for id, list := range evs {
				results := 0
				for _, e := range list {
					if e.Type == messages.Result {
						results++
						if e.OK == nil || !*e.OK || e.Status != "execution_successful" {
							t.Errorf("%s: result %+v", id, e)
						}
					}
				}
				if results != 1 {
					t.Errorf("%s: %d results, want 1", id, results)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d results after the restart\n%s", countType(evs, messages.Result), n, second.output())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := w.sim.Stats().Executions["long"]; got != n {
		t.Errorf("%d executions for %d requests", got, n)
	}
}
