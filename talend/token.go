package talend

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Token is a service-account access token.
type Token struct {
	Value  string
	Expiry time.Time
}

// TokenFetcher asks the token endpoint for a new token. It returns
// ErrCredentials (wrapped) when the endpoint refuses the account.
type TokenFetcher func(ctx context.Context) (Token, error)

// TokenCacheSettings configure a TokenCache; zero values mean defaults.
type TokenCacheSettings struct {
	// RefreshBefore starts a background refresh this long before expiry,
	// while callers keep using the current token (default 5m, at most a
	// third of the token's lifetime).
	RefreshBefore time.Duration
	// ExpiryMargin treats a token as expired this long before its expiry, so
	// that a call does not arrive with a token that lapses in flight
	// (default 30s).
	ExpiryMargin time.Duration
	// FetchTimeout bounds one token request (default 15s).
	FetchTimeout time.Duration
	// BackoffMin and BackoffMax bound the wait after a failed fetch, and the
	// probing interval while credentials are rejected (defaults 1s and 1m).
	BackoffMin, BackoffMax time.Duration
	// OnFetch is told about every fetch attempt and its error (metrics, logs).
	OnFetch func(err error)
	// Tracer records a span per fetch, a child of the span of the caller
	// that started it (nil: no spans).
	Tracer trace.Tracer
	// OnCredentials is told when credentials become invalid or valid again.
	OnCredentials func(valid bool)
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// TokenCache shares one token among all goroutines of a process.
//
// At most one fetch is in flight at any time; it runs on the cache's own
// context, not a caller's, so one caller giving up does not fail the others.
// A token close to expiry is refreshed in the background while callers keep
// using it. A fetch failure is remembered and retried only after a jittered,
// growing backoff, so a token-endpoint outage is not hammered by every
// message. When the endpoint rejects the credentials (401/403) the cache
// stops fetching for callers, reports CredentialsValid() == false and probes
// by itself with capped backoff; the fetcher re-reads *_FILE secrets on every
// attempt, so fixing a mounted secret is enough to recover.
type TokenCache struct {
	fetch TokenFetcher
	set   TokenCacheSettings

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu          sync.Mutex
	token       Token
	life        time.Duration // token's lifetime as fetched (Expiry - fetch time)
	fetching    chan struct{} // non-nil while a fetch runs; closed when it ends
	lastErr     error
	failures    int
	retryAt     time.Time
	credsBad    bool
	probeActive bool

	// notifyMu serialises OnCredentials calls; notified is the validity
	// last reported (true at start: nothing reported yet).
	notifyMu sync.Mutex
	notified bool
}

// NewTokenCache returns a cache that fetches with fetch. Close stops its
// background work.
func NewTokenCache(fetch TokenFetcher, set TokenCacheSettings) *TokenCache {
	if set.RefreshBefore <= 0 {
		set.RefreshBefore = 5 * time.Minute
	}
	if set.ExpiryMargin <= 0 {
		set.ExpiryMargin = 30 * time.Second
	}
	if set.FetchTimeout <= 0 {
		set.FetchTimeout = 15 * time.Second
	}
	if set.BackoffMin <= 0 {
		set.BackoffMin = time.Second
	}
	if set.BackoffMax <= 0 {
		set.BackoffMax = time.Minute
	}
	if set.Now == nil {
		set.Now = time.Now
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &TokenCache{fetch: fetch, set: set, ctx: ctx, cancel: cancel, notified: true}
}

// Close stops any fetch or probe in progress and waits for it.
func (c *TokenCache) Close() {
	c.cancel()
	c.wg.Wait()
}

// CredentialsValid is false while the token endpoint rejects the
// credentials.
func (c *TokenCache) CredentialsValid() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.credsBad
}

// Token returns a usable token, fetching one if needed. It waits for a fetch
// in flight at most until ctx ends.
func (c *TokenCache) Token(ctx context.Context) (Token, error) {
	waited := false
	for {
		c.mu.Lock()
		if c.credsBad {
			c.mu.Unlock()
			return Token{}, ErrCredentials
		}
		now := c.set.Now()
		if c.usable(now) {
			if c.fetching == nil && !now.Before(c.refreshAt()) && !now.Before(c.retryAt) {
				c.startFetchLocked(trace.SpanContextFromContext(ctx))
			}
			tok := c.token
			c.mu.Unlock()
			return tok, nil
		}
		if c.fetching == nil {
			if waited || now.Before(c.retryAt) {
				err := c.lastErr
				c.mu.Unlock()
				if err == nil {
					err = errors.New("no token")
				}
				return Token{}, fmt.Errorf("%w: %w", ErrTokenUnavailable, err)
			}
			c.startFetchLocked(trace.SpanContextFromContext(ctx))
		}
		done := c.fetching
		c.mu.Unlock()
		select {
		case <-done:
			waited = true
		case <-ctx.Done():
			return Token{}, ctx.Err()
		}
	}
}

// Invalidate drops tok if it is still the current token. A call that got
// 401 with tok calls this; a token fetched meanwhile by someone else is kept.
func (c *TokenCache) Invalidate(tok Token) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token.Value == tok.Value {
		c.token = Token{}
		// A 401 proves the token is stale, not that the endpoint is failing:
		// allow an immediate fetch.
		c.retryAt = time.Time{}
	}
}

