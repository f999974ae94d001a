package follow

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/tmc-runner/tmc-runner/messages"
	"github.com/tmc-runner/tmc-runner/talend"
)

// Talend is what following needs from the Talend client. Every call goes
// through the same token cache and breaker as run calls.
type Talend interface {
	GetExecution(ctx context.Context, executionID string) (talend.Execution, error)
	GetPlanExecution(ctx context.Context, executionID string) (talend.PlanExecution, error)
	ListTaskExecutions(ctx context.Context, from, to time.Time, offset, limit int) (talend.ExecutionPage, error)
	ExecutionLogs(ctx context.Context, executionID string, count int) ([]talend.LogLine, error)
}

// Events publishes status and result events (confirmed stored).
type Events interface {
	Event(ctx context.Context, ev *messages.Event) error
}

// Config tunes a Follower; zero values mean the defaults noted. Durations
// other than Tick are measured with Now, so a time-compressed experiment
// can scale them with the simulator's clock.
type Config struct {
	// MinInterval and MaxInterval bound how often one execution is looked
	// at; in between, the interval is AgeFactor × the execution's age, so a
	// run's result arrives within a tenth of its duration (defaults 2s,
	// 30s, 0.1).
	MinInterval, MaxInterval time.Duration
	AgeFactor                float64
	// StartupLag is how long a new execution may be missing from lists or
	// answer 404 before that counts (default 30s).
	StartupLag time.Duration
	// LeaseTTL is how long a silent lease holder keeps the lease (default
	// 15s, far longer than scheduling jitter).
	LeaseTTL time.Duration
	// Tick is how often (real time) the lease holder checks what is due
	// (default MinInterval/4).
	Tick time.Duration
	// LogLines is how many log lines of a failed run go into its result
	// (default 20; negative disables).
	LogLines int
	// RejectedIsOK makes execution_rejected (ran, some rows rejected) ok.
	RejectedIsOK bool
	// Holder names this replica in the lease; it must differ between
	// replicas (default: the host name and a random suffix, unique per
	// Follower).
	Holder string
	Logger *slog.Logger
	Now    func() time.Time

	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
}

// Follower follows executions to their end. Create with New, start with
// Run; Track registers an execution from any goroutine.
type Follower struct {
	cfg    Config
	kv     jetstream.KeyValue
	talend Talend
	events Events
	log    *slog.Logger
	tracer trace.Tracer
	lease  *lease

	mu      sync.Mutex
	entries map[string]*entry // by requestId: the mirror of the records
	// finished holds the last revision of records this replica finished
	// and deleted, until the watch delivers the deletion: older puts the
	// watch delivers late must not bring them back.
	finished map[string]uint64

	// Owned by the round loop (one goroutine).
	lastList         time.Time // when the list was last read
	listTo           time.Time // the `to` of the last list read
	listingDownUntil time.Time // listing refused (4xx): poll one by one until then
}

type entry struct {
	rec Record // guarded by Follower.mu (the mirror replaces it)
	rev uint64 // guarded by Follower.mu
	// Owned by the round loop.
	lastCheck    time.Time // of a one-by-one read
	missingSince time.Time // first 404 / absence past the lag
}

// item is an entry as one round sees it.
type item struct {
	e   *entry
	rec Record
	rev uint64
}

