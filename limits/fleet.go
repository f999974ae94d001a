// Package limits makes the replicas of the fleet behave as one client
// towards Talend without a lock on the hot path:
//
//   - a request-rate budget (Talend allows 1,800 processing requests/min
//     per source IP, 600/min for the Monitoring API) split evenly among the
//     live replicas, each enforcing its share locally; membership is a
//     heartbeat key per replica in the claims bucket;
//   - a 429 from Talend slows the whole fleet: the replica that got it
//     writes a pause everyone honours;
//   - an open breaker on one replica pauses fetching on all of them (a
//     signal key with an expiry, not gobreaker's distributed breaker,
//     which would hold a cluster-wide lock around every call);
//   - a cap on running executions (slots.go).
//
// A *Fleet is safe for concurrent use; Run owns its goroutines.
package limits

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"
)

// Options configure a Fleet.
type Options struct {
	Holder string
	// PerMinute is the fleet's processing budget (TMC_RATE_LIMIT);
	// MonitoringPerMinute the Monitoring API's. Zero: no limit.
	PerMinute, MonitoringPerMinute float64
	// Heartbeat is how often this replica says it is alive (default 2s); a
	// member silent for three heartbeats has left.
	Heartbeat time.Duration
	// Slowdown is the pause after a 429 without Retry-After (default 2s).
	Slowdown time.Duration
	Now      func() time.Time
}

// Fleet coordinates the replicas' use of Talend.
type Fleet struct {
	kv   jetstream.KeyValue
	opts Options

	mu           sync.Mutex
	members      map[string]time.Time // holder -> last heartbeat
	pauseUntil   time.Time            // 429: everybody waits
	breakerUntil time.Time            // some replica's breaker is open
	processing   *rate.Limiter
	monitoring   *rate.Limiter
	// One caller at a time reserves on each limiter (see Wait).
	processingGate, monitoringGate chan struct{}

	ready     chan struct{} // closed once this replica joined and saw the others
	readyOnce sync.Once
}

const (
	memberPrefix = "member."
	pauseKey     = "signal.pause"
	breakerKey   = "signal.breaker"
)

// New returns a fleet coordinator on kv (the claims bucket).
func New(kv jetstream.KeyValue, opts Options) *Fleet {
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = 2 * time.Second
	}
	if opts.Slowdown <= 0 {
		opts.Slowdown = 2 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	f := &Fleet{kv: kv, opts: opts, members: map[string]time.Time{opts.Holder: opts.Now()}, ready: make(chan struct{})}
	f.processing = newLimiter(opts.PerMinute)
	f.monitoring = newLimiter(opts.MonitoringPerMinute)
	f.processingGate, f.monitoringGate = make(chan struct{}, 1), make(chan struct{}, 1)
	return f
}

func newLimiter(perMinute float64) *rate.Limiter {
	if perMinute <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(perMinute/60), 1)
}

// Run keeps this replica's membership, follows the others and the
// fleet-wide signals until ctx ends.
func (f *Fleet) Run(ctx context.Context) error {
	// Announce before watching: Ready then means this replica is visible
	// to every replica that starts after it, and it knows every replica
	// that announced before it. A failed heartbeat is retried at the next
	// tick; the signals are followed meanwhile.
	f.announce(ctx)
	watcher, err := f.kv.WatchFiltered(ctx, []string{memberPrefix + ">", "signal.>"})
	if err != nil {
		f.leave()
		if ctx.Err() != nil {
			return nil // stopped while the watch was being set up
		}
		return fmt.Errorf("watch fleet members: %w", err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { f.watch(watcher) })
	defer func() {
		_ = watcher.Stop()
		wg.Wait()
		f.leave()
	}()
	ticker := time.NewTicker(f.opts.Heartbeat)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
		f.announce(ctx)
		f.rebalance()
	}
}

// leave deletes this replica's heartbeat, so the others stop counting it
// now rather than after three missed heartbeats.
func (f *Fleet) leave() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = f.kv.Delete(ctx, memberPrefix+f.opts.Holder)
}

// announce writes this replica's heartbeat. A failed write is not
// reported: the next heartbeat tries again, and three missed ones are what
// the others go by.
func (f *Fleet) announce(ctx context.Context) {
	_, _ = f.kv.Put(ctx, memberPrefix+f.opts.Holder, []byte(strconv.FormatInt(f.opts.Now().UnixMilli(), 10)))
}

