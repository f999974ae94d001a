package broker

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/internal/jswrite"
	"github.com/tmc-runner/tmc-runner/internal/testnats"
	"github.com/tmc-runner/tmc-runner/messages"
)

func newJS(t *testing.T) jetstream.JetStream {
	t.Helper()
	_, _, js := testnats.JetStream(t)
	return js
}

func TestProvisionIsIdempotent(t *testing.T) {
	js := newJS(t)
	topo := Topology{}.Defaults()
	for i := range 3 {
		if err := Provision(context.Background(), js, topo); err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
	}
	// Runtime state such as a paused consumer is not a difference.
	if _, err := js.PauseConsumer(context.Background(), topo.RunsStream, topo.Consumer, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := Provision(context.Background(), js, topo); err != nil {
		t.Fatalf("paused consumer taken for a conflict: %v", err)
	}
}

func TestProvisionNamesEveryDifference(t *testing.T) {
	js := newJS(t)
	ctx := context.Background()
	topo := Topology{}.Defaults()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: topo.RunsStream, Subjects: []string{"tmc.runs.request.*"}, Retention: jetstream.LimitsPolicy}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: topo.DeadStream, Subjects: []string{"tmc.runs.dead.*.*"}, MaxAge: time.Hour, MaxMsgs: 10}); err != nil {
		t.Fatal(err)
	}
	err := Provision(ctx, js, topo)
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("err = %v, want ErrConflict", err)
	}
	for _, want := range []string{"stream TMC_RUNS: subjects", "stream TMC_RUNS: retention", "stream TMC_DEAD: max age", "stream TMC_DEAD: limits"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	info, _ := js.Stream(ctx, topo.RunsStream)
	if got := info.CachedInfo().Config.Retention; got != jetstream.LimitsPolicy {
		t.Errorf("provision changed an existing stream (retention now %v)", got)
	}
}

func TestEventWrittenOncePerType(t *testing.T) {
	t.Run("library publish", func(t *testing.T) { testEventWrittenOncePerType(t, false) })
	t.Run("jswrite", func(t *testing.T) { testEventWrittenOncePerType(t, true) })
}

func testEventWrittenOncePerType(t *testing.T, writer bool) {
	js := newJS(t)
	ctx := context.Background()
	// A short de-duplication window, so the second write below reaches the
	// expected-last-subject-sequence check instead of being dropped as a
	// duplicate id.
	topo := Topology{DuplicateWindow: 100 * time.Millisecond}.Defaults()
	if err := Provision(ctx, js, topo); err != nil {
		t.Fatal(err)
	}
	p := NewPublisher(js, topo, "test", nil, nil)
	if writer {
		p.UseWriter(jswrite.New(js.Conn(), 2*time.Second))
	}
	req := &messages.Request{RequestID: "r1", Route: "default", Executable: "x", Kind: messages.KindTask}
	now := time.Now()
	first := messages.NewEvent(messages.Accepted, req, 1, now)
	first.ExecutionID = "e1"
	if err := p.Event(ctx, first); err != nil {
		t.Fatal(err)
	}
	// A second accepted event for the request (another delivery, another
	// replica) is refused by the stream and confirmed by reading back:
	// success, but nothing new is stored.
	time.Sleep(300 * time.Millisecond)
	second := messages.NewEvent(messages.Accepted, req, 2, now.Add(3*time.Minute))
	second.ExecutionID = "e2"
	if err := p.Event(ctx, second); err != nil {
		t.Fatalf("second accepted: %v", err)
	}
	got, err := p.FindEvent(ctx, "default", "r1", messages.Accepted)
	if err != nil || got == nil || got.ExecutionID != "e1" {
		t.Fatalf("stored accepted event = %+v, %v; want the first one", got, err)
	}
	// Status events are not limited to one per subject.
	for _, st := range []string{"dispatching", "executing"} {
		ev := messages.NewEvent(messages.Status, req, 1, now)
		ev.Status = st
		if err := p.Event(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	s, _ := js.Stream(ctx, topo.EventsStream)
	info, _ := s.Info(ctx)
	if info.State.Msgs != 3 {
		t.Errorf("%d events stored, want 3 (one accepted, two status)", info.State.Msgs)
	}
	// The CloudEvents headers travel with the event.
	raw, err := s.GetLastMsgForSubject(ctx, "tmc.runs.events.default.r1.accepted")
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"ce-type": "tmc.run.accepted.v1", "ce-source": "test", "ce-subject": "r1", "Nats-Msg-Id": "r1.accepted"} {
		if raw.Header.Get(k) != v {
			t.Errorf("header %s = %q, want %q", k, raw.Header.Get(k), v)
		}
	}
}

func TestDeadLetterKeepsOriginalOnce(t *testing.T) {
	js := newJS(t)
	ctx := context.Background()
	topo := Topology{}.Defaults()
	if err := Provision(ctx, js, topo); err != nil {
		t.Fatal(err)
	}
	p := NewPublisher(js, topo, "", nil, nil)
	orig := Original{Subject: "tmc.runs.request.default", Header: nats.Header{"Traceparent": {"00-abc-def-01"}}, Data: []byte(`{"executable":"x"}`)}
	for range 2 {
		if err := p.DeadLetter(ctx, orig, "default", "r9", "talend_error"); err != nil {
			t.Fatal(err)
		}
	}
	s, _ := js.Stream(ctx, topo.DeadStream)
	info, _ := s.Info(ctx)
	if info.State.Msgs != 1 {
		t.Fatalf("%d dead letters, want 1", info.State.Msgs)
	}
	raw, _ := s.GetLastMsgForSubject(ctx, topo.DeadSubject("default", "r9"))
	if string(raw.Data) != string(orig.Data) || raw.Header.Get(HeaderDeadReason) != "talend_error" ||
		raw.Header.Get(HeaderOriginalSubject) != orig.Subject || raw.Header.Get("Traceparent") != "00-abc-def-01" {
		t.Errorf("dead letter %q %v does not keep the original and its reason", raw.Data, raw.Header)
	}
}

func TestAttemptsCountAcrossCallers(t *testing.T) {
	js := newJS(t)
	ctx := context.Background()
	topo := Topology{}.Defaults()
	if err := Provision(ctx, js, topo); err != nil {
		t.Fatal(err)
	}
	kv, _ := js.KeyValue(ctx, topo.ClaimsBucket)
	a, b := NewAttempts(kv), NewAttempts(kv)
	for want := 1; want <= 4; want++ {
		counter := a
		if want%2 == 0 {
			counter = b
		}
		got, err := counter.Increment(ctx, "req-1")
		if err != nil || got != want {
			t.Fatalf("increment %d: got %d, %v", want, got, err)
		}
	}
}
