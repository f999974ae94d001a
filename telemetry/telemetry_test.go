package telemetry

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

func TestHeaderCarrierIgnoresCase(t *testing.T) {
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	for _, name := range []string{"traceparent", "Traceparent", "TRACEPARENT", "TraceParent"} {
		t.Run(name, func(t *testing.T) {
			ctx := Extract(context.Background(), nats.Header{name: {tp}})
			sc := trace.SpanContextFromContext(ctx)
			if !sc.IsValid() || sc.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" || !sc.IsRemote() {
				t.Fatalf("header %q: extracted %+v", name, sc)
			}
			// Injecting replaces the old spelling instead of adding a second.
			h := nats.Header{name: {"stale"}}
			Inject(ctx, h)
			if len(h) != 1 || h.Get("traceparent") == "" && h["traceparent"] == nil {
				t.Errorf("after inject: %v", h)
			}
		})
	}
}

func env(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

func TestNewTracingFromEnvironment(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name string
		env  map[string]string
		want string
		err  bool
	}{
		{"nothing configured", nil, "none", false},
		{"disabled", map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}, "none", false},
		{"endpoint implies otlp http", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}, "otlp/http", false},
		{"traces endpoint", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:1/v1/traces"}, "otlp/http", false},
		{"grpc", map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "otlp/grpc", false},
		{"console", map[string]string{"OTEL_TRACES_EXPORTER": "console"}, "console", false},
		{"explicit none", map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, "none", false},
		{"unknown exporter", map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, "", true},
		{"unknown protocol", map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "", true},
		{"two exporters", map[string]string{"OTEL_TRACES_EXPORTER": "console,otlp"}, "", true},
		{"protocol in capitals", map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": " GRPC"}, "otlp/grpc", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tr, err := NewTracing(ctx, TracingOptions{Getenv: env(c.env), Console: &bytes.Buffer{}})
			if c.err {
				if err == nil {
					t.Fatal("no error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Shutdown(ctx)
			if tr.Exporter != c.want {
				t.Errorf("exporter %q, want %q", tr.Exporter, c.want)
			}
			_, isNoop := tr.Provider.(noop.TracerProvider)
			if (c.want == "none") != isNoop {
				t.Errorf("noop provider = %v for exporter %q", isNoop, c.want)
			}
		})
	}
}

func TestConsoleExporterPrintsSpans(t *testing.T) {
	var out bytes.Buffer
	tr, err := NewTracing(context.Background(), TracingOptions{Getenv: env(map[string]string{"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "svc-x"}), Console: &out})
	if err != nil {
		t.Fatal(err)
	}
	_, span := tr.Provider.Tracer("t").Start(context.Background(), "hello-span")
	span.End()
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "hello-span") || !strings.Contains(out.String(), "svc-x") {
		t.Errorf("console output lacks the span or the service name:\n%s", out.String())
	}
}

func TestLoggerAddsTraceIDs(t *testing.T) {
	var out bytes.Buffer
	log, err := NewLogger(&out, "info", "json")
	if err != nil {
		t.Fatal(err)
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1, 2, 3}, SpanID: trace.SpanID{4, 5}, TraceFlags: trace.FlagsSampled,
	})
	log.InfoContext(trace.ContextWithSpanContext(context.Background(), sc), "with span")
	log.With("k", "v").InfoContext(context.Background(), "without span")
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if !strings.Contains(lines[0], `"trace_id":"`+sc.TraceID().String()+`"`) || !strings.Contains(lines[0], `"span_id":"`+sc.SpanID().String()+`"`) {
		t.Errorf("line with a span: %s", lines[0])
	}
	if strings.Contains(lines[1], "trace_id") || !strings.Contains(lines[1], `"k":"v"`) {
		t.Errorf("line without a span: %s", lines[1])
	}
	if _, err := NewLogger(&out, "loud", "json"); err == nil {
		t.Error("bad level accepted")
	}
	_ = slog.LevelInfo
}
