package claims_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/broker"
	"github.com/tmc-runner/tmc-runner/claims"
	"github.com/tmc-runner/tmc-runner/internal/jswrite"
	"github.com/tmc-runner/tmc-runner/internal/testnats"
)

// clock is a settable clock, so each transition's timestamps can be checked
// exactly.
type clock struct{ ms atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ms.Store(time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC).UnixMilli())
	return c
}

func (c *clock) now() time.Time                { return time.UnixMilli(c.ms.Load()) }
func (c *clock) advance(d time.Duration) int64 { return c.ms.Add(d.Milliseconds()) }

type bucket struct {
	js   jetstream.JetStream
	kv   jetstream.KeyValue
	topo broker.Topology
}

// newBucket starts an embedded server and provisions the real topology, so
// the claims bucket has exactly the production settings.
func newBucket(t *testing.T) *bucket {
	t.Helper()
	_, _, js := testnats.JetStream(t)
	ctx := context.Background()
	topo := broker.Topology{}.Defaults()
	if err := broker.Provision(ctx, js, topo); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, topo.ClaimsBucket)
	if err != nil {
		t.Fatal(err)
	}
	return &bucket{js: js, kv: kv, topo: topo}
}

func mustGet(t *testing.T, s *claims.Store, id string) *claims.Claim {
	t.Helper()
	c, err := s.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if c == nil {
		t.Fatalf("claim %s missing", id)
	}
	return c
}

func TestAcquireCreatesOnceAndReturnsTheFirstClaim(t *testing.T) {
	b := newBucket(t)
	ctx := context.Background()
	clk := newClock()
	a := claims.NewStore(b.kv, "replica-a", clk.now)
	other := claims.NewStore(b.kv, "replica-b", clk.now)

	if c, err := a.Get(ctx, "req-1"); err != nil || c != nil {
		t.Fatalf("Get before any claim = %+v, %v; want nil, nil", c, err)
	}
	first, acquired, err := a.Acquire(ctx, "req-1", "task-1", "task")
	if err != nil || !acquired {
		t.Fatalf("first Acquire = %v, %v; want acquired", acquired, err)
	}
	want := claims.Claim{RequestID: "req-1", Executable: "task-1", Kind: "task", Holder: "replica-a",
		State: claims.Starting, Heartbeat: clk.now().UnixMilli(), CallFrom: clk.now().UnixMilli(), Revision: first.Revision}
	if first != want || first.Revision == 0 {
		t.Fatalf("acquired claim = %+v, want %+v", first, want)
	}

	clk.advance(time.Second)
	second, acquired, err := other.Acquire(ctx, "req-1", "task-1", "task")
	if err != nil {
		t.Fatal(err)
	}
	if acquired {
		t.Fatal("second Acquire by another holder acquired an existing claim")
	}
	if second != first {
		t.Fatalf("second Acquire returned %+v, want the first claim %+v", second, first)
	}
	// Even the same holder cannot acquire twice: the claim is per request.
	if _, acquired, err := a.Acquire(ctx, "req-1", "task-1", "task"); err != nil || acquired {
		t.Fatalf("repeated Acquire by the holder = %v, %v; want not acquired", acquired, err)
	}
	if got := mustGet(t, a, "req-1"); *got != first {
		t.Fatalf("stored claim = %+v, want %+v", *got, first)
	}
}

// Of many replicas acquiring one requestId at once, exactly one wins and
// everyone sees the winner's claim.
func TestAcquireRaceHasOneWinner(t *testing.T) {
	b := newBucket(t)
	const n = 8
	var (
		wg      sync.WaitGroup
		winners atomic.Int64
		seen    = make([]claims.Claim, n)
	)
	for i := range n {
		s := claims.NewStore(b.kv, "replica-"+string(rune('a'+i)), nil)
		wg.Go(func() {
			c, acquired, err := s.Acquire(context.Background(), "race", "task-1", "task")
			if err != nil {
				t.Error(err)
				return
			}
			if acquired {
				winners.Add(1)
			}
			seen[i] = c
		})
	}
	wg.Wait()
	if w := winners.Load(); w != 1 {
		t.Fatalf("%d replicas acquired the claim, want exactly 1", w)
	}
	for i := 1; i < n; i++ {
		if seen[i].Holder != seen[0].Holder || seen[i].Revision != seen[0].Revision {
			t.Fatalf("replicas saw different claims: %+v vs %+v", seen[i], seen[0])
		}
	}
}

