package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/tmc-runner/tmc-runner/broker"
	"github.com/tmc-runner/tmc-runner/claims"
	"github.com/tmc-runner/tmc-runner/messages"
	"github.com/tmc-runner/tmc-runner/telemetry"
)

// redriveTimeout bounds one redrive command: it reads what is stored and
// publishes, it never waits for the worker.
const redriveTimeout = 2 * time.Minute

// redriveProbeGap is how many consecutive unused `<id>-r<k>` names end the
// search for the highest existing redrive. More than one, so that a redrive
// whose traces have aged out (events live shorter than dead letters and
// claims) does not hide the later ones.
const redriveProbeGap = 3

// deadLetter is one message of the dead-letter stream.
type deadLetter struct {
	subject string
	route   string
	id      string
	reason  string
	died    time.Time
	header  nats.Header
	data    []byte
}

// body reads the only fields of the original body that redrive needs. It
// never touches parameter values.
func (d *deadLetter) body() (executable, redriveOf string) {
	var b struct {
		Executable any `json:"executable"`
		RedriveOf  any `json:"redriveOf"`
	}
	if json.Unmarshal(d.data, &b) != nil {
		return "", ""
	}
	executable, _ = b.Executable.(string)
	redriveOf, _ = b.RedriveOf.(string)
	if !messages.ValidRequestID(redriveOf) {
		redriveOf = ""
	}
	return executable, redriveOf
}

// runRedrive lists dead letters, or re-sends chosen ones (or all) as new
// requests named `<original>-r<n>`.
func runRedrive(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("redrive", flag.ContinueOnError)
	fs.SetOutput(stderr)
	route := fs.String("route", "", "only dead letters of this route (default: every route)")
	all := fs.Bool("all", false, "redrive every dead letter not redriven yet")
	dryRun := fs.Bool("dry-run", false, "print what would be redriven, publish nothing")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: tmc-runner redrive [--route R] [--all | ID ...] [--dry-run]")
		fmt.Fprintln(stderr, "without IDs or --all: list the dead letters")
		fs.PrintDefaults()
	}
	// Flags may come before or after the ids.
	var ids []string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			return &exitError{code: 2}
		}
		rest = fs.Args()
		if len(rest) == 0 {
			break
		}
		ids = append(ids, rest[0])
		rest = rest[1:]
	}
	if *route != "" && !messages.ValidRoute(*route) {
		return &exitError{code: 2, msg: fmt.Sprintf("--route %q: want 1-64 characters of A-Z a-z 0-9 _ -", *route)}
	}
	if *all && len(ids) > 0 {
		fs.Usage()
		return &exitError{code: 2, msg: "--all and request ids exclude each other"}
	}
	for _, id := range ids {
		if !messages.ValidRequestID(id) {
			return &exitError{code: 2, msg: fmt.Sprintf("request id %q: want 1-128 characters of A-Z a-z 0-9 _ -", id)}
		}
	}

	topo, js, closeConn, err := openJetStream("tmc-runner redrive")
	if err != nil {
		return err
	}
	defer closeConn()
	ctx, cancel := context.WithTimeout(ctx, redriveTimeout)
	defer cancel()
	r := &redriver{js: js, topo: topo, stdout: stdout, stderr: stderr, dryRun: *dryRun}
	if err := r.open(ctx); err != nil {
		return err
	}

	if !*all && len(ids) == 0 {
		dead, err := r.list(ctx, *route)
		if err != nil {
			return err
		}
		return r.print(ctx, dead)
	}

	var chosen []*deadLetter
	var missing int
	if *all {
		if chosen, err = r.list(ctx, *route); err != nil {
			return err
		}
		if len(chosen) == 0 {
			fmt.Fprintln(stderr, "no dead letters")
			return nil
		}
	} else {
		seen := map[string]bool{}
		for _, id := range ids {
			if seen[id] {
				continue
			}
			seen[id] = true
			d, err := r.find(ctx, *route, id)
			if err != nil {
				fmt.Fprintf(stderr, "tmc-runner: %s: %v\n", id, err)
				missing++
				continue
			}
			chosen = append(chosen, d)
		}
	}

	tracing, flush, err := setupTracing(ctx, nil, stderr)
	if err != nil {
		return err
	}
	defer flush()
	r.tracer = tracing.Provider.Tracer("github.com/tmc-runner/tmc-runner/cmd/tmc-runner")

	refused := 0
	for _, d := range chosen {
		if err := r.redrive(ctx, d, *all); err != nil {
			var ref *refusal
			if !errors.As(err, &ref) {
				return err
			}
			fmt.Fprintf(stderr, "tmc-runner: refused %s: %s\n", d.id, ref.why)
			refused++
		}
	}
	if refused+missing > 0 {
		return &exitError{code: 1, msg: fmt.Sprintf("%d of %d dead letters not redriven", refused+missing, len(chosen)+missing)}
	}
	return nil
}

