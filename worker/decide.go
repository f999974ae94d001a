package worker

import (
	"context"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// action is what happens to a request message.
type action int

const (
	actAck  action = iota // done: the outcome is recorded
	actNak                // give it back, to be redelivered after delay
	actTerm               // done for good: never redeliver
)

// Outcomes name decisions in logs (and, later, metrics).
const (
	outAccepted  = "accepted"
	outRejected  = "rejected"
	outFailed    = "failed"
	outRetry     = "retry"     // systemic fault: not counted as an attempt
	outAttempt   = "attempt"   // request-specific failure: counted
	outParked    = "parked"    // notBefore in the future: waits in TMC_TIMERS
	outDuplicate = "duplicate" // redelivered after its outcome was recorded
	outShutdown  = "shutdown"  // unfinished at shutdown: given back at once
	outPanic     = "panic"
	outIgnored   = "ignored"
	// outCancelled: a cancellation was carried out (or found nothing left
	// to do); outCancelPending: it waits for its request to have an outcome.
	outCancelled     = "cancelled"
	outCancelPending = "cancel_pending"
	// outClaimed: another live worker holds the request's claim;
	// outReconcileWait: a dead holder's claim waits for Talend's lists to
	// settle; outUnknown: the run may have started and cannot be told.
	outClaimed       = "claimed"
	outReconcileWait = "reconcile_wait"
	outUnknown       = "unknown"
	// outCapped: the running cap filled up between fetch and start.
	outCapped = "capped"
)

// decision is the single result of processing one message.
type decision struct {
	act         action
	delay       time.Duration
	outcome     string
	reason      string // failed events: DESIGN.md reason
	requestID   string
	route       string
	executionID string
	attempt     int
	err         string // already redacted of parameter values
}

// apply carries a decision out on msg and logs it: the one place where a
// message is acked, nak'ed or terminated, and the one log line per decision.
func (w *Worker) apply(ctx context.Context, msg jetstream.Msg, d decision) {
	w.metrics.decided(ctx, d)
	var err error
	switch d.act {
	case actAck:
		err = msg.Ack()
	case actTerm:
		err = msg.Term()
	case actNak:
		if d.delay > 0 {
			err = msg.NakWithDelay(d.delay)
		} else {
			err = msg.Nak()
		}
	}
	attrs := []any{"outcome", d.outcome, "requestId", d.requestID, "route", d.route, "attempt", d.attempt}
	if d.executionID != "" {
		attrs = append(attrs, "executionId", d.executionID)
	}
	if d.reason != "" {
		attrs = append(attrs, "reason", d.reason)
	}
	if d.act == actNak {
		attrs = append(attrs, "delay", d.delay)
	}
	if d.err != "" {
		attrs = append(attrs, "error", d.err)
	}
	if err != nil {
		attrs = append(attrs, "ackError", err.Error())
	}
	level := slog.LevelInfo
	switch d.outcome {
	case outRejected, outFailed, outAttempt, outPanic, outUnknown:
		level = slog.LevelWarn
	case outRetry, outDuplicate, outShutdown, outCancelPending, outClaimed, outReconcileWait, outCapped:
		level = slog.LevelDebug
		if d.outcome == outRetry && d.attempt == 1 {
			level = slog.LevelInfo // first sign of trouble is worth a line
		}
	}
	if err != nil && level < slog.LevelWarn {
		level = slog.LevelWarn
	}
	w.log.Log(ctx, level, "request "+d.outcome, attrs...)
}
