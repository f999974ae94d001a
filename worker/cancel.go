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
	if w.deps.Cancels == nil || !messages.ValidRequestID(requestID) || !messages.ValidRoute(route) {
		base.act, base.err = actTerm, "cancellation not supported or malformed subject"
		return base
	}
	if err := w.deps.Cancels.Mark(ctx, requestID); err != nil {
		return w.retry(ctx, base, err)
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
	// Not started yet (or starting right now): the mark will end it when
	// it is processed; look again in case it is being started.
	if attempt >= cancelRecheckLimit {
		base.act, base.outcome, base.err = actAck, outCancelled, "request not seen; it will end cancelled if it comes"
		return base
	}
	base.act, base.outcome, base.delay = actNak, outCancelPending, w.backoff(1)
	return base
}
