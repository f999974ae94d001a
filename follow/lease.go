package follow

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// lease lets one replica at a time poll Talend for the fleet. It is a
// bucket key holding the holder's id and an expiry; it is taken with an
// atomic create, renewed and taken over with compare-and-set on the key's
// revision. The holder checks it before every Talend call of a round, so a
// holder that lost it stops within one call. Expiry is judged by the
// clocks of different replicas: the TTL must exceed their skew by far.
// Overlap is harmless beyond wasted calls: events are idempotent.
type lease struct {
	kv     jetstream.KeyValue
	key    string
	holder string
	ttl    time.Duration
	now    func() time.Time

	held     bool
	revision uint64
	renewed  time.Time
}

type leaseValue struct {
	Holder  string `json:"holder"`
	Expires int64  `json:"expires"` // unix ms, by the holder's clock
}

// hold reports whether this replica holds the lease, taking or renewing it
// as needed. Renewals happen every third of the TTL.
func (l *lease) hold(ctx context.Context) bool {
	now := l.now()
	if l.held && now.Sub(l.renewed) < l.ttl/3 {
		return true
	}
	value, _ := json.Marshal(leaseValue{Holder: l.holder, Expires: now.Add(l.ttl).UnixMilli()})
	if l.held {
		rev, err := l.kv.Update(ctx, l.key, value, l.revision)
		if err == nil {
			l.revision, l.renewed = rev, now
			return true
		}
		// Someone took it (we were too slow), or NATS is unreachable: in
		// both cases stop acting as the holder.
		l.held = false
	}
	entry, err := l.kv.Get(ctx, l.key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted):
		rev, err := l.kv.Create(ctx, l.key, value)
		if err != nil {
			return false
		}
		l.held, l.revision, l.renewed = true, rev, now
		return true
	case err != nil:
		return false
	}
	var current leaseValue
	if json.Unmarshal(entry.Value(), &current) == nil && current.Holder != l.holder &&
		now.Before(time.UnixMilli(current.Expires)) {
		return false
	}
	rev, err := l.kv.Update(ctx, l.key, value, entry.Revision())
	if err != nil {
		return false
	}
	l.held, l.revision, l.renewed = true, rev, now
	return true
}

// release gives the lease up so another replica can take it at once.
func (l *lease) release(ctx context.Context) {
	if !l.held {
		return
	}
	l.held = false
	_ = l.kv.Delete(ctx, l.key, jetstream.LastRevision(l.revision))
}