// Each transition writes what it says, and advances the revision.
func TestTransitionsWriteTheirFields(t *testing.T) {
	b := newBucket(t)
	ctx := context.Background()
	clk := newClock()
	a := claims.NewStore(b.kv, "replica-a", clk.now)
	other := claims.NewStore(b.kv, "replica-b", clk.now)

	c, _, err := a.Acquire(ctx, "req-t", "task-1", "task")
	if err != nil {
		t.Fatal(err)
	}
	acquiredAt := c.CallFrom

	beat := clk.advance(time.Second)
	rev := c.Revision
	if err := a.Beat(ctx, &c); err != nil {
		t.Fatal(err)
	}
	if c.Heartbeat != beat || c.Revision <= rev || c.Holder != "replica-a" || c.State != claims.Starting {
		t.Fatalf("after Beat: %+v", c)
	}
	if got := mustGet(t, a, "req-t"); *got != c {
		t.Fatalf("stored %+v, want %+v", *got, c)
	}

	// StartCall keeps an earlier CallFrom: the window must cover every call.
	clk.advance(time.Second)
	if err := a.StartCall(ctx, &c); err != nil {
		t.Fatal(err)
	}
	if c.CallFrom != acquiredAt || c.State != claims.Starting || c.Heartbeat != clk.now().UnixMilli() {
		t.Fatalf("after StartCall: %+v", c)
	}
	// A cleared CallFrom (a restart after reconciliation) starts afresh.
	c.CallFrom, c.CallTo = 0, 0
	callAt := clk.advance(time.Second)
	if err := a.StartCall(ctx, &c); err != nil {
		t.Fatal(err)
	}
	if c.CallFrom != callAt {
		t.Fatalf("StartCall after a cleared window: CallFrom %d, want %d", c.CallFrom, callAt)
	}

	lostAt := clk.advance(2 * time.Second)
	if err := a.MarkUncertain(ctx, &c); err != nil {
		t.Fatal(err)
	}
	if c.State != claims.Uncertain || c.CallTo != lostAt || c.Heartbeat != lostAt || c.CallFrom != callAt {
		t.Fatalf("after MarkUncertain: %+v", c)
	}
	if got := mustGet(t, a, "req-t"); *got != c {
		t.Fatalf("stored %+v, want %+v", *got, c)
	}

	// Another replica takes the uncertain claim over: holder, heartbeat and
	// state (reconciling) change, the call window stays for reconciliation.
	stale := mustGet(t, other, "req-t")
	takenAt := clk.advance(time.Minute)
	if err := other.TakeOver(ctx, stale); err != nil {
		t.Fatal(err)
	}
	if stale.Holder != "replica-b" || stale.Heartbeat != takenAt || stale.State != claims.Reconciling ||
		stale.CallFrom != callAt || stale.CallTo != lostAt {
		t.Fatalf("after TakeOver: %+v", stale)
	}

	stale.ReconcilingSince = takenAt
	if err := other.Save(ctx, stale); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, a, "req-t"); *got != *stale {
		t.Fatalf("stored %+v, want %+v", *got, *stale)
	}
	if !stale.HeartbeatTime().Equal(time.UnixMilli(takenAt)) {
		t.Fatalf("HeartbeatTime = %v", stale.HeartbeatTime())
	}
}

