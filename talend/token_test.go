package talend

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestTokenCacheSingleFlight(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	f := &countingFetcher{clock: clock.Now, life: 30 * time.Minute, release: make(chan struct{})}
	tc := NewTokenCache(f.fetch, TokenCacheSettings{Now: clock.Now})
	t.Cleanup(tc.Close)

	const n = 100
	var wg, ready sync.WaitGroup
	errs := make(chan error, n)
	vals := make(chan string, n)
	ready.Add(n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ready.Done()
			tok, err := tc.Token(context.Background())
			errs <- err
			vals <- tok.Value
		}()
	}
	ready.Wait()
	eventually(t, "the first fetch", func() bool { return f.calls.Load() >= 1 })
	close(f.release)
	wg.Wait()
	close(errs)
	close(vals)
	for err := range errs {
		if err != nil {
			t.Fatalf("Token: %v", err)
		}
	}
	for v := range vals {
		if v != "tok-1" {
			t.Fatalf("got token %q, want tok-1", v)
		}
	}
	if got := f.calls.Load(); got != 1 {
		t.Fatalf("%d concurrent callers caused %d fetches, want 1", n, got)
	}
}

func TestTokenCacheRefreshAhead(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name          string
		life          time.Duration
		refreshBefore time.Duration
		quiet, ahead  time.Duration // offsets from the fetch: no refresh yet / refresh due
	}{
		{"default 5m of a 30m token", 30 * time.Minute, 0, 24 * time.Minute, 26 * time.Minute},
		{"short token refreshed a third ahead", 30 * time.Second, 0, 19 * time.Second, 21 * time.Second},
		{"configured 2m", 30 * time.Minute, 2 * time.Minute, 27 * time.Minute, 28*time.Minute + 30*time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clock := newFakeClock()
			start := clock.Now()
			f := &countingFetcher{clock: clock.Now, life: tc.life}
			cache := NewTokenCache(f.fetch, TokenCacheSettings{Now: clock.Now, RefreshBefore: tc.refreshBefore})
			t.Cleanup(cache.Close)

			first, err := cache.Token(context.Background())
			if err != nil || first.Value != "tok-1" {
				t.Fatalf("first Token = %v, %v", first, err)
			}
			clock.Add(tc.quiet)
			if tok, err := cache.Token(context.Background()); err != nil || tok.Value != "tok-1" {
				t.Fatalf("Token before the refresh window = %v, %v", tok, err)
			}
			if got := f.calls.Load(); got != 1 {
				t.Fatalf("%d fetches before the refresh window, want 1", got)
			}

			clock.Add(tc.ahead - tc.quiet)
			// Near expiry: the current token is returned at once and one
			// background fetch starts.
			tok, err := cache.Token(context.Background())
			if err != nil || tok.Value != "tok-1" {
				t.Fatalf("Token near expiry = %v, %v; want the current token", tok, err)
			}
			eventually(t, "the background refresh", func() bool {
				tok, err := cache.Token(context.Background())
				return err == nil && tok.Value == "tok-2"
			})
			if got := f.calls.Load(); got != 2 {
				t.Fatalf("%d fetches after the refresh, want 2", got)
			}
			if tok, _ := cache.Token(context.Background()); !tok.Expiry.Equal(start.Add(tc.ahead).Add(tc.life)) {
				t.Fatalf("refreshed token expires %v, want %v", tok.Expiry, start.Add(tc.ahead).Add(tc.life))
			}
		})
	}
}

func TestTokenCacheShortLivedTokenUsable(t *testing.T) {
	t.Parallel()
	// A token living less than the default expiry margin (30s) must still
	// be usable, or a simulator with short tokens makes every call fail.
	clock := newFakeClock()
	f := &countingFetcher{clock: clock.Now, life: 10 * time.Second}
	cache := NewTokenCache(f.fetch, TokenCacheSettings{Now: clock.Now})
	t.Cleanup(cache.Close)
	tok, err := cache.Token(context.Background())
	if err != nil || tok.Value != "tok-1" {
		t.Fatalf("Token = %v, %v", tok, err)
	}
}

