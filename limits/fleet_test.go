package limits

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/broker"
	"github.com/tmc-runner/tmc-runner/internal/testnats"
)

func claimsBucket(t *testing.T) jetstream.KeyValue {
	t.Helper()
	_, _, js := testnats.JetStream(t)
	topo := broker.Topology{}.Defaults()
	if err := broker.Provision(context.Background(), js, topo); err != nil {
		t.Fatal(err)
	}
	kv, _ := js.KeyValue(context.Background(), topo.ClaimsBucket)
	return kv
}

// testBed is a claims bucket and a context for one test's replicas: the
// context ends, and the goroutines started on wg are waited for, when the
// test ends.
func testBed(t *testing.T) (jetstream.KeyValue, context.Context, *sync.WaitGroup) {
	t.Helper()
	kv := claimsBucket(t)
	ctx, cancel := context.WithCancel(context.Background())
	wg := &sync.WaitGroup{}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return kv, ctx, wg
}

// Replicas that join see each other at once, and a leaving one is dropped.
func TestMembershipSplitsTheBudget(t *testing.T) {
	kv, ctx, wg := testBed(t)
	var fleets []*Fleet
	cancels := []context.CancelFunc{}
	for _, name := range []string{"a", "b", "c"} {
		f := New(kv, Options{Holder: name, PerMinute: 600, Heartbeat: 100 * time.Millisecond})
		fctx, fcancel := context.WithCancel(ctx)
		cancels = append(cancels, fcancel)
		wg.Go(func() { _ = f.Run(fctx) })
		<-f.Ready()
		fleets = append(fleets, f)
	}
	// The last to join knows all three from the start.
	if n := fleets[2].Members(); n != 3 {
		t.Errorf("joiner sees %d members, want 3", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for fleets[0].Members() != 3 || fleets[0].processing.Limit() != 600.0/60/3 {
		if time.Now().After(deadline) {
			t.Fatalf("first member sees %d members, limit %v", fleets[0].Members(), fleets[0].processing.Limit())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancels[2]()
	deadline = time.Now().Add(5 * time.Second)
	for fleets[0].Members() != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("a left member still counted: %d", fleets[0].Members())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// slowPuts delays every Put, as a loaded server or network would.
type slowPuts struct {
	jetstream.KeyValue
	delay time.Duration
}

func (s slowPuts) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	time.Sleep(s.delay)
	return s.KeyValue.Put(ctx, key, value)
}

// Ready means this replica is visible to the others: one that starts after
// it counts it from its first call, even when the heartbeat write is slow.
// (CI once saw the third replica count two: Ready had closed before the
// second one's first heartbeat was stored.)
func TestReadyMeansAnnounced(t *testing.T) {
	kv, ctx, wg := testBed(t)
	a := New(slowPuts{kv, 300 * time.Millisecond}, Options{Holder: "a", PerMinute: 600, Heartbeat: time.Second})
	wg.Go(func() { _ = a.Run(ctx) })
	<-a.Ready()
	if _, err := kv.Get(ctx, memberPrefix+"a"); err != nil {
		t.Fatalf("a is ready but not announced: %v", err)
	}
	b := New(kv, Options{Holder: "b", PerMinute: 600, Heartbeat: time.Second})
	wg.Go(func() { _ = b.Run(ctx) })
	<-b.Ready()
	if n := b.Members(); n != 2 {
		t.Errorf("b sees %d members, want 2", n)
	}
}

// One replica's open breaker pauses the others; a 429 pauses everyone's
// calls for its Retry-After.
func TestSignalsReachTheFleet(t *testing.T) {
	kv, ctx, wg := testBed(t)
	a := New(kv, Options{Holder: "a", PerMinute: 6000})
	b := New(kv, Options{Holder: "b", PerMinute: 6000})
	for _, f := range []*Fleet{a, b} {
		wg.Go(func() { _ = f.Run(ctx) })
		<-f.Ready()
	}
	if b.BreakerOpenElsewhere() {
		t.Fatal("breaker signalled before any opened")
	}
	a.BreakerOpened(ctx, 2*time.Second)
	waitUntil(t, "b to see a's breaker", b.BreakerOpenElsewhere)
	a.Pause(ctx, 700*time.Millisecond)
	waitUntil(t, "b to see the pause", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.pauseUntil.After(time.Now().Add(300 * time.Millisecond))
	})
	start := time.Now()
	if err := b.Wait(ctx, "/processing/executions"); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < 200*time.Millisecond {
		t.Errorf("b sent %s after a 429 pause of 700ms", waited)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// member joins the fleet in kv as holder with a budget of perMinute and
// runs until ctx ends (wg waits for it).
func member(ctx context.Context, wg *sync.WaitGroup, kv jetstream.KeyValue, holder string, perMinute float64) *Fleet {
	f := New(kv, Options{Holder: holder, PerMinute: perMinute, Heartbeat: 100 * time.Millisecond})
	wg.Go(func() { _ = f.Run(ctx) })
	<-f.Ready()
	return f
}

// waiters calls Wait from n goroutines until ctx ends and records when
// each call was admitted.
func waiters(ctx context.Context, f *Fleet, n int) (admitted func(from, to time.Time) int, wait func()) {
	var (
		mu    sync.Mutex
		times []time.Time
		wg    sync.WaitGroup
	)
	for range n {
		wg.Go(func() {
			for f.Wait(ctx, "/processing/executions") == nil {
				mu.Lock()
				times = append(times, time.Now())
				mu.Unlock()
			}
		})
	}
	return func(from, to time.Time) int {
		mu.Lock()
		defer mu.Unlock()
		k := 0
		for _, t := range times {
			if !t.Before(from) && t.Before(to) {
				k++
			}
		}
		return k
	}, wg.Wait
}

// With a backlog of callers waiting, a share cut (a replica joins) applies
// to the next call, not after every call already queued at the old rate.
// (Found by a cold start of three workers against a backlog.)
func TestShareCutAppliesToWaitingCalls(t *testing.T) {
	kv, ctx, wg := testBed(t)
	a := member(ctx, wg, kv, "a", 1200) // 20/s alone
	wctx, stopWaiters := context.WithCancel(ctx)
	admitted, stop := waiters(wctx, a, 64)
	defer func() { stopWaiters(); stop() }()
	time.Sleep(time.Second) // 64 callers queued behind a 20/s budget

	// Three more replicas join: a's share drops to 5/s.
	for _, name := range []string{"b", "c", "d"} {
		member(ctx, wg, kv, name, 1200)
	}
	waitUntil(t, "a sees 4 members", func() bool { return a.Members() == 4 })
	from := time.Now()
	time.Sleep(2 * time.Second)
	// 5/s for 2 s; at the old rate it would be 40.
	if n := admitted(from, time.Now()); n > 12 {
		t.Fatalf("%d calls admitted in 2 s after the share fell to 5/s, want about 10", n)
	}
	if n := admitted(from, time.Now()); n < 6 {
		t.Fatalf("%d calls admitted in 2 s at 5/s: the waiting callers stalled", n)
	}
}

// A 429 pause holds every waiting caller, including those whose turn at
// the budget had already come.
func TestPauseHoldsWaitingCalls(t *testing.T) {
	kv, ctx, wg := testBed(t)
	f := member(ctx, wg, kv, "a", 600) // 10/s
	wctx, stopWaiters := context.WithCancel(ctx)
	admitted, stop := waiters(wctx, f, 32)
	defer func() { stopWaiters(); stop() }()
	time.Sleep(500 * time.Millisecond)
	f.Pause(ctx, time.Second)
	paused := time.Now()
	time.Sleep(1500 * time.Millisecond)
	// One call may have been on its way out when the pause began.
	if n := admitted(paused.Add(50*time.Millisecond), paused.Add(950*time.Millisecond)); n > 0 {
		t.Fatalf("%d calls admitted during a 1 s pause", n)
	}
	if n := admitted(paused.Add(time.Second), time.Now()); n == 0 {
		t.Fatal("no call admitted after the pause ended")
	}
}

// A call with an admission deadline is admitted when its turn comes in
// time, and refused when the budget, a pause or the callers ahead of it
// would keep it past the deadline: at once when the wait is known (and
// saying how long it would be), at the deadline behind other callers.
func TestWaitByRefusesWhatWouldComeTooLate(t *testing.T) {
	kv, ctx, wg := testBed(t)
	f := member(ctx, wg, kv, "a", 60) // 1/s, one call in hand
	const path = "/processing/executions"

	if err := f.WaitBy(ctx, path, time.Now().Add(100*time.Millisecond)); err != nil {
		t.Fatalf("first call, budget in hand: %v", err)
	}
	t0 := time.Now() // the next call's budget comes at about t0 + 1 s
	err := f.WaitBy(ctx, path, t0.Add(300*time.Millisecond))
	if !errors.Is(err, ErrNoTurnInTime) {
		t.Fatalf("budget due in 1 s, deadline in 0.3 s: %v, want ErrNoTurnInTime", err)
	}
	if d := time.Since(t0); d > 250*time.Millisecond {
		t.Fatalf("refused after %v: it waited instead of refusing at once", d)
	}
	if w := retryAfter(err); w < 500*time.Millisecond || w > time.Second {
		t.Errorf("refusal says the wait would be %v, want about 1s", w)
	}
	// Someone else's turn (waiting for that budget) outlasts the deadline.
	other := make(chan time.Time, 1)
	go func() {
		if f.Wait(ctx, path) == nil {
			other <- time.Now()
		}
	}()
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	if err := f.WaitBy(ctx, path, start.Add(200*time.Millisecond)); !errors.Is(err, ErrNoTurnInTime) {
		t.Fatalf("behind a caller waiting for the budget: %v, want ErrNoTurnInTime", err)
	}
	if d := time.Since(start); d > 800*time.Millisecond {
		t.Fatalf("refused after %v, deadline 200ms", d)
	}
	// The refused call gave back its reservation: the other caller gets the
	// budget of t0 + 1 s, not the one after it (t0 + 2 s).
	select {
	case at := <-other:
		if at.Sub(t0) > 1600*time.Millisecond {
			t.Fatalf("the unbounded caller was admitted %v after t0: a refused reservation was kept", at.Sub(t0))
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the unbounded caller was never admitted")
	}
	// A fleet-wide pause longer than the deadline.
	f.Pause(ctx, 2*time.Second)
	start = time.Now()
	err = f.WaitBy(ctx, path, start.Add(500*time.Millisecond))
	if !errors.Is(err, ErrNoTurnInTime) {
		t.Fatalf("2 s pause, deadline in 0.5 s: %v, want ErrNoTurnInTime", err)
	}
	if d := time.Since(start); d > 250*time.Millisecond {
		t.Fatalf("refused after %v: it waited for the pause instead of refusing at once", d)
	}
	if w := retryAfter(err); w < time.Second || w > 2*time.Second {
		t.Errorf("refusal says the wait would be %v, want about 2s", w)
	}
	// A deadline already past, even for a call that would not wait.
	if err := f.WaitBy(ctx, "/security/oauth/token", time.Now().Add(-time.Millisecond)); !errors.Is(err, ErrNoTurnInTime) {
		t.Fatalf("deadline past: %v, want ErrNoTurnInTime", err)
	}
}

func retryAfter(err error) time.Duration {
	var hint interface{ RetryAfter() time.Duration }
	if errors.As(err, &hint) {
		return hint.RetryAfter()
	}
	return 0
}
