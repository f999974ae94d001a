package worker

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/broker"
)

// moveDueTimers moves requests whose notBefore has come from TMC_TIMERS back
// into TMC_RUNS, where they take the normal path. It is not gated by the
// breaker: moving a message costs Talend nothing.
func (w *Worker) moveDueTimers(ctx context.Context) {
	for ctx.Err() == nil {
		batch, err := w.deps.Timers.Fetch(16, jetstream.FetchMaxWait(w.cfg.FetchWait))
		if err != nil {
			w.log.Warn("fetch due timers failed", "error", err)
			sleep(ctx, time.Second)
			continue
		}
		for msg := range batch.Messages() {
			due := broker.Original{Subject: msg.Subject(), Header: msg.Headers(), Data: msg.Data()}
			if err := w.deps.Events.Resubmit(ctx, due); err != nil {
				w.log.Warn("due timer not moved, retrying", "requestId", due.Header.Get(broker.HeaderRequestID), "error", err)
				_ = msg.NakWithDelay(w.cfg.BackoffMin)
				continue
			}
			// Confirmed ack: a lost one would move the request again after
			// the ack wait, possibly beyond the de-duplication window. (The
			// copy would then find the first one's claim: harmless, but a
			// confirmed ack keeps it from happening at all on this rare path.)
			ackCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if err := msg.DoubleAck(ackCtx); err != nil {
				w.log.Warn("due timer ack not confirmed", "requestId", due.Header.Get(broker.HeaderRequestID), "error", err)
			}
			cancel()
			w.log.Info("request due, resubmitted", "requestId", due.Header.Get(broker.HeaderRequestID))
		}
	}
}
