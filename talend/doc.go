// Package talend is the Talend Cloud API client used by tmc-runner: the
// service-account token cache, the circuit breaker around API calls, and the
// calls themselves (run a task, run a plan, a cheap probe read).
//
// A *Client, its *TokenCache and its *Breaker are safe for concurrent use by
// any number of goroutines; one of each is shared by a whole process.
//
// Errors are typed so that callers can decide what to do without parsing
// strings: *APIError carries the HTTP status and Talend's error body and says
// whether retrying can help; ErrCredentials means the token endpoint refused
// the service account (stop working, do not burn messages); ErrBreakerOpen and
// ErrTokenUnavailable are systemic and pass by themselves.
package talend
