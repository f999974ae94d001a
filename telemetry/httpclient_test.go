package telemetry

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

func TestHTTPClientSpans(t *testing.T) {
	var gotParent string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotParent = r.Header.Get("traceparent")
		if r.URL.Path == "/fail" {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		w.WriteHeader(http.StatusCreated)
	}))
	defer srv.Close()

	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	client := &http.Client{Transport: HTTPClientSpans(http.DefaultTransport, tp, func(r *http.Request) string { return "call " + r.URL.Path })}

	ctx, parent := tp.Tracer("test").Start(context.Background(), "parent")
	for _, path := range []string{"/ok", "/fail"} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+path, nil)
		req.Header.Set("Authorization", "Bearer x")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if req.Header.Get("traceparent") != "" {
			t.Error("the caller's request was changed")
		}
	}
	parent.End()

	spans := rec.Ended()
	if len(spans) != 3 {
		t.Fatalf("%d spans, want 3", len(spans))
	}
	ok, failed := spans[0], spans[1]
	if ok.Name() != "call /ok" || ok.SpanKind() != trace.SpanKindClient || ok.Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Errorf("span %q kind %v parent %v, want a client span under the caller's", ok.Name(), ok.SpanKind(), ok.Parent().SpanID())
	}
	attrs := map[string]string{}
	for _, kv := range ok.Attributes() {
		attrs[string(kv.Key)] = kv.Value.String()
	}
	for k, v := range map[string]string{"http.request.method": "POST", "url.full": srv.URL + "/ok", "http.response.status_code": "201", "server.address": "127.0.0.1"} {
		if attrs[k] != v {
			t.Errorf("%s = %q, want %q", k, attrs[k], v)
		}
	}
	if ok.Status().Code == codes.Error {
		t.Error("201 marked as an error")
	}
	if failed.Status().Code != codes.Error {
		t.Error("502 not marked as an error")
	}
	if want := "00-" + failed.SpanContext().TraceID().String() + "-" + failed.SpanContext().SpanID().String() + "-01"; gotParent != want {
		t.Errorf("server saw traceparent %q, want %q (the client span)", gotParent, want)
	}
}

func TestHTTPClientSpansTransportError(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	boom := errors.New("connection refused")
	rt := HTTPClientSpans(roundTripFunc(func(*http.Request) (*http.Response, error) { return nil, boom }), tp, func(*http.Request) string { return "call" })
	req, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1:1/x", nil)
	if _, err := rt.RoundTrip(req); !errors.Is(err, boom) {
		t.Fatalf("error %v, want the transport's", err)
	}
	if s := rec.Ended(); len(s) != 1 || s[0].Status().Code != codes.Error {
		t.Fatalf("spans %v: want one with error status", s)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