// Ready is closed once this replica has announced itself (unless that
// first write failed; it is retried at each heartbeat) and knows the
// members already there: its budget share is right from its first call.
func (f *Fleet) Ready() <-chan struct{} { return f.ready }

func (f *Fleet) watch(w jetstream.KeyWatcher) {
	for upd := range w.Updates() {
		if upd == nil {
			// Initial values delivered: the member count is known.
			f.rebalance()
			f.readyOnce.Do(func() { close(f.ready) })
			continue
		}
		f.mu.Lock()
		membership := false
		switch key := upd.Key(); {
		case strings.HasPrefix(key, memberPrefix):
			membership = true
			holder := strings.TrimPrefix(key, memberPrefix)
			if upd.Operation() == jetstream.KeyValuePut {
				ms, _ := strconv.ParseInt(string(upd.Value()), 10, 64)
				f.members[holder] = time.UnixMilli(ms)
			} else if holder != f.opts.Holder {
				delete(f.members, holder)
			}
		case key == pauseKey || key == breakerKey:
			var until int64
			_ = json.Unmarshal(upd.Value(), &until)
			t := time.UnixMilli(until)
			if key == pauseKey && t.After(f.pauseUntil) {
				f.pauseUntil = t
			}
			if key == breakerKey && t.After(f.breakerUntil) {
				f.breakerUntil = t
			}
		}
		f.mu.Unlock()
		if membership {
			// A replica joined or left: shares change now, not at the next
			// heartbeat, or the fleet overshoots its budget meanwhile.
			f.rebalance()
		}
	}
}

// Members is the number of live replicas (at least this one).
func (f *Fleet) Members() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.liveLocked()
}

func (f *Fleet) liveLocked() int {
	now := f.opts.Now()
	n := 0
	for holder, seen := range f.members {
		if holder == f.opts.Holder || now.Sub(seen) < 3*f.opts.Heartbeat {
			n++
		}
	}
	return max(n, 1)
}

// rebalance gives this replica its share of the budgets.
func (f *Fleet) rebalance() {
	f.mu.Lock()
	n := float64(f.liveLocked())
	f.mu.Unlock()
	if f.processing != nil {
		f.processing.SetLimit(rate.Limit(f.opts.PerMinute / 60 / n))
	}
	if f.monitoring != nil {
		f.monitoring.SetLimit(rate.Limit(f.opts.MonitoringPerMinute / 60 / n))
	}
}

// Wait blocks until a call to path may be sent: after any fleet-wide
// pause, within this replica's share of the budget.
//
// Callers take turns (one gate per budget): only the caller at the head
// holds a reservation on the limiter, and the pause is checked again once
// its time comes. With every caller reserving at once, a backlog would
// hold reservations for many seconds ahead at the rate of the moment: a
// share cut by a replica joining, or a 429 pause, would only apply after
// all of them had been sent (found by a cold start of three workers
// against a backlog: 20–40 429s).
func (f *Fleet) Wait(ctx context.Context, path string) error {
	return f.WaitBy(ctx, path, time.Time{})
}

// ErrNoTurnInTime: the call could not be admitted by its deadline (see
// WaitBy); it was not sent. The error WaitBy returns matches it with
// errors.Is and says, when it knows, how long the wait would have been
// (RetryAfter).
var ErrNoTurnInTime = errors.New("fleet rate budget: no turn before the call's admission deadline")

type noTurnError struct{ wait time.Duration }

func (e *noTurnError) Error() string {
	if e.wait > 0 {
		return fmt.Sprintf("%v (the budget or a pause would hold it %v)", ErrNoTurnInTime, e.wait.Round(time.Millisecond))
	}
	return ErrNoTurnInTime.Error()
}
func (e *noTurnError) Is(target error) bool { return target == ErrNoTurnInTime }

// RetryAfter is how long the refused call would have waited (0: unknown).
func (e *noTurnError) RetryAfter() time.Duration { return e.wait }

