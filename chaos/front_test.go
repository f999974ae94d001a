package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tmc-runner/tmc-runner/talendsim"
)

// execBook is the suite's own record of every execution the simulator
// started, attributed to a request by its rid parameter. The simulator
// only counts; this is what the checks judge by.
type execBook struct {
	mu     sync.Mutex
	byRID  map[string][]string // rid -> execution ids
	ridOf  map[string]string   // execution id -> rid
	worker map[string]int      // execution id -> worker slot that called
	total  int
}

func newExecBook() *execBook {
	return &execBook{byRID: map[string][]string{}, ridOf: map[string]string{}, worker: map[string]int{}}
}

func (b *execBook) add(rid, id string, worker int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.byRID[rid] = append(b.byRID[rid], id)
	b.ridOf[id] = rid
	b.worker[id] = worker
	b.total++
}

func (b *execBook) snapshot() (byRID map[string][]string, ridOf map[string]string, total int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	byRID = make(map[string][]string, len(b.byRID))
	for k, v := range b.byRID {
		byRID[k] = append([]string(nil), v...)
	}
	ridOf = make(map[string]string, len(b.ridOf))
	for k, v := range b.ridOf {
		ridOf[k] = v
	}
	return byRID, ridOf, b.total
}

// front is the HTTP server one worker slot talks to: the shared simulator
// behind a random base latency, with every started run recorded and the
// run calls in progress counted, so the chaos driver can kill a worker
// while its calls are in flight. The answer to a run call is held back a
// moment after the simulator started the run, so some kills land between
// "run started" and "answer received" — the case reconciliation exists for.
type front struct {
	idx      int
	sim      *talendsim.Simulator
	book     *execBook
	inflight atomic.Int64 // POST /processing/executions in progress
	calls    atomic.Int64 // ... started in total
	lost     atomic.Int64 // 201 answers whose client was gone
	hold     atomic.Int64 // extra delay (ns) of run answers after the run started
	holding  atomic.Int64 // runs started whose answer is not sent yet
	srv      *httptest.Server
}

func newFront(idx int, sim *talendsim.Simulator, book *execBook) *front {
	f := &front{idx: idx, sim: sim, book: book}
	f.srv = httptest.NewServer(f)
	return f
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (f *front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	if r.URL.Path == "/security/oauth/token" {
		f.sim.ServeHTTP(w, r)
		return
	}
	run := r.Method == http.MethodPost && r.URL.Path == "/processing/executions"
	if run {
		f.inflight.Add(1)
		defer f.inflight.Add(-1)
		f.calls.Add(1)
	}
	// Base latency 20–200ms (the simulator's own latency stays for spikes);
	// run calls spend about half of it after the run has started.
	pre := time.Duration(20+rand.IntN(181)) * time.Millisecond
	if run {
		pre = time.Duration(10+rand.IntN(91)) * time.Millisecond
	}
	if !sleepCtx(ctx, pre) {
		return
	}
	if !run {
		f.sim.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	rec := httptest.NewRecorder()
	f.sim.ServeHTTP(rec, r)
	if rec.Code == http.StatusCreated {
		var in struct {
			Parameters map[string]string `json:"parameters"`
		}
		var out struct {
			ExecutionID string `json:"executionId"`
		}
		_ = json.Unmarshal(body, &in)
		_ = json.Unmarshal(rec.Body.Bytes(), &out)
		f.book.add(in.Parameters["rid"], out.ExecutionID, f.idx)
		// The run exists now; its answer takes a little longer.
		f.holding.Add(1)
		ok := sleepCtx(ctx, time.Duration(10+rand.IntN(91))*time.Millisecond+time.Duration(f.hold.Load()))
		f.holding.Add(-1)
		if !ok {
			f.lost.Add(1)
			return
		}
	}
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}