// New returns a follower that keeps its records in kv.
func New(cfg Config, kv jetstream.KeyValue, tl Talend, events Events) *Follower {
	if cfg.MinInterval <= 0 {
		cfg.MinInterval = 2 * time.Second
	}
	if cfg.MaxInterval < cfg.MinInterval {
		cfg.MaxInterval = max(30*time.Second, cfg.MinInterval)
	}
	if cfg.AgeFactor <= 0 {
		cfg.AgeFactor = 0.1
	}
	if cfg.StartupLag <= 0 {
		cfg.StartupLag = 30 * time.Second
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 15 * time.Second
	}
	if cfg.Tick <= 0 {
		cfg.Tick = cfg.MinInterval / 4
	}
	if cfg.Holder == "" {
		// Two replicas with the same name would each take the lease as
		// their own and poll side by side.
		cfg.Holder = defaultHolder()
	}
	if cfg.LogLines == 0 {
		cfg.LogLines = 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.TracerProvider == nil {
		cfg.TracerProvider = tracenoop.NewTracerProvider()
	}
	if cfg.MeterProvider == nil {
		cfg.MeterProvider = metricnoop.NewMeterProvider()
	}
	f := &Follower{
		cfg: cfg, kv: kv, talend: tl, events: events, log: cfg.Logger,
		tracer:  cfg.TracerProvider.Tracer("github.com/tmc-runner/tmc-runner/follow"),
		entries: map[string]*entry{}, finished: map[string]uint64{},
	}
	f.lease = &lease{kv: kv, key: "lease.follow", holder: cfg.Holder, ttl: cfg.LeaseTTL, now: cfg.Now}
	_, _ = cfg.MeterProvider.Meter("github.com/tmc-runner/tmc-runner/follow").Int64ObservableGauge("tmc.follow.executions",
		metric.WithDescription("Executions being followed to their end (fleet-wide, as mirrored by this replica)"),
		metric.WithUnit("{execution}"),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			f.mu.Lock()
			n := len(f.entries)
			f.mu.Unlock()
			o.Observe(int64(n))
			return nil
		}))
	return f
}

// defaultHolder is a lease holder name unique to this Follower.
func defaultHolder() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "follower"
	}
	return host + "-" + rand.Text()[:10]
}

// Track registers an execution to follow. It is durable when it returns:
// the worker calls it before acking the request.
func (f *Follower) Track(ctx context.Context, rec Record) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode follow record: %w", err)
	}
	rev, err := f.kv.Create(ctx, key(rec.RequestID), data)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return nil // an earlier delivery registered it
	}
	if err != nil {
		return fmt.Errorf("register follow-up of %s: %w", rec.RequestID, err)
	}
	f.upsert(rec, rev)
	return nil
}

// Tracked reports whether requestID has a follow record (its result is
// still to come).
func (f *Follower) Tracked(ctx context.Context, requestID string) (bool, error) {
	_, err := f.kv.Get(ctx, key(requestID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	}
	return err == nil, err
}

func (f *Follower) upsert(rec Record, rev uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if last, ok := f.finished[rec.RequestID]; ok {
		if rev <= last {
			return // a late update of a record already finished
		}
		delete(f.finished, rec.RequestID) // tracked anew
	}
	if e, ok := f.entries[rec.RequestID]; ok {
		if rev > e.rev {
			e.rec, e.rev = rec, rev
		}
		return
	}
	f.entries[rec.RequestID] = &entry{rec: rec, rev: rev}
}

func (f *Follower) remove(requestID string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.entries, requestID)
	delete(f.finished, requestID)
}

// forget drops a record this replica finished and deleted; rev is the
// last revision it knew of it.
func (f *Follower) forget(requestID string, rev uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if e, ok := f.entries[requestID]; ok && e.rev > rev {
		rev = e.rev
	}
	delete(f.entries, requestID)
	f.finished[requestID] = rev
}

// Run mirrors the records and, while holding the lease, follows them until
// ctx ends.
func (f *Follower) Run(ctx context.Context) error {
	watcher, err := f.kv.WatchFiltered(ctx, []string{"follow.>"})
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while the watch was being set up
		}
		return fmt.Errorf("watch follow records: %w", err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { f.mirror(watcher) })
	defer func() {
		_ = watcher.Stop()
		wg.Wait()
		releaseCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		f.lease.release(releaseCtx)
		cancel()
	}()

	ticker := time.NewTicker(f.cfg.Tick)
	defer ticker.Stop()
	holding := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
		held := f.lease.hold(ctx)
		if held != holding {
			holding = held
			if held {
				f.log.Info("following executions for the fleet (lease taken)", "holder", f.cfg.Holder)
				f.listTo = time.Time{} // read the whole window of what we now own
			}
		}
		if held {
			f.round(ctx)
		}
	}
}

// mirror applies the bucket's changes to the in-memory mirror.
func (f *Follower) mirror(w jetstream.KeyWatcher) {
	for upd := range w.Updates() {
		if upd == nil {
			continue // initial values delivered
		}
		requestID := upd.Key()[len("follow."):]
		switch upd.Operation() {
		case jetstream.KeyValuePut:
			var rec Record
			if err := json.Unmarshal(upd.Value(), &rec); err != nil {
				f.log.Warn("unreadable follow record", "key", upd.Key(), "error", err)
				continue
			}
			f.upsert(rec, upd.Revision())
		default:
			f.remove(requestID)
		}
	}
}

