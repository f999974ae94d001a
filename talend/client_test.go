package talend

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tmc-runner/tmc-runner/talendsim"
)

// recorded is one request a recorder saw.
type recorded struct {
	Method, Path string
	Header       http.Header
	Body         []byte
}

// recorder wraps a handler and keeps every request it passes on.
type recorder struct {
	mu   sync.Mutex
	reqs []recorded
}

func (rec *recorder) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rec.mu.Lock()
		rec.reqs = append(rec.reqs, recorded{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone(), Body: body})
		rec.mu.Unlock()
		r.Body = io.NopCloser(bytes.NewReader(body))
		next.ServeHTTP(w, r)
	})
}

func (rec *recorder) find(t *testing.T, method, path string) []recorded {
	t.Helper()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var out []recorded
	for _, r := range rec.reqs {
		if r.Method == method && r.Path == path {
			out = append(out, r)
		}
	}
	if len(out) == 0 {
		t.Fatalf("no %s %s request seen", method, path)
	}
	return out
}

func decodeFields(t *testing.T, body []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("body %q is not a JSON object: %v", body, err)
	}
	return m
}

func TestTokenRequestFormat(t *testing.T) {
	t.Parallel()
	for _, number := range []bool{false, true} {
		name := "expires_in string"
		if number {
			name = "expires_in number"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			rec := &recorder{}
			clock := newFakeClock()
			env := newSimEnv(t, talendsim.Options{ExpiresInNumber: number, TokenLifetime: time.Hour}, rec.wrap,
				func(c *Config) { c.BaseURL += "/"; c.Now = clock.Now })

			tok, err := env.client.Tokens().Token(context.Background())
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			if want := clock.Now().Add(time.Hour); !tok.Expiry.Equal(want) {
				t.Fatalf("token expiry %v, want %v (expires_in of 3600 s)", tok.Expiry, want)
			}
			reqs := rec.find(t, http.MethodPost, "/security/oauth/token")
			if len(reqs) != 1 {
				t.Fatalf("%d token requests, want 1", len(reqs))
			}
			r := reqs[0]
			wantAuth := "Basic " + base64.StdEncoding.EncodeToString([]byte(testClientID+":"+testSecret))
			if got := r.Header.Get("Authorization"); got != wantAuth {
				t.Errorf("Authorization = %q, want %q", got, wantAuth)
			}
			if got := r.Header.Get("Content-Type"); got != "application/json" {
				t.Errorf("Content-Type = %q, want application/json", got)
			}
			fields := decodeFields(t, r.Body)
			want := map[string]any{"audience": env.srv.URL, "grant_type": "client_credentials"}
			if len(fields) != len(want) || fields["audience"] != want["audience"] || fields["grant_type"] != want["grant_type"] {
				t.Errorf("token body = %s, want exactly %v", r.Body, want)
			}
			// The token works on the API.
			if err := env.client.Probe(context.Background()); err != nil {
				t.Fatalf("Probe with the token: %v", err)
			}
			run := rec.find(t, http.MethodGet, "/processing/executables/tasks/executions")[0]
			if got := run.Header.Get("Authorization"); got != "Bearer "+tok.Value {
				t.Errorf("API Authorization = %q, want the bearer token", got)
			}
		})
	}
}

