package worker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/broker"
	"github.com/tmc-runner/tmc-runner/claims"
	"github.com/tmc-runner/tmc-runner/messages"
	"github.com/tmc-runner/tmc-runner/talend"
)

// Claims is what the worker needs from the claim store.
type Claims interface {
	Acquire(ctx context.Context, requestID, executable, kind string) (claims.Claim, bool, error)
	Beat(ctx context.Context, c *claims.Claim) error
	TakeOver(ctx context.Context, c *claims.Claim) error
	StartCall(ctx context.Context, c *claims.Claim) error
	MarkUncertain(ctx context.Context, c *claims.Claim) error
	Release(ctx context.Context, c *claims.Claim) error
	Save(ctx context.Context, c *claims.Claim) error
	Get(ctx context.Context, requestID string) (*claims.Claim, error)
	EnterCall(ctx context.Context, execKey string, c claims.InCall) error
	Own(ctx context.Context, execKey string, c claims.InCall) error
	LeaveCall(ctx context.Context, execKey string, c claims.InCall) error
	InCalls(ctx context.Context, execKey string, from, to time.Time) ([]claims.InCall, error)
	Cancel(ctx context.Context, requestID string) (bool, error)
}

func execKey(req *messages.Request) string {
	return claims.ExecutableKey(string(req.Kind), req.Executable)
}

// inCall is the request's call record under a claim (keyed by the claim's
// CallFrom).
func inCall(req *messages.Request, c *claims.Claim) claims.InCall {
	return claims.InCall{RequestID: req.RequestID, Route: req.Route, CallFrom: c.CallFrom}
}

// leaveCall clears the request's call record when the call certainly
// started nothing.
func (w *Worker) leaveCall(ctx context.Context, req *messages.Request, c *claims.Claim) {
	if err := w.deps.Claims.LeaveCall(context.WithoutCancel(ctx), execKey(req), inCall(req, c)); err != nil {
		w.log.DebugContext(ctx, "in-call record not cleared", "requestId", req.RequestID, "error", err)
	}
}

// callSpan is how long after its record's time (CallFrom) a call may
// start a run: it is admitted and has its token within AdmitWithin or is
// not sent, and Talend answers (or not) within CallTimeout of the send. A
// retry after a stale token is admitted by the same deadline.
func (w *Worker) callSpan() time.Duration { return w.cfg.AdmitWithin + w.cfg.CallTimeout }

// callsAround lists the calls recorded on the request's executable that
// may have started a run triggered in [from, to]: their CallFrom is at
// most callSpan earlier (a minute more, for good measure; listing is by
// the minute anyway).
func (w *Worker) callsAround(ctx context.Context, req *messages.Request, from, to time.Time) ([]claims.InCall, error) {
	return w.deps.Claims.InCalls(ctx, execKey(req), from.Add(-w.callSpan()-w.cfg.ClockSkew-time.Minute), to.Add(w.cfg.ClockSkew))
}

// heldClaim is a claim this worker holds while it works; the heartbeat
// runs beside the Talend call, so access is serialised.
type heldClaim struct {
	mu    sync.Mutex
	claim claims.Claim
	// lost: another replica took the claim over (a heartbeat found it
	// changed).
	lost atomic.Bool
}

func (h *heldClaim) do(f func(*claims.Claim) error) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return f(&h.claim)
}

// heartbeat renews the claim every ClaimHeartbeat until stopped, so other
// replicas see the holder alive during a long call. If the claim was taken
// over (the compare-and-set fails), lost is called: the call must stop.
func (w *Worker) heartbeat(ctx context.Context, held *heldClaim, lost func()) (stop func()) {
	var (
		mu      sync.Mutex
		stopped bool
		timer   *time.Timer
	)
	requestID := held.claim.RequestID
	// Held while the timer is created, so its first firing sees it set.
	mu.Lock()
	defer mu.Unlock()
	timer = time.AfterFunc(w.cfg.ClaimHeartbeat, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		if err := held.do(func(c *claims.Claim) error { return w.deps.Claims.Beat(ctx, c) }); err != nil {
			w.log.WarnContext(ctx, "claim heartbeat failed", "requestId", requestID, "error", err)
			if errors.Is(err, jetstream.ErrKeyExists) || isWrongLastSequence(err) {
				held.lost.Store(true)
				lost()
			}
		}
		timer.Reset(w.cfg.ClaimHeartbeat)
	})
	return func() {
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		timer.Stop()
	}
}

