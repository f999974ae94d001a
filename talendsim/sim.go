package talendsim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Fixed identities of the simulated account. They only need to be stable and
// non-empty: the spec makes them required in status answers.
const (
	simAccountID     = "sim-account"
	simWorkspaceID   = "sim-workspace"
	simEnvironmentID = "sim-environment"
	simAPIVersion    = "2021-03"
	simJobVersion    = "0.1.0"
)

// Options configure a Simulator; zero values mean the defaults noted.
type Options struct {
	// Clients maps client IDs to the secrets the token endpoint accepts;
	// nil means {"dev-client": "dev-secret"}.
	Clients map[string]string
	// ForbiddenClients are valid clients whose token requests answer 403,
	// as a service account lacking the permission does.
	ForbiddenClients map[string]bool
	// TokenLifetime is how long an issued token stays valid; default 30m.
	TokenLifetime time.Duration
	// ExpiresInNumber sends expires_in as a JSON number instead of the
	// spec's string, to exercise clients that must accept both.
	ExpiresInNumber bool
	// KnowAll makes every executable id exist (tasks, and plans for POST
	// .../plans) unless a Behaviour says otherwise.
	KnowAll bool
	// Latency is added to every answer, token endpoint included.
	Latency time.Duration
	// ServiceUserID is the userId recorded for executions started with a
	// token; default "sa-tmc-runner".
	ServiceUserID string
	// DispatchFor and RunFor drive the progression of an execution:
	// dispatching for DispatchFor, then executing for RunFor, then the
	// outcome. Defaults 50ms and 200ms.
	DispatchFor, RunFor time.Duration
	// ListLag delays the appearance of an execution in list endpoints,
	// as the real service does; default 0.
	ListLag time.Duration
	// StatusLag makes GET /processing/executions/{id} and GET
	// /processing/executions/plans/{id} answer 404 for this long after an
	// execution's trigger time: Talend's read model lags right after a
	// start, and a client must not take that 404 as "no such run".
	// Default 0. DELETE is not affected.
	StatusLag time.Duration
	// Clock replaces time.Now, for deterministic tests, or for
	// time-compressed experiments with ScaledClock.
	Clock func() time.Time
}

// Behaviour says how runs of one executable (task or plan id) answer and end.
type Behaviour struct {
	Missing       bool // 404 on run
	Paused        bool // 405 on run
	NotConfigured bool // 501 on run
	Forbidden     bool // 403 on run
	// Outcome is the terminal status a run ends with. Default
	// "execution_successful". Tasks accept any task status (including
	// values outside the spec, to test clients against unknown statuses);
	// plans use execution_successful, execution_failed or
	// execution_misfired.
	Outcome   string
	NeverEnds bool          // stays executing until deleted or timed out
	RunFor    time.Duration // overrides Options.RunFor when > 0
}

// Stats is a snapshot of what the simulator has seen.
type Stats struct {
	TokensIssued    int
	TokenRequests   int            // every request to the token endpoint, faulted ones included
	Executions      map[string]int // executions started per executable id
	ExecutionsTotal int
	// Calls counts answers by "METHOD /path-template STATUS", e.g.
	// "POST /processing/executions 201". Path templates are the spec's;
	// requests to unknown paths are counted under "*".
	Calls        map[string]int
	Unauthorized int // API calls answered 401
	// APICalls counts every answered call to a /processing/ or
	// /monitoring/ path (unknown paths under them included, the token
	// endpoint excluded): the calls Talend's rate limits count, so an
	// experiment can compute Talend calls per execution.
	APICalls   int
	MaxRunning int // most executions running (dispatching/executing) at once
	// RateLimited counts calls refused with 429 by SetRateLimit.
	RateLimited int
}

// Simulator is a fake Talend Cloud API. Create it with New; it is safe for
// concurrent use.
type Simulator struct {
	mu sync.Mutex

	opts        Options // normalised at New; Clients and Latency live below
	clients     map[string]string
	latency     time.Duration
	tokens      map[string]time.Time // access token -> expiry
	tasks       map[string]bool
	plans       map[string]bool
	behaviours  map[string]Behaviour
	execs       map[string]*execution
	live        liveHeap   // executions that may still be running (see addLocked)
	lastTrigger time.Time  // latest trigger added
	limit       *rateLimit // SetRateLimit; nil: none
	faults      faultState
	stats       Stats
}