func TestExpiresInDecoding(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in      string
		want    expiresIn
		wantErr bool
	}{
		{`"1800"`, 1800, false},
		{`1800`, 1800, false},
		{`1800.0`, 1800, false},
		{`null`, 0, false},
		{`""`, 0, false},
		{`"soon"`, 0, true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			var e expiresIn
			err := json.Unmarshal([]byte(tc.in), &e)
			if (err != nil) != tc.wantErr || (!tc.wantErr && e != tc.want) {
				t.Fatalf("decode %s = %d, %v; want %d, error %v", tc.in, e, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestRunTaskBody(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		run  TaskRun
		want map[string]any
	}{
		{"executable only", TaskRun{Executable: "task-1"}, map[string]any{"executable": "task-1"}},
		{"everything", TaskRun{Executable: "task-2", LogLevel: "WARN", Timeout: 60,
			Parameters: map[string]string{"basic_password": "p@ss", "region": "eu"}},
			map[string]any{"executable": "task-2", "logLevel": "WARN", "timeout": float64(60),
				"parameters": map[string]any{"basic_password": "p@ss", "region": "eu"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rec := &recorder{}
			env := newSimEnv(t, talendsim.Options{}, rec.wrap)
			id, err := env.client.RunTask(context.Background(), tc.run)
			if err != nil {
				t.Fatalf("RunTask: %v", err)
			}
			body := rec.find(t, http.MethodPost, "/processing/executions")[0].Body
			got, _ := json.Marshal(decodeFields(t, body))
			want, _ := json.Marshal(tc.want)
			if !bytes.Equal(got, want) {
				t.Fatalf("run task body = %s, want %s", got, want)
			}
			info, ok := env.sim.Execution(id)
			if !ok || info.Executable != tc.run.Executable || info.Kind != "task" || len(info.Parameters) != len(tc.run.Parameters) {
				t.Fatalf("simulator recorded %+v (found %v)", info, ok)
			}
			for k, v := range tc.run.Parameters {
				if info.Parameters[k] != v {
					t.Fatalf("parameter %s = %q at the simulator, want %q", k, info.Parameters[k], v)
				}
			}
		})
	}
}

func TestRunPlanBody(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	env := newSimEnv(t, talendsim.Options{}, rec.wrap)
	id, err := env.client.RunPlan(context.Background(), "plan-7")
	if err != nil {
		t.Fatalf("RunPlan: %v", err)
	}
	body := rec.find(t, http.MethodPost, "/processing/executions/plans")[0].Body
	fields := decodeFields(t, body)
	if len(fields) != 1 || fields["executable"] != "plan-7" {
		t.Fatalf("run plan body = %s, want exactly {executable}", body)
	}
	if info, ok := env.sim.Execution(id); !ok || info.Kind != "plan" || info.Executable != "plan-7" {
		t.Fatalf("simulator recorded %+v (found %v)", info, ok)
	}
}

func TestAPIErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		setup      func(*talendsim.Simulator)
		run        TaskRun
		status     int
		retryable  bool
		systemic   bool
		retryAfter time.Duration
	}{
		{"400 bad log level", nil, TaskRun{Executable: "t", LogLevel: "LOUD"}, 400, false, false, 0},
		{"403 forbidden", func(s *talendsim.Simulator) { s.SetBehaviour("t", talendsim.Behaviour{Forbidden: true}) }, TaskRun{Executable: "t"}, 403, false, false, 0},
		{"404 missing", func(s *talendsim.Simulator) { s.SetBehaviour("t", talendsim.Behaviour{Missing: true}) }, TaskRun{Executable: "t"}, 404, false, false, 0},
		{"405 paused", func(s *talendsim.Simulator) { s.SetBehaviour("t", talendsim.Behaviour{Paused: true}) }, TaskRun{Executable: "t"}, 405, false, false, 0},
		{"422", func(s *talendsim.Simulator) { s.InjectFault(talendsim.Fault{Status: 422, Count: 1}) }, TaskRun{Executable: "t"}, 422, false, false, 0},
		{"501 not configured", func(s *talendsim.Simulator) { s.SetBehaviour("t", talendsim.Behaviour{NotConfigured: true}) }, TaskRun{Executable: "t"}, 501, false, false, 0},
		{"408", func(s *talendsim.Simulator) { s.InjectFault(talendsim.Fault{Status: 408, Count: 1}) }, TaskRun{Executable: "t"}, 408, true, true, 0},
		{"429 with Retry-After", func(s *talendsim.Simulator) {
			s.InjectFault(talendsim.Fault{Status: 429, RetryAfter: "7", Count: 1})
		}, TaskRun{Executable: "t"}, 429, true, true, 7 * time.Second},
		{"500", func(s *talendsim.Simulator) { s.InjectFault(talendsim.Fault{Status: 500, Count: 1}) }, TaskRun{Executable: "t"}, 500, true, true, 0},
		{"503 outage", func(s *talendsim.Simulator) { s.SetOutage(true) }, TaskRun{Executable: "t"}, 503, true, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := newSimEnv(t, talendsim.Options{}, nil)
			if tc.setup != nil {
				tc.setup(env.sim)
			}
			_, err := env.client.RunTask(context.Background(), tc.run)
			var apiErr *APIError
			if !errors.As(err, &apiErr) {
				t.Fatalf("RunTask error %v (%T) is not an *APIError", err, err)
			}
			if apiErr.StatusCode != tc.status || apiErr.Body.Status != tc.status {
				t.Errorf("status %d, body status %d; want %d", apiErr.StatusCode, apiErr.Body.Status, tc.status)
			}
			if apiErr.Body.Message == "" || apiErr.Body.RequestID == "" {
				t.Errorf("Talend's error body not kept: %+v", apiErr.Body)
			}
			if apiErr.Retryable() != tc.retryable || apiErr.Systemic() != tc.systemic || IsSystemic(err) != tc.systemic {
				t.Errorf("Retryable %v Systemic %v IsSystemic %v; want %v %v %v",
					apiErr.Retryable(), apiErr.Systemic(), IsSystemic(err), tc.retryable, tc.systemic, tc.systemic)
			}
			if apiErr.RetryAfter != tc.retryAfter || RetryAfter(err) != tc.retryAfter {
				t.Errorf("RetryAfter %v, want %v", apiErr.RetryAfter, tc.retryAfter)
			}
			if apiErr.Op != "run task" || !strings.Contains(err.Error(), "HTTP "+itoa(tc.status)) {
				t.Errorf("error text %q / op %q", err.Error(), apiErr.Op)
			}
		})
	}
}

func TestAPIErrorNonJSONBody(t *testing.T) {
	t.Parallel()
	srv := newSimEnv(t, talendsim.Options{}, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/processing/executions" {
				w.Header().Set("Retry-After", time.Now().Add(time.Hour).UTC().Format(http.TimeFormat))
				w.WriteHeader(http.StatusBadGateway)
				_, _ = io.WriteString(w, "<html>bad gateway from the proxy</html>\n")
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	_, err := srv.client.RunTask(context.Background(), TaskRun{Executable: "t"})
	var apiErr *APIError
	if !errors.As(err, &apiErr) {
		t.Fatalf("error %v is not an *APIError", err)
	}
	if apiErr.StatusCode != 502 || apiErr.Body.Status != 502 || apiErr.Body.Message != "<html>bad gateway from the proxy</html>" {
		t.Fatalf("APIError = %+v", apiErr)
	}
	if apiErr.RetryAfter < 50*time.Minute || apiErr.RetryAfter > time.Hour {
		t.Fatalf("RetryAfter from an HTTP date = %v, want about an hour", apiErr.RetryAfter)
	}
	if !IsSystemic(err) {
		t.Fatal("502 not systemic")
	}
}

func TestUnauthorizedRetriedWithFreshToken(t *testing.T) {
	t.Parallel()
	for _, callers := range []int{1, 20} {
		t.Run(itoa(callers)+" callers", func(t *testing.T) {
			t.Parallel()
			env := newSimEnv(t, talendsim.Options{}, nil)
			ctx := context.Background()
			if _, err := env.client.RunTask(ctx, TaskRun{Executable: "t"}); err != nil {
				t.Fatal(err)
			}
			env.sim.ExpireTokens()
			var wg sync.WaitGroup
			errs := make(chan error, callers)
			for range callers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := env.client.RunTask(ctx, TaskRun{Executable: "t"})
					errs <- err
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatalf("RunTask after token expiry: %v", err)
				}
			}
			st := env.sim.Stats()
			if st.TokensIssued != 2 {
				t.Fatalf("%d tokens issued, want 2 (one extra after the 401s)", st.TokensIssued)
			}
			if st.Unauthorized < 1 || st.Unauthorized > callers {
				t.Fatalf("%d API calls answered 401, want 1..%d", st.Unauthorized, callers)
			}
			if st.ExecutionsTotal != callers+1 {
				t.Fatalf("%d executions, want %d", st.ExecutionsTotal, callers+1)
			}
		})
	}
}

