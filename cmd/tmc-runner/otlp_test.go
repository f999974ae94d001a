package main

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/tmc-runner/tmc-runner/messages"
)

// receivedSpan is one span as it arrived over the wire, flattened.
type receivedSpan struct {
	service  string // service.name of its resource
	traceID  string
	spanID   string
	parentID string
	name     string
	kind     tracepb.Span_SpanKind
	attrs    map[string]string
}

func (s receivedSpan) String() string {
	return fmt.Sprintf("%s %q kind=%s trace=%s span=%s parent=%s service=%q",
		s.name, s.attrs["tmc.request_id"], s.kind, s.traceID, s.spanID, s.parentID, s.service)
}

// collector keeps what an in-test OTLP receiver was sent.
type collector struct {
	mu       sync.Mutex
	spans    []receivedSpan
	exports  int
	problems []string
}

func (c *collector) add(req *coltracepb.ExportTraceServiceRequest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.exports++
	for _, rs := range req.GetResourceSpans() {
		service := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				service = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				attrs := map[string]string{}
				for _, kv := range sp.GetAttributes() {
					v := kv.GetValue()
					switch {
					case v.GetStringValue() != "":
						attrs[kv.GetKey()] = v.GetStringValue()
					default:
						attrs[kv.GetKey()] = v.String()
					}
				}
				c.spans = append(c.spans, receivedSpan{
					service:  service,
					traceID:  hex.EncodeToString(sp.GetTraceId()),
					spanID:   hex.EncodeToString(sp.GetSpanId()),
					parentID: hex.EncodeToString(sp.GetParentSpanId()),
					name:     sp.GetName(),
					kind:     sp.GetKind(),
					attrs:    attrs,
				})
			}
		}
	}
}

func (c *collector) problem(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.problems = append(c.problems, fmt.Sprintf(format, args...))
}

func (c *collector) snapshot() (spans []receivedSpan, exports int, problems []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]receivedSpan(nil), c.spans...), c.exports, append([]string(nil), c.problems...)
}

func (c *collector) dump() string {
	spans, exports, problems := c.snapshot()
	var b strings.Builder
	fmt.Fprintf(&b, "%d export requests, %d spans:\n", exports, len(spans))
	for _, s := range spans {
		fmt.Fprintf(&b, "  %s\n", s)
	}
	for _, p := range problems {
		fmt.Fprintf(&b, "  receiver problem: %s\n", p)
	}
	return b.String()
}

// newOTLPHTTPReceiver is a minimal OTLP/HTTP (protobuf) trace receiver.
func newOTLPHTTPReceiver(t *testing.T) (*httptest.Server, *collector) {
	t.Helper()
	c := &collector{}
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" {
			c.problem("unexpected %s %s", r.Method, r.URL.Path)
			http.NotFound(rw, r)
			return
		}
		if ct := r.Header.Get("Content-Type"); ct != "application/x-protobuf" {
			c.problem("Content-Type %q, want application/x-protobuf", ct)
		}
		var body io.Reader = r.Body
		switch enc := r.Header.Get("Content-Encoding"); enc {
		case "":
		case "gzip":
			gz, err := gzip.NewReader(r.Body)
			if err != nil {
				c.problem("gzip: %v", err)
				http.Error(rw, err.Error(), http.StatusBadRequest)
				return
			}
			defer gz.Close()
			body = gz
		default:
			c.problem("Content-Encoding %q", enc)
			http.Error(rw, "unsupported encoding", http.StatusUnsupportedMediaType)
			return
		}
		raw, err := io.ReadAll(body)
		if err != nil {
			c.problem("read body: %v", err)
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		req := &coltracepb.ExportTraceServiceRequest{}
		if err := proto.Unmarshal(raw, req); err != nil {
			c.problem("decode ExportTraceServiceRequest: %v", err)
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		c.add(req)
		resp, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		rw.Header().Set("Content-Type", "application/x-protobuf")
		rw.WriteHeader(http.StatusOK)
		_, _ = rw.Write(resp)
	}))
	t.Cleanup(srv.Close)
	return srv, c
}

// grpcTraceServer is a minimal OTLP/gRPC trace receiver.
type grpcTraceServer struct {
	coltracepb.UnimplementedTraceServiceServer
	c *collector
}

func (s *grpcTraceServer) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	s.c.add(req)
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

func newOTLPGRPCReceiver(t *testing.T) (addr string, c *collector) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c = &collector{}
	gs := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(gs, &grpcTraceServer{c: c})
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = gs.Serve(ln)
	}()
	t.Cleanup(func() {
		gs.Stop()
		<-served
	})
	return ln.Addr().String(), c
}

