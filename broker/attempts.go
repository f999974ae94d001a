package broker

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"
)

// Attempts counts a request's request-specific failures (answers that a
// retry may fix, but not forever) in the claims bucket, so the count
// survives redeliveries to other replicas. Systemic failures are never
// counted: they say nothing about the request. Only this rare path pays the
// KV round trips.
type Attempts struct {
	kv jetstream.KeyValue
}

// NewAttempts counts in kv.
func NewAttempts(kv jetstream.KeyValue) *Attempts { return &Attempts{kv: kv} }

// Increment adds one to requestID's count and returns the new count.
func (a *Attempts) Increment(ctx context.Context, requestID string) (int, error) {
	key := "attempts." + requestID
	for range 10 {
		entry, err := a.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			if _, err := a.kv.Create(ctx, key, []byte("1")); err == nil {
				return 1, nil
			} else if !errors.Is(err, jetstream.ErrKeyExists) {
				return 0, fmt.Errorf("count attempt of %s: %w", requestID, err)
			}
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("read attempts of %s: %w", requestID, err)
		}
		n, _ := strconv.Atoi(string(entry.Value()))
		n++
		if _, err := a.kv.Update(ctx, key, []byte(strconv.Itoa(n)), entry.Revision()); err == nil {
			return n, nil
		} else if !isWrongLastSequence(err) && !errors.Is(err, jetstream.ErrKeyExists) {
			return 0, fmt.Errorf("count attempt of %s: %w", requestID, err)
		}
	}
	return 0, fmt.Errorf("count attempt of %s: too much contention", requestID)
}
