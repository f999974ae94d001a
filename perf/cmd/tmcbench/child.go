package main

// The pipeline processes: tmcbench re-executes itself with -role worker or
// -role baseline so that each pipeline's CPU time and peak RSS are its own.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/config"
	"github.com/tmc-runner/tmc-runner/runner"
	"github.com/tmc-runner/tmc-runner/telemetry"
)

// inProcess, when set, is how a pipeline run inside the driver process
// reaches the server and the API: the embedded server's in-process
// connection and the simulator's handler called directly — no sockets, as
// in a one-process pipeline with the API in-process.
var inProcess *inProcessLinks

type inProcessLinks struct {
	nats *server.Server
	api  http.RoundTripper
}

// connectNATS dials url, or the in-process server when there is one.
func connectNATS(url string, opts ...nats.Option) (*nats.Conn, error) {
	if inProcess != nil {
		return nats.Connect("", append(opts, nats.InProcessServer(inProcess.nats))...)
	}
	return nats.Connect(url, opts...)
}

// handlerTransport serves HTTP requests by calling a handler in process.
type handlerTransport struct{ h http.Handler }

func (t handlerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	rec := httptest.NewRecorder()
	if r.Body == nil {
		r.Body = http.NoBody
	}
	t.h.ServeHTTP(rec, r)
	if err := r.Context().Err(); err != nil {
		return nil, err // a RoundTripper returns a response or an error
	}
	resp := rec.Result()
	resp.Request = r
	return resp, nil
}

// Baseline topology: its own streams, so it shares nothing with the worker's.
const (
	baseReqStream = "BENCH_REQ"
	baseEvtStream = "BENCH_EVT"
	baseConsumer  = "bench"
	baseReqPrefix = "bench.req"
	baseEvtPrefix = "bench.evt"
)

// childMain runs one pipeline until SIGTERM. A CPU profile is written to
// $BENCH_CPUPROFILE when set (stopped on SIGTERM), and an allocation
// profile beside it.
func childMain(role string) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stopProfile := func() {}
	if path := os.Getenv("BENCH_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		stopProfile = func() {
			pprof.StopCPUProfile()
			f.Close()
			// The allocations since start, beside it (go tool pprof
			// -sample_index=alloc_space or alloc_objects).
			if af, err := os.Create(strings.TrimSuffix(path, ".pprof") + ".allocs.pprof"); err == nil {
				_ = pprof.Lookup("allocs").WriteTo(af, 0)
				af.Close()
			}
		}
	}
	stopTrace := func() {}
	if path := os.Getenv("BENCH_TRACE"); path != "" {
		stopTrace = traceOnSignals(path)
		defer stopTrace()
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		// The driver has taken its measurements: no graceful drain needed.
		stopProfile()
		stopTrace()
		os.Exit(0)
	}()
	return runPipeline(ctx, role, os.Stderr)
}

// traceOnSignals writes a Go execution trace to path between a SIGUSR1
// and the next SIGUSR2 (the driver sends them inside the measurement
// window, so the trace shows the pipeline under full load). stop ends the
// listening (and a trace still running).
func traceOnSignals(path string) (stop func()) {
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGUSR1, syscall.SIGUSR2)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var f *os.File
		defer func() {
			if f != nil {
				trace.Stop()
				f.Close()
			}
		}()
		for s := range sig {
			switch {
			case s == syscall.SIGUSR1 && f == nil:
				var err error
				if f, err = os.Create(path); err != nil {
					fmt.Fprintln(os.Stderr, "trace:", err)
					continue
				}
				if err := trace.Start(f); err != nil {
					fmt.Fprintln(os.Stderr, "trace:", err)
					f.Close()
					f = nil
				}
			case s == syscall.SIGUSR2 && f != nil:
				trace.Stop()
				f.Close()
				f = nil
			}
		}
	}()
	return func() {
		signal.Stop(sig)
		close(sig)
		<-done
	}
}

// runPipeline runs one pipeline until ctx ends; its messages go to out.
func runPipeline(ctx context.Context, role string, out io.Writer) error {
	switch role {
	case "worker":
		return runWorkerChild(ctx, out)
	case "baseline":
		return runBaselineChild(ctx, out)
	}
	return fmt.Errorf("unknown role %q", role)
}

