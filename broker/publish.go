package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/tmc-runner/tmc-runner/internal/jswrite"
	"github.com/tmc-runner/tmc-runner/messages"
	"github.com/tmc-runner/tmc-runner/telemetry"
)

// Header names tmc-runner sets on messages it writes itself.
const (
	// HeaderRequestID pins the requestId of a request that tmc-runner
	// re-publishes (a due timer, a redrive), whatever its fallback would be.
	HeaderRequestID = "Tmc-Request-Id"
	// HeaderRoute carries the route of a parked request.
	HeaderRoute = "Tmc-Route"
	// HeaderTimerFired marks a request that came back from a timer.
	HeaderTimerFired = "Tmc-Timer-Fired"
	// HeaderDeadReason says why a request was dead-lettered (no values).
	HeaderDeadReason = "Tmc-Dead-Reason"
	// HeaderOriginalSubject is the subject a dead letter was consumed from.
	HeaderOriginalSubject = "Tmc-Original-Subject"
)

// Publisher writes events, dead letters and timers. Every write that an
// acknowledgement depends on is confirmed stored before it returns nil.
type Publisher struct {
	js       jetstream.JetStream
	topo     Topology
	source   string
	tracer   trace.Tracer
	failures metric.Int64Counter
	w        *jswrite.Writer // events written once, when set (see UseWriter)
}

// UseWriter makes the events written once per type (every type but
// status) go through w instead of the library's publish (see
// internal/jswrite for what it skips and what that saves).
func (p *Publisher) UseWriter(w *jswrite.Writer) { p.w = w }

// NewPublisher returns a publisher; source is the CloudEvents ce-source.
// Each write is a producer span whose context travels in the message's
// headers, so downstream consumers continue the same trace. tp and mp may
// be nil.
func NewPublisher(js jetstream.JetStream, topo Topology, source string, tp trace.TracerProvider, mp metric.MeterProvider) *Publisher {
	if tp == nil {
		tp = tracenoop.NewTracerProvider()
	}
	if mp == nil {
		mp = metricnoop.NewMeterProvider()
	}
	failures, _ := mp.Meter(scope).Int64Counter("tmc.events.publish.failures",
		metric.WithDescription("Writes of events, dead letters and timers that failed (retried by the caller)"),
		metric.WithUnit("{write}"))
	return &Publisher{js: js, topo: topo, source: source, tracer: tp.Tracer(scope), failures: failures}
}

const scope = "github.com/tmc-runner/tmc-runner/broker"

// send starts a producer span for a write to subject (named after its
// template, not the subject itself: subjects carry request ids), injects
// its context into msg's headers, and ends it with the write's outcome.
func (p *Publisher) send(ctx context.Context, kind, template string, msg *nats.Msg, write func(context.Context) error) error {
	ctx, span := p.tracer.Start(ctx, "send "+template, trace.WithSpanKind(trace.SpanKindProducer))
	defer span.End()
	if span.IsRecording() { // building attributes costs even when unsampled
		span.SetAttributes(
			semconv.MessagingSystemKey.String("nats"),
			semconv.MessagingOperationTypeSend,
			semconv.MessagingOperationName("send"),
			semconv.MessagingDestinationName(msg.Subject),
			semconv.MessagingDestinationTemplate(template),
			semconv.MessagingMessageID(msg.Header.Get(nats.MsgIdHdr)),
		)
	}
	telemetry.Inject(ctx, msg.Header)
	err := write(ctx)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, kind+" not stored")
		p.failures.Add(ctx, 1, metric.WithAttributes(attribute.String("kind", kind)))
	}
	return err
}

// Event publishes ev. Every type but `status` is written with the
// expected-last-subject-sequence 0 condition, so the stream refuses a second
// event of that type for that request; a refusal is confirmed by reading the
// subject back, never taken on trust.
func (p *Publisher) Event(ctx context.Context, ev *messages.Event) error {
	body, err := ev.Marshal()
	if err != nil {
		return fmt.Errorf("encode %s event: %w", ev.Type, err)
	}
	msg := &nats.Msg{Subject: ev.Subject(p.topo.EventsPrefix()), Header: ev.Header(p.source), Data: body}
	template := p.topo.EventsPrefix() + ".{route}.{requestId}." + string(ev.Type)
	return p.send(ctx, string(ev.Type)+" event", template, msg, func(ctx context.Context) error {
		if ev.Type == messages.Status {
			if _, err := p.js.PublishMsg(ctx, msg); err != nil {
				return fmt.Errorf("publish %s event: %w", ev.Type, err)
			}
			return nil
		}
		return p.publishOnce(ctx, p.topo.EventsStream, msg)
	})
}

// publishOnce writes msg as the only message of its subject. Success means
// it is stored: written now, or found already there.
func (p *Publisher) publishOnce(ctx context.Context, stream string, msg *nats.Msg) error {
	err := p.writeOnce(ctx, msg)
	if err == nil {
		return nil
	}
	if !isWrongLastSequence(err) {
		return fmt.Errorf("publish %s: %w", msg.Subject, err)
	}
	// Something is already on the subject — or, in a cluster, a write to it
	// is still in flight. Confirm by reading it, a few times if needed.
	s, serr := p.js.Stream(ctx, stream)
	if serr != nil {
		return fmt.Errorf("confirm %s: %w", msg.Subject, serr)
	}
	for attempt := 0; ; attempt++ {
		_, gerr := s.GetLastMsgForSubject(ctx, msg.Subject)
		if gerr == nil {
			return nil
		}
		if !errors.Is(gerr, jetstream.ErrMsgNotFound) || attempt == 4 {
			return fmt.Errorf("confirm %s after refusal: %w", msg.Subject, gerr)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("confirm %s: %w", msg.Subject, ctx.Err())
		case <-time.After(time.Duration(50<<attempt) * time.Millisecond):
		}
	}
}

