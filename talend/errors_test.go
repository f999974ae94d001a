package talend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"testing"
	"time"
)

func TestAPIErrorClassification(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		status              int
		retryable, systemic bool
	}{
		{400, false, false},
		{401, true, false},
		{403, false, false},
		{404, false, false},
		{405, false, false},
		{408, true, true},
		{409, true, false},
		{422, false, false},
		{429, true, true},
		{500, true, true},
		{501, false, false},
		{502, true, true},
		{503, true, true},
		{504, true, true},
	} {
		t.Run(http.StatusText(tc.status), func(t *testing.T) {
			e := &APIError{Op: "run task", StatusCode: tc.status}
			if e.Retryable() != tc.retryable || e.Systemic() != tc.systemic {
				t.Fatalf("HTTP %d: Retryable %v Systemic %v, want %v %v", tc.status, e.Retryable(), e.Systemic(), tc.retryable, tc.systemic)
			}
			wrapped := fmt.Errorf("outer: %w", e)
			want := tc.systemic || tc.status == http.StatusUnauthorized
			if IsSystemic(wrapped) != want {
				t.Fatalf("IsSystemic(HTTP %d) = %v, want %v", tc.status, !want, want)
			}
		})
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestIsSystemic(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"breaker open", fmt.Errorf("talend run task: %w", ErrBreakerOpen), true},
		{"token unavailable", fmt.Errorf("%w: %w", ErrTokenUnavailable, &APIError{StatusCode: 500}), true},
		{"credentials", fmt.Errorf("talend run task: %w", ErrCredentials), false},
		{"credentials with 401 cause", fmt.Errorf("%w: %w", ErrCredentials, &APIError{StatusCode: 401}), false},
		{"cancelled", fmt.Errorf("talend run task: %w", context.Canceled), false},
		{"cancelled inside url.Error", &url.Error{Op: "Post", URL: "x", Err: context.Canceled}, false},
		{"deadline", fmt.Errorf("talend run task: %w", context.DeadlineExceeded), true},
		{"net timeout", &url.Error{Op: "Post", URL: "x", Err: timeoutErr{}}, true},
		{"connection refused", &transportError{op: "run task", err: &net.OpError{Op: "dial", Err: os.ErrDeadlineExceeded}}, true},
		{"EOF from transport", &transportError{op: "run task", err: io.EOF}, true},
		{"plain error", errors.New("encode task run: bad"), false},
		{"400", &APIError{StatusCode: 400}, false},
		{"429", &APIError{StatusCode: 429}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := IsSystemic(tc.err); got != tc.want {
				t.Fatalf("IsSystemic(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"7", 7 * time.Second},
		{"-3", 0},
		{"soon", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
	} {
		if got := parseRetryAfter(tc.in, now); got != tc.want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
	if RetryAfter(fmt.Errorf("x: %w", &APIError{StatusCode: 429, RetryAfter: 3 * time.Second})) != 3*time.Second {
		t.Error("RetryAfter does not see through wrapping")
	}
	if RetryAfter(errors.New("x")) != 0 {
		t.Error("RetryAfter of a plain error is not 0")
	}
}

type waitHint time.Duration

func (h waitHint) Error() string             { return "held back" }
func (h waitHint) RetryAfter() time.Duration { return time.Duration(h) }

// A call held back before it was sent passes on how long to wait, as the
// client wraps it; an API answer's Retry-After still comes first.
func TestRetryAfterOfACallNotSent(t *testing.T) {
	notSent := fmt.Errorf("talend run task: %w: %w", ErrNotSent, waitHint(3*time.Second))
	if d := RetryAfter(notSent); d != 3*time.Second {
		t.Errorf("RetryAfter(not sent, hint 3s) = %v", d)
	}
	if d := RetryAfter(fmt.Errorf("talend run task: %w", ErrNotSent)); d != 0 {
		t.Errorf("RetryAfter(not sent, no hint) = %v, want 0", d)
	}
	api := fmt.Errorf("x: %w", &APIError{StatusCode: http.StatusTooManyRequests, RetryAfter: time.Second})
	if d := RetryAfter(api); d != time.Second {
		t.Errorf("RetryAfter(429, Retry-After 1s) = %v", d)
	}
}
