package telemetry

import (
	"maps"
	"net/http"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
)

// HTTPClientSpans wraps next so that every request gets an HTTP client span
// (OpenTelemetry HTTP semantic conventions: method, URL, server address and
// port, response status; error status for transport errors and 5xx) and
// carries the trace context in its headers. name gives the span's name
// (low cardinality: no ids).
//
// It does what the contrib otelhttp transport does for these calls and no
// more: no metrics, no body wrapping, and nothing but the header copy the
// propagation needs when the span is not sampled. The worker makes one such
// call per request, so the difference shows in its CPU per request (see
// perf/README.md).
func HTTPClientSpans(next http.RoundTripper, tp trace.TracerProvider, name func(*http.Request) string) http.RoundTripper {
	return &clientSpans{
		next:   next,
		tracer: tp.Tracer("github.com/tmc-runner/tmc-runner/telemetry/http"),
		name:   name,
	}
}

type clientSpans struct {
	next   http.RoundTripper
	tracer trace.Tracer
	name   func(*http.Request) string
}

func (c *clientSpans) RoundTrip(r *http.Request) (*http.Response, error) {
	ctx, span := c.tracer.Start(r.Context(), c.name(r), trace.WithSpanKind(trace.SpanKindClient))
	defer span.End()
	if span.IsRecording() {
		port := r.URL.Port()
		if port == "" {
			port = "443"
			if r.URL.Scheme == "http" {
				port = "80"
			}
		}
		p, _ := strconv.Atoi(port)
		span.SetAttributes(
			semconv.HTTPRequestMethodKey.String(r.Method),
			semconv.URLFull(r.URL.Redacted()),
			semconv.ServerAddress(r.URL.Hostname()),
			semconv.ServerPort(p),
		)
	}
	// A RoundTripper must not change the caller's request: copy it with its
	// own header map for the propagation fields. The map alone is copied:
	// Inject replaces its keys' values, it never appends to the caller's.
	out := r.WithContext(ctx)
	out.Header = make(http.Header, len(r.Header)+2)
	maps.Copy(out.Header, r.Header)
	Propagator.Inject(ctx, propagation.HeaderCarrier(out.Header))
	resp, err := c.next.RoundTrip(out)
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		span.SetAttributes(attribute.String("error.type", "transport"))
		return resp, err
	}
	if span.IsRecording() {
		span.SetAttributes(semconv.HTTPResponseStatusCode(resp.StatusCode))
		if resp.StatusCode >= 500 {
			span.SetStatus(codes.Error, resp.Status)
			span.SetAttributes(attribute.String("error.type", strconv.Itoa(resp.StatusCode)))
		}
	}
	return resp, nil
}