func TestTokenCacheExpiredTokenFetchesSynchronously(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	f := &countingFetcher{clock: clock.Now, life: 30 * time.Minute}
	cache := NewTokenCache(f.fetch, TokenCacheSettings{Now: clock.Now})
	t.Cleanup(cache.Close)
	if _, err := cache.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	clock.Add(30 * time.Minute) // past expiry: must not be handed out
	tok, err := cache.Token(context.Background())
	if err != nil || tok.Value != "tok-2" {
		t.Fatalf("Token after expiry = %v, %v; want tok-2", tok, err)
	}
}

func TestTokenCacheCallerContext(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	f := &countingFetcher{clock: clock.Now, life: 30 * time.Minute,
		started: make(chan context.Context, 4), release: make(chan struct{})}
	cache := NewTokenCache(f.fetch, TokenCacheSettings{Now: clock.Now})
	t.Cleanup(cache.Close)

	ctxA, cancelA := context.WithCancel(context.Background())
	resA := make(chan error, 1)
	go func() {
		_, err := cache.Token(ctxA)
		resA <- err
	}()
	fetchCtx := within(t, "the fetch to start", f.started)

	resB := make(chan Token, 1)
	go func() {
		tok, err := cache.Token(context.Background())
		if err != nil {
			t.Errorf("second caller: %v", err)
		}
		resB <- tok
	}()

	cancelA()
	if err := within(t, "the cancelled caller to return", resA); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller got %v, want context.Canceled", err)
	}
	if err := fetchCtx.Err(); err != nil {
		t.Fatalf("the fetch's context ended with the first caller's: %v", err)
	}
	close(f.release)
	if tok := within(t, "the second caller", resB); tok.Value != "tok-1" {
		t.Fatalf("second caller got %q, want tok-1", tok.Value)
	}
	if got := f.calls.Load(); got != 1 {
		t.Fatalf("%d fetches, want 1", got)
	}
}

func TestTokenCacheInvalidate(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	f := &countingFetcher{clock: clock.Now, life: 30 * time.Minute}
	cache := NewTokenCache(f.fetch, TokenCacheSettings{Now: clock.Now})
	t.Cleanup(cache.Close)
	ctx := context.Background()

	t1, _ := cache.Token(ctx)
	cache.Invalidate(t1)
	t2, err := cache.Token(ctx)
	if err != nil || t2.Value != "tok-2" {
		t.Fatalf("Token after Invalidate = %v, %v; want tok-2", t2, err)
	}
	// A late 401 with the old token must not drop the newer one.
	cache.Invalidate(t1)
	if tok, _ := cache.Token(ctx); tok.Value != "tok-2" {
		t.Fatalf("Invalidate(old) dropped the newer token: got %q", tok.Value)
	}
	if got := f.calls.Load(); got != 2 {
		t.Fatalf("%d fetches, want 2", got)
	}
}

func TestTokenCacheBackoff(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	var calls atomic.Int32
	var fail atomic.Bool
	fail.Store(true)
	var fetchErrs atomic.Int32
	down := errors.New("token endpoint down")
	fetch := func(context.Context) (Token, error) {
		calls.Add(1)
		if fail.Load() {
			return Token{}, down
		}
		return Token{Value: "ok", Expiry: clock.Now().Add(30 * time.Minute)}, nil
	}
	cache := NewTokenCache(fetch, TokenCacheSettings{Now: clock.Now, BackoffMin: time.Second, BackoffMax: 4 * time.Second,
		OnFetch: func(err error) {
			if err != nil {
				fetchErrs.Add(1)
			}
		}})
	t.Cleanup(cache.Close)

	for i := range 50 {
		_, err := cache.Token(context.Background())
		if !errors.Is(err, ErrTokenUnavailable) || !errors.Is(err, down) {
			t.Fatalf("call %d: %v, want ErrTokenUnavailable wrapping the cause", i, err)
		}
		if !IsSystemic(err) {
			t.Fatalf("IsSystemic(%v) = false", err)
		}
	}
	if got := calls.Load(); got != 1 {
		t.Fatalf("50 calls inside the backoff window made %d fetches, want 1", got)
	}
	clock.Add(time.Second) // the first backoff is at most BackoffMin
	_, _ = cache.Token(context.Background())
	if got := calls.Load(); got != 2 {
		t.Fatalf("after the backoff: %d fetches, want 2", got)
	}
	// The backoff grows: half a second of the second window (≥ 1s) is quiet.
	clock.Add(500 * time.Millisecond)
	_, _ = cache.Token(context.Background())
	if got := calls.Load(); got != 2 {
		t.Fatalf("inside the second backoff window: %d fetches, want 2", got)
	}
	fail.Store(false)
	clock.Add(4 * time.Second)
	if tok, err := cache.Token(context.Background()); err != nil || tok.Value != "ok" {
		t.Fatalf("after recovery: %v, %v", tok, err)
	}
	if got := fetchErrs.Load(); got != 2 {
		t.Fatalf("OnFetch saw %d errors, want 2", got)
	}
}

