package follow_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tmc-runner/tmc-runner/follow"
	"github.com/tmc-runner/tmc-runner/messages"
	"github.com/tmc-runner/tmc-runner/talendsim"
)

const (
	listCall = "GET /processing/executables/tasks/executions 200"
	getCall  = "GET /processing/executions/{executionId} 200"
)

// One list read serves every run in flight: 30 runs cost about the list
// reads of one, and each run's details are read once, when it has ended.
func TestListReadsServeAllRuns(t *testing.T) {
	t.Parallel()
	measure := func(t *testing.T, runs int) (lists, gets int) {
		e := newEnv(t, talendsim.Options{DispatchFor: 100 * time.Millisecond, RunFor: time.Second})
		r := e.start(fastConfig("a"), nil, nil)
		var ids []string
		for i := range runs {
			rec := e.runTask(fmt.Sprintf("eco-%d", i), "job")
			track(t, r.f, rec)
			ids = append(ids, rec.RequestID)
		}
		e.waitResults(30*time.Second, ids...)
		// Both measures span the same wall time: the runs last a second
		// whatever their number, and nothing is read once they ended.
		settle()
		st := e.sim.Stats()
		for _, id := range ids {
			if n := len(e.events.of(id, messages.Result)); n != 1 {
				t.Errorf("%s: %d results", id, n)
			}
		}
		return st.Calls[listCall], st.Calls[getCall]
	}
	var lists1, gets1, lists30, gets30 int
	t.Run("1 run", func(t *testing.T) { lists1, gets1 = measure(t, 1) })
	t.Run("30 runs", func(t *testing.T) { lists30, gets30 = measure(t, 30) })
	t.Logf("1 run: %d list reads, %d status reads; 30 runs: %d list reads, %d status reads", lists1, gets1, lists30, gets30)
	if lists1 == 0 {
		t.Fatal("no list reads with one run")
	}
	if lists30 > 2*lists1 {
		t.Errorf("30 runs took %d list reads, one run %d: list reads grow with the runs", lists30, lists1)
	}
	if gets1 > 1 {
		t.Errorf("one run: %d status reads, want 1 (when it ended)", gets1)
	}
	if gets30 > 30+3 {
		t.Errorf("30 runs: %d status reads, want about one per run", gets30)
	}
}