// WaitBy is Wait for a call that must be admitted by the time by (zero:
// no bound, exactly Wait). When a fleet-wide pause or the budget would
// keep the call past by, it is refused at once and gives back its
// reservation; while other callers hold the turn, it waits at most until
// by. A refusal matches ErrNoTurnInTime.
func (f *Fleet) WaitBy(ctx context.Context, path string, by time.Time) error {
	if !by.IsZero() && f.opts.Now().After(by) {
		return &noTurnError{}
	}
	limiter, gate := f.processing, f.processingGate
	if strings.HasPrefix(path, "/monitoring/") {
		limiter, gate = f.monitoring, f.monitoringGate
	}
	if limiter == nil || strings.HasPrefix(path, "/security/") {
		return f.waitPause(ctx, by)
	}
	if err := f.takeTurn(ctx, gate, by); err != nil {
		return err
	}
	defer func() { <-gate }()
	for {
		if err := f.waitPause(ctx, by); err != nil {
			return err
		}
		r := limiter.Reserve()
		if d := r.Delay(); d > 0 {
			if !by.IsZero() && f.opts.Now().Add(d).After(by) {
				r.Cancel()
				return &noTurnError{wait: d}
			}
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				r.Cancel()
				return ctx.Err()
			case <-t.C:
			}
		}
		if f.pausedFor() <= 0 {
			return nil
		}
		// A pause began while this call waited its turn: it waits the pause
		// out and takes a new turn (the budget it reserved is spent).
	}
}

// takeTurn waits until this caller holds gate, or until by (if set).
func (f *Fleet) takeTurn(ctx context.Context, gate chan struct{}, by time.Time) error {
	select {
	case gate <- struct{}{}:
		return nil
	default:
	}
	var expired <-chan time.Time
	if !by.IsZero() {
		t := time.NewTimer(by.Sub(f.opts.Now()))
		defer t.Stop()
		expired = t.C
	}
	select {
	case gate <- struct{}{}:
		if !by.IsZero() && f.opts.Now().After(by) {
			// The turn came with the deadline (select picks either).
			<-gate
			return &noTurnError{}
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-expired:
		return &noTurnError{}
	}
}

func (f *Fleet) pausedFor() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pauseUntil.Sub(f.opts.Now())
}

// waitPause returns once no fleet-wide pause is in force, or
// ErrNoTurnInTime if the pause lasts past by (when set).
func (f *Fleet) waitPause(ctx context.Context, by time.Time) error {
	for {
		pause := f.pausedFor()
		if pause <= 0 {
			return nil
		}
		if !by.IsZero() && f.opts.Now().Add(pause).After(by) {
			return &noTurnError{wait: pause}
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Pause makes the whole fleet wait for d (a 429: Retry-After, or the
// default slowdown).
func (f *Fleet) Pause(ctx context.Context, d time.Duration) {
	if d <= 0 {
		d = f.opts.Slowdown
	}
	until := f.opts.Now().Add(d)
	f.mu.Lock()
	if until.After(f.pauseUntil) {
		f.pauseUntil = until
	}
	f.mu.Unlock()
	f.signal(ctx, pauseKey, until)
}

// BreakerOpened tells the fleet this replica's breaker opened for d.
func (f *Fleet) BreakerOpened(ctx context.Context, d time.Duration) {
	until := f.opts.Now().Add(d)
	f.mu.Lock()
	if until.After(f.breakerUntil) {
		f.breakerUntil = until
	}
	f.mu.Unlock()
	f.signal(ctx, breakerKey, until)
}

// BreakerOpenElsewhere reports whether some replica's breaker is open.
func (f *Fleet) BreakerOpenElsewhere() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.opts.Now().Before(f.breakerUntil)
}

func (f *Fleet) signal(ctx context.Context, key string, until time.Time) {
	data, _ := json.Marshal(until.UnixMilli())
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	_, _ = f.kv.Put(ctx, key, data)
}

// Transport turns a 429 from Talend into a fleet-wide pause. (The budget
// itself is waited for by the client before it takes a token: Fleet.Wait.)
type Transport struct {
	Next  http.RoundTripper
	Fleet *Fleet
}

var _ http.RoundTripper = (*Transport)(nil)

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.Next.RoundTrip(req)
	if err == nil && resp.StatusCode == http.StatusTooManyRequests {
		var d time.Duration
		if secs, perr := strconv.Atoi(resp.Header.Get("Retry-After")); perr == nil && secs > 0 {
			d = time.Duration(secs) * time.Second
		}
		t.Fleet.Pause(req.Context(), d)
	}
	return resp, err
}

var errNoSlot = errors.New("running cap reached")
