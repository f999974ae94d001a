package talendsim

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable clock for Options.Clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// harness is a simulator behind an httptest.Server, with a fake clock.
type harness struct {
	t     *testing.T
	sim   *Simulator
	srv   *httptest.Server
	clock *fakeClock
	tok   string
}

// newHarness starts a simulator; opts.Clock is replaced by a fake clock
// unless set.
func newHarness(t *testing.T, opts Options) *harness {
	t.Helper()
	return newHarnessWith(t, opts, nil)
}

// newHarnessWith is newHarness with a middleware around the simulator.
func newHarnessWith(t *testing.T, opts Options, wrap func(http.Handler) http.Handler) *harness {
	t.Helper()
	h := &harness{t: t, clock: newFakeClock()}
	if opts.Clock == nil {
		opts.Clock = h.clock.Now
	}
	h.sim = New(opts)
	var handler http.Handler = h.sim
	if wrap != nil {
		handler = wrap(handler)
	}
	h.srv = httptest.NewServer(handler)
	t.Cleanup(h.srv.Close)
	return h
}

// rawBody is a request body sent verbatim with its own content type.
type rawBody struct {
	contentType string
	body        string
}

// request sends one request. body is nil (no body), a rawBody, a string
// (sent as application/json) or any value marshalled to JSON. hdr adds or
// overrides headers; an "Authorization" of "" removes it.
func (h *harness) request(method, path string, body any, hdr map[string]string) (*http.Response, []byte) {
	h.t.Helper()
	var rd io.Reader
	contentType := ""
	switch b := body.(type) {
	case nil:
	case rawBody:
		rd, contentType = strings.NewReader(b.body), b.contentType
	case string:
		rd, contentType = strings.NewReader(b), "application/json"
	default:
		data, err := json.Marshal(b)
		if err != nil {
			h.t.Fatal(err)
		}
		rd, contentType = bytes.NewReader(data), "application/json"
	}
	req, err := http.NewRequest(method, h.srv.URL+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range hdr {
		if v == "" {
			req.Header.Del(k)
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := h.srv.Client().Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatal(err)
	}
	return resp, data
}

// tokenRequest asks for a token with the given credentials and body.
func (h *harness) tokenRequest(id, secret string, body any) (*http.Response, []byte) {
	h.t.Helper()
	req := map[string]string{}
	if id != "" || secret != "" {
		r, _ := http.NewRequest(http.MethodGet, "/", nil)
		r.SetBasicAuth(id, secret)
		req["Authorization"] = r.Header.Get("Authorization")
	}
	return h.request(http.MethodPost, "/security/oauth/token", body, req)
}

var goodTokenBody = map[string]string{"audience": "https://api.eu.cloud.talend.com", "grant_type": "client_credentials"}

// token returns a valid bearer token, fetched once.
func (h *harness) token() string {
	h.t.Helper()
	if h.tok != "" {
		return h.tok
	}
	resp, body := h.tokenRequest("dev-client", "dev-secret", goodTokenBody)
	if resp.StatusCode != http.StatusOK {
		h.t.Fatalf("token: %d %s", resp.StatusCode, body)
	}
	var tr struct {
		AccessToken string `json:"access_token"`
	}
	mustUnmarshal(h.t, body, &tr)
	h.tok = tr.AccessToken
	return h.tok
}

// api sends an authenticated API call.
func (h *harness) api(method, path string, body any) (*http.Response, []byte) {
	h.t.Helper()
	return h.request(method, path, body, map[string]string{"Authorization": "Bearer " + h.token()})
}

// runTask starts a task and returns the execution id.
func (h *harness) runTask(task string) string {
	h.t.Helper()
	resp, body := h.api(http.MethodPost, "/processing/executions", map[string]any{"executable": task})
	if resp.StatusCode != http.StatusCreated {
		h.t.Fatalf("run %s: %d %s", task, resp.StatusCode, body)
	}
	var id executionIdentifier
	mustUnmarshal(h.t, body, &id)
	return id.ExecutionID
}

// runPlan starts a plan and returns the execution id.
func (h *harness) runPlan(plan string) string {
	h.t.Helper()
	resp, body := h.api(http.MethodPost, "/processing/executions/plans", map[string]any{"executable": plan})
	if resp.StatusCode != http.StatusCreated {
		h.t.Fatalf("run plan %s: %d %s", plan, resp.StatusCode, body)
	}
	var id executionIdentifier
	mustUnmarshal(h.t, body, &id)
	return id.ExecutionID
}

// taskStatus reads an execution's status through the API.
func (h *harness) taskStatus(id string) map[string]any {
	h.t.Helper()
	resp, body := h.api(http.MethodGet, "/processing/executions/"+id, nil)
	if resp.StatusCode != http.StatusOK {
		h.t.Fatalf("status %s: %d %s", id, resp.StatusCode, body)
	}
	var m map[string]any
	mustUnmarshal(h.t, body, &m)
	return m
}

func mustUnmarshal(t *testing.T, data []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("decode %q: %v", data, err)
	}
}

// errorBody decodes an ErrorResponse and checks its status field.
func errorBody(t *testing.T, resp *http.Response, data []byte) errorResponse {
	t.Helper()
	var e errorResponse
	mustUnmarshal(t, data, &e)
	if e.Status != resp.StatusCode {
		t.Errorf("error body status %d, response status %d", e.Status, resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	return e
}