// refusal is a dead letter that must not be redriven; the others go on.
type refusal struct{ why string }

func (r *refusal) Error() string { return r.why }

func refuse(format string, args ...any) error { return &refusal{why: fmt.Sprintf(format, args...)} }

type redriver struct {
	js             jetstream.JetStream
	topo           broker.Topology
	stdout, stderr io.Writer
	dryRun         bool
	tracer         trace.Tracer

	dead, events jetstream.Stream
	claims       jetstream.KeyValue
	owners       map[string]bool // requestIds that own an execution (incall.* records naming one); nil until read
}

func (r *redriver) open(ctx context.Context) error {
	var err error
	if r.dead, err = r.js.Stream(ctx, r.topo.DeadStream); err != nil {
		return fmt.Errorf("dead-letter stream %s (is tmc-runner provisioned?): %w", r.topo.DeadStream, err)
	}
	if r.events, err = r.js.Stream(ctx, r.topo.EventsStream); err != nil {
		return fmt.Errorf("events stream %s (is tmc-runner provisioned?): %w", r.topo.EventsStream, err)
	}
	if r.claims, err = r.js.KeyValue(ctx, r.topo.ClaimsBucket); err != nil {
		return fmt.Errorf("claims bucket %s (is tmc-runner provisioned?): %w", r.topo.ClaimsBucket, err)
	}
	return nil
}

func (r *redriver) deadPrefix() string { return r.topo.SubjectPrefix + ".dead." }

// fromStored turns a stored dead letter into a deadLetter.
func (r *redriver) fromStored(subject string, h nats.Header, data []byte, died time.Time) *deadLetter {
	route, id, _ := strings.Cut(strings.TrimPrefix(subject, r.deadPrefix()), ".")
	if pinned := h.Get(broker.HeaderRequestID); messages.ValidRequestID(pinned) {
		id = pinned
	}
	return &deadLetter{subject: subject, route: route, id: id, reason: h.Get(broker.HeaderDeadReason), died: died, header: h, data: data}
}

// list reads every dead letter (of one route, or of all), oldest first;
// of several on one subject the last counts.
func (r *redriver) list(ctx context.Context, route string) ([]*deadLetter, error) {
	filter := r.deadPrefix() + ">"
	if route != "" {
		filter = r.deadPrefix() + route + ".>"
	}
	// The count says up front whether there is anything to read, so an
	// empty stream answers at once instead of after a fetch timeout.
	info, err := r.dead.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return nil, fmt.Errorf("dead-letter stream %s: %w", r.topo.DeadStream, err)
	}
	if len(info.State.Subjects) == 0 {
		return nil, nil
	}
	cons, err := r.js.OrderedConsumer(ctx, r.topo.DeadStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{filter},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("read dead letters: %w", err)
	}
	bySubject := map[string]int{}
	var out []*deadLetter
	for done := false; !done; {
		batch, err := cons.Fetch(256, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, fmt.Errorf("read dead letters: %w", err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			md, err := m.Metadata()
			if err != nil {
				return nil, fmt.Errorf("read dead letters: %w", err)
			}
			d := r.fromStored(m.Subject(), m.Headers(), m.Data(), md.Timestamp)
			if i, ok := bySubject[d.subject]; ok {
				out[i] = d
			} else {
				bySubject[d.subject] = len(out)
				out = append(out, d)
			}
			if md.NumPending == 0 {
				done = true
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("read dead letters: %w", err)
		}
		if got == 0 {
			done = true
		}
	}
	return out, nil
}

// find returns the dead letter of one request.
func (r *redriver) find(ctx context.Context, route, id string) (*deadLetter, error) {
	subject := r.deadPrefix() + route + "." + id
	if route == "" {
		info, err := r.dead.Info(ctx, jetstream.WithSubjectFilter(r.deadPrefix()+"*."+id))
		if err != nil {
			return nil, fmt.Errorf("dead-letter stream %s: %w", r.topo.DeadStream, err)
		}
		subjects := make([]string, 0, len(info.State.Subjects))
		for s := range info.State.Subjects {
			subjects = append(subjects, s)
		}
		slices.Sort(subjects)
		switch len(subjects) {
		case 0:
			return nil, errors.New("no dead letter (unknown id, or older than the stream keeps)")
		case 1:
			subject = subjects[0]
		default:
			return nil, fmt.Errorf("dead letters on several routes (%s): choose one with --route", strings.Join(subjects, ", "))
		}
	}
	raw, err := r.dead.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, fmt.Errorf("no dead letter on route %s", route)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", subject, err)
	}
	return r.fromStored(raw.Subject, raw.Header, raw.Data, raw.Time), nil
}