func TestUnauthorizedTwiceIsReturned(t *testing.T) {
	t.Parallel()
	// An API that rejects every token: one retry only, then the 401.
	env := newSimEnv(t, talendsim.Options{}, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/security/oauth/token" {
				r.Header.Set("Authorization", "Bearer nonsense")
			}
			next.ServeHTTP(w, r)
		})
	})
	_, err := env.client.RunTask(context.Background(), TaskRun{Executable: "t"})
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusUnauthorized {
		t.Fatalf("RunTask = %v, want a 401 APIError", err)
	}
	if st := env.sim.Stats(); st.Unauthorized != 2 || st.TokensIssued != 2 {
		t.Fatalf("401s %d, tokens %d; want 2 and 2", st.Unauthorized, st.TokensIssued)
	}
}

func TestTokenEndpointOutageBacksOff(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	env := newSimEnv(t, talendsim.Options{}, nil, func(c *Config) {
		c.Now = clock.Now
		c.Tokens.BackoffMin, c.Tokens.BackoffMax = time.Second, 2*time.Second
	})
	env.sim.SetTokenOutage(true)
	for i := range 30 {
		_, err := env.client.RunTask(context.Background(), TaskRun{Executable: "t"})
		if !errors.Is(err, ErrTokenUnavailable) || !IsSystemic(err) {
			t.Fatalf("call %d: %v, want systemic ErrTokenUnavailable", i, err)
		}
		var apiErr *APIError
		if !errors.As(err, &apiErr) || apiErr.StatusCode != 500 {
			t.Fatalf("call %d: the cause (HTTP 500) is lost: %v", i, err)
		}
	}
	if st := env.sim.Stats(); st.TokenRequests != 1 {
		t.Fatalf("30 calls in the backoff window sent %d token requests, want 1", st.TokenRequests)
	}
	env.sim.SetTokenOutage(false)
	clock.Add(2 * time.Second)
	if _, err := env.client.RunTask(context.Background(), TaskRun{Executable: "t"}); err != nil {
		t.Fatalf("after the outage: %v", err)
	}
	if st := env.sim.Stats(); st.TokenRequests != 2 || st.ExecutionsTotal != 1 {
		t.Fatalf("token requests %d, executions %d; want 2 and 1", st.TokenRequests, st.ExecutionsTotal)
	}
}

