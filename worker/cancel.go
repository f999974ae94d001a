package worker

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/tmc-runner/tmc-runner/messages"
	"github.com/tmc-runner/tmc-runner/talend"
)

// cancelRecheckLimit bounds how long a cancellation waits for its request
// to show up (a cancel may overtake its request, or name one that never
// comes): about this many deliveries, backoff included.
const cancelRecheckLimit = 20

// cancel handles tmc.runs.cancel.<route>.<requestId>. A request that has
// not started is marked, so it ends `failed` (cancelled) when processed; a
// started task execution is stopped with DELETE and its follow-up reports
// how it ended. A request being started right now is not missed: the
// cancellation is looked at again until the request has an outcome.
func (w *Worker) cancel(ctx context.Context, subject string, attempt int) decision {
	rest := strings.TrimPrefix(subject, w.cfg.Topology.SubjectPrefix+".cancel.")
	route, requestID, _ := strings.Cut(rest, ".")
	base := decision{requestID: requestID, route: route, attempt: attempt, outcome: outIgnored}
	if !messages.ValidRequestID(requestID) || !messages.ValidRoute(route) {
		base.act, base.err = actTerm, "malformed cancellation subject"
		return base
	}
	// Not claimed yet: the cancelled claim ends the request whenever it
	// comes (from the stream or from its timer). Claimed: look at what
	// happened to it.
	marked, err := w.deps.Claims.Cancel(ctx, requestID)
	if err != nil {
		return w.retry(ctx, base, err)
	}
	if marked {
		base.act, base.outcome = actAck, outCancelled
		return base
	}
	accepted, err := w.deps.Events.FindEvent(ctx, route, requestID, messages.Accepted)
	if err != nil {
		return w.retry(ctx, base, err)
	}
	if accepted != nil {
		base.executionID = accepted.ExecutionID
		if accepted.Kind == messages.KindPlan {
			base.act, base.outcome, base.err = actAck, outCancelled, "plan executions cannot be stopped through the API"
			return base
		}
		if result, err := w.deps.Events.FindEvent(ctx, route, requestID, messages.Result); err != nil {
			return w.retry(ctx, base, err)
		} else if result != nil {
			base.act, base.outcome, base.err = actAck, outCancelled, "the run had already ended"
			return base
		}
		err := w.deps.Talend.StopExecution(ctx, accepted.ExecutionID)
		var apiErr *talend.APIError
		switch {
		case err == nil:
		case errors.As(err, &apiErr) && apiErr.StatusCode == http.StatusNotFound:
			base.err = "Talend no longer knows the execution"
		case ctx.Err() != nil || talend.IsSystemic(err) || errors.Is(err, talend.ErrCredentials):
			return w.retry(ctx, base, err)
		default:
			base.err = "stop refused: " + err.Error()
		}
		base.act, base.outcome = actAck, outCancelled
		return base
	}
	for _, t := range []messages.EventType{messages.Failed, messages.Rejected} {
		ended, err := w.deps.Events.FindEvent(ctx, route, requestID, t)
		if err != nil {
			return w.retry(ctx, base, err)
		}
		if ended != nil {
			base.act, base.outcome = actAck, outCancelled
			return base
		}
	}
	// Being started right now: look again until it has an outcome.
	if attempt >= cancelRecheckLimit {
		base.act, base.outcome, base.err = actAck, outCancelled, "the request's run did not show up; cancellation given up"
		return base
	}
	base.act, base.outcome, base.delay = actNak, outCancelPending, w.backoff(1)
	return base
}
