package talendsim

import (
	"math/rand/v2"
	"net/http"
	"time"
)

// Fault is applied to the next Count matching calls (Count <= 0: until
// ClearFaults). A fault with Status 0 and a Delay only slows the call down,
// which then proceeds normally.
type Fault struct {
	Status     int           // e.g. 500, 502, 503, 429
	RetryAfter string        // Retry-After header value for 429/503, "" = none
	Delay      time.Duration // extra latency (a "slow answer")
	Count      int
	Token      bool // applies to the token endpoint instead of the API endpoints
}

// pendingFault is a queued Fault with its remaining uses.
type pendingFault struct {
	fault   Fault
	left    int
	forever bool
}

type faultState struct {
	api, token []*pendingFault

	errStatus     int
	errRate       float64
	errRetryAfter string

	outage      bool
	tokenOutage bool
}

// InjectFault queues f. API faults and token faults are separate queues;
// each call takes the fault at the head of its queue.
func (s *Simulator) InjectFault(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := &pendingFault{fault: f, left: f.Count, forever: f.Count <= 0}
	if f.Token {
		s.faults.token = append(s.faults.token, p)
	} else {
		s.faults.api = append(s.faults.api, p)
	}
}

// ClearFaults empties both fault queues. Error rate and outages stay as set.
func (s *Simulator) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.api = nil
	s.faults.token = nil
}

// SetErrorRate answers the fraction rate of API calls (not token calls)
// with status; rate 0 disables it.
func (s *Simulator) SetErrorRate(status int, rate float64, retryAfter string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.errStatus = status
	s.faults.errRate = rate
	s.faults.errRetryAfter = retryAfter
}

// SetOutage makes every API call (not token calls) answer 503 while on.
func (s *Simulator) SetOutage(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.outage = on
}

// SetTokenOutage makes the token endpoint answer 500 while on.
func (s *Simulator) SetTokenOutage(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.tokenOutage = on
}

// applyFaults answers the call with a fault when one applies and reports
// whether it did (or the client went away during a fault delay). Order:
// outage, queued fault, random error rate.
func (s *Simulator) applyFaults(w http.ResponseWriter, r *http.Request, token bool) bool {
	s.mu.Lock()
	if token && s.faults.tokenOutage {
		s.mu.Unlock()
		writeFault(w, http.StatusInternalServerError, "")
		return true
	}
	if !token && s.faults.outage {
		s.mu.Unlock()
		writeFault(w, http.StatusServiceUnavailable, "")
		return true
	}
	queue := &s.faults.api
	if token {
		queue = &s.faults.token
	}
	var f *Fault
	if len(*queue) > 0 {
		head := (*queue)[0]
		fault := head.fault
		f = &fault
		if !head.forever {
			head.left--
			if head.left <= 0 {
				*queue = (*queue)[1:]
			}
		}
	}
	errStatus, errRate, errRetryAfter := s.faults.errStatus, s.faults.errRate, s.faults.errRetryAfter
	s.mu.Unlock()

	if f != nil {
		if !sleepCtx(r.Context(), f.Delay) {
			return true
		}
		if f.Status != 0 {
			writeFault(w, f.Status, f.RetryAfter)
			return true
		}
	}
	if !token && errRate > 0 && errStatus != 0 && rand.Float64() < errRate {
		writeFault(w, errStatus, errRetryAfter)
		return true
	}
	return false
}

// writeFault answers with an ErrorResponse; Retry-After is only meaningful
// (and only sent) with 429 and 503.
func writeFault(w http.ResponseWriter, status int, retryAfter string) {
	if retryAfter != "" && (status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable) {
		w.Header().Set("Retry-After", retryAfter)
	}
	msg := http.StatusText(status)
	if msg == "" {
		msg = "Error"
	}
	writeError(w, status, msg, "simulated fault")
}
