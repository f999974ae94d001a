package talendsim

import (
	"net/http"
	"strings"
	"time"
)

// rateLimit models Talend's request limits: at most Requests calls to the
// processing paths (runs, status reads, lists together) in any window of
// Per, per source — one source here. Calls beyond it get 429, as Talend
// answers in practice.
type rateLimit struct {
	requests int
	per      time.Duration
	log      []time.Time // times of accepted calls within the window
}

// SetRateLimit makes processing calls beyond requests per window answer
// 429 (with Retry-After when retryAfter is set); requests <= 0 removes the
// limit. The token endpoint and the Monitoring API are not counted.
func (s *Simulator) SetRateLimit(requests int, per time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if requests <= 0 || per <= 0 {
		s.limit = nil
		return
	}
	s.limit = &rateLimit{requests: requests, per: per}
}

// overLimit records a processing call and reports whether it exceeds the
// limit. Caller holds s.mu.
func (s *Simulator) overLimitLocked(path string, now time.Time) bool {
	if s.limit == nil || !strings.HasPrefix(path, "/processing/") {
		return false
	}
	l := s.limit
	cut := 0
	for cut < len(l.log) && now.Sub(l.log[cut]) >= l.per {
		cut++
	}
	l.log = l.log[cut:]
	if len(l.log) >= l.requests {
		s.stats.RateLimited++
		return true
	}
	l.log = append(l.log, now)
	return false
}

func (s *Simulator) applyRateLimit(w http.ResponseWriter, r *http.Request) bool {
	s.mu.Lock()
	over := s.overLimitLocked(r.URL.Path, time.Now())
	s.mu.Unlock()
	if over {
		writeError(w, http.StatusTooManyRequests, "Too Many Requests", "rate limit exceeded")
	}
	return over
}