// runOneRequest starts a worker with env, publishes one request, waits for
// its accepted event, then stops the worker with SIGTERM and returns it
// once it has exited (spans are flushed on the way out).
func runOneRequest(t *testing.T, w *workerEnv, env []string, requestID string, wantExit0 bool) *process {
	t.Helper()
	p := start(t, env, "worker")
	p.waitFor(t, 30*time.Second, "worker started")
	msg := nats.NewMsg("tmc.runs.request.default")
	msg.Data, _ = json.Marshal(map[string]string{"requestId": requestID, "executable": "task-" + requestID})
	if _, err := w.js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		evs := w.events(t)[requestID]
		if len(evs) > 0 {
			if evs[0].Type != messages.Accepted {
				t.Fatalf("%s: event %+v, want accepted\n%s", requestID, evs[0], p.output())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no accepted event within 30s\n%s", requestID, p.output())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code := p.wait(t, 30*time.Second)
	if wantExit0 && code != 0 {
		t.Fatalf("worker exited %d after SIGTERM, want 0:\n%s", code, p.output())
	}
	return p
}

// tracingLogLine returns the fields of the worker's `"msg":"tracing"` log
// line, or nil.
func tracingLogLine(out string) map[string]any {
	s := bufio.NewScanner(strings.NewReader(out))
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		var rec map[string]any
		if json.Unmarshal(s.Bytes(), &rec) == nil && rec["msg"] == "tracing" {
			return rec
		}
	}
	return nil
}

func checkTracingExporter(t *testing.T, p *process, want string) {
	t.Helper()
	rec := tracingLogLine(p.output())
	if rec == nil {
		t.Errorf("no \"msg\":\"tracing\" log line:\n%s", p.output())
		return
	}
	if rec["exporter"] != want {
		t.Errorf("tracing log line says exporter %v, want %q: %v", rec["exporter"], want, rec)
	}
}

// processSpan finds the consumer span of requestID's delivery.
func processSpan(spans []receivedSpan, requestID string) (receivedSpan, bool) {
	for _, s := range spans {
		if strings.HasPrefix(s.name, "process tmc.runs.request.default") && s.kind == tracepb.Span_SPAN_KIND_CONSUMER &&
			s.attrs["tmc.request_id"] == requestID {
			return s, true
		}
	}
	return receivedSpan{}, false
}

// The worker, pointed at a collector by OTEL_EXPORTER_OTLP_ENDPOINT alone,
// sends its spans over OTLP/HTTP: one trace per delivery, the consumer span
// the parent of the Talend call and of the accepted event's write.
func TestWorkerExportsSpansOverOTLPHTTP(t *testing.T) {
	receiver, c := newOTLPHTTPReceiver(t)
	w := newWorkerEnv(t, 0)
	const id = "otlp-http-1"
	p := runOneRequest(t, w, w.env("OTEL_EXPORTER_OTLP_ENDPOINT="+receiver.URL, "OTEL_BSP_SCHEDULE_DELAY=200", "OTEL_SERVICE_NAME=tmc-it"), id, true)
	checkTracingExporter(t, p, "otlp/http")

	spans, exports, problems := c.snapshot()
	for _, pr := range problems {
		t.Errorf("receiver: %s", pr)
	}
	if exports == 0 || len(spans) == 0 {
		t.Fatalf("no spans arrived over OTLP/HTTP (%d requests)\nworker output:\n%s", exports, p.output())
	}
	for _, s := range spans {
		if s.service != "tmc-it" {
			t.Errorf("span %s: service.name %q, want tmc-it (OTEL_SERVICE_NAME)", s, s.service)
		}
	}
	proc, ok := processSpan(spans, id)
	if !ok {
		t.Fatalf("no CONSUMER span \"process tmc.runs.request.default\" for %s\n%s", id, c.dump())
	}
	var client, producer *receivedSpan
	for i, s := range spans {
		if s.parentID != proc.spanID {
			continue
		}
		switch {
		case s.kind == tracepb.Span_SPAN_KIND_CLIENT && strings.HasPrefix(s.name, "talend POST"):
			client = &spans[i]
		case s.kind == tracepb.Span_SPAN_KIND_PRODUCER && strings.HasPrefix(s.name, "send ") && strings.Contains(s.name, "accepted"):
			producer = &spans[i]
		}
	}
	if client == nil {
		t.Errorf("no CLIENT span \"talend POST ...\" child of the process span %s\n%s", proc.spanID, c.dump())
	}
	if producer == nil {
		t.Errorf("no PRODUCER span \"send ...accepted\" child of the process span %s\n%s", proc.spanID, c.dump())
	}
	for _, s := range []*receivedSpan{client, producer} {
		if s != nil && s.traceID != proc.traceID {
			t.Errorf("span %s in trace %s, want the process span's %s", s, s.traceID, proc.traceID)
		}
	}
}

// With OTEL_EXPORTER_OTLP_PROTOCOL=grpc the same spans go over OTLP/gRPC.
func TestWorkerExportsSpansOverOTLPGRPC(t *testing.T) {
	addr, c := newOTLPGRPCReceiver(t)
	w := newWorkerEnv(t, 0)
	const id = "otlp-grpc-1"
	p := runOneRequest(t, w, w.env(
		"OTEL_EXPORTER_OTLP_ENDPOINT=http://"+addr,
		"OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
		"OTEL_EXPORTER_OTLP_INSECURE=true",
		"OTEL_BSP_SCHEDULE_DELAY=200",
		"OTEL_SERVICE_NAME=tmc-it",
	), id, true)
	checkTracingExporter(t, p, "otlp/grpc")
	spans, exports, _ := c.snapshot()
	if exports == 0 {
		t.Fatalf("no export over OTLP/gRPC\nworker output:\n%s", p.output())
	}
	proc, ok := processSpan(spans, id)
	if !ok {
		t.Fatalf("no CONSUMER span \"process tmc.runs.request.default\" for %s\n%s", id, c.dump())
	}
	if proc.service != "tmc-it" {
		t.Errorf("process span service.name %q, want tmc-it", proc.service)
	}
}

// countingListener accepts TCP connections on one address, counts them and
// closes them at once.
type countingListener struct {
	addr  string
	ln    net.Listener
	count atomic.Int64
}

func (l *countingListener) serve() {
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.count.Add(1)
		conn.Close()
	}
}

