package talend

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/sony/gobreaker/v2"
)

// BreakerSettings configure the circuit breaker; zero values mean defaults.
type BreakerSettings struct {
	// ConsecutiveFailures that open the breaker (default 5).
	ConsecutiveFailures uint32
	// OpenFor is how long the breaker stays open before letting probes
	// through (default 30s).
	OpenFor time.Duration
	// HalfOpenRequests is how many calls may pass while half-open; that many
	// successes close it again (default 1).
	HalfOpenRequests uint32
	// OnStateChange is told about every transition (metrics, logs).
	OnStateChange func(from, to gobreaker.State)
}

// Breaker is an http.RoundTripper that sends requests through a
// sony/gobreaker circuit breaker. Only systemic failures count against
// Talend: 5xx, 408, connection errors and timeouts. A 4xx answer is
// Talend working correctly and counts as a success. A 429 and a caller's
// cancellation count as nothing: a 429 says Talend is healthy and the
// fleet is over its budget, which the fleet-wide pause (limits.Transport)
// answers within seconds; opening the breaker for it would stop the whole
// fleet for the breaker's open time (a burst of 429s from the calls in
// flight when a rate window overflows is enough to trip it).
type Breaker struct {
	next http.RoundTripper
	cb   *gobreaker.TwoStepCircuitBreaker[struct{}]
}

var _ http.RoundTripper = (*Breaker)(nil)

// NewBreaker wraps next.
func NewBreaker(next http.RoundTripper, s BreakerSettings) *Breaker {
	failures := s.ConsecutiveFailures
	if failures == 0 {
		failures = 5
	}
	openFor := s.OpenFor
	if openFor <= 0 {
		openFor = 30 * time.Second
	}
	settings := gobreaker.Settings{
		Name:        "talend",
		MaxRequests: s.HalfOpenRequests,
		Timeout:     openFor,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= failures },
		IsExcluded: func(err error) bool {
			return errors.Is(err, context.Canceled) || errors.Is(err, errRateLimited)
		},
	}
	if s.OnStateChange != nil {
		settings.OnStateChange = func(_ string, from, to gobreaker.State) { s.OnStateChange(from, to) }
	}
	return &Breaker{next: next, cb: gobreaker.NewTwoStepCircuitBreaker[struct{}](settings)}
}

var (
	// errSystemicStatus is what the breaker is told about a systemic HTTP answer.
	errSystemicStatus = errors.New("systemic HTTP status")
	// errRateLimited is what it is told about a 429 (excluded from its counts).
	errRateLimited = errors.New("rate limited")
)

// RoundTrip implements http.RoundTripper.
func (b *Breaker) RoundTrip(req *http.Request) (*http.Response, error) {
	done, err := b.cb.Allow()
	if err != nil {
		// ErrOpenState or ErrTooManyRequests (half-open allowance used up).
		return nil, ErrBreakerOpen
	}
	resp, err := b.next.RoundTrip(req)
	switch {
	case err != nil && req.Context().Err() == context.Canceled:
		done(context.Canceled)
	case err != nil:
		done(err)
	case resp.StatusCode == http.StatusTooManyRequests:
		done(errRateLimited)
	case resp.StatusCode >= 500 && resp.StatusCode != http.StatusNotImplemented,
		resp.StatusCode == http.StatusRequestTimeout:
		done(errSystemicStatus)
	default:
		done(nil)
	}
	return resp, err
}

// State is the breaker's current state.
func (b *Breaker) State() gobreaker.State { return b.cb.State() }

// Open reports whether the breaker currently refuses calls (open, or
// half-open with its allowance taken): the worker stops fetching then.
func (b *Breaker) Open() bool { return b.cb.State() != gobreaker.StateClosed }
