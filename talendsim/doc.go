// Package talendsim is an in-memory simulator of the Talend Cloud public API
// (version 2021-03) that tmc-runner talks to: the service-account token
// endpoint, task and plan runs, execution status, execution lists and
// execution logs. Its requests and answers follow the OpenAPI documents in
// shared/talend-openapi (field names, required fields, status enumerations,
// error codes), so that the Talend client, the worker and the integration
// tests can be exercised without a Talend account.
//
// A *Simulator is an http.Handler: serve it with httptest.NewServer in tests
// or with an http.Server for the `tmc-runner simulator` and `dev` commands.
// Tests steer it with behaviours per executable (missing, paused, forbidden,
// failing, never ending), queued faults (5xx, 429 with Retry-After, slow
// answers), outages, random error rates and token expiry, and read back what
// happened through Stats and Execution.
//
// Executions do not run anything and the simulator starts no goroutines:
// the status of an execution is computed from the clock each time it is
// read (dispatching, then executing, then its outcome), so an injected clock
// makes every test deterministic.
//
// All methods of *Simulator, including ServeHTTP, are safe for concurrent
// use. The simulator never logs and never echoes parameter values, client
// secrets or tokens in error messages.
package talendsim