// callMayHaveStarted says whether a failed run call may nevertheless have
// started an execution: only when no answer came back (timeout, connection
// cut, cancellation mid-call). An HTTP answer, an open breaker or a missing
// token means nothing was started.
func callMayHaveStarted(err error) bool {
	var apiErr *talend.APIError
	switch {
	case errors.As(err, &apiErr):
		return false
	case errors.Is(err, talend.ErrBreakerOpen), errors.Is(err, talend.ErrTokenUnavailable), errors.Is(err, talend.ErrCredentials),
		errors.Is(err, talend.ErrNotSent):
		return false
	}
	return true
}

// existingClaim decides what to do with a request someone claimed before:
// finish what a crash left undone, wait for a live holder, or reconcile a
// dead holder's claim against Talend.
func (w *Worker) existingClaim(ctx context.Context, req *messages.Request, orig broker.Original, base decision, claim claims.Claim) decision {
	if d, done := w.recorded(ctx, req, orig, base); done {
		return d
	}
	if claim.State == claims.Cancelled {
		return w.fail(ctx, req, orig, base, messages.ReasonCancelled, "cancelled before the run started", nil)
	}
	now := w.now()
	alive := (claim.State == claims.Starting || claim.State == claims.Reconciling) && now.Sub(claim.HeartbeatTime()) < w.cfg.ClaimStale
	if alive {
		// Someone is working on it right now: wait for them.
		base.act, base.outcome, base.delay = actNak, outClaimed, w.cfg.ClaimStale/2
		return base
	}
	return w.reconcile(ctx, req, orig, base, claim)
}

