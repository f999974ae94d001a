// Package chaos holds tmc-runner's chaos suite; it has no code of its own,
// only tests (chaos_test.go and its helpers).
//
// TestChaos runs the real thing as separate processes: a nats-server built
// from the module's own dependency (JetStream, file store), two or three
// `tmc-runner worker` processes built with the race detector, and the
// Talend simulator (talendsim) served by the test behind one HTTP front per
// worker. While a publisher sends run requests at a steady rate, a chaos
// driver driven by a seeded RNG kills workers with SIGKILL (at least twice
// while their Talend calls are in flight), restarts the nats-server with
// SIGKILL, and makes the simulator answer 5xx bursts, 429 storms, latency
// spikes and a token-endpoint outage; about 1 % of the requests are
// malformed.
//
// The suite is its own judge: it keeps a record of what it published, reads
// back every event of TMC_EVENTS and every run the simulator started (each
// request carries a parameter rid=<requestId>), and checks that every
// request has exactly one terminal event, that no requestId started more
// than one Talend execution, that no message is left in TMC_RUNS or pending
// on the durable consumer, and that `unknown` appears only where
// reconciliation could not decide (requests on the shared executable). It
// prints a summary table.
//
//	go test -count=1 -v -run TestChaos ./chaos/                      # ~1,000 requests (part of make test)
//	CHAOS_REQUESTS=10000 go test -count=1 -v -timeout 30m -run TestChaos ./chaos/   # make chaos
//	CHAOS_SEED=1234 ...                                              # replay a schedule
//
// -short skips it.
package chaos
