package runner

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/tmc-runner/tmc-runner/config"
	"github.com/tmc-runner/tmc-runner/messages"
	"github.com/tmc-runner/tmc-runner/talendsim"
)

// A request published with a known traceparent (lowercase header name, as
// W3C writes it) is processed in that trace: consumer span child of the
// publisher's span, Talend HTTP client span and token fetch under it, the
// event's producer span under it, and the accepted event's headers carry a
// traceparent of the same trace.
func TestTracePropagatesFromPublisherToEvent(t *testing.T) {
	h := newHarness(t)
	h.start()
	const (
		traceID    = "4bf92f3577b34da6a3ce929d0e0e4736"
		parentSpan = "00f067aa0ba902b7"
	)
	msg := nats.NewMsg(h.topo.RequestSubject("default"))
	msg.Header["traceparent"] = []string{"00-" + traceID + "-" + parentSpan + "-01"}
	msg.Header["tracestate"] = []string{"vendor=abc"}
	msg.Data = []byte(`{"requestId":"traced","executable":"task-t","parameters":{"password":"hunter2-value"}}`)
	if _, err := h.js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	h.waitTerminal(10*time.Second, "traced")
	h.stop() // end every span

	spans := h.spans.Ended()
	byName := func(prefix string) sdktrace.ReadOnlySpan {
		t.Helper()
		for _, s := range spans {
			if strings.HasPrefix(s.Name(), prefix) {
				return s
			}
		}
		var names []string
		for _, s := range spans {
			names = append(names, s.Name())
		}
		t.Fatalf("no span %q among %q", prefix, names)
		return nil
	}
	process := byName("process tmc.runs.request.default")
	if process.SpanContext().TraceID().String() != traceID {
		t.Fatalf("process span in trace %s, want the publisher's %s", process.SpanContext().TraceID(), traceID)
	}
	if process.Parent().SpanID().String() != parentSpan || !process.Parent().IsRemote() {
		t.Errorf("process span parent %s (remote %v), want the publisher's span %s", process.Parent().SpanID(), process.Parent().IsRemote(), parentSpan)
	}
	if process.SpanKind() != trace.SpanKindConsumer {
		t.Errorf("process span kind %v, want consumer", process.SpanKind())
	}
	attrs := map[string]string{}
	for _, kv := range process.Attributes() {
		attrs[string(kv.Key)] = kv.Value.String()
	}
	for k, v := range map[string]string{
		"messaging.system": "nats", "messaging.destination.name": "tmc.runs.request.default",
		"messaging.operation.type": "process", "messaging.consumer.group.name": "tmc-runner",
		"messaging.nats.message.delivery_count": "1", "tmc.request_id": "traced", "tmc.outcome": "accepted",
	} {
		if attrs[k] != v {
			t.Errorf("process span %s = %q, want %q", k, attrs[k], v)
		}
	}
	if attrs["messaging.message.id"] == "" {
		t.Error("process span has no messaging.message.id")
	}
	if ts := process.SpanContext().TraceState().String(); ts != "vendor=abc" {
		t.Errorf("tracestate %q not continued", ts)
	}

	call := byName("talend POST /processing/executions")
	if call.SpanKind() != trace.SpanKindClient || call.Parent().SpanID() != process.SpanContext().SpanID() {
		t.Errorf("Talend call span kind %v parent %s, want a client span under the process span", call.SpanKind(), call.Parent().SpanID())
	}
	token := byName("talend token fetch")
	if token.SpanContext().TraceID() != process.SpanContext().TraceID() || token.Parent().SpanID() != process.SpanContext().SpanID() {
		t.Errorf("token fetch span not under the process span that needed it")
	}
	send := byName("send tmc.runs.events.{route}.{requestId}.accepted")
	if send.SpanKind() != trace.SpanKindProducer || send.Parent().SpanID() != process.SpanContext().SpanID() {
		t.Errorf("event span kind %v parent %s, want a producer span under the process span", send.SpanKind(), send.Parent().SpanID())
	}
	sendAttrs := map[string]string{}
	for _, kv := range send.Attributes() {
		sendAttrs[string(kv.Key)] = kv.Value.String()
	}
	for k, v := range map[string]string{
		"messaging.system": "nats", "messaging.operation.type": "send",
		"messaging.destination.name":     "tmc.runs.events.default.traced.accepted",
		"messaging.destination.template": "tmc.runs.events.{route}.{requestId}.accepted",
		"messaging.message.id":           "traced.accepted",
	} {
		if sendAttrs[k] != v {
			t.Errorf("event span %s = %q, want %q", k, sendAttrs[k], v)
		}
	}

	s, _ := h.js.Stream(context.Background(), h.topo.EventsStream)
	raw, err := s.GetLastMsgForSubject(context.Background(), "tmc.runs.events.default.traced.accepted")
	if err != nil {
		t.Fatal(err)
	}
	tp := raw.Header.Get("traceparent")
	if want := "00-" + traceID + "-" + send.SpanContext().SpanID().String() + "-01"; tp != want {
		t.Errorf("accepted event traceparent %q, want %q (the producer span, same trace)", tp, want)
	}
	// Logs about the request carry the trace.
	if h.logs.Count(`"requestId":"traced"`, `"trace_id":"`+traceID+`"`) == 0 {
		t.Error("the decision log line lacks the trace id")
	}
	// No parameter value in any span attribute or event.
	for _, sp := range spans {
		for _, kv := range sp.Attributes() {
			if strings.Contains(kv.Value.String(), "hunter2") {
				t.Errorf("span %s attribute %s holds a parameter value", sp.Name(), kv.Key)
			}
		}
	}
}