func TestCredentialsRejectedThenFixedInSecretFile(t *testing.T) {
	t.Parallel()
	// The credentials file holds "id:secret"; the CredentialsFunc reads it
	// on every token request, as a *_FILE secret is.
	for _, tc := range []struct {
		name       string
		forbidden  bool
		bad, fixed string
	}{
		{"401 wrong secret", false, testClientID + ":wrong-secret\n", testClientID + ":" + testSecret + "\n"},
		// A 403 (no permission) cannot be lifted in the simulator; the
		// operator switches to an account that has it.
		{"403 missing permission", true, testClientID + ":" + testSecret, "granted:other-secret"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			secretFile := filepath.Join(t.TempDir(), "secret")
			if err := os.WriteFile(secretFile, []byte(tc.bad), 0o600); err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			var reports []bool
			opts := talendsim.Options{Clients: map[string]string{testClientID: testSecret, "granted": "other-secret"}}
			if tc.forbidden {
				opts.ForbiddenClients = map[string]bool{testClientID: true}
			}
			env := newSimEnv(t, opts, nil, func(c *Config) {
				c.Credentials = func() (Credentials, error) {
					b, err := os.ReadFile(secretFile)
					if err != nil {
						return Credentials{}, err
					}
					id, secret, _ := strings.Cut(strings.TrimSpace(string(b)), ":")
					return Credentials{ClientID: id, Secret: secret}, nil
				}
				c.Tokens.OnCredentials = func(valid bool) {
					mu.Lock()
					reports = append(reports, valid)
					mu.Unlock()
				}
			})
			_, err := env.client.RunTask(context.Background(), TaskRun{Executable: "t"})
			if !errors.Is(err, ErrCredentials) || IsSystemic(err) {
				t.Fatalf("RunTask = %v, want non-systemic ErrCredentials", err)
			}
			if env.client.Tokens().CredentialsValid() {
				t.Fatal("CredentialsValid() = true after the token endpoint refused")
			}
			// The cache probes the token endpoint by itself.
			eventually(t, "background probes", func() bool { return env.sim.Stats().TokenRequests >= 3 })
			if st := env.sim.Stats(); st.TokensIssued != 0 || st.ExecutionsTotal != 0 {
				t.Fatalf("tokens %d, executions %d while credentials are rejected", st.TokensIssued, st.ExecutionsTotal)
			}

			if err := os.WriteFile(secretFile, []byte(tc.fixed), 0o600); err != nil {
				t.Fatal(err)
			}
			eventually(t, "credentials to work again", env.client.Tokens().CredentialsValid)
			if _, err := env.client.RunTask(context.Background(), TaskRun{Executable: "t"}); err != nil {
				t.Fatalf("RunTask after the fix: %v", err)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(reports) != 2 || reports[0] || !reports[1] {
				t.Fatalf("OnCredentials reports %v, want [false true]", reports)
			}
			if st := env.sim.Stats(); st.ExecutionsTotal != 1 || st.TokensIssued != 1 {
				t.Fatalf("executions %d, tokens %d; want 1 and 1", st.ExecutionsTotal, st.TokensIssued)
			}
		})
	}
}

func TestNewClientValidation(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"empty URL", Config{Credentials: staticCreds("a", "b")}},
		{"relative URL", Config{BaseURL: "api.eu.cloud.talend.com", Credentials: staticCreds("a", "b")}},
		{"no credentials", Config{BaseURL: "https://api.eu.cloud.talend.com"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if c, err := NewClient(tc.cfg); err == nil {
				c.Close()
				t.Fatal("NewClient accepted an invalid config")
			}
		})
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
