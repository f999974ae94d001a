package worker

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/tmc-runner/tmc-runner/broker"
	"github.com/tmc-runner/tmc-runner/claims"
	"github.com/tmc-runner/tmc-runner/follow"
	"github.com/tmc-runner/tmc-runner/messages"
	"github.com/tmc-runner/tmc-runner/talend"
	"github.com/tmc-runner/tmc-runner/telemetry"
)

// timerTolerance: a notBefore this close to now is due. Message schedules
// fire on whole seconds, so a request back from its timer may be a moment
// early; it must not be parked again.
const timerTolerance = 2 * time.Second

// handle processes one message and applies the decision, in a consumer
// span that continues the publisher's trace. A panic naks the message and
// the worker goes on.
//
// stopAlive ends the message's in-progress signals (see keepAlive).
func (w *Worker) handle(ctx context.Context, msg jetstream.Msg, stopAlive func()) {
	defer stopAlive()
	ctx, span := w.startProcessSpan(ctx, msg)
	defer span.End()
	defer func() {
		if r := recover(); r != nil {
			w.log.ErrorContext(ctx, "panic while handling a message", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			d := decision{act: actNak, delay: w.cfg.BackoffMin, outcome: outPanic}
			w.endProcessSpan(span, d)
			w.apply(ctx, msg, d)
		}
	}()
	d := w.process(ctx, msg)
	stopAlive()
	w.endProcessSpan(span, d)
	w.apply(ctx, msg, d)
}

// startProcessSpan starts the consumer span of one delivery, a child of
// the trace context in the message's headers (any letter case), with the
// OpenTelemetry messaging attributes.
//
// The attributes are set only on a recording span: with sampling off they
// were about a tenth of the bytes the worker allocated (bench profile,
// 0 ms x 64). No sampler configurable here looks at start attributes.
func (w *Worker) startProcessSpan(ctx context.Context, msg jetstream.Msg) (context.Context, trace.Span) {
	ctx = telemetry.Extract(ctx, msg.Headers())
	ctx, span := w.tracer.Start(ctx, "process "+msg.Subject(), trace.WithSpanKind(trace.SpanKindConsumer))
	if !span.IsRecording() {
		return ctx, span
	}
	attrs := []attribute.KeyValue{
		semconv.MessagingSystemKey.String("nats"),
		semconv.MessagingOperationTypeProcess,
		semconv.MessagingOperationName("process"),
		semconv.MessagingDestinationName(msg.Subject()),
		semconv.MessagingConsumerGroupName(w.cfg.Topology.Consumer),
	}
	if meta, err := msg.Metadata(); err == nil {
		attrs = append(attrs,
			semconv.MessagingMessageID(strconv.FormatUint(meta.Sequence.Stream, 10)),
			attribute.Int("messaging.nats.message.delivery_count", int(meta.NumDelivered)))
	}
	span.SetAttributes(attrs...)
	return ctx, span
}

// endProcessSpan records the decision on the span: ids and outcome (never
// a parameter value), and an error status for outcomes that need a look.
func (w *Worker) endProcessSpan(span trace.Span, d decision) {
	if !span.IsRecording() {
		return
	}
	attrs := []attribute.KeyValue{attribute.String("tmc.outcome", d.outcome)}
	if d.requestID != "" {
		attrs = append(attrs, attribute.String("tmc.request_id", d.requestID), attribute.String("tmc.route", d.route))
	}
	if d.executionID != "" {
		attrs = append(attrs, attribute.String("tmc.execution_id", d.executionID))
	}
	if d.reason != "" {
		attrs = append(attrs, attribute.String("tmc.reason", d.reason))
	}
	span.SetAttributes(attrs...)
	switch d.outcome {
	case outFailed, outRejected, outPanic:
		span.SetStatus(codes.Error, d.outcome)
	}
	if d.err != "" && d.outcome != outAccepted {
		span.AddEvent("exception", trace.WithAttributes(attribute.String("exception.message", d.err)))
	}
}

// keepAlive sends in-progress signals every half ack wait until stopped, so
// a slow Talend call does not get its message redelivered to another
// replica meanwhile.
func (w *Worker) keepAlive(msg jetstream.Msg) (stop func()) {
	var (
		mu      sync.Mutex
		stopped bool
		timer   *time.Timer
	)
	every := w.cfg.AckWait / 2
	// Held while the timer is created, so its first firing sees it set.
	mu.Lock()
	defer mu.Unlock()
	timer = time.AfterFunc(every, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		_ = msg.InProgress()
		timer.Reset(every)
	})
	return func() {
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		timer.Stop()
	}
}