func TestTokenCacheCredentialsRejected(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	var bad atomic.Bool
	bad.Store(true)
	fetch := func(context.Context) (Token, error) {
		calls.Add(1)
		if bad.Load() {
			return Token{}, fmt.Errorf("%w: HTTP 401", ErrCredentials)
		}
		return Token{Value: "good", Expiry: time.Now().Add(30 * time.Minute)}, nil
	}
	var mu sync.Mutex
	var reports []bool
	cache := NewTokenCache(fetch, TokenCacheSettings{
		BackoffMin: 10 * time.Millisecond, BackoffMax: 40 * time.Millisecond,
		OnCredentials: func(valid bool) {
			mu.Lock()
			reports = append(reports, valid)
			mu.Unlock()
		},
	})
	t.Cleanup(cache.Close)

	_, err := cache.Token(context.Background())
	if !errors.Is(err, ErrCredentials) || IsSystemic(err) {
		t.Fatalf("Token = %v (systemic %v), want non-systemic ErrCredentials", err, IsSystemic(err))
	}
	if cache.CredentialsValid() {
		t.Fatal("CredentialsValid() = true after a 401")
	}
	// The cache keeps probing by itself, with capped backoff (≥ 5ms apart),
	// while callers fail fast without fetching.
	eventually(t, "the cache to probe by itself", func() bool { return calls.Load() >= 3 })
	for range 200 {
		if _, err := cache.Token(context.Background()); !errors.Is(err, ErrCredentials) {
			t.Fatalf("Token while rejected = %v, want ErrCredentials", err)
		}
	}
	bad.Store(false)
	eventually(t, "recovery", cache.CredentialsValid)
	if tok, err := cache.Token(context.Background()); err != nil || tok.Value != "good" {
		t.Fatalf("Token after recovery = %v, %v", tok, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reports) != 2 || reports[0] != false || reports[1] != true {
		t.Fatalf("OnCredentials reports = %v, want [false true]", reports)
	}
}

func TestTokenCacheCredentialsCallersDoNotFetch(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	fetch := func(context.Context) (Token, error) {
		calls.Add(1)
		return Token{}, fmt.Errorf("%w: HTTP 403", ErrCredentials)
	}
	// A long probe interval: any fetch after the first would be a caller's.
	cache := NewTokenCache(fetch, TokenCacheSettings{BackoffMin: time.Hour, BackoffMax: time.Hour})
	t.Cleanup(cache.Close)
	for range 100 {
		if _, err := cache.Token(context.Background()); !errors.Is(err, ErrCredentials) {
			t.Fatalf("Token = %v, want ErrCredentials", err)
		}
	}
	if got := calls.Load(); got != 1 {
		t.Fatalf("100 callers with rejected credentials made %d fetches, want 1", got)
	}
}

func TestTokenCacheOnCredentialsMayUseCache(t *testing.T) {
	t.Parallel()
	// The callback may read the cache's state without deadlocking.
	var cache *TokenCache
	got := make(chan bool, 1)
	cache = NewTokenCache(func(context.Context) (Token, error) {
		return Token{}, ErrCredentials
	}, TokenCacheSettings{BackoffMin: time.Hour, BackoffMax: time.Hour, OnCredentials: func(valid bool) {
		got <- cache.CredentialsValid()
	}})
	t.Cleanup(cache.Close)
	done := make(chan error, 1)
	go func() {
		_, err := cache.Token(context.Background())
		done <- err
	}()
	if err := within(t, "Token", done); !errors.Is(err, ErrCredentials) {
		t.Fatalf("Token = %v", err)
	}
	if v := within(t, "OnCredentials", got); v {
		t.Fatal("CredentialsValid() inside OnCredentials(false) = true")
	}
}
