package talend

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tmc-runner/tmc-runner/talendsim"
)

// fakeClock is a manually advanced clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// eventually polls cond every few milliseconds until it holds or the
// deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// within fails the test if ch does not deliver before a generous deadline
// (a hang guard, not a timing assertion).
func within[T any](t *testing.T, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

const (
	testClientID = "test-client"
	testSecret   = "test-secret:with/colon+="
)

func staticCreds(id, secret string) CredentialsFunc {
	return func() (Credentials, error) { return Credentials{ClientID: id, Secret: secret}, nil }
}

// simEnv is a simulator behind an httptest server with a client on it.
type simEnv struct {
	sim    *talendsim.Simulator
	srv    *httptest.Server
	client *Client
}

type envOption func(*Config)

// newSimEnv starts a simulator (KnowAll, the test client) served through
// wrap (nil: directly) and a client for it.
func newSimEnv(t *testing.T, opts talendsim.Options, wrap func(http.Handler) http.Handler, cfgOpts ...envOption) *simEnv {
	t.Helper()
	if opts.Clients == nil {
		opts.Clients = map[string]string{testClientID: testSecret}
	}
	opts.KnowAll = true
	sim := talendsim.New(opts)
	var h http.Handler = sim
	if wrap != nil {
		h = wrap(sim)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	cfg := Config{
		BaseURL:     srv.URL,
		Credentials: staticCreds(testClientID, testSecret),
		API:         &http.Client{Timeout: 10 * time.Second},
		TokenHTTP:   &http.Client{Timeout: 10 * time.Second},
		Tokens:      TokenCacheSettings{BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond},
	}
	for _, o := range cfgOpts {
		o(&cfg)
	}
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(c.Close)
	return &simEnv{sim: sim, srv: srv, client: c}
}

// countingFetcher is a TokenFetcher handing out tok-1, tok-2, ... living
// life on clock, optionally blocking each fetch until release is closed
// or sent to.
type countingFetcher struct {
	calls   atomic.Int32
	clock   func() time.Time
	life    time.Duration
	started chan context.Context // receives each fetch's ctx, if non-nil
	release chan struct{}        // if non-nil, each fetch waits for it
	errs    chan error           // if non-nil and holding a value, the fetch fails with it
}

func (f *countingFetcher) fetch(ctx context.Context) (Token, error) {
	n := f.calls.Add(1)
	if f.started != nil {
		f.started <- ctx
	}
	if f.release != nil {
		select {
		case <-f.release:
		case <-ctx.Done():
			return Token{}, ctx.Err()
		}
	}
	if f.errs != nil {
		select {
		case err := <-f.errs:
			return Token{}, err
		default:
		}
	}
	return Token{Value: "tok-" + strconv.Itoa(int(n)), Expiry: f.clock().Add(f.life)}, nil
}