// reconcile asks Talend whether a run of a dead holder's (or a lost) call
// exists: none — start it now; exactly one that no other request owns —
// adopt it; more, or Talend not answering within ReconcileTimeout — one
// `unknown` event and no second run (unless onUnknown: rerun).
func (w *Worker) reconcile(ctx context.Context, req *messages.Request, orig broker.Original, base decision, claim claims.Claim) decision {
	now := w.now()
	from := time.UnixMilli(claim.CallFrom).Add(-w.cfg.ClockSkew)
	last := claim.CallTo
	if last == 0 || claim.Heartbeat > last {
		last = claim.Heartbeat
	}
	if claim.CallTo == 0 && claim.CallFrom > 0 {
		// The holder died before the call's answer: the call may have
		// reached Talend as late as its admission deadline and timeout
		// allow, whatever the last stored heartbeat (heartbeats stop being
		// stored when NATS goes away; waiting for budget and the HTTP call
		// do not stop).
		last = max(last, time.UnixMilli(claim.CallFrom).Add(w.callSpan()).UnixMilli())
	}
	to := time.UnixMilli(last).Add(w.cfg.ClockSkew)
	// A run just started may appear in lists late: look only once the
	// window has settled.
	if settled := to.Add(w.cfg.ReconcileSettle); now.Before(settled) {
		base.act, base.outcome, base.delay = actNak, outReconcileWait, settled.Sub(now)+w.backoff(1)/4
		return base
	}
	if err := w.deps.Claims.TakeOver(ctx, &claim); err != nil {
		// Another replica took it first.
		base.act, base.outcome, base.delay, base.err = actNak, outClaimed, w.cfg.ClaimStale/2, err.Error()
		return base
	}
	if claim.ReconcilingSince == 0 {
		claim.ReconcilingSince = now.UnixMilli()
		_ = w.deps.Claims.Save(ctx, &claim)
	}
	ctx, span := w.tracer.Start(ctx, "reconcile claim")
	defer span.End()
	calls, err := w.callsAround(ctx, req, from, to.Add(w.cfg.ReconcileSettle))
	if err != nil {
		return w.retry(ctx, base, err)
	}
	candidates, mine, err := w.candidates(ctx, req, calls, from, to.Add(w.cfg.ReconcileSettle))
	if err != nil {
		// Only Talend failing to answer counts toward the bound, not calls
		// this fleet held back itself (budget, breaker).
		notAsked := errors.Is(err, talend.ErrNotSent) || errors.Is(err, talend.ErrBreakerOpen)
		if !notAsked && now.Sub(time.UnixMilli(claim.ReconcilingSince)) > w.cfg.ReconcileTimeout {
			if req.OnUnknown == messages.OnUnknownRerun {
				// Talend cannot tell either: the request asked for a rerun
				// rather than an unknown (the new call takes the normal
				// error path while Talend stays away).
				base.reason = "reconciled: rerun"
				return w.startClaimed(ctx, req, orig, base, &heldClaim{claim: claim}, true)
			}
			return w.unknown(ctx, req, base, fmt.Sprintf("Talend could not be asked within %s whether the run started: %s", w.cfg.ReconcileTimeout, w.redact(req, err.Error())))
		}
		return w.retry(ctx, base, err)
	}
	if mine {
		base.reason = "reconciled: adopted"
		return w.adopt(ctx, req, base, &claim, candidates[0])
	}
	if len(candidates) == 0 {
		base.reason = "reconciled: not started"
		return w.startClaimed(ctx, req, orig, base, &heldClaim{claim: claim}, true)
	}
	// A run exists. It is this request's only if no other request may have
	// started a run of the same executable meanwhile.
	rivals, owned, wait, err := w.rivals(ctx, req, from, to)
	if err != nil {
		return w.retry(ctx, base, err)
	}
	if wait {
		base.act, base.outcome, base.delay = actNak, outClaimed, w.cfg.ClaimStale/2
		return base
	}
	// Executions other requests were found to own meanwhile (a record
	// written since the first listing, or named by an accepted event) are
	// not this request's.
	candidates = slices.DeleteFunc(candidates, func(id string) bool { return owned[id] })
	if len(candidates) == 0 {
		base.reason = "reconciled: not started"
		return w.startClaimed(ctx, req, orig, base, &heldClaim{claim: claim}, true)
	}
	if len(candidates) == 1 && rivals == 0 {
		base.reason = "reconciled: adopted"
		return w.adopt(ctx, req, base, &claim, candidates[0])
	}
	detail := fmt.Sprintf("%d executions of %s started by this service account between %s and %s, none claimed by another request, and %d other requests whose calls were lost on it: cannot tell which is this request's",
		len(candidates), req.Executable, from.UTC().Format(time.RFC3339), to.UTC().Format(time.RFC3339), rivals)
	if req.OnUnknown == messages.OnUnknownRerun {
		base.reason = "reconciled: rerun"
		return w.startClaimed(ctx, req, orig, base, &heldClaim{claim: claim}, true)
	}
	return w.unknown(ctx, req, base, detail)
}

// candidates lists the executions that may be this request's run: started
// by this fleet's service account through the API in the window, and not
// owned by another request (calls holds the executable's call records
// around the window). An execution this request owns is the only
// candidate.
func (w *Worker) candidates(ctx context.Context, req *messages.Request, calls []claims.InCall, from, to time.Time) (ids []string, mine bool, err error) {
	owners := make(map[string]string)
	for _, c := range calls {
		if c.ExecutionID != "" {
			owners[c.ExecutionID] = c.RequestID
		}
	}
	var items []talend.ListedExecution
	for offset, pages := 0, 0; pages < 10; pages++ {
		page, err := w.deps.Talend.ListExecutionsOf(ctx, req.Kind == messages.KindPlan, req.Executable, from, to, offset, 100)
		if err != nil {
			return nil, false, err
		}
		items = append(items, page.Items...)
		offset += len(page.Items)
		if len(page.Items) == 0 || offset >= page.Total {
			break
		}
	}
	fleetUser := w.cfg.FleetUserID
	var open []talend.ListedExecution
	for _, it := range items {
		if it.TriggerTime == nil || it.TriggerTime.Before(from) || it.TriggerTime.After(to) {
			continue
		}
		owner := owners[it.ExecutionID]
		switch {
		case owner == req.RequestID:
			return []string{it.ExecutionID}, true, nil
		case owner != "":
			// Another request's run: and a sample of the fleet's own userId.
			if fleetUser == "" {
				fleetUser = it.UserID
			}
			continue
		}
		open = append(open, it)
	}
	var out []string
	for _, it := range open {
		if it.UserType != "SERVICE" || it.APIVersion == "" || fleetUser != "" && it.UserID != fleetUser {
			continue // a scheduled, human or other account's run
		}
		out = append(out, it.ExecutionID)
	}
	return out, false, nil
}

