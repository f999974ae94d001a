package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/tmc-runner/tmc-runner/messages"
	"github.com/tmc-runner/tmc-runner/telemetry"
)

// Exit codes of `submit --wait` (and `cancel --wait`), one per way a
// request can end. An `accepted` event ends the wait only when the run is
// not followed; a followed run ends with its `result`.
const (
	exitOK          = 0  // accepted (not followed), or result ok
	exitFailed      = 10 // failed: Talend refused it, retries ran out, expired, cancelled
	exitRejected    = 11 // rejected: the request is invalid
	exitUnknown     = 12 // unknown: the outcome was lost
	exitRunNotOK    = 13 // result with ok=false
	exitRunTimedOut = 14 // result with timedOut=true
	exitWaitTimeout = 15 // --wait-timeout passed before a terminal event
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func runSubmit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("submit", flag.ContinueOnError)
	fs.SetOutput(stderr)
	executable := fs.String("executable", "", "task id (or plan id with --plan) to run")
	plan := fs.Bool("plan", false, "the executable is a plan")
	route := fs.String("route", "default", "routing token of the request")
	requestID := fs.String("request-id", "", "idempotency key (default: generated)")
	logLevel := fs.String("log-level", "", "OFF, ERROR, WARN or INFO")
	timeout := fs.Int("timeout", 0, "Talend execution timeout in minutes")
	notBefore := fs.String("not-before", "", "RFC 3339 time before which the run must not start")
	expiresAt := fs.String("expires-at", "", "RFC 3339 time after which the run must not start")
	wait := fs.Bool("wait", false, "print the request's events until the terminal one; exit code says how it ended")
	waitTimeout := fs.Duration("wait-timeout", 10*time.Minute, "give up waiting after this long")
	var params, metadata listFlag
	fs.Var(&params, "param", "task parameter name=value (repeatable)")
	fs.Var(&metadata, "metadata", "metadata key=value echoed in every event (repeatable)")
	if err := fs.Parse(args); err != nil {
		return &exitError{code: 2}
	}
	if *executable == "" {
		return &exitError{code: 2, msg: "--executable is required"}
	}
	id := *requestID
	if id == "" {
		id = newRequestID()
	}
	body := map[string]any{"requestId": id, "executable": *executable}
	if *plan {
		body["kind"] = "plan"
	}
	if *logLevel != "" {
		body["logLevel"] = *logLevel
	}
	if *timeout > 0 {
		body["timeout"] = *timeout
	}
	if *notBefore != "" {
		body["notBefore"] = *notBefore
	}
	if *expiresAt != "" {
		body["expiresAt"] = *expiresAt
	}
	if len(params) > 0 {
		p := map[string]string{}
		for _, kv := range params {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return &exitError{code: 2, msg: fmt.Sprintf("--param %q: want name=value", k)}
			}
			p[k] = v
		}
		body["parameters"] = p
	}
	if len(metadata) > 0 {
		m := map[string]string{}
		for _, kv := range metadata {
			k, v, _ := strings.Cut(kv, "=")
			m[k] = v
		}
		body["metadata"] = m
	}
	data, err := json.Marshal(body)
	if err != nil {
		return err
	}

	topo, js, closeConn, err := openJetStream("tmc-runner submit")
	if err != nil {
		return err
	}
	defer closeConn()

	// Subscribe before publishing, so not even the first event can be missed.
	var events jetstream.Consumer
	var prog *progress
	if *wait {
		// The clock starts here: elapsed time is time since submit.
		prog = newProgress(id, stderr, isTerminal(stderr), time.Now)
		events, err = js.OrderedConsumer(ctx, topo.EventsStream, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{topo.EventsFilter(*route, id)},
			DeliverPolicy:  jetstream.DeliverAllPolicy,
		})
		if err != nil {
			return fmt.Errorf("watch events of %s (is tmc-runner provisioned?): %w", id, err)
		}
	}
	msg := &nats.Msg{Subject: topo.RequestSubject(*route), Header: nats.Header{}, Data: data}
	msg.Header.Set(nats.MsgIdHdr, id)
	msg.Header.Set("Content-Type", "application/json")
	// submit starts the request's trace: the worker continues it from the
	// traceparent header.
	tracing, flush, err := setupTracing(ctx, nil, stderr)
	if err != nil {
		return err
	}
	defer flush()
	spanCtx, span := tracing.Provider.Tracer("github.com/tmc-runner/tmc-runner/cmd/tmc-runner").Start(ctx,
		"send "+msg.Subject, trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(
			semconv.MessagingSystemKey.String("nats"),
			semconv.MessagingOperationTypeSend,
			semconv.MessagingDestinationName(msg.Subject),
			semconv.MessagingMessageID(id)))
	telemetry.Inject(spanCtx, msg.Header)
	_, err = js.PublishMsg(spanCtx, msg)
	if err != nil {
		span.SetStatus(codes.Error, "publish failed")
	}
	span.End()
	if err != nil {
		return fmt.Errorf("publish request to %s: %w", msg.Subject, err)
	}
	fmt.Fprintln(stdout, id)
	if !*wait {
		return nil
	}
	return waitForEnd(ctx, events, *waitTimeout, stdout, stderr, prog)
}

// waitForEnd prints events as JSON lines until the terminal one and maps
// it to an exit code. prog, when not nil, shows the request's state on
// stderr meanwhile.
func waitForEnd(ctx context.Context, events jetstream.Consumer, timeout time.Duration, stdout, stderr io.Writer, prog *progress) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	iter, err := events.Messages()
	if err != nil {
		return err
	}
	defer iter.Stop()
	go func() { <-ctx.Done(); iter.Stop() }()
	if prog != nil {
		stopTicks := make(chan struct{})
		defer close(stopTicks)
		// Finish runs before the ticker stops (defers run last-in first-out
		// and Finish marks the line done), so no redraw follows the newline.
		defer prog.Finish()
		prog.Begin()
		go tickProgress(prog, stopTicks)
	}
	for {
		m, err := iter.Next()
		if err != nil {
			if prog != nil {
				prog.Finish() // the error message must start on its own line
			}
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return &exitError{code: exitWaitTimeout, msg: fmt.Sprintf("no terminal event within %s", timeout)}
			}
			return err
		}
		ev, err := messages.DecodeEvent(m.Data())
		if err != nil {
			fmt.Fprintln(stdout, string(m.Data()))
			fmt.Fprintln(stderr, "tmc-runner: undecodable event:", err)
			continue
		}
		print := func() { fmt.Fprintln(stdout, string(m.Data())) }
		if prog != nil {
			prog.Event(ev, print)
		} else {
			print()
		}
		if code, done := exitCodeOf(ev); done {
			if code != exitOK {
				return &exitError{code: code, msg: fmt.Sprintf("request %s ended %s", ev.RequestID, ev.Type)}
			}
			return nil
		}
	}
}

func exitCodeOf(ev *messages.Event) (int, bool) {
	switch ev.Type {
	case messages.Accepted:
		if ev.Followed != nil && *ev.Followed {
			return 0, false
		}
		return exitOK, true
	case messages.Result:
		switch {
		case ev.TimedOut != nil && *ev.TimedOut:
			return exitRunTimedOut, true
		case ev.OK != nil && *ev.OK:
			return exitOK, true
		}
		return exitRunNotOK, true
	case messages.Failed:
		return exitFailed, true
	case messages.Rejected:
		return exitRejected, true
	case messages.Unknown:
		return exitUnknown, true
	}
	return 0, false
}

func newRequestID() string {
	var b [9]byte
	_, _ = rand.Read(b[:])
	return "req-" + hex.EncodeToString(b[:])
}