// interval is how long an execution of this age may go unobserved.
func (f *Follower) interval(age time.Duration) time.Duration {
	d := time.Duration(float64(age) * f.cfg.AgeFactor)
	return min(max(d, f.cfg.MinInterval), f.cfg.MaxInterval)
}

// round looks at whatever is due.
func (f *Follower) round(ctx context.Context) {
	now := f.cfg.Now()
	f.mu.Lock()
	all := make([]*item, 0, len(f.entries))
	for _, e := range f.entries {
		// A copy of the record: the mirror may replace it meanwhile.
		all = append(all, &item{e: e, rec: e.rec, rev: e.rev})
	}
	f.mu.Unlock()

	var listed []*item
	youngest := time.Duration(-1)
	for _, it := range all {
		// A round can outlast the lease (slow calls one after another):
		// stop as soon as it is no longer ours. hold renews it when due and
		// costs nothing otherwise.
		if !f.lease.hold(ctx) {
			return
		}
		if !it.rec.Deadline.IsZero() && now.After(it.rec.Deadline) {
			// One last look first: a run that ended shortly before its
			// deadline, between two observations, is reported as it ended,
			// not as timed out.
			if !f.checkOne(ctx, it, now) {
				f.finishTimedOut(ctx, it, now)
			}
			continue
		}
		age := now.Sub(it.rec.AcceptedAt)
		if it.rec.Kind == messages.KindPlan || now.Before(f.listingDownUntil) {
			if now.Sub(it.e.lastCheck) >= f.interval(age) {
				f.checkOne(ctx, it, now)
			}
			continue
		}
		listed = append(listed, it)
		if youngest < 0 || age < youngest {
			youngest = age
		}
	}
	if len(listed) > 0 && now.Sub(f.lastList) >= f.interval(youngest) {
		f.listRound(ctx, listed, now)
	}
}

// listRound reads the account's execution list once (a page or a few) and
// observes every followed task execution in it.
func (f *Follower) listRound(ctx context.Context, tasks []*item, now time.Time) {
	from := f.listTo.Add(-f.cfg.StartupLag)
	if f.listTo.IsZero() {
		// A new lease holder: cover everything since the oldest run it
		// follows (running ones are listed in any window anyway).
		from = now
		for _, it := range tasks {
			if it.rec.AcceptedAt.Before(from) {
				from = it.rec.AcceptedAt
			}
		}
		from = from.Add(-time.Minute)
	}
	// Talend refuses windows longer than 60 days.
	if limit := now.Add(-59 * 24 * time.Hour); from.Before(limit) {
		from = limit
	}
	want := make(map[string]bool, len(tasks))
	for _, it := range tasks {
		want[it.rec.ExecutionID] = true
	}
	found := map[string]talend.ListedExecution{}
	for offset, pages := 0, 0; pages < 10; pages++ {
		page, err := f.talend.ListTaskExecutions(ctx, from, now, offset, 100)
		if err != nil {
			var apiErr *talend.APIError
			if errors.As(err, &apiErr) && !apiErr.Systemic() && apiErr.StatusCode != http.StatusUnauthorized {
				f.listingDownUntil = now.Add(5 * time.Minute)
				f.log.Warn("listing executions refused; following runs one by one for 5 minutes", "error", err)
			} else {
				f.log.Debug("listing executions failed; retrying next round", "error", err)
			}
			// Retry on the polling schedule, not on every tick (listTo
			// stays, so the next window still covers the gap).
			f.lastList = now
			return
		}
		for _, item := range page.Items {
			if want[item.ExecutionID] {
				found[item.ExecutionID] = item
			}
		}
		offset += len(page.Items)
		if len(found) == len(want) || len(page.Items) == 0 || offset >= page.Total {
			break
		}
	}
	f.lastList, f.listTo = now, now
	for _, it := range tasks {
		if !f.lease.hold(ctx) {
			return
		}
		listedItem, ok := found[it.rec.ExecutionID]
		if !ok {
			// A run just started may not be listed yet; past the lag, read
			// it directly (which also tells a vanished run from a slow list).
			if now.Sub(it.rec.AcceptedAt) >= f.cfg.StartupLag && now.Sub(it.e.lastCheck) >= f.interval(now.Sub(it.rec.AcceptedAt)) {
				f.checkOne(ctx, it, now)
			}
			continue
		}
		it.e.missingSince = time.Time{}
		if terminal(it.rec.Kind, listedItem.Status) {
			f.finish(ctx, it, listedItem.Status, nil, nil, now)
			continue
		}
		f.observe(ctx, it, listedItem.Status)
	}
}