// runWorkerChild wires the real worker exactly as `tmc-runner worker` does
// (config from the environment, tracing from OTEL_*, runner.New).
func runWorkerChild(ctx context.Context, out io.Writer) error {
	cfg, err := config.Load(nil)
	if err != nil {
		return err
	}
	cfg.Worker.AdminAddr = "" // several workers on one host; no admin port needed
	log, err := telemetry.NewLogger(out, cfg.Worker.LogLevel, "text")
	if err != nil {
		return err
	}
	tracing, err := telemetry.NewTracing(ctx, telemetry.TracingOptions{})
	if err != nil {
		return err
	}
	opts, err := cfg.NATS.Options("tmcbench worker")
	if err != nil {
		return err
	}
	nc, err := connectNATS(cfg.NATS.URL, opts...)
	if err != nil {
		return err
	}
	defer nc.Close()
	defer func() { _ = tracing.Shutdown(context.Background()) }()
	ropts := runner.Options{Config: cfg, Conn: nc, Logger: log, TracerProvider: tracing.Provider}
	if inProcess != nil {
		ropts.TalendTransport = inProcess.api
	}
	r, err := runner.New(ctx, ropts)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "worker ready, tracing:", tracing.Exporter)
	return r.Run(ctx)
}

// baseRequest is the part of a run request the baseline reads.
type baseRequest struct {
	RequestID  string          `json:"requestId"`
	Executable string          `json:"executable"`
	Metadata   json.RawMessage `json:"metadata,omitempty"`
}

type baseEvent struct {
	RequestID   string          `json:"requestId"`
	Type        string          `json:"type"`
	Time        time.Time       `json:"time"`
	Executable  string          `json:"executable"`
	ExecutionID string          `json:"executionId"`
	Metadata    json.RawMessage `json:"metadata,omitempty"`
}

// runBaselineChild is the minimal pipeline: pull consume → POST run →
// publish accepted event (awaiting the stream's ack) → ack the request.
// Both traps avoided: MaxIdleConnsPerHost = concurrency, and the consumer's
// MaxAckPending (set by the driver) at 20000.
func runBaselineChild(ctx context.Context, out io.Writer) error {
	natsURL, simURL := os.Getenv("BENCH_NATS_URL"), os.Getenv("BENCH_SIM_URL")
	conc, _ := strconv.Atoi(os.Getenv("BENCH_CONCURRENCY"))
	if natsURL == "" || simURL == "" || conc < 1 {
		return errors.New("BENCH_NATS_URL, BENCH_SIM_URL, BENCH_CONCURRENCY required")
	}
	nc, err := connectNATS(natsURL, nats.Name("tmcbench baseline"))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	cons, err := js.Consumer(ctx, baseReqStream, baseConsumer)
	if err != nil {
		return err
	}
	client := &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			MaxIdleConns:        0, // no total cap
			MaxIdleConnsPerHost: conc,
			IdleConnTimeout:     90 * time.Second,
		},
	}
	if inProcess != nil {
		client.Transport = inProcess.api
	}
	token, err := baselineToken(client, simURL)
	if err != nil {
		return err
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(2 * conc))
	if err != nil {
		return err
	}
	msgs := make(chan jetstream.Msg, conc)
	go func() {
		for {
			m, err := it.Next()
			if err != nil {
				if errors.Is(err, jetstream.ErrMsgIteratorClosed) || nc.IsClosed() {
					close(msgs)
					return
				}
				continue
			}
			msgs <- m
		}
	}()
	fmt.Fprintln(out, "baseline ready")
	for range conc {
		go func() {
			for m := range msgs {
				if err := baselineHandle(ctx, js, client, simURL, token, m); err != nil {
					fmt.Fprintln(out, "baseline:", err)
					_ = m.Nak()
				}
			}
		}()
	}
	<-ctx.Done()
	it.Stop()
	return nil
}

func baselineToken(client *http.Client, simURL string) (string, error) {
	req, _ := http.NewRequest(http.MethodPost, simURL+"/security/oauth/token",
		bytes.NewReader([]byte(`{"grant_type":"client_credentials","audience":"https://api.cloud.talend.com"}`)))
	req.SetBasicAuth("dev-client", "dev-secret")
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil || tok.AccessToken == "" {
		return "", fmt.Errorf("token: status %d: %v", resp.StatusCode, err)
	}
	return tok.AccessToken, nil
}

func baselineHandle(ctx context.Context, js jetstream.JetStream, client *http.Client, simURL, token string, m jetstream.Msg) error {
	var r baseRequest
	if err := json.Unmarshal(m.Data(), &r); err != nil {
		return err
	}
	body, _ := json.Marshal(struct {
		Executable string `json:"executable"`
	}{r.Executable})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, simURL+"/processing/executions", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	respBody, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("run: status %d", resp.StatusCode)
	}
	var id struct {
		ExecutionID string `json:"executionId"`
	}
	if err := json.Unmarshal(respBody, &id); err != nil {
		return err
	}
	ev, _ := json.Marshal(baseEvent{RequestID: r.RequestID, Type: "accepted", Time: time.Now().UTC(),
		Executable: r.Executable, ExecutionID: id.ExecutionID, Metadata: r.Metadata})
	msg := nats.NewMsg(baseEvtPrefix + "." + r.RequestID + ".accepted")
	msg.Data = ev
	msg.Header.Set(jetstream.MsgIDHeader, r.RequestID+".accepted")
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		return err
	}
	return m.Ack()
}