// Every write is compare-and-set: a copy read before another holder's
// update is refused, whatever the operation, and the other's write stays.
func TestWritesAreCompareAndSet(t *testing.T) {
	ops := map[string]func(s *claims.Store, c *claims.Claim) error{
		"Beat":          func(s *claims.Store, c *claims.Claim) error { return s.Beat(context.Background(), c) },
		"TakeOver":      func(s *claims.Store, c *claims.Claim) error { return s.TakeOver(context.Background(), c) },
		"StartCall":     func(s *claims.Store, c *claims.Claim) error { return s.StartCall(context.Background(), c) },
		"MarkUncertain": func(s *claims.Store, c *claims.Claim) error { return s.MarkUncertain(context.Background(), c) },
		"Save":          func(s *claims.Store, c *claims.Claim) error { return s.Save(context.Background(), c) },
		"Release":       func(s *claims.Store, c *claims.Claim) error { return s.Release(context.Background(), c) },
	}
	b := newBucket(t)
	for name, op := range ops {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			clk := newClock()
			a := claims.NewStore(b.kv, "replica-a", clk.now)
			other := claims.NewStore(b.kv, "replica-b", clk.now)
			id := "cas-" + name
			stale, _, err := a.Acquire(ctx, id, "task-1", "task")
			if err != nil {
				t.Fatal(err)
			}
			fresh := mustGet(t, other, id)
			clk.advance(time.Minute)
			if err := other.TakeOver(ctx, fresh); err != nil {
				t.Fatal(err)
			}
			staleRev := stale.Revision
			if err := op(a, &stale); err == nil {
				t.Fatalf("%s on a stale copy succeeded", name)
			}
			if name != "Release" && stale.Revision != staleRev {
				t.Errorf("%s failed but moved the copy's revision from %d to %d", name, staleRev, stale.Revision)
			}
			if got := mustGet(t, a, id); *got != *fresh {
				t.Fatalf("after a refused %s the stored claim is %+v, want the other holder's %+v", name, *got, *fresh)
			}
			// The current copy is accepted.
			if err := op(other, fresh); err != nil {
				t.Fatalf("%s on the current copy: %v", name, err)
			}
		})
	}
}

// Two replicas find the same stale claim and take it over at once: exactly
// one wins, and the claim names the winner.
func TestTakeOverRaceHasOneWinner(t *testing.T) {
	b := newBucket(t)
	ctx := context.Background()
	dead := claims.NewStore(b.kv, "dead", nil)
	for i := range 20 {
		id := "takeover-" + string(rune('a'+i))
		if _, _, err := dead.Acquire(ctx, id, "task-1", "task"); err != nil {
			t.Fatal(err)
		}
		r1 := claims.NewStore(b.kv, "r1", nil)
		r2 := claims.NewStore(b.kv, "r2", nil)
		c1, c2 := mustGet(t, r1, id), mustGet(t, r2, id)
		var (
			wg         sync.WaitGroup
			err1, err2 error
			start      = make(chan struct{})
		)
		wg.Go(func() { <-start; err1 = r1.TakeOver(ctx, c1) })
		wg.Go(func() { <-start; err2 = r2.TakeOver(ctx, c2) })
		close(start)
		wg.Wait()
		if (err1 == nil) == (err2 == nil) {
			t.Fatalf("%s: TakeOver results %v and %v, want exactly one success", id, err1, err2)
		}
		winner := "r1"
		if err2 == nil {
			winner = "r2"
		}
		if got := mustGet(t, dead, id); got.Holder != winner {
			t.Fatalf("%s: holder %q after %s won", id, got.Holder, winner)
		}
	}
}

// Release deletes only the revision it holds; afterwards the request can
// be claimed afresh.
func TestReleaseDeletesOnlyItsRevision(t *testing.T) {
	b := newBucket(t)
	ctx := context.Background()
	a := claims.NewStore(b.kv, "replica-a", nil)
	other := claims.NewStore(b.kv, "replica-b", nil)

	c, _, err := a.Acquire(ctx, "rel", "task-1", "task")
	if err != nil {
		t.Fatal(err)
	}
	stale := c
	if err := a.Beat(ctx, &c); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(ctx, &stale); err == nil {
		t.Fatal("Release of an older revision deleted the claim")
	}
	if got := mustGet(t, a, "rel"); *got != c {
		t.Fatalf("claim after a refused Release = %+v, want %+v", *got, c)
	}
	if err := a.Release(ctx, &c); err != nil {
		t.Fatal(err)
	}
	if got, err := a.Get(ctx, "rel"); err != nil || got != nil {
		t.Fatalf("Get after Release = %+v, %v; want nil, nil", got, err)
	}
	// Releasing again (the revision is gone) is refused, not a silent no-op
	// over somebody else's new claim.
	renewed, acquired, err := other.Acquire(ctx, "rel", "task-1", "task")
	if err != nil || !acquired {
		t.Fatalf("Acquire after Release = %v, %v; want acquired", acquired, err)
	}
	if err := a.Release(ctx, &c); err == nil {
		t.Fatal("a second Release deleted the new holder's claim")
	}
	if got := mustGet(t, a, "rel"); got.Holder != "replica-b" || got.Revision != renewed.Revision {
		t.Fatalf("new claim = %+v, want replica-b's revision %d", got, renewed.Revision)
	}
}

