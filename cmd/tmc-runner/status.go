package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/messages"
)

// statusReadTimeout bounds reading a request's stored events: status reads
// what is there and exits, it never waits for new events.
const statusReadTimeout = 30 * time.Second

// runStatus prints the events stored for one request (JSON lines on stdout,
// stream order) and a one-line summary on stderr. Exit 0 when there are
// events, 1 when there are none.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	route := fs.String("route", "", "routing token of the request (default: any route)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: tmc-runner status ID [--route R]")
		fs.PrintDefaults()
	}
	id, err := parseID(fs, args)
	if err != nil {
		return err
	}
	if *route != "" && !messages.ValidRoute(*route) {
		return &exitError{code: 2, msg: fmt.Sprintf("--route %q: want 1-64 characters of A-Z a-z 0-9 _ -", *route)}
	}

	topo, js, closeConn, err := openJetStream("tmc-runner status")
	if err != nil {
		return err
	}
	defer closeConn()
	ctx, cancel := context.WithTimeout(ctx, statusReadTimeout)
	defer cancel()

	// Without a route any route matches: a requestId is unique across
	// routes, and an operator asking about an id may not know its route.
	filter := topo.EventsPrefix() + ".*." + id + ".>"
	if *route != "" {
		filter = topo.EventsFilter(*route, id)
	}
	// The stream's per-subject counts say up front whether there is
	// anything to read, so an unknown id answers at once instead of after
	// a fetch timeout.
	stream, err := js.Stream(ctx, topo.EventsStream)
	if err != nil {
		return fmt.Errorf("events stream %s (is tmc-runner provisioned?): %w", topo.EventsStream, err)
	}
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return fmt.Errorf("events stream %s: %w", topo.EventsStream, err)
	}
	var stored uint64
	for _, n := range info.State.Subjects {
		stored += n
	}
	if stored == 0 {
		where := "on any route"
		if *route != "" {
			where = "on route " + *route
		}
		fmt.Fprintf(stderr, "%s: no events\n", id)
		return &exitError{code: 1, msg: fmt.Sprintf("no events for request %s %s (unknown id, wrong route, or events older than the stream keeps)", id, where)}
	}

	cons, err := js.OrderedConsumer(ctx, topo.EventsStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{filter},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return fmt.Errorf("read events of %s: %w", id, err)
	}
	var evs []*messages.Event
	read := 0
	for done := false; !done; {
		batch, err := cons.Fetch(100, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return fmt.Errorf("read events of %s: %w", id, err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			read++
			fmt.Fprintln(stdout, string(m.Data()))
			if ev, err := messages.DecodeEvent(m.Data()); err == nil {
				evs = append(evs, ev)
			} else {
				fmt.Fprintln(stderr, "tmc-runner: undecodable event:", err)
			}
			// NumPending counts the matching messages stored after this
			// one: zero means everything stored so far has been read, and
			// events published from now on are not status's business.
			if md, err := m.Metadata(); err == nil && md.NumPending == 0 {
				done = true
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("read events of %s: %w", id, err)
		}
		// Nothing more came although the count said there was: the
		// events aged out between the count and the read.
		if got == 0 {
			done = true
		}
	}
	if read == 0 {
		fmt.Fprintf(stderr, "%s: no events\n", id)
		return &exitError{code: 1, msg: fmt.Sprintf("no events for request %s", id)}
	}
	fmt.Fprintln(stderr, summarize(id, evs, read))
	return nil
}

// summarize is the one-line human reading of a request's events, e.g.
// "req-1: result execution_successful ok (3 events)".
func summarize(id string, evs []*messages.Event, n int) string {
	count := fmt.Sprintf("(%d events)", n)
	if n == 1 {
		count = "(1 event)"
	}
	var terminal, accepted *messages.Event
	lastStatus := ""
	routes := map[string]bool{}
	for _, ev := range evs {
		routes[ev.Route] = true
		switch ev.Type {
		case messages.Status:
			lastStatus = ev.Status
		case messages.Accepted:
			accepted = ev
		}
		if _, done := exitCodeOf(ev); done && terminal == nil {
			terminal = ev
		}
	}
	var what string
	switch {
	case terminal == nil && accepted != nil && lastStatus != "":
		what = fmt.Sprintf("accepted, running (last status %s)", lastStatus)
	case terminal == nil && accepted != nil:
		what = "accepted, running (no status yet)"
	case terminal == nil:
		what = fmt.Sprintf("in progress (last status %s)", lastStatus)
	case terminal.Type == messages.Result:
		verdict := "not ok"
		switch {
		case terminal.TimedOut != nil && *terminal.TimedOut:
			verdict = "timed out"
		case terminal.OK != nil && *terminal.OK:
			verdict = "ok"
		}
		what = strings.TrimSpace(fmt.Sprintf("result %s %s", terminal.Status, verdict))
		if terminal.ErrorMessage != "" && verdict != "ok" {
			what += ": " + terminal.ErrorMessage
		}
	case terminal.Type == messages.Accepted:
		what = "accepted, not followed"
	case terminal.Type == messages.Failed && terminal.Reason != "":
		what = "failed " + terminal.Reason
	case terminal.Type == messages.Rejected && len(terminal.Errors) > 0:
		what = fmt.Sprintf("rejected (%d problems)", len(terminal.Errors))
	default:
		what = string(terminal.Type)
	}
	if len(routes) > 1 {
		// The same id on several routes (status without --route): say so
		// rather than merge unrelated requests silently.
		names := make([]string, 0, len(routes))
		for r := range routes {
			names = append(names, r)
		}
		slices.Sort(names)
		what += " [routes: " + strings.Join(names, ", ") + "]"
	}
	return fmt.Sprintf("%s: %s %s", id, what, count)
}

// parseID parses flags placed before or after the single ID argument
// (`status ID --route R` reads naturally; the flag package alone stops at
// the first non-flag argument).
func parseID(fs *flag.FlagSet, args []string) (string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return "", &exitError{code: 2}
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if len(pos) != 1 {
		fs.Usage()
		return "", &exitError{code: 2, msg: fmt.Sprintf("want exactly one request id, got %d", len(pos))}
	}
	if !messages.ValidRequestID(pos[0]) {
		return "", &exitError{code: 2, msg: fmt.Sprintf("request id %q: want 1-128 characters of A-Z a-z 0-9 _ -", pos[0])}
	}
	return pos[0], nil
}