// One replica at a time polls; when it stops (releasing the lease) or dies
// (its lease expires), another takes over from the records and finishes
// every run with exactly one result. Records tracked on a replica that does
// not poll reach the poller through the KV watch.
func TestLeaseHandover(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		crash bool // kill a without releasing the lease
	}{
		{name: "stop releases"},
		{name: "crash expires"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, talendsim.Options{DispatchFor: 100 * time.Millisecond, RunFor: 2 * time.Second})
			e.sim.SetBehaviour("bad", talendsim.Behaviour{Outcome: "execution_failed", RunFor: 2 * time.Second})
			cfgA, cfgB := fastConfig("a"), fastConfig("b")
			cfgA.LeaseTTL, cfgB.LeaseTTL = time.Second, time.Second

			// Replica a has a connection of its own, so it can die.
			ncA, _, kvA := e.connect()
			tlA := &countingTalend{Talend: e.client}
			a := e.start(cfgA, kvA, tlA)
			// a holds the lease before b starts.
			first := e.runTask("first", "job")
			track(t, a.f, first)
			eventually(t, 10*time.Second, "a to poll", func() bool { return tlA.calls.Load() > 0 })

			_, _, kvB := e.connect()
			tlB := &countingTalend{Talend: e.client}
			b := e.start(cfgB, kvB, tlB)
			ids := []string{first.RequestID}
			for i := range 6 {
				exe := "job"
				if i%2 == 1 {
					exe = "bad"
				}
				rec := e.runTask(fmt.Sprintf("h-%d", i), exe)
				track(t, b.f, rec) // tracked on b, followed by a
				ids = append(ids, rec.RequestID)
			}
			// a sees b's records and follows them: status events come
			// while b makes no call at all.
			eventually(t, 10*time.Second, "a to follow the runs tracked on b", func() bool {
				for _, id := range ids {
					if len(e.events.of(id, messages.Status)) == 0 {
						return false
					}
				}
				return true
			})
			if n := tlB.calls.Load(); n != 0 {
				t.Fatalf("b made %d Talend calls while a held the lease", n)
			}
			for _, id := range ids {
				if n := len(e.events.of(id, messages.Result)); n != 0 {
					t.Fatalf("%s ended before the handover; make the runs longer", id)
				}
			}

			if tc.crash {
				// No release: the connection is gone before Run returns.
				ncA.Close()
			}
			a.stop(t)
			var leaseExpires time.Time
			lease, err := e.kv.Get(context.Background(), "lease.follow")
			switch {
			case tc.crash && (err != nil || !strings.Contains(string(lease.Value()), `"a"`)):
				t.Fatalf("a crashed; its lease should still be there until it expires: %v %v", err, lease)
			case tc.crash:
				var v struct{ Expires int64 }
				if err := json.Unmarshal(lease.Value(), &v); err != nil {
					t.Fatal(err)
				}
				leaseExpires = time.UnixMilli(v.Expires)
			case !tc.crash && err == nil && !strings.Contains(string(lease.Value()), `"b"`):
				t.Errorf("a stopped, yet holds the lease: %s", lease.Value())
			}
			callsA := tlA.calls.Load()

			res := e.waitResults(30*time.Second, ids...)
			settle()
			if n := tlA.calls.Load(); n != callsA {
				t.Errorf("a made %d Talend calls after it stopped", n-callsA)
			}
			if tlB.calls.Load() == 0 {
				t.Error("b never polled")
			}
			for i, id := range ids {
				if n := len(e.events.of(id, messages.Result)); n != 1 {
					t.Errorf("%s: %d results published", id, n)
				}
				var stored, statuses []string
				for _, ev := range e.stored(id) {
					switch ev.Type {
					case messages.Result:
						stored = append(stored, ev.Status)
					case messages.Status:
						statuses = append(statuses, ev.Status)
					}
				}
				if len(stored) != 1 {
					t.Errorf("%s: %d results stored", id, len(stored))
				}
				want := "execution_successful"
				if i > 0 && (i-1)%2 == 1 {
					want = "execution_failed"
				}
				if res[id].Status != want {
					t.Errorf("%s: result %s, want %s", id, res[id].Status, want)
				}
				seen := map[string]bool{}
				for _, s := range statuses {
					if seen[s] {
						t.Errorf("%s: status %s published twice across the handover: %v", id, s, statuses)
					}
					seen[s] = true
				}
			}
			if tc.crash {
				// b could take over only once a's lease expired.
				if first := time.Unix(0, tlB.firstCall.Load()); first.Before(leaseExpires) {
					t.Errorf("b polled at %v, before a's lease expired at %v", first, leaseExpires)
				}
			}
		})
	}
}

// Replicas configured without a holder name still exclude each other: the
// lease must not treat two unnamed replicas as the same holder.
func TestLeaseWithoutHolderNames(t *testing.T) {
	t.Parallel()
	e := newEnv(t, talendsim.Options{DispatchFor: 100 * time.Millisecond, RunFor: 1500 * time.Millisecond})
	tlA, tlB := &countingTalend{Talend: e.client}, &countingTalend{Talend: e.client}
	a := e.start(fastConfig(""), nil, tlA)
	track(t, a.f, e.runTask("unnamed-1", "job"))
	eventually(t, 10*time.Second, "a to poll", func() bool { return tlA.calls.Load() > 0 })
	_, _, kvB := e.connect()
	e.start(fastConfig(""), kvB, tlB)
	track(t, a.f, e.runTask("unnamed-2", "job"))
	e.waitResults(20*time.Second, "unnamed-1", "unnamed-2")
	if n := tlB.calls.Load(); n != 0 {
		t.Errorf("b made %d Talend calls while a held the lease", n)
	}
}

// A follower stopped while its watch is being set up stops cleanly: a
// worker shut down right after start must not exit with an error.
func TestRunStoppedAtStartIsClean(t *testing.T) {
	t.Parallel()
	e := newEnv(t, talendsim.Options{})
	f := follow.New(fastConfig("a"), e.kv, e.client, e.events)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := f.Run(ctx); err != nil {
		t.Errorf("Run: %v", err)
	}
}
