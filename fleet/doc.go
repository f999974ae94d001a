// Package fleet holds tests of tmc-runner as it is deployed: the NATS
// permission sets of deployments/nats/permissions.conf checked against a
// real server, and a fleet of workers on a three-node JetStream cluster
// that loses a node mid-run. It has no code of its own.
package fleet