// Call records: written before the call, naming the execution after it,
// listed by the minute of the call, cleared only when nothing started.
func TestCallRecords(t *testing.T) {
	b := newBucket(t)
	ctx := context.Background()
	s := claims.NewStore(b.kv, "replica-a", nil)
	ek := claims.ExecutableKey("task", "task-1")
	otherEK := claims.ExecutableKey("task", "task-2")
	base := time.Date(2026, 12, 4, 10, 0, 30, 0, time.UTC)
	at := func(min int) int64 { return base.Add(time.Duration(min) * time.Minute).UnixMilli() }

	for _, c := range []claims.InCall{
		{RequestID: "early", Route: "r", CallFrom: at(-10)},
		{RequestID: "a", Route: "r", CallFrom: at(0)},
		{RequestID: "b", Route: "r", CallFrom: at(1)},
		{RequestID: "late", Route: "r", CallFrom: at(10)},
	} {
		if err := s.EnterCall(ctx, ek, c); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.EnterCall(ctx, otherEK, claims.InCall{RequestID: "elsewhere", Route: "r", CallFrom: at(0)}); err != nil {
		t.Fatal(err)
	}
	// a's call answered: the same record now names the execution.
	if err := s.Own(ctx, ek, claims.InCall{RequestID: "a", Route: "r", CallFrom: at(0), ExecutionID: "exec-a"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Own(ctx, ek, claims.InCall{RequestID: "b", Route: "r", CallFrom: at(1)}); err == nil {
		t.Error("Own without an execution id accepted")
	}
	// b's call was refused: its record goes.
	if err := s.LeaveCall(ctx, ek, claims.InCall{RequestID: "b", CallFrom: at(1)}); err != nil {
		t.Fatal(err)
	}

	other := claims.NewStore(b.kv, "replica-b", nil)
	list := func(from, to time.Time) map[string]string {
		t.Helper()
		calls, err := other.InCalls(ctx, ek, from, to)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, c := range calls {
			got[c.RequestID] = c.ExecutionID
		}
		return got
	}
	if got := list(base.Add(-2*time.Minute), base.Add(2*time.Minute)); len(got) != 1 || got["a"] != "exec-a" {
		t.Errorf("calls around the base minute = %v, want only a owning exec-a", got)
	}
	if got := list(base.Add(-11*time.Minute), base.Add(11*time.Minute)); len(got) != 3 || got["early"] != "" || got["late"] != "" {
		t.Errorf("calls over 22 minutes = %v, want early, a, late", got)
	}
	// A window longer than the per-minute filters lists everything.
	if got := list(base.Add(-5*time.Hour), base.Add(5*time.Hour)); len(got) != 3 {
		t.Errorf("calls over 10 hours = %v, want 3", got)
	}
	if got := list(base.Add(20*time.Minute), base.Add(30*time.Minute)); len(got) != 0 {
		t.Errorf("calls in an empty window = %v", got)
	}
	// A record listed before its request wrote the execution into it is
	// not deleted by the stale copy: it is the only index of the owner.
	calls, err := other.InCalls(ctx, ek, base.Add(9*time.Minute), base.Add(11*time.Minute))
	if err != nil || len(calls) != 1 || calls[0].RequestID != "late" || calls[0].Revision == 0 {
		t.Fatalf("listing late = %+v, %v; want its record with a revision", calls, err)
	}
	stale := calls[0]
	owned := stale
	owned.Revision, owned.ExecutionID = 0, "exec-late"
	if err := s.Own(ctx, ek, owned); err != nil {
		t.Fatal(err)
	}
	if err := other.LeaveCall(ctx, ek, stale); err == nil {
		t.Error("a stale copy of a record deleted it")
	}
	if got := list(base.Add(9*time.Minute), base.Add(11*time.Minute)); got["late"] != "exec-late" {
		t.Errorf("after the stale delete: %v, want late owning exec-late", got)
	}
	// Records do not collide with claims of the same name.
	if c, err := other.Get(ctx, "a"); err != nil || c != nil {
		t.Fatalf("Get(a) = %+v, %v; want no claim", c, err)
	}
}

// Liveness is the heartbeat, never a TTL: a claim whose holder stopped
// beating stays readable, written without a per-message TTL, in a bucket
// that keeps entries at least as long as dead letters.
func TestClaimOutlivesItsHolder(t *testing.T) {
	b := newBucket(t)
	ctx := context.Background()
	s := claims.NewStore(b.kv, "dead", nil)
	c, _, err := s.Acquire(ctx, "orphan", "task-1", "task")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.MarkUncertain(ctx, &c); err != nil {
		t.Fatal(err)
	}

	status, err := b.kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if status.TTL() < b.topo.DeadMaxAge {
		t.Errorf("claims bucket keeps entries %s, less than dead letters (%s)", status.TTL(), b.topo.DeadMaxAge)
	}
	raw, err := b.js.Stream(ctx, "KV_"+b.topo.ClaimsBucket)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := raw.GetLastMsgForSubject(ctx, "$KV."+b.topo.ClaimsBucket+".claim.orphan")
	if err != nil {
		t.Fatal(err)
	}
	if ttl := msg.Header.Get("Nats-TTL"); ttl != "" {
		t.Errorf("claim written with a per-key TTL %q", ttl)
	}

	// Nobody beats it any more; later it is still there, unchanged.
	time.Sleep(1500 * time.Millisecond)
	later := claims.NewStore(b.kv, "replica-b", nil)
	got := mustGet(t, later, "orphan")
	if *got != c {
		t.Fatalf("orphaned claim = %+v, want %+v", *got, c)
	}
	if age := time.Since(got.HeartbeatTime()); age < time.Second {
		t.Fatalf("heartbeat age %s: somebody kept beating", age)
	}
}

// The workers' stores write claims and call records through a jswrite
// Writer: the same outcomes as the bucket's own calls, including a claim
// created again over the delete marker of a released one.
func TestStoreThroughWriter(t *testing.T) {
	b := newBucket(t)
	ctx := context.Background()
	clk := newClock()
	w := jswrite.New(b.js.Conn(), 2*time.Second)
	a := claims.NewStore(b.kv, "replica-a", clk.now)
	a.UseWriter(w)
	other := claims.NewStore(b.kv, "replica-b", clk.now)
	other.UseWriter(w)

	c, acquired, err := a.Acquire(ctx, "req-w", "task", "task")
	if err != nil || !acquired {
		t.Fatalf("first Acquire: %v, %v", acquired, err)
	}
	got, acquired, err := other.Acquire(ctx, "req-w", "task", "task")
	if err != nil || acquired || got.Holder != "replica-a" || got.Revision != c.Revision {
		t.Fatalf("second Acquire: %+v, acquired %v, %v; want replica-a's claim", got, acquired, err)
	}
	if err := a.Release(ctx, &c); err != nil {
		t.Fatal(err)
	}
	again, acquired, err := other.Acquire(ctx, "req-w", "task", "task")
	if err != nil || !acquired || again.Holder != "replica-b" {
		t.Fatalf("Acquire after a release: %+v, acquired %v, %v", again, acquired, err)
	}

	ek := claims.ExecutableKey("task", "task")
	call := claims.InCall{RequestID: "req-w", Route: "default", CallFrom: clk.now().UnixMilli()}
	if err := a.EnterCall(ctx, ek, call); err != nil {
		t.Fatal(err)
	}
	call.ExecutionID = "exec-1"
	if err := a.Own(ctx, ek, call); err != nil {
		t.Fatal(err)
	}
	calls, err := a.InCalls(ctx, ek, clk.now().Add(-time.Minute), clk.now())
	if err != nil || len(calls) != 1 || calls[0].ExecutionID != "exec-1" {
		t.Fatalf("InCalls after EnterCall and Own: %+v, %v", calls, err)
	}
}
