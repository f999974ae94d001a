package worker

import (
	"math/rand/v2"
	"time"
)

// backoff is the nak delay after n deliveries: exponential from BackoffMin
// to BackoffMax, with jitter over its upper half so that a burst of
// failures does not come back as a burst.
func (w *Worker) backoff(n int) time.Duration {
	d := w.cfg.BackoffMin
	for i := 1; i < n && d < w.cfg.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, w.cfg.BackoffMax)
	return d/2 + rand.N(d/2+1)
}