// process decides what happens to one message. Everything it writes that
// the decision depends on (events, dead letters, timers) is confirmed
// before it returns.
func (w *Worker) process(ctx context.Context, msg jetstream.Msg) decision {
	meta, err := msg.Metadata()
	if err != nil {
		return decision{act: actTerm, outcome: outIgnored, err: "not a JetStream message: " + err.Error()}
	}
	attempt := int(meta.NumDelivered)
	subject := msg.Subject()
	if w.cfg.Topology.IsCancelSubject(subject) {
		return w.cancel(ctx, subject, attempt)
	}
	header := msg.Headers()
	src := messages.Source{
		Subject:    subject,
		MsgID:      header.Get(nats.MsgIdHdr),
		PinnedID:   header.Get(broker.HeaderRequestID),
		FallbackID: messages.FallbackID(w.cfg.StreamCreated, meta.Sequence.Stream),
	}
	req, err := w.cfg.Decoder.Decode(msg.Data(), src)
	if err != nil {
		var invalid *messages.InvalidRequestError
		if !errors.As(err, &invalid) {
			invalid = &messages.InvalidRequestError{RequestID: src.FallbackID, Route: "_invalid",
				Problems: []messages.Problem{{Message: "undecodable request"}}}
		}
		return w.reject(ctx, invalid, attempt)
	}
	base := decision{requestID: req.RequestID, route: req.Route, attempt: attempt}
	orig := broker.Original{Subject: subject, Header: header, Data: msg.Data()}

	now := w.now()
	if !req.NotBefore.IsZero() && req.NotBefore.After(now.Add(timerTolerance)) {
		// Parked without a claim: nothing is called before it is due.
		if err := w.deps.Events.ParkTimer(ctx, orig, req.Route, req.RequestID, req.NotBefore); err != nil {
			return w.retry(ctx, base, err)
		}
		base.act, base.outcome = actAck, outParked
		return base
	}
	// The claim turns at-least-once delivery into at most one run: whoever
	// created it calls Talend; everyone else finds out what happened.
	claim, acquired, err := w.deps.Claims.Acquire(ctx, req.RequestID, req.Executable, string(req.Kind))
	if err != nil {
		return w.retry(ctx, base, err)
	}
	if !acquired {
		return w.existingClaim(ctx, &req, orig, base, claim)
	}
	if !req.ExpiresAt.IsZero() && now.After(req.ExpiresAt) {
		return w.fail(ctx, &req, orig, base, messages.ReasonExpired, "expiresAt passed before the run could start", nil)
	}
	if w.cfg.MaxAge > 0 && now.Sub(meta.Timestamp) > w.cfg.MaxAge {
		return w.fail(ctx, &req, orig, base, messages.ReasonExpired,
			fmt.Sprintf("request waited longer than %s without starting", w.cfg.MaxAge), nil)
	}
	return w.startClaimed(ctx, &req, orig, base, &heldClaim{claim: claim}, false)
}