// New returns a Simulator configured by opts.
func New(opts Options) *Simulator {
	if opts.Clients == nil {
		opts.Clients = map[string]string{"dev-client": "dev-secret"}
	}
	if opts.TokenLifetime <= 0 {
		opts.TokenLifetime = 30 * time.Minute
	}
	if opts.ServiceUserID == "" {
		opts.ServiceUserID = "sa-tmc-runner"
	}
	if opts.DispatchFor <= 0 {
		opts.DispatchFor = 50 * time.Millisecond
	}
	if opts.RunFor <= 0 {
		opts.RunFor = 200 * time.Millisecond
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	s := &Simulator{
		opts:       opts,
		clients:    copyStrings(opts.Clients),
		latency:    opts.Latency,
		tokens:     map[string]time.Time{},
		tasks:      map[string]bool{},
		plans:      map[string]bool{},
		behaviours: map[string]Behaviour{},
		execs:      map[string]*execution{},
		stats: Stats{
			Executions: map[string]int{},
			Calls:      map[string]int{},
		},
	}
	// Keep our own copy so callers mutating their map cannot race with us.
	s.opts.ForbiddenClients = copyBools(opts.ForbiddenClients)
	return s
}

var _ http.Handler = (*Simulator)(nil)

func (s *Simulator) now() time.Time { return s.opts.Clock() }

// ScaledClock returns a clock for Options.Clock on which simulated time
// starts at start and runs factor times faster than real time: with factor
// 60, a task whose RunFor is 10 minutes ends after 10 real seconds. It lets
// experiments about long runs (follow-up polling, list windows, token
// lifetimes) finish in seconds while every duration the simulator compares
// stays in simulated time. Only the simulator's own reckoning is
// compressed: Options.Latency, fault delays and the client's timers still
// run in real time, so a client polling every real second sees factor
// simulated seconds pass between polls. factor must be positive.
func ScaledClock(start time.Time, factor float64) func() time.Time {
	if factor <= 0 {
		panic("talendsim: ScaledClock factor must be positive")
	}
	// time.Since uses the monotonic reading of origin, so wall-clock jumps
	// on the host do not move simulated time.
	origin := time.Now()
	return func() time.Time {
		return start.Add(time.Duration(float64(time.Since(origin)) * factor))
	}
}

// SetBehaviour sets how runs of executable answer and end. Unless b.Missing,
// it also makes the executable known, as a task and as a plan, so a test
// need not call AddTask as well.
func (s *Simulator) SetBehaviour(executable string, b Behaviour) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.behaviours[executable] = b
}

// AddTask makes a task id known (needed when Options.KnowAll is false).
func (s *Simulator) AddTask(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tasks[id] = true
}

// AddPlan makes a plan id known (needed when Options.KnowAll is false).
func (s *Simulator) AddPlan(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.plans[id] = true
}

// SetLatency changes the latency added to every answer.
func (s *Simulator) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
}

// SetClients replaces the accepted credentials. Tokens already issued stay
// valid, as they do when a real secret is rotated.
func (s *Simulator) SetClients(clients map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clients = copyStrings(clients)
}

// ExpireTokens makes every issued token stale: its next use answers 401.
func (s *Simulator) ExpireTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.tokens)
}

// Stats returns a snapshot of the counters.
func (s *Simulator) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Executions = make(map[string]int, len(s.stats.Executions))
	for k, v := range s.stats.Executions {
		st.Executions[k] = v
	}
	st.Calls = make(map[string]int, len(s.stats.Calls))
	for k, v := range s.stats.Calls {
		st.Calls[k] = v
	}
	return st
}

// knownLocked reports whether an executable of kind exists.
func (s *Simulator) knownLocked(id string, kind string) bool {
	if b, ok := s.behaviours[id]; ok {
		return !b.Missing
	}
	if s.opts.KnowAll {
		return true
	}
	if kind == kindPlan {
		return s.plans[id]
	}
	return s.tasks[id]
}

// route is one path template of the API with its handlers per method.
type route struct {
	template string
	token    bool // the token endpoint: no bearer auth, its own faults
	methods  map[string]handlerFunc
}

type handlerFunc func(s *Simulator, w http.ResponseWriter, r *http.Request, params map[string]string)

