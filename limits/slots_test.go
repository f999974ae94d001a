package limits

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
)

// Two replicas taking slots at once never exceed the cap between them, a
// request keeps the slot it holds (on either replica once mirrored), and a
// released slot can be taken again.
func TestSlotsCapAcrossReplicas(t *testing.T) {
	kv, ctx, wg := testBed(t)
	const capacity = 5
	a, b := NewSlots(kv, capacity, nil), NewSlots(kv, capacity, nil)
	for _, s := range []*Slots{a, b} {
		wg.Go(func() { _ = s.Run(ctx) })
	}

	var mu sync.Mutex
	holders := map[string]string{} // slot -> request
	refused := 0
	var takers sync.WaitGroup
	for i := range 20 {
		s := []*Slots{a, b}[i%2]
		takers.Go(func() {
			req := fmt.Sprintf("r%d", i)
			k, err := s.Acquire(ctx, req)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, ErrNoSlot):
				refused++
			case err != nil:
				t.Errorf("%s: %v", req, err)
			case holders[k] != "":
				t.Errorf("%s got %s, already held by %s", req, k, holders[k])
			default:
				holders[k] = req
			}
		})
	}
	takers.Wait()
	if len(holders) != capacity || refused != 20-capacity {
		t.Fatalf("%d slots taken, %d refused; want %d and %d", len(holders), refused, capacity, 20-capacity)
	}
	waitUntil(t, "both replicas to see every slot", func() bool { return a.Full() && b.Full() })

	for k, req := range holders {
		for _, s := range []*Slots{a, b} {
			if got, err := s.Acquire(ctx, req); err != nil || got != k {
				t.Errorf("%s holds %s, Acquire again gave %q, %v", req, k, got, err)
			}
		}
	}
	var freed string
	for k := range holders {
		freed = k
		break
	}
	if err := a.Release(ctx, freed); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "b to see the release", func() bool { return !b.Full() })
	if got, err := b.Acquire(ctx, "late"); err != nil || got != freed {
		t.Errorf("after %s was released, Acquire gave %q, %v", freed, got, err)
	}
}

// A replica stopped while its watches are being set up stops cleanly: a
// shutdown right after start is not an error (it made the worker exit 1).
func TestRunStoppedAtStartIsClean(t *testing.T) {
	kv := claimsBucket(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := NewSlots(kv, 5, nil).Run(ctx); err != nil {
		t.Errorf("slots: %v", err)
	}
	if err := New(kv, Options{Holder: "a"}).Run(ctx); err != nil {
		t.Errorf("fleet: %v", err)
	}
}