// startClaimed calls Talend under a held claim. After reconciliation
// (restart) the claim's call window starts afresh, and an expired request
// ends instead of starting.
func (w *Worker) startClaimed(ctx context.Context, req *messages.Request, orig broker.Original, base decision, held *heldClaim, restart bool) decision {
	if restart && !req.ExpiresAt.IsZero() && w.now().After(req.ExpiresAt) {
		// Reconciliation found no run, but the request may no longer start.
		return w.fail(ctx, req, orig, base, messages.ReasonExpired, "expiresAt passed before the run could start", nil)
	}
	if restart {
		err := held.do(func(c *claims.Claim) error {
			c.CallFrom, c.CallTo, c.ReconcilingSince = 0, 0, 0
			return w.deps.Claims.StartCall(ctx, c)
		})
		if err != nil {
			return w.retry(ctx, base, err)
		}
	}
	var slot string
	if w.deps.Slots != nil {
		var err error
		slot, err = w.deps.Slots.Acquire(ctx, req.RequestID)
		if err != nil {
			// The cap filled up between the fetch and now: give the request
			// back; fetching pauses until a slot frees up.
			w.releaseClaim(context.WithoutCancel(ctx), &held.claim)
			base.act, base.outcome, base.delay, base.err = actNak, outCapped, w.backoff(1), err.Error()
			return base
		}
	}
	// Recorded before the call: if this worker dies during it, the request
	// reconciling another lost call on the same executable must know this
	// one may have started a run too.
	ek := execKey(req)
	call := inCall(req, &held.claim)
	if err := w.deps.Claims.EnterCall(ctx, ek, call); err != nil {
		w.releaseSlot(context.WithoutCancel(ctx), slot)
		w.releaseClaim(context.WithoutCancel(ctx), &held.claim)
		return w.retry(ctx, base, err)
	}
	callCtx, cancelCall := context.WithCancel(ctx)
	defer cancelCall()
	// The call is admitted within AdmitWithin of the record's time, or not
	// sent: reconciliation counts on a call's run appearing within
	// callSpan of its record.
	callCtx = talend.AdmitBy(callCtx, time.UnixMilli(call.CallFrom).Add(w.cfg.AdmitWithin))
	stopBeat := w.heartbeat(ctx, held, cancelCall)
	defer func() {
		if r := recover(); r != nil {
			// Whether the call went out is unknown: say so on the claim,
			// then let handle's recovery nak the message.
			stopBeat()
			_ = held.do(func(c *claims.Claim) error { return w.deps.Claims.MarkUncertain(context.WithoutCancel(ctx), c) })
			panic(r)
		}
	}()
	executionID, err := w.start(callCtx, req)
	stopBeat()
	if err != nil {
		// The claim outlives a shutdown's cancellation.
		writeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		var apiErr *talend.APIError
		switch {
		case held.lost.Load() && !callMayHaveStarted(err):
			// Another replica took the claim over (this one's heartbeats
			// were not stored) before the call went out: the request, its
			// claim and its call record are that replica's now.
			w.releaseSlot(writeCtx, slot)
			base.act, base.outcome, base.delay, base.err = actNak, outClaimed, w.cfg.ClaimStale/2, "claim taken over before the call was sent"
			return base
		case callMayHaveStarted(err):
			// No answer: the run may exist. The next delivery reconciles
			// instead of calling again.
			if merr := held.do(func(c *claims.Claim) error { return w.deps.Claims.MarkUncertain(writeCtx, c) }); merr != nil {
				w.log.WarnContext(ctx, "claim not marked uncertain; it will be reconciled once its heartbeat is stale", "requestId", req.RequestID, "error", merr)
			}
		case errors.As(err, &apiErr) && !apiErr.Retryable():
			// Refused for good: the claim stays, so a republished copy finds
			// the failed event instead of calling again.
			w.releaseSlot(writeCtx, slot)
			w.leaveCall(writeCtx, req, &held.claim)
		default:
			// Nothing started and a retry may work: let the retry claim afresh.
			w.releaseSlot(writeCtx, slot)
			w.leaveCall(writeCtx, req, &held.claim)
			w.releaseClaim(writeCtx, &held.claim)
		}
		return w.afterError(ctx, req, orig, base, err)
	}
	// Record the owner first, in the call's record: reconciliation must
	// never give this execution to another request, and a crash before the
	// accepted event lets the next delivery adopt it at once.
	call.ExecutionID = executionID
	if err := w.persist(ctx, func(ctx context.Context) error { return w.deps.Claims.Own(ctx, ek, call) }); err != nil {
		base.act, base.outcome, base.err = actNak, outShutdown, "execution owner not recorded: "+err.Error()
		return base
	}
	return w.accepted(ctx, req, base, executionID, slot)
}

func (w *Worker) releaseSlot(ctx context.Context, slot string) {
	if slot == "" {
		return
	}
	if err := w.deps.Slots.Release(ctx, slot); err != nil {
		w.log.WarnContext(ctx, "running slot not released; slot collection will free it", "slot", slot, "error", err)
	}
}

func (w *Worker) releaseClaim(ctx context.Context, c *claims.Claim) {
	if err := w.deps.Claims.Release(ctx, c); err != nil {
		w.log.WarnContext(ctx, "claim not released; the retry will reconcile it", "requestId", c.RequestID, "error", err)
	}
}

// accepted publishes the accepted event and registers the follow-up; the
// request is acked only once both are stored.
func (w *Worker) accepted(ctx context.Context, req *messages.Request, base decision, executionID, slot string) decision {
	base.executionID = executionID
	acceptedAt := w.now()
	ev := messages.NewEvent(messages.Accepted, req, base.attempt, acceptedAt)
	ev.ExecutionID = executionID
	followed := w.followed(req)
	ev.Followed = &followed
	// With a running cap, every execution is followed until its end is
	// seen (silently when nobody asked for a result): that frees its slot.
	track := followed || slot != ""
	// The run has started: its event (and its follow-up) must be stored
	// before the ack, and a nak now would start it a second time, so keep
	// trying while the message is kept alive.
	if err := w.persist(ctx, func(ctx context.Context) error { return w.deps.Events.Event(ctx, ev) }); err != nil {
		base.act, base.outcome, base.err = actNak, outShutdown, "accepted event not stored: "+err.Error()
		return base
	}
	if track {
		rec := w.followRecord(req, base.attempt, executionID, acceptedAt)
		rec.Silent, rec.Slot = !followed, slot
		if err := w.persist(ctx, func(ctx context.Context) error { return w.deps.Follower.Track(ctx, rec) }); err != nil {
			base.act, base.outcome, base.err = actNak, outShutdown, "follow-up not registered: "+err.Error()
			return base
		}
	}
	base.act, base.outcome = actAck, outAccepted
	return base
}

