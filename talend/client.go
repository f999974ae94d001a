package talend

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Credentials are a service account's client id and secret.
type Credentials struct {
	ClientID string
	Secret   string
}

// CredentialsFunc returns the current credentials. It is called for every
// token request so that a rotated *_FILE secret is picked up without a
// restart.
type CredentialsFunc func() (Credentials, error)

// Config wires a Client.
type Config struct {
	// BaseURL is the API root, e.g. https://api.eu.cloud.talend.com.
	BaseURL string
	// Credentials supply the service account.
	Credentials CredentialsFunc
	// API sends the calls to the processing API. Its transport should
	// include the Breaker.
	API *http.Client
	// CallTimeout bounds each API call, from sending the request until
	// its answer is read (0: only API's own Timeout, if any). A context
	// deadline rather than http.Client.Timeout: the client's timeout costs
	// a goroutine and a timer per call (about 2 % of the worker's CPU at
	// full load in the bench profile).
	CallTimeout time.Duration
	// TokenHTTP sends token requests (no breaker: the token cache backs off
	// by itself and token failures must not open the breaker for API calls).
	TokenHTTP *http.Client
	// Tokens configures the token cache.
	Tokens TokenCacheSettings
	// TracerProvider traces token fetches (the HTTP spans come from the
	// transports, see otelhttp). Nil: no spans.
	TracerProvider trace.TracerProvider
	// MeterProvider receives call durations and token fetch counts.
	MeterProvider metric.MeterProvider
	// Admit, when set, is waited for before each API call, before the
	// token is taken from the cache: the fleet's rate budget. (Waiting
	// after taking the token could send a token that expired meanwhile.)
	// by is the call's admission deadline (AdmitBy; zero: none): a call
	// that cannot be admitted by then is refused rather than delayed.
	Admit func(ctx context.Context, path string, by time.Time) error
	// Shared, when set, shares tokens with the rest of the fleet: fetches
	// go through it (it calls the token endpoint itself only when the
	// fleet needs a new token), and a 401 invalidates the token there too.
	Shared SharedTokens
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// SharedTokens is a fleet-wide token store (package tokenshare).
type SharedTokens interface {
	Fetch(ctx context.Context, local TokenFetcher, refreshBefore time.Duration) (Token, error)
	Invalidate(ctx context.Context, tok Token)
}

// Client calls the Talend Cloud API with a cached service-account token.
type Client struct {
	base      string
	creds     CredentialsFunc
	api       *http.Client
	tokenHTTP *http.Client
	tokens    *TokenCache
	now       func() time.Time
	metrics   *instruments
	shared    SharedTokens
	admit     func(ctx context.Context, path string, by time.Time) error
	timeout   time.Duration
}

// NewClient returns a client; Close releases its token cache.
func NewClient(cfg Config) (*Client, error) {
	base := strings.TrimRight(cfg.BaseURL, "/")
	if _, err := url.ParseRequestURI(base); err != nil || base == "" {
		return nil, fmt.Errorf("talend base URL %q: not an absolute URL", cfg.BaseURL)
	}
	if cfg.Credentials == nil {
		return nil, errors.New("talend client: no credentials")
	}
	if cfg.API == nil {
		cfg.API = &http.Client{Timeout: 30 * time.Second}
	}
	if cfg.TokenHTTP == nil {
		cfg.TokenHTTP = &http.Client{Timeout: 15 * time.Second}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Tokens.Now == nil {
		cfg.Tokens.Now = cfg.Now
	}
	c := &Client{base: base, creds: cfg.Credentials, api: cfg.API, tokenHTTP: cfg.TokenHTTP, now: cfg.Now,
		metrics: newInstruments(cfg.MeterProvider)}
	if cfg.TracerProvider != nil && cfg.Tokens.Tracer == nil {
		cfg.Tokens.Tracer = cfg.TracerProvider.Tracer("github.com/tmc-runner/tmc-runner/talend")
	}
	onFetch := cfg.Tokens.OnFetch
	cfg.Tokens.OnFetch = func(err error) {
		c.metrics.token(context.Background(), err)
		if onFetch != nil {
			onFetch(err)
		}
	}
	fetch := c.fetchToken
	if cfg.Shared != nil {
		c.shared = cfg.Shared
		refreshBefore := cfg.Tokens.RefreshBefore
		if refreshBefore <= 0 {
			refreshBefore = 5 * time.Minute
		}
		fetch = func(ctx context.Context) (Token, error) { return cfg.Shared.Fetch(ctx, c.fetchToken, refreshBefore) }
	}
	c.tokens = NewTokenCache(fetch, cfg.Tokens)
	c.admit = cfg.Admit
	c.timeout = cfg.CallTimeout
	return c, nil
}

// Close stops the token cache's background work.
func (c *Client) Close() { c.tokens.Close() }

// Tokens is the client's token cache.
func (c *Client) Tokens() *TokenCache { return c.tokens }

// TaskRun is what POST /processing/executions runs.
type TaskRun struct {
	Executable string            `json:"executable"`
	LogLevel   string            `json:"logLevel,omitempty"`
	Timeout    int               `json:"timeout,omitempty"`
	Parameters map[string]string `json:"parameters,omitempty"`
}

type executionIdentifier struct {
	ExecutionID string `json:"executionId"`
}

// RunTask starts a task execution and returns its executionId. Parameters
// are sent in the object form the API documents.
func (c *Client) RunTask(ctx context.Context, run TaskRun) (string, error) {
	body, err := json.Marshal(run)
	if err != nil {
		return "", fmt.Errorf("encode task run: %w", err)
	}
	var out executionIdentifier
	if err := c.call(ctx, "run task", http.MethodPost, "/processing/executions", body, http.StatusCreated, &out); err != nil {
		return "", err
	}
	if out.ExecutionID == "" {
		return "", &transportError{op: "run task", err: errors.New("201 without executionId")}
	}
	return out.ExecutionID, nil
}

// RunPlan starts a plan execution and returns its executionId.
func (c *Client) RunPlan(ctx context.Context, planID string) (string, error) {
	body, err := json.Marshal(struct {
		Executable string `json:"executable"`
	}{planID})
	if err != nil {
		return "", fmt.Errorf("encode plan run: %w", err)
	}
	var out executionIdentifier
	if err := c.call(ctx, "run plan", http.MethodPost, "/processing/executions/plans", body, http.StatusCreated, &out); err != nil {
		return "", err
	}
	if out.ExecutionID == "" {
		return "", &transportError{op: "run plan", err: errors.New("201 without executionId")}
	}
	return out.ExecutionID, nil
}

// Probe makes the cheapest read the processing API offers (one item of the
// last second's execution list). The worker uses it to close an open
// breaker without spending a message.
func (c *Client) Probe(ctx context.Context) error {
	to := c.now().UnixMilli()
	path := "/processing/executables/tasks/executions?from=" + strconv.FormatInt(to-1000, 10) +
		"&to=" + strconv.FormatInt(to, 10) + "&limit=1"
	return c.call(ctx, "probe", http.MethodGet, path, nil, http.StatusOK, nil)
}

// call sends one API request with the cached token. A 401 invalidates the
// token used — only that one — and the call is repeated once with a fresh
// token.
func (c *Client) call(ctx context.Context, op, method, path string, body []byte, want int, out any) error {
	for attempt := 0; ; attempt++ {
		retry, err := c.attempt(ctx, attempt, op, method, path, body, want, out)
		if !retry {
			return err
		}
	}
}

// attempt sends the call once. retry: the answer was a 401 on the first
// attempt, the token has been invalidated, and the call should be sent
// again with a fresh one.
func (c *Client) attempt(ctx context.Context, attempt int, op, method, path string, body []byte, want int, out any) (retry bool, err error) {
	by := admissionDeadline(ctx)
	if c.admit != nil {
		if err := c.admit(ctx, path, by); err != nil {
			return false, fmt.Errorf("talend %s: %w: %w", op, ErrNotSent, err)
		}
	}
	tok, err := c.tokens.Token(ctx)
	if err != nil {
		return false, fmt.Errorf("talend %s: %w", op, err)
	}
	if !by.IsZero() && c.now().After(by) {
		// The token took long enough to push the call past its deadline.
		return false, fmt.Errorf("talend %s: %w: admission deadline passed while the token was fetched", op, ErrNotSent)
	}
	callCtx := ctx
	if c.timeout > 0 {
		var cancel context.CancelFunc
		callCtx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel() // after the answer has been read
	}
	var reader io.Reader
	if body != nil {
		reader = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(callCtx, method, c.base+path, reader)
	if err != nil {
		return false, fmt.Errorf("talend %s: %w", op, err)
	}
	req.Header.Set("Authorization", "Bearer "+tok.Value)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	started := time.Now()
	resp, err := c.api.Do(req)
	status := 0
	if resp != nil {
		status = resp.StatusCode
	}
	c.metrics.call(ctx, metricOp(op), started, status, err)
	if err != nil {
		if errors.Is(err, ErrBreakerOpen) {
			return false, fmt.Errorf("talend %s: %w", op, ErrBreakerOpen)
		}
		// The caller's own end, not this call's timeout (that one is a
		// transport failure: the call may have reached Talend).
		if ctx.Err() != nil {
			return false, fmt.Errorf("talend %s: %w", op, ctx.Err())
		}
		return false, &transportError{op: op, err: err}
	}
	if resp.StatusCode == http.StatusUnauthorized && attempt == 0 {
		drain(resp)
		c.tokens.Invalidate(tok)
		if c.shared != nil {
			c.shared.Invalidate(ctx, tok)
		}
		return true, nil
	}
	return false, c.finish(op, resp, want, out)
}

func (c *Client) finish(op string, resp *http.Response, want int, out any) error {
	defer drain(resp)
	if resp.StatusCode != want && (resp.StatusCode < 200 || resp.StatusCode > 299) {
		return c.apiError(op, resp)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(out); err != nil {
		return &transportError{op: op, err: fmt.Errorf("decode answer: %w", err)}
	}
	return nil
}

func (c *Client) apiError(op string, resp *http.Response) *APIError {
	e := &APIError{Op: op, StatusCode: resp.StatusCode, RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), c.now())}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if len(raw) > 0 {
		// Talend documents ErrorResponse; anything else is kept as the message
		// (trimmed) so an operator sees what a proxy or gateway said.
		if json.Unmarshal(raw, &e.Body) != nil {
			e.Body = ErrorBody{Message: truncate(strings.TrimSpace(string(raw)), 512)}
		}
	}
	if e.Body.Status == 0 {
		e.Body.Status = resp.StatusCode
	}
	return e
}

// expiresIn accepts the spec's string ("1800") and the number seen in
// practice (1800).
type expiresIn int64

func (e *expiresIn) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if s == "" || s == "null" {
		*e = 0
		return nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return fmt.Errorf("expires_in %q: not a number of seconds", s)
	}
	*e = expiresIn(f)
	return nil
}

type tokenResponse struct {
	AccessToken string    `json:"access_token"`
	TokenType   string    `json:"token_type"`
	ExpiresIn   expiresIn `json:"expires_in"`
}

// defaultTokenLifetime applies when the endpoint omits expires_in; Talend
// documents 30 minutes.
const defaultTokenLifetime = 30 * time.Minute

// fetchToken is the token request exactly as Talend documents it: JSON body
// {audience, grant_type}, HTTP Basic authentication with id and secret.
func (c *Client) fetchToken(ctx context.Context) (Token, error) {
	creds, err := c.creds()
	if err != nil {
		return Token{}, fmt.Errorf("read Talend credentials: %w", err)
	}
	body, _ := json.Marshal(map[string]string{"audience": c.base, "grant_type": "client_credentials"})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/security/oauth/token", bytes.NewReader(body))
	if err != nil {
		return Token{}, fmt.Errorf("talend token: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(creds.ClientID+":"+creds.Secret)))
	started := c.now()
	callStarted := time.Now()
	resp, err := c.tokenHTTP.Do(req)
	status := 0
	if resp != nil {
		status = resp.StatusCode
	}
	c.metrics.call(ctx, "token", callStarted, status, err)
	if err != nil {
		return Token{}, &transportError{op: "token", err: err}
	}
	defer drain(resp)
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return Token{}, fmt.Errorf("%w: %w", ErrCredentials, c.apiError("token", resp))
	case resp.StatusCode != http.StatusOK:
		return Token{}, c.apiError("token", resp)
	}
	var tr tokenResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&tr); err != nil {
		return Token{}, &transportError{op: "token", err: fmt.Errorf("decode answer: %w", err)}
	}
	if tr.AccessToken == "" {
		return Token{}, &transportError{op: "token", err: errors.New("answer without access_token")}
	}
	life := time.Duration(tr.ExpiresIn) * time.Second
	if life <= 0 {
		life = defaultTokenLifetime
	}
	// Counted from when the request was sent: the token may be older than
	// its arrival suggests.
	return Token{Value: tr.AccessToken, Expiry: started.Add(life)}, nil
}

// metricOp turns an operation description into a label value.
func metricOp(op string) string { return strings.ReplaceAll(op, " ", "_") }

func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

type admitByKey struct{}

// AdmitBy returns a context whose calls must be admitted (Config.Admit)
// and have their token by the time by: one that cannot is not sent, and
// fails with ErrNotSent. The worker bounds how long a run call recorded for
// reconciliation may wait for budget before it goes out.
func AdmitBy(ctx context.Context, by time.Time) context.Context {
	return context.WithValue(ctx, admitByKey{}, by)
}

// admissionDeadline is the deadline AdmitBy set on ctx (zero: none).
// The client passes it to Config.Admit.
func admissionDeadline(ctx context.Context) time.Time {
	by, _ := ctx.Value(admitByKey{}).(time.Time)
	return by
}