// routes lists literal paths before templated ones that could also match
// them (/processing/executions/plans vs /processing/executions/{executionId}).
var routes = []route{
	{template: "/security/oauth/token", token: true, methods: map[string]handlerFunc{http.MethodPost: (*Simulator).handleToken}},
	{template: "/processing/executions", methods: map[string]handlerFunc{http.MethodPost: (*Simulator).handleRunTask}},
	{template: "/processing/executions/plans", methods: map[string]handlerFunc{http.MethodPost: (*Simulator).handleRunPlan}},
	{template: "/processing/executions/plans/{planExecutionId}", methods: map[string]handlerFunc{http.MethodGet: (*Simulator).handleGetPlanExecution}},
	{template: "/processing/executions/{executionId}", methods: map[string]handlerFunc{
		http.MethodGet:    (*Simulator).handleGetTaskExecution,
		http.MethodDelete: (*Simulator).handleDeleteTaskExecution,
	}},
	{template: "/processing/executables/tasks/executions", methods: map[string]handlerFunc{http.MethodGet: (*Simulator).handleListAllTasks}},
	{template: "/processing/executables/tasks/{taskId}/executions", methods: map[string]handlerFunc{http.MethodGet: (*Simulator).handleListTask}},
	{template: "/processing/executables/plans/executions", methods: map[string]handlerFunc{http.MethodGet: (*Simulator).handleListAllPlans}},
	{template: "/processing/executables/plans/{planId}/executions", methods: map[string]handlerFunc{http.MethodGet: (*Simulator).handleListPlan}},
	{template: "/monitoring/executions/{id}/logs", methods: map[string]handlerFunc{http.MethodGet: (*Simulator).handleLogs}},
}

// matchRoute finds the route for path and the values of its parameters.
func matchRoute(path string) (*route, map[string]string) {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	for i := range routes {
		rt := &routes[i]
		tsegs := strings.Split(strings.Trim(rt.template, "/"), "/")
		if len(tsegs) != len(segs) {
			continue
		}
		params := map[string]string{}
		ok := true
		for j, t := range tsegs {
			if strings.HasPrefix(t, "{") {
				if segs[j] == "" {
					ok = false
					break
				}
				params[strings.Trim(t, "{}")] = segs[j]
				continue
			}
			if t != segs[j] {
				ok = false
				break
			}
		}
		if ok {
			return rt, params
		}
	}
	return nil, nil
}

// ServeHTTP answers one request like the Talend Cloud API would. Order:
// latency, routing, faults (outage, queued, random), bearer auth, handler.
func (s *Simulator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &statusRecorder{ResponseWriter: w}
	rt, params := matchRoute(r.URL.Path)
	template := "*"
	if rt != nil {
		template = rt.template
	}
	defer s.recordCall(r.Method, template, r.URL.Path, rec)

	s.mu.Lock()
	latency := s.latency
	s.mu.Unlock()
	if !sleepCtx(r.Context(), latency) {
		return
	}
	if rt == nil {
		writeError(rec, http.StatusNotFound, "Not Found", "no such endpoint")
		return
	}
	h, ok := rt.methods[r.Method]
	if !ok {
		allowed := make([]string, 0, len(rt.methods))
		for m := range rt.methods {
			allowed = append(allowed, m)
		}
		sort.Strings(allowed)
		rec.Header().Set("Allow", strings.Join(allowed, ", "))
		writeError(rec, http.StatusMethodNotAllowed, "Method Not Allowed", "method not allowed on this path")
		return
	}
	if rt.token {
		s.mu.Lock()
		s.stats.TokenRequests++
		s.mu.Unlock()
	}
	if s.applyFaults(rec, r, rt.token) {
		return
	}
	if !rt.token && s.applyRateLimit(rec, r) {
		return
	}
	if !rt.token && !s.authorize(rec, r) {
		return
	}
	h(s, rec, r, params)
}

func (s *Simulator) recordCall(method, template, path string, rec *statusRecorder) {
	if rec.status == 0 {
		return // the client went away before we answered
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Calls[method+" "+template+" "+strconv.Itoa(rec.status)]++
	if strings.HasPrefix(path, "/processing/") || strings.HasPrefix(path, "/monitoring/") {
		s.stats.APICalls++
	}
	if rec.status == http.StatusUnauthorized && template != "/security/oauth/token" {
		s.stats.Unauthorized++
	}
}

// statusRecorder remembers the status written, for Stats.Calls.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// errorResponse is the spec's ErrorResponse.
type errorResponse struct {
	Status    int    `json:"status"`
	Message   string `json:"message,omitempty"`
	Detail    string `json:"detail,omitempty"`
	RequestID string `json:"requestId,omitempty"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		// Only our own fixed types are marshalled; failing here is a bug.
		panic("talendsim: marshal response: " + err.Error())
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// writeError answers with an ErrorResponse. detail must never contain
// parameter values, secrets or tokens.
func writeError(w http.ResponseWriter, status int, message, detail string) {
	writeJSON(w, status, errorResponse{Status: status, Message: message, Detail: detail, RequestID: newID()})
}

// sleepCtx waits d, or less if ctx ends first; it reports whether the full
// wait happened, so callers stop answering a client that has gone.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// newID returns a random UUID (version 4) string, the shape of Talend ids.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func copyStrings(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func copyBools(m map[string]bool) map[string]bool {
	out := make(map[string]bool, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
