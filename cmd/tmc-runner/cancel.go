package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/messages"
)

// runCancel asks the workers to cancel one request: a request not started
// yet ends `failed` (reason `cancelled`), a started run is stopped. The
// cancellation goes through JetStream (TMC_RUNS), not core NATS, so it is
// kept until a worker handles it even when none is running right now.
func runCancel(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("cancel", flag.ContinueOnError)
	fs.SetOutput(stderr)
	route := fs.String("route", "default", "routing token of the request")
	wait := fs.Bool("wait", false, "print the request's events until the terminal one; exit code as submit --wait")
	waitTimeout := fs.Duration("wait-timeout", 10*time.Minute, "give up waiting after this long")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: tmc-runner cancel ID [--route R] [--wait]")
		fs.PrintDefaults()
	}
	id, err := parseID(fs, args)
	if err != nil {
		return err
	}
	if !messages.ValidRoute(*route) {
		return &exitError{code: 2, msg: fmt.Sprintf("--route %q: want 1-64 characters of A-Z a-z 0-9 _ -", *route)}
	}
	data, err := json.Marshal(map[string]string{"requestId": id})
	if err != nil {
		return err
	}

	topo, js, closeConn, err := openJetStream("tmc-runner cancel")
	if err != nil {
		return err
	}
	defer closeConn()

	// As in submit: watch before publishing. Delivery starts at the
	// request's first event, so a request that has already ended answers
	// at once with its terminal event.
	var events jetstream.Consumer
	if *wait {
		events, err = js.OrderedConsumer(ctx, topo.EventsStream, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{topo.EventsFilter(*route, id)},
			DeliverPolicy:  jetstream.DeliverAllPolicy,
		})
		if err != nil {
			return fmt.Errorf("watch events of %s (is tmc-runner provisioned?): %w", id, err)
		}
	}

	msg := &nats.Msg{Subject: topo.CancelSubject(*route, id), Header: nats.Header{}, Data: data}
	// One cancellation per request within the stream's duplicate window:
	// repeating the command does not queue more work for the workers.
	msg.Header.Set(nats.MsgIdHdr, id+".cancel")
	msg.Header.Set("Content-Type", "application/json")
	ack, err := js.PublishMsg(ctx, msg)
	if err != nil {
		return fmt.Errorf("publish cancellation to %s (is tmc-runner provisioned?): %w", msg.Subject, err)
	}
	if ack.Duplicate {
		fmt.Fprintf(stdout, "cancel requested for %s (already requested)\n", id)
	} else {
		fmt.Fprintf(stdout, "cancel requested for %s\n", id)
	}
	if !*wait {
		return nil
	}
	// No progress line: the request may be anywhere in its life, and its
	// stored events replay at once; the JSON lines say where it stands.
	return waitForEnd(ctx, events, *waitTimeout, stdout, stderr, nil)
}
