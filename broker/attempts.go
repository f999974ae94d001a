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

// Cancels records cancellation requests in the claims bucket: a request
// cancelled before it started finds the mark when it is processed, however
// long it waited in the stream or in a timer.
type Cancels struct {
	kv jetstream.KeyValue
}

// NewCancels keeps marks in kv.
func NewCancels(kv jetstream.KeyValue) *Cancels { return &Cancels{kv: kv} }

// Mark records that requestID is cancelled.
func (c *Cancels) Mark(ctx context.Context, requestID string) error {
	if _, err := c.kv.Put(ctx, "cancel."+requestID, []byte("1")); err != nil {
		return fmt.Errorf("mark %s cancelled: %w", requestID, err)
	}
	return nil
}

// Cancelled reports whether requestID was cancelled.
func (c *Cancels) Cancelled(ctx context.Context, requestID string) (bool, error) {
	_, err := c.kv.Get(ctx, "cancel."+requestID)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("read cancel mark of %s: %w", requestID, err)
	}
	return true, nil
}