// writeOnce writes msg with the expected-last-subject-sequence 0
// condition, through the writer when there is one (the library's publish
// when no stream answered it: that one retries while a leader is elected).
func (p *Publisher) writeOnce(ctx context.Context, msg *nats.Msg) error {
	if p.w != nil {
		if msg.Header == nil {
			msg.Header = nats.Header{}
		}
		msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
		_, err := p.w.Write(ctx, msg)
		if !errors.Is(err, jswrite.ErrNoStream) {
			return err
		}
	}
	_, err := p.js.PublishMsg(ctx, msg, jetstream.WithExpectLastSequencePerSubject(0))
	return err
}

func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
}

// FindEvent returns the stored event of type t for one request, or nil.
func (p *Publisher) FindEvent(ctx context.Context, route, requestID string, t messages.EventType) (*messages.Event, error) {
	s, err := p.js.Stream(ctx, p.topo.EventsStream)
	if err != nil {
		return nil, fmt.Errorf("events stream: %w", err)
	}
	subject := p.topo.EventsPrefix() + "." + route + "." + requestID + "." + string(t)
	raw, err := s.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", subject, err)
	}
	ev, err := messages.DecodeEvent(raw.Data)
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", subject, err)
	}
	return ev, nil
}

// Original is a consumed message as dead letters and timers keep it.
type Original struct {
	Subject string
	Header  nats.Header
	Data    []byte
}

// DeadLetter keeps the original message of a request that ended `failed`,
// under tmc.runs.dead.<route>.<requestId>, with the reason as a header. It
// is written at most once per request and confirmed stored.
func (p *Publisher) DeadLetter(ctx context.Context, orig Original, route, requestID, reason string) error {
	h := cloneHeader(orig.Header)
	h.Set(HeaderDeadReason, reason)
	h.Set(HeaderOriginalSubject, orig.Subject)
	h.Set(HeaderRequestID, requestID)
	h.Set(nats.MsgIdHdr, requestID+".dead")
	msg := &nats.Msg{Subject: p.topo.DeadSubject(route, requestID), Header: h, Data: orig.Data}
	return p.send(ctx, "dead letter", p.topo.SubjectPrefix+".dead.{route}.{requestId}", msg, func(ctx context.Context) error {
		if err := p.publishOnce(ctx, p.topo.DeadStream, msg); err != nil {
			return fmt.Errorf("dead letter %s: %w", requestID, err)
		}
		return nil
	})
}

// ParkTimer stores a request whose notBefore is in the future as a JetStream
// message schedule: it waits in TMC_TIMERS, in no consumer's ack-pending
// set, and is delivered to tmc.runs.timer.due.<requestId> at `at`.
func (p *Publisher) ParkTimer(ctx context.Context, orig Original, route, requestID string, at time.Time) error {
	h := cloneHeader(orig.Header)
	h.Del(nats.MsgIdHdr)
	h.Set(HeaderRequestID, requestID)
	h.Set(HeaderRoute, route)
	msg := &nats.Msg{Subject: p.topo.TimerSubject(requestID), Header: h, Data: orig.Data}
	return p.send(ctx, "timer", p.topo.SubjectPrefix+".timer.sched.{requestId}", msg, func(ctx context.Context) error {
		_, err := p.js.PublishMsg(ctx, msg,
			jetstream.WithScheduleAt(at),
			jetstream.WithScheduleTarget(p.topo.TimerDueSubject(requestID)),
		)
		if err != nil {
			return fmt.Errorf("park %s until %s: %w", requestID, at.Format(time.RFC3339), err)
		}
		return nil
	})
}

// Resubmit moves a due timer back into the request stream, where it takes
// the normal path. The de-duplication id makes a repeated move (a crash
// between this write and the timer's ack) harmless.
func (p *Publisher) Resubmit(ctx context.Context, due Original) error {
	requestID := due.Header.Get(HeaderRequestID)
	route := due.Header.Get(HeaderRoute)
	if requestID == "" || route == "" {
		return fmt.Errorf("due timer on %s lacks %s or %s", due.Subject, HeaderRequestID, HeaderRoute)
	}
	h := cloneHeader(due.Header)
	for _, k := range []string{"Nats-Schedule-Next", "Nats-Scheduler", HeaderRoute} {
		h.Del(k)
	}
	h.Set(HeaderTimerFired, "1")
	h.Set(nats.MsgIdHdr, requestID+".due")
	msg := &nats.Msg{Subject: p.topo.RequestSubject(route), Header: h, Data: due.Data}
	// No new span: the request keeps the trace context it was published
	// with, so its processing continues the publisher's trace.
	if _, err := p.js.PublishMsg(ctx, msg); err != nil {
		p.failures.Add(ctx, 1, metric.WithAttributes(attribute.String("kind", "resubmit")))
		return fmt.Errorf("resubmit due request %s: %w", requestID, err)
	}
	return nil
}

func cloneHeader(h nats.Header) nats.Header {
	c := make(nats.Header, len(h)+4)
	for k, v := range h {
		c[k] = append([]string(nil), v...)
	}
	return c
}
