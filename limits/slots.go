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
	kv  jetstream.KeyValue
	max int
	now func() time.Time

	mu   sync.Mutex
	used map[string]slotValue // slot key -> holder request
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
	return &Slots{kv: kv, max: max, now: now, used: map[string]slotValue{}}
}

// Run mirrors the slots until ctx ends.
func (s *Slots) Run(ctx context.Context) error {
	w, err := s.kv.WatchFiltered(ctx, []string{"slot.>"})
	if err != nil {
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
				s.used[upd.Key()] = v
			} else {
				delete(s.used, upd.Key())
			}
			s.mu.Unlock()
		}
	}
}

// Full reports whether every slot is taken (as far as this replica knows).
func (s *Slots) Full() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.used) >= s.max
}

// Running is the number of slots taken.
func (s *Slots) Running() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.used)
}

// Acquire takes a free slot for requestID (or returns the one it already
// holds). ErrNoSlot when the cap is reached.
func (s *Slots) Acquire(ctx context.Context, requestID string) (string, error) {
	s.mu.Lock()
	var free []string
	taken := make(map[string]bool, len(s.used))
	for k, v := range s.used {
		if v.RequestID == requestID {
			s.mu.Unlock()
			return k, nil
		}
		taken[k] = true
	}
	s.mu.Unlock()
	for i := range s.max {
		if k := "slot." + strconv.Itoa(i); !taken[k] {
			free = append(free, k)
		}
	}
	rand.Shuffle(len(free), func(i, j int) { free[i], free[j] = free[j], free[i] })
	value, _ := json.Marshal(slotValue{RequestID: requestID, Since: s.now().UnixMilli()})
	for _, k := range free {
		_, err := s.kv.Create(ctx, k, value)
		if err == nil {
			s.mu.Lock()
			s.used[k] = slotValue{RequestID: requestID, Since: s.now().UnixMilli()}
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
	delete(s.used, slot)
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
