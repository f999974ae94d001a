package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/broker"
	"github.com/tmc-runner/tmc-runner/config"
)

func runProvision(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("provision", flag.ContinueOnError)
	if err := fs.Parse(args); err != nil {
		return &exitError{code: 2}
	}
	cfg, err := config.Load(nil)
	if err != nil {
		return err
	}
	nc, err := connect(cfg.NATS, "tmc-runner provision")
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	topo := cfg.Worker.Topology()
	if err := broker.Provision(ctx, js, topo); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "provisioned: streams %s %s %s %s, consumers %s %s, bucket %s (replicas %d)\n",
		topo.RunsStream, topo.TimersStream, topo.EventsStream, topo.DeadStream,
		topo.Consumer, topo.TimersConsumer, topo.ClaimsBucket, topo.Replicas)
	return nil
}