// followed says whether the request's execution is followed to a result.
func (w *Worker) followed(req *messages.Request) bool {
	if w.deps.Follower == nil {
		return false
	}
	if req.AwaitResult != nil {
		return *req.AwaitResult
	}
	return w.cfg.AwaitResult
}

// followRecord is what the follower needs to report on the execution. Its
// deadline is at least the request's timeout plus a margin.
func (w *Worker) followRecord(req *messages.Request, attempt int, executionID string, acceptedAt time.Time) follow.Record {
	deadline := w.cfg.FollowDeadline
	if req.Timeout > 0 {
		// Clamp: Talend's timeout is an int32 of minutes.
		deadline = time.Duration(min(req.Timeout, 100*365*24*60)) * time.Minute
	}
	return follow.Record{
		RequestID: req.RequestID, Route: req.Route, Executable: req.Executable, Kind: req.Kind,
		ExecutionID: executionID, Attempt: attempt, RedriveOf: req.RedriveOf, Metadata: req.Metadata,
		AcceptedAt: acceptedAt, Deadline: acceptedAt.Add(deadline + w.cfg.FollowMargin),
	}
}

// start calls Talend for the request.
func (w *Worker) start(ctx context.Context, req *messages.Request) (string, error) {
	if req.Kind == messages.KindPlan {
		return w.deps.Talend.RunPlan(ctx, req.Executable)
	}
	return w.deps.Talend.RunTask(ctx, talend.TaskRun{
		Executable: req.Executable,
		LogLevel:   req.LogLevel,
		Timeout:    req.Timeout,
		Parameters: req.ParamMap(),
	})
}

// recorded looks for the outcome of an earlier delivery. The run may have
// started (or failed) before a crash lost the ack: then nothing is called
// again, and whatever the crash left missing is written.
func (w *Worker) recorded(ctx context.Context, req *messages.Request, orig broker.Original, base decision) (decision, bool) {
	accepted, err := w.deps.Events.FindEvent(ctx, req.Route, req.RequestID, messages.Accepted)
	if err != nil {
		return w.retry(ctx, base, err), true
	}
	if accepted != nil {
		base.executionID = accepted.ExecutionID
		if accepted.Followed != nil && *accepted.Followed && w.deps.Follower != nil {
			// A crash may have come between the event and the follow-up:
			// register it again unless the result is already out.
			result, err := w.deps.Events.FindEvent(ctx, req.Route, req.RequestID, messages.Result)
			if err != nil {
				return w.retry(ctx, base, err), true
			}
			if result == nil {
				if err := w.deps.Follower.Track(ctx, w.followRecord(req, accepted.Attempt, accepted.ExecutionID, accepted.Time)); err != nil {
					return w.retry(ctx, base, err), true
				}
			}
		}
		base.act, base.outcome = actAck, outDuplicate
		return base, true
	}
	failed, err := w.deps.Events.FindEvent(ctx, req.Route, req.RequestID, messages.Failed)
	if err != nil {
		return w.retry(ctx, base, err), true
	}
	if failed != nil {
		if err := w.deps.Events.DeadLetter(ctx, orig, req.Route, req.RequestID, failed.Reason); err != nil {
			return w.retry(ctx, base, err), true
		}
		base.act, base.outcome = actTerm, outDuplicate
		return base, true
	}
	unknown, err := w.deps.Events.FindEvent(ctx, req.Route, req.RequestID, messages.Unknown)
	if err != nil {
		return w.retry(ctx, base, err), true
	}
	if unknown != nil {
		base.act, base.outcome = actAck, outDuplicate
		return base, true
	}
	return base, false
}