// rivals counts the other requests whose calls on the same executable,
// in an overlapping window, were lost too (their holders died, or their
// answers never came, or they ended `unknown`): with such a rival, a run
// found in the window cannot be attributed. A rival still being worked on
// makes us wait (wait true): it will record its run. Records of rivals
// that failed (nothing started) are cleared; records naming their
// execution need no reading at all. The records are listed afresh: rivals
// are read after Talend's lists, and a rival may have recorded its run
// meanwhile. owned holds the executions other requests own: named in
// their records, or in their accepted events (the record is written before
// the event, but the event is the record of last resort: it is what the
// request told the world).
func (w *Worker) rivals(ctx context.Context, req *messages.Request, from, to time.Time) (n int, owned map[string]bool, wait bool, err error) {
	calls, err := w.callsAround(ctx, req, from, to)
	if err != nil {
		return 0, nil, false, err
	}
	owning := make(map[string]bool)
	owned = make(map[string]bool)
	for _, c := range calls {
		if c.ExecutionID != "" && c.RequestID != req.RequestID {
			owning[c.RequestID] = true
			owned[c.ExecutionID] = true
		}
	}
	now := w.now()
	seen := make(map[string]bool)
	for _, c := range calls {
		callFrom := time.UnixMilli(c.CallFrom)
		if c.RequestID == req.RequestID || owning[c.RequestID] || seen[c.RequestID] ||
			callFrom.After(to) || callFrom.Add(w.callSpan()+w.cfg.ClockSkew).Before(from) {
			continue
		}
		seen[c.RequestID] = true
		claim, err := w.deps.Claims.Get(ctx, c.RequestID)
		if err != nil {
			return 0, nil, false, err
		}
		if claim != nil && claim.State == claims.Starting && now.Sub(claim.HeartbeatTime()) < w.cfg.ClaimStale {
			return 0, nil, true, nil
		}
		accepted, err := w.deps.Events.FindEvent(ctx, c.Route, c.RequestID, messages.Accepted)
		if err != nil {
			return 0, nil, false, err
		}
		if accepted != nil {
			// It owns its run, named in the event: no rival, and its record
			// stays.
			if accepted.ExecutionID != "" {
				owned[accepted.ExecutionID] = true
			}
			continue
		}
		failed, err := w.deps.Events.FindEvent(ctx, c.Route, c.RequestID, messages.Failed)
		if err != nil {
			return 0, nil, false, err
		}
		if failed != nil || claim == nil {
			// Nothing started: clear the record, unless it changed since it
			// was listed.
			_ = w.deps.Claims.LeaveCall(ctx, execKey(req), c)
			continue
		}
		n++
	}
	return n, owned, false, nil
}

// adopt takes an execution found by reconciliation as this request's run.
func (w *Worker) adopt(ctx context.Context, req *messages.Request, base decision, claim *claims.Claim, executionID string) decision {
	rec := inCall(req, claim)
	rec.ExecutionID = executionID
	if err := w.deps.Claims.Own(ctx, execKey(req), rec); err != nil {
		return w.retry(ctx, base, err)
	}
	slot := ""
	if w.deps.Slots != nil {
		// An adopted run counts toward the cap like any other; if the cap
		// is full it still runs (it exists): it is followed without a slot.
		slot, _ = w.deps.Slots.Acquire(ctx, req.RequestID)
	}
	return w.accepted(ctx, req, base, executionID, slot)
}

// unknown ends a request whose run may have started but cannot be told.
func (w *Worker) unknown(ctx context.Context, req *messages.Request, base decision, detail string) decision {
	ev := messages.NewEvent(messages.Unknown, req, base.attempt, w.now())
	ev.Detail = detail
	if err := w.deps.Events.Event(ctx, ev); err != nil {
		return w.retry(ctx, base, err)
	}
	// The in-call record stays: this request's run, if any, is among the
	// unattributed ones, so it remains a rival for overlapping windows.
	base.act, base.outcome, base.err = actAck, outUnknown, detail
	return base
}

// isWrongLastSequence recognises a compare-and-set conflict.
func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