// checkOne reads one execution's status directly.
//
// It reports whether the execution was seen to end (its result is then
// published, or retried next round if publishing failed).
func (f *Follower) checkOne(ctx context.Context, it *item, now time.Time) (ended bool) {
	it.e.lastCheck = now
	var (
		status string
		task   *talend.Execution
		plan   *talend.PlanExecution
		err    error
	)
	if it.rec.Kind == messages.KindPlan {
		var p talend.PlanExecution
		p, err = f.talend.GetPlanExecution(ctx, it.rec.ExecutionID)
		plan, status = &p, p.Status
	} else {
		var t talend.Execution
		t, err = f.talend.GetExecution(ctx, it.rec.ExecutionID)
		task, status = &t, t.Status
	}
	var apiErr *talend.APIError
	switch {
	case errors.As(err, &apiErr) && apiErr.StatusCode == http.StatusNotFound:
		// Talend's read model lags right after a start: a 404 ends the
		// follow-up only once it has lasted past the start-up lag.
		if it.e.missingSince.IsZero() {
			it.e.missingSince = now
		}
		if now.Sub(it.e.missingSince) >= f.cfg.StartupLag && now.Sub(it.rec.AcceptedAt) >= f.cfg.StartupLag {
			f.finishNotFound(ctx, it, now)
			return true
		}
		return false
	case err != nil:
		f.log.Debug("status read failed; retrying later", "requestId", it.rec.RequestID, "executionId", it.rec.ExecutionID, "error", err)
		return false
	}
	it.e.missingSince = time.Time{}
	if terminal(it.rec.Kind, status) {
		f.finish(ctx, it, status, task, plan, now)
		return true
	}
	f.observe(ctx, it, status)
	return false
}

// observe publishes a status event when Talend's status changed.
func (f *Follower) observe(ctx context.Context, it *item, status string) {
	if status == "" || status == it.rec.LastStatus {
		return
	}
	if !it.rec.Silent {
		ev := messages.NewEvent(messages.Status, it.rec.request(), it.rec.Attempt, f.cfg.Now())
		ev.ExecutionID, ev.Status = it.rec.ExecutionID, status
		if err := f.events.Event(ctx, ev); err != nil {
			f.log.Warn("status event not published; retrying next round", "requestId", it.rec.RequestID, "error", err)
			return
		}
	}
	rec := it.rec
	rec.LastStatus = status
	data, _ := json.Marshal(rec)
	rev, err := f.kv.Update(ctx, key(rec.RequestID), data, it.rev)
	if err != nil {
		// The event is out; at worst a new lease holder repeats it (its
		// message id de-duplicates it within the window).
		f.log.Debug("follow record not updated", "requestId", rec.RequestID, "error", err)
		f.mu.Lock()
		if cur, ok := f.entries[rec.RequestID]; ok {
			cur.rec.LastStatus = status
		}
		f.mu.Unlock()
		return
	}
	f.upsert(rec, rev)
}