// afterError maps a failed Talend call to a decision.
func (w *Worker) afterError(ctx context.Context, req *messages.Request, orig broker.Original, base decision, err error) decision {
	if ctx.Err() != nil {
		base.act, base.outcome, base.err = actNak, outShutdown, w.redact(req, err.Error())
		return base
	}
	var apiErr *talend.APIError
	switch {
	case errors.Is(err, talend.ErrCredentials), talend.IsSystemic(err):
		d := w.retry(ctx, base, err)
		d.err = w.redact(req, d.err)
		return d
	case errors.As(err, &apiErr) && !apiErr.Retryable():
		return w.fail(ctx, req, orig, base, messages.ReasonTalendError, "", apiErr)
	}
	// A request-specific failure that a retry may fix: counted, durably.
	if w.deps.Attempts == nil {
		return w.fail(ctx, req, orig, base, messages.ReasonRetriesExhausted, w.redact(req, err.Error()), apiErr)
	}
	countCtx, span := w.tracer.Start(ctx, "count attempt")
	n, cerr := w.deps.Attempts.Increment(countCtx, req.RequestID)
	span.End()
	if cerr != nil {
		return w.retry(ctx, base, cerr)
	}
	if n >= w.cfg.MaxAttempts {
		return w.fail(ctx, req, orig, base, messages.ReasonRetriesExhausted,
			fmt.Sprintf("%d attempts failed; last: %s", n, w.redact(req, err.Error())), apiErr)
	}
	base.act, base.outcome, base.delay, base.err = actNak, outAttempt, w.backoff(n), w.redact(req, err.Error())
	return base
}

// retry gives the message back after a systemic fault. The delay grows with
// deliveries; a Retry-After from Talend wins.
func (w *Worker) retry(ctx context.Context, base decision, err error) decision {
	base.act = actNak
	base.err = err.Error()
	if ctx.Err() != nil {
		base.outcome = outShutdown
		return base
	}
	base.outcome = outRetry
	base.delay = w.backoff(base.attempt)
	if ra := talend.RetryAfter(err); ra > 0 {
		base.delay = ra
	}
	return base
}

// reject publishes the rejected event of an invalid request and terminates it.
func (w *Worker) reject(ctx context.Context, invalid *messages.InvalidRequestError, attempt int) decision {
	base := decision{requestID: invalid.RequestID, route: invalid.Route, attempt: attempt}
	ev := messages.EventFromInvalid(invalid, attempt, w.now())
	if err := w.deps.Events.Event(ctx, ev); err != nil {
		return w.retry(ctx, base, err)
	}
	base.act, base.outcome = actTerm, outRejected
	problems := make([]string, 0, len(invalid.Problems))
	for _, p := range invalid.Problems {
		problems = append(problems, strings.TrimSpace(p.Field+" "+p.Message))
	}
	base.err = strings.Join(problems, "; ")
	return base
}

// fail ends a request with a `failed` event, keeps the original as a dead
// letter, and terminates the message — in that order, so a crash in
// between is repaired by the redelivery (see recorded).
func (w *Worker) fail(ctx context.Context, req *messages.Request, orig broker.Original, base decision, reason, detail string, apiErr *talend.APIError) decision {
	ev := messages.NewEvent(messages.Failed, req, base.attempt, w.now())
	ev.Reason = reason
	ev.Detail = w.redact(req, detail)
	if apiErr != nil {
		ev.HTTPStatus = apiErr.StatusCode
		ev.TalendError = &messages.TalendError{
			Status:    apiErr.Body.Status,
			Message:   w.redact(req, apiErr.Body.Message),
			Detail:    w.redact(req, apiErr.Body.Detail),
			RequestID: apiErr.Body.RequestID,
		}
		if ev.Detail == "" {
			ev.Detail = w.redact(req, apiErr.Error())
		}
	}
	if err := w.deps.Events.Event(ctx, ev); err != nil {
		return w.retry(ctx, base, err)
	}
	if err := w.deps.Events.DeadLetter(ctx, orig, req.Route, req.RequestID, reason); err != nil {
		return w.retry(ctx, base, err)
	}
	base.act, base.outcome, base.reason, base.err = actTerm, outFailed, reason, ev.Detail
	return base
}

// persist retries a write until it succeeds or ctx ends (the grace period
// at shutdown), logging the first failure only.
func (w *Worker) persist(ctx context.Context, write func(context.Context) error) error {
	delay := 50 * time.Millisecond
	for {
		err := write(ctx)
		if err == nil {
			return nil
		}
		if delay == 50*time.Millisecond {
			w.log.WarnContext(ctx, "write not stored yet, retrying until it is", "error", err)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		delay = min(delay*2, 2*time.Second)
	}
}

// redact removes parameter values from text that came from outside (Talend
// error messages may quote what they were sent).
func (w *Worker) redact(req *messages.Request, s string) string {
	if s == "" || req == nil {
		return s
	}
	for _, p := range req.Parameters {
		if len(p.Value) >= 3 {
			s = strings.ReplaceAll(s, p.Value, "[redacted]")
		}
	}
	return s
}