// print lists dead letters, one line each; never a parameter value.
func (r *redriver) print(ctx context.Context, dead []*deadLetter) error {
	if len(dead) == 0 {
		fmt.Fprintln(r.stderr, "no dead letters")
		return nil
	}
	tw := tabwriter.NewWriter(r.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REQUEST_ID\tROUTE\tREASON\tDIED\tEXECUTABLE\tNOTE")
	for _, d := range dead {
		executable, redriveOf := d.body()
		root := d.id
		var notes []string
		if redriveOf != "" {
			notes = append(notes, "redrive of "+redriveOf)
			root = redriveOf
		}
		if latest, err := r.latestRedrive(ctx, root); err != nil {
			return err
		} else if latest > redriveNumber(root, d.id) {
			notes = append(notes, fmt.Sprintf("redriven as %s-r%d", root, latest))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", d.id, d.route, orDash(safe(d.reason)),
			d.died.UTC().Format(time.RFC3339), orDash(safe(executable)), orDash(strings.Join(notes, "; ")))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(r.stderr, "%d dead letters\n", len(dead))
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// safe keeps a value from the body or a header on one column of one line.
func safe(s string) string {
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	if strings.IndexFunc(s, func(c rune) bool { return !unicode.IsPrint(c) || unicode.IsSpace(c) || c == '"' }) >= 0 {
		return strconv.QuoteToASCII(s)
	}
	return s
}

// redriveNumber is k when id is `<root>-r<k>`, else 0.
func redriveNumber(root, id string) int {
	rest, ok := strings.CutPrefix(id, root+"-r")
	if !ok {
		return 0
	}
	k, err := strconv.Atoi(rest)
	if err != nil || k < 1 || strconv.Itoa(k) != rest {
		return 0
	}
	return k
}

// used reports whether anything names requestId: an event, a claim or a
// dead letter, on any route.
func (r *redriver) used(ctx context.Context, requestID string) (bool, error) {
	info, err := r.events.Info(ctx, jetstream.WithSubjectFilter(r.topo.EventsPrefix()+".*."+requestID+".>"))
	if err != nil {
		return false, fmt.Errorf("events of %s: %w", requestID, err)
	}
	if len(info.State.Subjects) > 0 {
		return true, nil
	}
	_, err = r.claims.Get(ctx, "claim."+requestID)
	switch {
	case err == nil:
		return true, nil
	case !errors.Is(err, jetstream.ErrKeyNotFound):
		return false, fmt.Errorf("claim of %s: %w", requestID, err)
	}
	info, err = r.dead.Info(ctx, jetstream.WithSubjectFilter(r.deadPrefix()+"*."+requestID))
	if err != nil {
		return false, fmt.Errorf("dead letter of %s: %w", requestID, err)
	}
	return len(info.State.Subjects) > 0, nil
}

// latestRedrive is the highest k for which `<root>-r<k>` left a trace, 0
// when there is none.
func (r *redriver) latestRedrive(ctx context.Context, root string) (int, error) {
	latest := 0
	for k, misses := 1, 0; misses < redriveProbeGap; k++ {
		id := root + "-r" + strconv.Itoa(k)
		if !messages.ValidRequestID(id) {
			break
		}
		used, err := r.used(ctx, id)
		if err != nil {
			return 0, err
		}
		if used {
			latest, misses = k, 0
		} else {
			misses++
		}
	}
	return latest, nil
}

// startedEvents are the event types that say an execution was (or may have
// been) started for a request.
var startedEvents = []messages.EventType{messages.Accepted, messages.Status, messages.Result, messages.Unknown}

// started says why requestID must not run again, or "".
func (r *redriver) started(ctx context.Context, route, requestID string) (string, error) {
	info, err := r.events.Info(ctx, jetstream.WithSubjectFilter(r.topo.EventsFilter(route, requestID)))
	if err != nil {
		return "", fmt.Errorf("events of %s: %w", requestID, err)
	}
	for subject := range info.State.Subjects {
		t := messages.EventType(subject[strings.LastIndexByte(subject, '.')+1:])
		if slices.Contains(startedEvents, t) {
			return fmt.Sprintf("%s has an %s event: an execution was started", requestID, t), nil
		}
	}
	entry, err := r.claims.Get(ctx, "claim."+requestID)
	switch {
	case err == nil:
		var c struct {
			State string `json:"state"`
		}
		if json.Unmarshal(entry.Value(), &c) == nil && c.State == "uncertain" {
			return fmt.Sprintf("the claim of %s is uncertain: an execution may have been started", requestID), nil
		}
	case !errors.Is(err, jetstream.ErrKeyNotFound):
		return "", fmt.Errorf("claim of %s: %w", requestID, err)
	}
	if r.owners == nil {
		if err := r.readOwners(ctx); err != nil {
			return "", err
		}
	}
	if r.owners[requestID] {
		return fmt.Sprintf("%s owns an execution in %s", requestID, r.topo.ClaimsBucket), nil
	}
	return "", nil
}

// readOwners reads once which requests own an execution: the call records
// (incall.<executable>.<minute>.<requestId>) that name one.
func (r *redriver) readOwners(ctx context.Context) error {
	w, err := r.claims.WatchFiltered(ctx, []string{"incall.>"}, jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("read execution owners: %w", err)
	}
	defer func() { _ = w.Stop() }()
	owners := map[string]bool{}
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("read execution owners: %w", ctx.Err())
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("read execution owners: watch closed")
			}
			if e == nil { // every current entry has been read
				r.owners = owners
				return nil
			}
			var c claims.InCall
			if json.Unmarshal(e.Value(), &c) == nil && c.ExecutionID != "" {
				owners[c.RequestID] = true
			}
		}
	}
}

