// Package messages is the wire contract of tmc-runner: it decodes and
// validates run requests taken from NATS and encodes the events published
// about them (JSON bodies plus CloudEvents 1.0 binary-mode headers).
//
// The package does no I/O and holds no state. A rejected request comes back
// as an *InvalidRequestError that lists every problem found, one entry per
// problem, so the publisher can fix them all at once; EventFromInvalid turns
// it into the rejected event. Problem messages name fields only and never
// repeat a value from the body, because bodies carry parameter values that
// may be secrets and rejected events are readable by every reader of a route.
//
// Concurrency: Decoder is a small value type with no mutable state, so one
// Decoder may be copied or shared by any number of goroutines. The other
// functions are pure. An *Event is a plain struct: build it in one goroutine
// and do not mutate it while another goroutine marshals it.
package messages
