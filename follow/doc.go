// Package follow follows the Talend executions the fleet started until they
// end, and publishes their `status` and `result` events.
//
// The set of followed executions is durable: one record per request in the
// claims bucket (key follow.<requestId>), written by the worker before it
// acks an accepted request and deleted once the result event is stored.
// Every replica mirrors the records through a KV watch; one replica at a
// time — the holder of a lease kept in the same bucket — polls Talend for
// all of them. A crash or a rolling restart loses nothing: the next lease
// holder rebuilds its schedule from the records. Follow-ups hold no slot of
// the request consumer.
//
// Polling is economical. Task executions are followed through the
// account-wide execution list (GET /processing/executables/tasks/executions),
// which returns every execution still running plus those that ended in the
// window: one read, at most a few pages, serves every run in flight, and an
// execution's details are read only when it has ended. The read interval
// adapts to the youngest run (short runs get quick results; long runs are
// read less often). Plans, and tasks whenever listing is unavailable, are
// polled one by one on the same adaptive schedule.
//
// A Follower is safe for concurrent use; Run owns its goroutines.
package follow