// redrive re-sends one dead letter as the next redrive of its original.
// all marks --all, which skips dead letters already redriven.
func (r *redriver) redrive(ctx context.Context, d *deadLetter, all bool) error {
	if !messages.ValidRoute(d.route) || !messages.ValidRequestID(d.id) {
		return refuse("dead letter %s has no valid route and request id", d.subject)
	}
	_, redriveOf := d.body()
	// A redrive of a redrive stays a redrive of the original: X-r2, not
	// X-r1-r1.
	root := d.id
	if redriveOf != "" {
		root = redriveOf
	}
	for _, id := range slices.Compact([]string{d.id, root}) {
		why, err := r.started(ctx, d.route, id)
		if err != nil {
			return err
		}
		if why != "" {
			return refuse("%s", why)
		}
	}
	latest, err := r.latestRedrive(ctx, root)
	if err != nil {
		return err
	}
	if all && latest > redriveNumber(root, d.id) {
		fmt.Fprintf(r.stdout, "skipped %s: already redriven as %s-r%d\n", d.id, root, latest)
		return nil
	}
	for n := latest + 1; ; n++ {
		newID := root + "-r" + strconv.Itoa(n)
		if !messages.ValidRequestID(newID) {
			return refuse("%s would be longer than 128 characters", newID)
		}
		msg, err := r.request(d, root, newID)
		if err != nil {
			return err
		}
		if r.dryRun {
			fmt.Fprintf(r.stdout, "would redrive %s as %s on %s\n", d.id, newID, msg.Subject)
			return nil
		}
		ack, err := r.publish(ctx, msg, d)
		if err != nil {
			return fmt.Errorf("redrive %s as %s: %w", d.id, newID, err)
		}
		if ack.Duplicate {
			// Published moments ago and not yet handled by a worker, so it
			// left no trace yet: take the next number.
			continue
		}
		fmt.Fprintf(r.stdout, "redriven %s as %s\n", d.id, newID)
		return nil
	}
}