// listenOnOTLPDefaults listens where the SDK's OTLP exporters dial by
// default (localhost:4318 for http, localhost:4317 for grpc), on IPv4 and,
// when the machine has it, IPv6 loopback.
func listenOnOTLPDefaults(t *testing.T) []*countingListener {
	t.Helper()
	var out []*countingListener
	for _, addr := range []string{"127.0.0.1:4318", "127.0.0.1:4317", "[::1]:4318", "[::1]:4317"} {
		ln, err := net.Listen("tcp", addr)
		if errors.Is(err, syscall.EADDRINUSE) {
			for _, l := range out {
				l.ln.Close()
			}
			t.Skipf("%s is in use on this machine (a collector?): cannot check that the worker dials no OTLP default", addr)
		}
		if err != nil {
			if strings.HasPrefix(addr, "[::1]") {
				t.Logf("no IPv6 loopback here (%v); listening on IPv4 only", err)
				continue
			}
			t.Fatal(err)
		}
		l := &countingListener{addr: addr, ln: ln}
		go l.serve()
		t.Cleanup(func() { ln.Close() })
		out = append(out, l)
	}
	return out
}

func connectionsOn(ls []*countingListener, port string) (n int64, detail string) {
	var parts []string
	for _, l := range ls {
		if port == "" || strings.HasSuffix(l.addr, ":"+port) {
			c := l.count.Load()
			n += c
			parts = append(parts, fmt.Sprintf("%s: %d", l.addr, c))
		}
	}
	return n, strings.Join(parts, ", ")
}

// A worker with no OTEL_* setting at all exports nothing and dials no
// collector: the SDK's localhost defaults are not used. The control
// sub-tests show the listeners would see the SDK's default dial.
func TestWorkerWithoutTracingConfigMakesNoConnection(t *testing.T) {
	listeners := listenOnOTLPDefaults(t)
	reset := func() {
		for _, l := range listeners {
			l.count.Store(0)
		}
	}
	w := newWorkerEnv(t, 0)

	p := runOneRequest(t, w, w.env(), "no-otel-1", true)
	checkTracingExporter(t, p, "none")
	if n, detail := connectionsOn(listeners, ""); n != 0 {
		t.Errorf("worker without tracing config made %d connections to OTLP default ports (%s)\n%s", n, detail, p.output())
	}

	for _, c := range []struct {
		name, port, exporter string
		env                  []string
	}{
		{"control/http", "4318", "otlp/http", []string{"OTEL_TRACES_EXPORTER=otlp"}},
		{"control/grpc", "4317", "otlp/grpc", []string{"OTEL_TRACES_EXPORTER=otlp", "OTEL_EXPORTER_OTLP_PROTOCOL=grpc"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			reset()
			// The listeners close every connection: keep the exporter's
			// retries short. The exit code is not the point here.
			env := w.env(append(c.env, "OTEL_EXPORTER_OTLP_TIMEOUT=2000")...)
			p := runOneRequest(t, w, env, "no-otel-"+strings.ReplaceAll(c.name, "/", "-"), false)
			checkTracingExporter(t, p, c.exporter)
			if n, detail := connectionsOn(listeners, c.port); n == 0 {
				t.Errorf("OTEL_TRACES_EXPORTER=otlp with no endpoint made no connection to the SDK default port %s (%s): the listeners do not prove anything\n%s",
					c.port, detail, p.output())
			}
		})
	}
}