// scrape fetches /metrics and returns sample lines: "name{labels}" -> value.
func (h *harness) scrape() map[string]float64 {
	h.t.Helper()
	resp, err := http.Get("http://" + h.runner.AdminAddr() + "/metrics")
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out
}

// metric finds the value of name whose labels include every given pair.
func metricValue(samples map[string]float64, name string, labels ...string) (float64, bool) {
	for key, v := range samples {
		base, rest, _ := strings.Cut(key, "{")
		if base != name {
			continue
		}
		ok := true
		for i := 0; i+1 < len(labels); i += 2 {
			ok = ok && strings.Contains(rest, labels[i]+`="`+labels[i+1]+`"`)
		}
		if ok {
			return v, true
		}
	}
	return 0, false
}

// After a known run, /metrics has the right counts.
func TestMetricsAfterARun(t *testing.T) {
	h := newHarness(t)
	h.sim.SetBehaviour("missing", talendsim.Behaviour{Missing: true})
	h.start(func(c *config.Config) { c.Talend.BreakerFailures = 100 })
	h.sim.InjectFault(talendsim.Fault{Status: 503, Count: 2})
	for _, id := range []string{"m1", "m2", "m3"} {
		h.request(id, "task-"+id, nil)
	}
	h.request("m-missing", "missing", nil)
	h.publish("default", `{"requestId":"m-bad","executable":""}`, "")
	h.waitTerminal(30*time.Second, "m1", "m2", "m3", "m-missing", "m-bad")

	samples := h.scrape()
	want := []struct {
		name   string
		labels []string
		value  float64
	}{
		{"tmc_requests_total", []string{"outcome", "accepted"}, 3},
		{"tmc_requests_total", []string{"outcome", "failed", "reason", "talend_error"}, 1},
		{"tmc_requests_total", []string{"outcome", "rejected"}, 1},
		{"tmc_requests_total", []string{"outcome", "retry"}, 2},
		{"tmc_talend_token_fetches_total", []string{"result", "ok"}, 1},
		{"tmc_talend_call_duration_seconds_count", []string{"operation", "run_task", "status_class", "2xx"}, 3},
		{"tmc_talend_call_duration_seconds_count", []string{"operation", "run_task", "status_class", "4xx"}, 1},
		{"tmc_talend_call_duration_seconds_count", []string{"operation", "run_task", "status_class", "5xx"}, 2},
		{"tmc_talend_call_duration_seconds_count", []string{"operation", "token", "status_class", "2xx"}, 1},
		{"tmc_nak_delay_seconds_count", nil, 2},
		{"tmc_talend_breaker_state", nil, 0},
		{"tmc_inflight", nil, 0},
		{"tmc_consumer_pending", nil, 0},
	}
	for _, w := range want {
		got, ok := metricValue(samples, w.name, w.labels...)
		if !ok || got != w.value {
			t.Errorf("%s%v = %v (found %v), want %v", w.name, w.labels, got, ok, w.value)
		}
	}
	if _, ok := metricValue(samples, "tmc_events_publish_failures_total"); ok {
		t.Error("publish failures reported in a run without any")
	}
}

// /readyz answers 503 while the worker drains at shutdown.
func TestReadyzDuringShutdown(t *testing.T) {
	h := newHarness(t, func(_ *harness, o *talendsim.Options) { o.Latency = 1500 * time.Millisecond })
	h.start()
	url := "http://" + h.runner.AdminAddr() + "/readyz"
	status := func() int {
		resp, err := http.Get(url)
		if err != nil {
			return 0
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	h.eventually(5*time.Second, "ready", func() bool { return status() == http.StatusOK })
	h.request("slow-1", "t", nil)
	time.Sleep(300 * time.Millisecond) // the call is in flight
	h.cancel()
	h.eventually(5*time.Second, "not ready while draining", func() bool { return status() == http.StatusServiceUnavailable })
	evs := h.waitTerminal(10*time.Second, "slow-1")
	if evs["slow-1"][0].Type != messages.Accepted {
		t.Errorf("in-flight request ended %s", evs["slow-1"][0].Type)
	}
}