// request builds the new request: the original body with requestId and
// redriveOf set, every other member kept byte for byte.
func (r *redriver) request(d *deadLetter, root, newID string) (*nats.Msg, error) {
	body, err := rewriteBody(d.data, map[string]string{"requestId": newID, "redriveOf": root})
	if err != nil {
		return nil, refuse("%v", err)
	}
	h := nats.Header{}
	for k, v := range d.header {
		switch {
		case strings.HasPrefix(k, "Nats-"), // server directives and the old de-duplication id
			strings.EqualFold(k, "traceparent"), strings.EqualFold(k, "tracestate"),
			k == broker.HeaderDeadReason, k == broker.HeaderOriginalSubject,
			k == broker.HeaderTimerFired, k == broker.HeaderRoute:
			continue
		}
		h[k] = slices.Clone(v)
	}
	h.Set(nats.MsgIdHdr, newID)
	h.Set(broker.HeaderRequestID, newID)
	if h.Get("Content-Type") == "" {
		h.Set("Content-Type", "application/json")
	}
	return &nats.Msg{Subject: r.topo.RequestSubject(d.route), Header: h, Data: body}, nil
}

// publish sends the redrive in a new trace linked to the original's.
func (r *redriver) publish(ctx context.Context, msg *nats.Msg, d *deadLetter) (*jetstream.PubAck, error) {
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(
		semconv.MessagingSystemKey.String("nats"),
		semconv.MessagingOperationTypeSend,
		semconv.MessagingDestinationName(msg.Subject),
		semconv.MessagingMessageID(msg.Header.Get(nats.MsgIdHdr)))}
	if sc := trace.SpanContextFromContext(telemetry.Extract(context.Background(), d.header)); sc.IsValid() {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sc}))
	}
	spanCtx, span := r.tracer.Start(ctx, "send "+msg.Subject, append(opts, trace.WithNewRoot())...)
	defer span.End()
	telemetry.Inject(spanCtx, msg.Header)
	ack, err := r.js.PublishMsg(spanCtx, msg)
	if err != nil {
		span.SetStatus(codes.Error, "publish failed")
	}
	return ack, err
}

// rewriteBody sets the given members of a JSON object, in place when they
// exist and appended when not, and keeps every other member's bytes.
func rewriteBody(data []byte, set map[string]string) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, errors.New("the original body is not a JSON object")
	}
	var out bytes.Buffer
	out.WriteByte('{')
	done := map[string]bool{}
	write := func(key []byte, value []byte) {
		if out.Len() > 1 {
			out.WriteByte(',')
		}
		out.Write(key)
		out.WriteByte(':')
		out.Write(value)
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, errors.New("the original body is not valid JSON")
		}
		key, _ := tok.(string)
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			return nil, errors.New("the original body is not valid JSON")
		}
		k, _ := json.Marshal(key)
		if v, ok := set[key]; ok {
			if done[key] {
				continue // a duplicate member: keep one
			}
			done[key] = true
			value, _ = json.Marshal(v)
		}
		write(k, value)
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, errors.New("the original body is not valid JSON")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("the original body is not a single JSON object")
	}
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if !done[k] {
			kb, _ := json.Marshal(k)
			vb, _ := json.Marshal(set[k])
			write(kb, vb)
		}
	}
	out.WriteByte('}')
	return out.Bytes(), nil
}