func (c *TokenCache) usable(now time.Time) bool {
	margin := c.set.ExpiryMargin
	// A token living less than ten margins (a simulator's short tokens)
	// would otherwise be unusable from the start.
	if c.life > 0 && margin > c.life/10 {
		margin = c.life / 10
	}
	return c.token.Value != "" && now.Before(c.token.Expiry.Add(-margin))
}

// refreshAt is when a background refresh of the current token starts.
func (c *TokenCache) refreshAt() time.Time {
	ahead := c.set.RefreshBefore
	// Short-lived tokens (tests, simulators) are refreshed a third of their
	// life ahead rather than never being fresh enough. The life is the
	// token's whole lifetime, fixed when it was fetched: measured from now,
	// it would shrink as time passes and push the refresh ahead forever.
	if c.life > 0 && ahead > c.life/3 {
		ahead = c.life / 3
	}
	return c.token.Expiry.Add(-ahead)
}

// storeLocked makes tok the current token, fetched at now.
func (c *TokenCache) storeLocked(tok Token, now time.Time) {
	c.token, c.life = tok, tok.Expiry.Sub(now)
	c.lastErr, c.failures, c.retryAt = nil, 0, time.Time{}
}

// notifyCredentials reports the current credential validity to
// OnCredentials if it changed since the last report. It is called without
// c.mu held (the callback may use the cache) and reads the state under
// notifyMu, so reports arrive in order and the last one is always the
// current state.
func (c *TokenCache) notifyCredentials() {
	if c.set.OnCredentials == nil {
		return
	}
	c.notifyMu.Lock()
	defer c.notifyMu.Unlock()
	c.mu.Lock()
	valid := !c.credsBad
	c.mu.Unlock()
	if valid == c.notified {
		return
	}
	c.notified = valid
	c.set.OnCredentials(valid)
}

func (c *TokenCache) startFetchLocked(parent trace.SpanContext) {
	done := make(chan struct{})
	c.fetching = done
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		started := c.set.Now()
		tok, err := c.fetchTraced(parent)
		c.finishFetch(tok, started, err)
		close(done)
	}()
}

// fetchTraced runs one fetch on the cache's own context (never a
// caller's: one caller giving up must not fail the others), in a span that
// continues the trace of the caller that needed the token.
func (c *TokenCache) fetchTraced(parent trace.SpanContext) (Token, error) {
	ctx, cancel := context.WithTimeout(c.ctx, c.set.FetchTimeout)
	defer cancel()
	if c.set.Tracer == nil {
		return c.fetch(ctx)
	}
	ctx, span := c.set.Tracer.Start(trace.ContextWithSpanContext(ctx, parent), "talend token fetch")
	defer span.End()
	tok, err := c.fetch(ctx)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "token fetch failed")
	}
	return tok, err
}

func (c *TokenCache) finishFetch(tok Token, started time.Time, err error) {
	if c.set.OnFetch != nil {
		c.set.OnFetch(err)
	}
	c.mu.Lock()
	c.fetching = nil
	credsBad := false
	switch {
	case err == nil && tok.Value == c.token.Value:
		// A fleet-wide store handed back the token we have (another replica
		// is refreshing it): ask again only after a pause, not on every call.
		c.retryAt = c.set.Now().Add(c.set.BackoffMin)
	case err == nil:
		c.storeLocked(tok, started)
	case errors.Is(err, ErrCredentials):
		c.lastErr = err
		c.token = Token{}
		c.markCredentialsBadLocked()
		credsBad = true
	default:
		c.lastErr = err
		c.failures++
		c.retryAt = c.set.Now().Add(c.backoff(c.failures))
	}
	c.mu.Unlock()
	if credsBad {
		c.notifyCredentials()
	}
}

func (c *TokenCache) markCredentialsBadLocked() {
	if c.credsBad {
		return
	}
	c.credsBad = true
	if c.probeActive {
		return
	}
	c.probeActive = true
	c.wg.Add(1)
	go c.probe()
}

// probe retries the token endpoint with capped backoff while the
// credentials are rejected, and restores normal service once they work.
func (c *TokenCache) probe() {
	defer c.wg.Done()
	for attempt := 1; ; attempt++ {
		timer := time.NewTimer(c.backoff(attempt))
		select {
		case <-c.ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
		started := c.set.Now()
		tok, err := c.fetchTraced(trace.SpanContext{})
		if c.set.OnFetch != nil {
			c.set.OnFetch(err)
		}
		if err != nil {
			continue
		}
		c.mu.Lock()
		c.storeLocked(tok, started)
		c.credsBad, c.probeActive = false, false
		c.mu.Unlock()
		c.notifyCredentials()
		return
	}
}

// backoff grows exponentially from BackoffMin to BackoffMax with full
// jitter in its upper half, so replicas do not retry in lockstep.
func (c *TokenCache) backoff(attempt int) time.Duration {
	d := c.set.BackoffMin
	for i := 1; i < attempt && d < c.set.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, c.set.BackoffMax)
	return d/2 + rand.N(d/2+1)
}
