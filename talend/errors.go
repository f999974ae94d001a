package talend

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"
)

var (
	// ErrCredentials means the token endpoint answered 401 or 403: the client
	// id or secret is wrong or lacks a permission. Retrying a message cannot
	// fix it; the cache probes by itself and recovers once they work.
	ErrCredentials = errors.New("talend: service-account credentials rejected")
	// ErrTokenUnavailable means no token could be fetched for a reason that
	// may pass (token endpoint down, slow, or backing off after failures).
	ErrTokenUnavailable = errors.New("talend: token unavailable")
	// ErrBreakerOpen means the circuit breaker is refusing calls after
	// systemic failures.
	ErrBreakerOpen = errors.New("talend: circuit breaker open")
	// ErrNotSent marks a call given up before it was sent (e.g. while
	// waiting for the fleet's rate budget): it cannot have started anything.
	ErrNotSent = errors.New("talend: call not sent")
)

// ErrorBody is Talend's documented error response (ErrorResponse in the spec).
type ErrorBody struct {
	Status    int    `json:"status"`
	Message   string `json:"message,omitempty"`
	Detail    string `json:"detail,omitempty"`
	RequestID string `json:"requestId,omitempty"`
}

// APIError is a non-2xx answer from the Talend API.
type APIError struct {
	Op         string        // what was being done, e.g. "run task"
	StatusCode int           // HTTP status
	Body       ErrorBody     // Talend's error body, zero when it sent none
	RetryAfter time.Duration // from a Retry-After header; 0 when absent
}

func (e *APIError) Error() string {
	msg := e.Body.Message
	if msg == "" {
		msg = http.StatusText(e.StatusCode)
	}
	return fmt.Sprintf("talend %s: HTTP %d: %s", e.Op, e.StatusCode, msg)
}

// Systemic reports whether the failure says something about Talend or the
// path to it rather than about this request: 5xx, 429 and 408. Systemic
// failures trip the breaker and never count toward giving up a request.
func (e *APIError) Systemic() bool {
	return e.StatusCode >= 500 && e.StatusCode != http.StatusNotImplemented ||
		e.StatusCode == http.StatusTooManyRequests ||
		e.StatusCode == http.StatusRequestTimeout
}

// Retryable reports whether sending the same request again can succeed.
// Talend's documented refusals (400 bad request, 403 forbidden, 404 not
// found, 405 paused, 422 cannot rerun, 501 not configured) cannot; other
// statuses may.
func (e *APIError) Retryable() bool {
	switch e.StatusCode {
	case http.StatusBadRequest, http.StatusForbidden, http.StatusNotFound,
		http.StatusMethodNotAllowed, http.StatusUnprocessableEntity, http.StatusNotImplemented:
		return false
	}
	return true
}

// IsSystemic reports whether err is a failure of Talend or of the way to it
// (network, timeout, 5xx, 429, breaker open, token endpoint down) as opposed
// to a failure of one request. Caller cancellations are not systemic.
func IsSystemic(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if errors.Is(err, ErrBreakerOpen) || errors.Is(err, ErrTokenUnavailable) || errors.Is(err, ErrNotSent) {
		return true
	}
	if errors.Is(err, ErrCredentials) {
		return false
	}
	var apiErr *APIError
	if errors.As(err, &apiErr) {
		// A 401 that survived a fresh token says the API rejects the whole
		// account, not this request.
		return apiErr.Systemic() || apiErr.StatusCode == http.StatusUnauthorized
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return true
	}
	// Anything else from the transport (connection reset, EOF, TLS) is the
	// path to Talend, not the request.
	var transportErr *transportError
	return errors.As(err, &transportErr)
}

// RetryAfter returns the Retry-After duration carried by err, if any.
func RetryAfter(err error) time.Duration {
	var apiErr *APIError
	if errors.As(err, &apiErr) {
		return apiErr.RetryAfter
	}
	// A call held back before it was sent may say when to try again (the
	// fleet's budget refusing a call it cannot admit in time).
	var hint interface{ RetryAfter() time.Duration }
	if errors.As(err, &hint) {
		return hint.RetryAfter()
	}
	return 0
}

// transportError marks a failure to get any HTTP answer.
type transportError struct {
	op  string
	err error
}

func (e *transportError) Error() string { return fmt.Sprintf("talend %s: %v", e.op, e.err) }
func (e *transportError) Unwrap() error { return e.err }

// parseRetryAfter reads a Retry-After header: delay-seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if secs, err := strconv.Atoi(v); err == nil {
		if secs < 0 {
			return 0
		}
		return time.Duration(secs) * time.Second
	}
	if at, err := http.ParseTime(v); err == nil {
		if d := at.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}
