package limits

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrNoSlot means the fleet's running cap is reached.
var ErrNoSlot = errNoSlot

// Slots caps the executions running at once across the fleet
// (TMC_MAX_RUNNING; Talend allows 200 per account). A slot is a key
// slot.<k>, k < max, in the claims bucket, taken with an atomic create by
// the request about to start and deleted when its execution's end is seen.
// Every replica mirrors the slots with a watch, so "is the cap reached"
// costs nothing on the hot path and fetching stops while it is.
type Slots struct {
	kv   jetstream.KeyValue
	keys []string // slot.0 … slot.<max-1>
	now  func() time.Time

	mu        sync.Mutex
	used      map[string]slotValue // slot key -> holder request
	byRequest map[string]string    // holder request -> slot key, for used
}

type slotValue struct {
	RequestID string `json:"requestId"`
	Since     int64  `json:"since"` // unix ms
}

// NewSlots returns a cap of max running executions.
func NewSlots(kv jetstream.KeyValue, max int, now func() time.Time) *Slots {
	if now == nil {
		now = time.Now
	}
	keys := make([]string, max)
	for i := range keys {
		keys[i] = "slot." + strconv.Itoa(i)
	}
	return &Slots{kv: kv, keys: keys, now: now, used: map[string]slotValue{}, byRequest: map[string]string{}}
}

// Run mirrors the slots until ctx ends.
func (s *Slots) Run(ctx context.Context) error {
	w, err := s.kv.WatchFiltered(ctx, []string{"slot.>"})
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while the watch was being set up
		}
		return fmt.Errorf("watch slots: %w", err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case upd, ok := <-w.Updates():
			if !ok {
				return nil
			}
			if upd == nil {
				continue
			}
			s.mu.Lock()
			if upd.Operation() == jetstream.KeyValuePut {
				var v slotValue
				_ = json.Unmarshal(upd.Value(), &v)
				s.setLocked(upd.Key(), v)
			} else {
				s.deleteLocked(upd.Key())
			}
			s.mu.Unlock()
		}
	}
}

// Full reports whether every slot is taken (as far as this replica knows).
func (s *Slots) Full() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.used) >= len(s.keys)
}

func (s *Slots) setLocked(key string, v slotValue) {
	s.deleteLocked(key)
	s.used[key] = v
	s.byRequest[v.RequestID] = key
}

func (s *Slots) deleteLocked(key string) {
	if old, ok := s.used[key]; ok && s.byRequest[old.RequestID] == key {
		delete(s.byRequest, old.RequestID)
	}
	delete(s.used, key)
}

// Running is the number of slots taken.
func (s *Slots) Running() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.used)
}

// Acquire takes a free slot for requestID (or returns the one it already
// holds). ErrNoSlot when the cap is reached.
//
// The free slots are tried in order from a random one (replicas rarely
// race for the same key), skipping those this replica knows are taken; a
// create refused because another replica took the key meanwhile moves on
// to the next. No per-call list of every slot: with the cap at 10,000 that
// was 70 % of the worker's CPU (bench, 100 ms × 128 with TMC_MAX_RUNNING
// 10,000).
//
// The index holds one slot per request. Should two replicas take a slot
// each for the same request at once, releasing one drops the index entry
// and a later Acquire for that request takes another slot; Collect frees
// what is left over.
func (s *Slots) Acquire(ctx context.Context, requestID string) (string, error) {
	s.mu.Lock()
	if k, ok := s.byRequest[requestID]; ok {
		s.mu.Unlock()
		return k, nil
	}
	s.mu.Unlock()
	n := len(s.keys)
	if n == 0 {
		return "", ErrNoSlot
	}
	value, _ := json.Marshal(slotValue{RequestID: requestID, Since: s.now().UnixMilli()})
	start := rand.IntN(n)
	for i := range n {
		k := s.keys[(start+i)%n]
		s.mu.Lock()
		_, taken := s.used[k]
		s.mu.Unlock()
		if taken {
			continue
		}
		_, err := s.kv.Create(ctx, k, value)
		if err == nil {
			s.mu.Lock()
			s.setLocked(k, slotValue{RequestID: requestID, Since: s.now().UnixMilli()})
			s.mu.Unlock()
			return k, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return "", fmt.Errorf("take a running slot: %w", err)
		}
	}
	return "", ErrNoSlot
}

// Release frees a slot.
func (s *Slots) Release(ctx context.Context, slot string) error {
	if slot == "" {
		return nil
	}
	if err := s.kv.Delete(ctx, slot); err != nil {
		return fmt.Errorf("release %s: %w", slot, err)
	}
	s.mu.Lock()
	s.deleteLocked(slot)
	s.mu.Unlock()
	return nil
}

// Collect frees slots held longer than minAge by requests that are not
// busy (no execution being followed, no live claim): what a crash between
// taking a slot and starting the run leaves behind.
func (s *Slots) Collect(ctx context.Context, minAge time.Duration, busy func(ctx context.Context, requestID string) bool) int {
	s.mu.Lock()
	snapshot := make(map[string]slotValue, len(s.used))
	for k, v := range s.used {
		snapshot[k] = v
	}
	s.mu.Unlock()
	freed := 0
	for k, v := range snapshot {
		if s.now().Sub(time.UnixMilli(v.Since)) < minAge || busy(ctx, v.RequestID) {
			continue
		}
		if strings.HasPrefix(k, "slot.") && s.Release(ctx, k) == nil {
			freed++
		}
	}
	return freed
}