// finish publishes the result of an ended execution and forgets it.
func (f *Follower) finish(ctx context.Context, it *item, status string, task *talend.Execution, plan *talend.PlanExecution, now time.Time) {
	rec := it.rec
	ev := messages.NewEvent(messages.Result, rec.request(), rec.Attempt, now)
	ev.ExecutionID, ev.Status = rec.ExecutionID, status
	ok := status == "execution_successful" || status == "execution_rejected" && f.cfg.RejectedIsOK && rec.Kind == messages.KindTask
	timedOut := false
	ev.OK, ev.TimedOut = &ok, &timedOut
	if rec.Kind == messages.KindTask && task == nil {
		// Listed as ended: now, and only now, read the details (error
		// message, row counts).
		t, err := f.talend.GetExecution(ctx, rec.ExecutionID)
		if err != nil {
			f.log.Debug("details of ended execution not read; retrying next round", "requestId", rec.RequestID, "error", err)
			return
		}
		task = &t
	}
	if task != nil {
		ev.StartTime, ev.FinishTime = task.StartTime, task.FinishTime
		ev.ErrorType, ev.ErrorMessage = task.ErrorType, task.ErrorMessage
		ev.ProcessedRows, ev.RejectedRows = task.ProcessedRows, task.RejectedRows
	}
	if plan != nil {
		ev.StartTime, ev.FinishTime = plan.StartTime, plan.FinishTime
	}
	if failedStatus(status) && f.cfg.LogLines > 0 && rec.Kind == messages.KindTask {
		ev.Logs = f.logs(ctx, rec)
	}
	f.publishResult(ctx, it, ev)
}

// logs fetches the last lines Talend has now; a failure never blocks the
// result.
func (f *Follower) logs(ctx context.Context, rec Record) []messages.LogLine {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	lines, err := f.talend.ExecutionLogs(ctx, rec.ExecutionID, f.cfg.LogLines)
	if err != nil {
		f.log.Info("logs of failed execution not attached", "requestId", rec.RequestID, "executionId", rec.ExecutionID, "error", err)
		return nil
	}
	out := make([]messages.LogLine, 0, len(lines))
	// Talend answers newest first; the result reads top to bottom.
	for i := len(lines) - 1; i >= 0; i-- {
		out = append(out, messages.LogLine{Severity: lines[i].Severity, Time: lines[i].Time(), Message: lines[i].Message})
	}
	return out
}

func (f *Follower) finishTimedOut(ctx context.Context, it *item, now time.Time) {
	ev := messages.NewEvent(messages.Result, it.rec.request(), it.rec.Attempt, now)
	ok, timedOut := false, true
	ev.ExecutionID, ev.Status, ev.OK, ev.TimedOut = it.rec.ExecutionID, it.rec.LastStatus, &ok, &timedOut
	ev.Detail = "follow-up deadline passed before Talend reported an end"
	f.publishResult(ctx, it, ev)
}

func (f *Follower) finishNotFound(ctx context.Context, it *item, now time.Time) {
	ev := messages.NewEvent(messages.Result, it.rec.request(), it.rec.Attempt, now)
	ok, timedOut := false, false
	ev.ExecutionID, ev.Status, ev.OK, ev.TimedOut = it.rec.ExecutionID, it.rec.LastStatus, &ok, &timedOut
	ev.Detail = fmt.Sprintf("Talend no longer knows this execution (404 for more than %s)", f.cfg.StartupLag)
	f.publishResult(ctx, it, ev)
}

// publishResult stores the result (once per request, confirmed) and then
// deletes the record. A crash in between repeats the result next round;
// the stream refuses the second copy.
func (f *Follower) publishResult(ctx context.Context, it *item, ev *messages.Event) {
	rec := it.rec
	ctx, span := f.tracer.Start(ctx, "follow result", trace.WithAttributes(
		attribute.String("tmc.request_id", rec.RequestID), attribute.String("tmc.execution_id", rec.ExecutionID),
		attribute.String("tmc.status", ev.Status)))
	defer span.End()
	if !rec.Silent {
		if err := f.events.Event(ctx, ev); err != nil {
			f.log.Warn("result event not published; retrying next round", "requestId", rec.RequestID, "error", err)
			return
		}
	}
	if rec.Slot != "" {
		// The end is seen: the execution no longer counts toward the cap.
		if err := f.kv.Delete(ctx, rec.Slot); err != nil {
			f.log.Warn("running slot not released; slot collection will free it", "requestId", rec.RequestID, "slot", rec.Slot, "error", err)
		}
	}
	if err := f.kv.Delete(ctx, key(rec.RequestID)); err != nil {
		f.log.Warn("follow record not deleted; its result is stored", "requestId", rec.RequestID, "error", err)
	}
	f.forget(rec.RequestID, it.rev)
	f.log.Info("execution ended", "requestId", rec.RequestID, "executionId", rec.ExecutionID,
		"status", ev.Status, "ok", *ev.OK, "timedOut", *ev.TimedOut)
}
