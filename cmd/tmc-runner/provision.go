package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/tmc-runner/tmc-runner/broker"
)

func runProvision(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("provision", flag.ContinueOnError)
	if err := fs.Parse(args); err != nil {
		return &exitError{code: 2}
	}
	topo, js, closeConn, err := openJetStream("tmc-runner provision")
	if err != nil {
		return err
	}
	defer closeConn()
	if err := broker.Provision(ctx, js, topo); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "provisioned: streams %s %s %s %s, consumers %s %s, bucket %s (replicas %d)\n",
		topo.RunsStream, topo.TimersStream, topo.EventsStream, topo.DeadStream,
		topo.Consumer, topo.TimersConsumer, topo.ClaimsBucket, topo.Replicas)
	return nil
}
