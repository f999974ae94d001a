// Package worker consumes run requests from the shared durable JetStream
// consumer, starts each one on Talend, and publishes what happened.
//
// The Worker owns every goroutine it starts: Run returns only when the fetch
// loop, every in-flight message, the timer mover and the breaker prober have
// ended. What to do with a message — ack, nak with a delay, or term — is
// decided in exactly one place (decide.go) and logged once there.
//
// The worker fetches no more messages than it has free slots
// (TMC_CONCURRENCY), so no message waits in a local buffer while its ack wait
// runs out, and it stops fetching altogether while Talend's circuit breaker
// is open or the service-account credentials are rejected: messages stay in
// the stream instead of being burnt.
package worker
