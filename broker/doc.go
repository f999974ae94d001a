// Package broker is tmc-runner's side of NATS JetStream: the names of its
// streams, consumers and bucket, their idempotent provisioning (refusing to
// touch an existing one whose contract differs), and the writes whose
// durability the ack rules depend on — events confirmed stored, dead
// letters, and durable timers built on JetStream message schedules.
//
// A *Publisher is safe for concurrent use. Provision is safe to run from any
// number of replicas at once.
package broker
