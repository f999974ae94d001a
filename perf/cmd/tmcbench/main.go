// Command tmcbench compares the real tmc-runner worker with a minimal
// baseline pipeline (pull consume → HTTP POST run → publish event → ack)
// against the Talend simulator, each pipeline in its own process, and
// writes a markdown table, JSON and an SVG plot.
//
//	go run ./perf/cmd/tmcbench -out perf/results          # full (~6 min on 2 cores)
//	go run ./perf/cmd/tmcbench -out perf/results -quick   # ~3 min
//
// The nats-server (embedded, file storage in a fresh temporary directory
// per row), the simulator and the OTLP receiver run in this driver
// process; the pipelines run as child processes (this binary re-executed
// with -role), whose CPU time (/proc/<pid>/stat utime+stime) and peak RSS
// (VmHWM) are measured.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/broker"
	"github.com/tmc-runner/tmc-runner/config"
	"github.com/tmc-runner/tmc-runner/natsembed"
	"github.com/tmc-runner/tmc-runner/talendsim"
)

// Spec is one measured configuration.
type Spec struct {
	Name        string `json:"name"`
	Pipeline    string `json:"pipeline"` // baseline | worker
	LatencyMS   int    `json:"latencyMs"`
	Concurrency int    `json:"concurrency"`
	Tracing     string `json:"tracing,omitempty"` // unsampled | sampled (worker)
	Follow      bool   `json:"follow,omitempty"`  // TMC_AWAIT_RESULT=true
	// Capped: TMC_MAX_RUNNING at cappedRunning, above what the row's load
	// keeps running (every execution is then followed to free its slot).
	Capped bool `json:"capped,omitempty"`
	// InProcess: the pipeline runs in the driver process, beside the
	// nats-server, the simulator and the load generator (the setting of the
	// ~20k/s figure quoted in the issue), and reaches the server and the
	// API without sockets (in-process connection, simulator handler called
	// directly). CPU and RSS are then the whole process's.
	InProcess bool `json:"inProcess,omitempty"`
}

// Result is one row of the table.
type Result struct {
	Spec
	Completed   int64   `json:"completed"`
	Seconds     float64 `json:"seconds"`
	RPS         float64 `json:"requestsPerSecond"`
	Ratio       float64 `json:"ratioToBaseline,omitempty"`
	P50ms       float64 `json:"p50Ms"`
	P99ms       float64 `json:"p99Ms"`
	Samples     int     `json:"latencySamples"`
	CPUusPerReq float64 `json:"cpuMicrosPerRequest"`
	PeakRSSMB   float64 `json:"peakRssMB"`
	Efficiency  float64 `json:"concurrencyLatencyEfficiency,omitempty"` // rps / (conc/latency)
	SpansPosted int64   `json:"otlpExports,omitempty"`
	// LatencyLoadRPS is the open-loop rate at which p50/p99 were measured.
	LatencyLoadRPS float64 `json:"latencyLoadRequestsPerSecond"`
	// NATSMsgsPerReq is what the pipeline process sent to NATS per request
	// (publishes, KV writes and reads, JetStream API calls, acks).
	NATSMsgsPerReq float64 `json:"natsMsgsPerRequest"`
	// DriverCPUusPerReq is the driver's CPU (nats-server, simulator,
	// publisher) per request: mostly the JetStream work the pipeline causes.
	DriverCPUusPerReq float64 `json:"driverCpuMicrosPerRequest"`
	Err               string  `json:"error,omitempty"`
	// Runs holds every run's requests/s when rows were repeated; the
	// row's figures are those of the median run.
	Runs []float64 `json:"requestsPerSecondRuns,omitempty"`
}

// FleetResult is the three-worker rate-budget row.
type FleetResult struct {
	Workers         int     `json:"workers"`
	SimLimit        string  `json:"simulatorLimit"`
	BudgetPerMin    float64 `json:"fleetBudgetPerMinute"`
	Completed       int64   `json:"completed"`
	Seconds         float64 `json:"seconds"`
	RPS             float64 `json:"requestsPerSecond"`
	BudgetShare     float64 `json:"shareOfBudget"`
	SimLimitShare   float64 `json:"shareOfSimulatorLimit"`
	RateLimited     int     `json:"http429"`
	RateLimitedWin  int     `json:"http429InWindow"`
	ColdStart       bool    `json:"coldStart"`
	BreakerOpened   int     `json:"breakerOpenedLogLines"` // "circuit breaker open" warnings in the workers' logs
	MaxPeakRSSMB    float64 `json:"maxPeakRssMB"`
	CPUusPerRequest float64 `json:"cpuMicrosPerRequest"`
	Err             string  `json:"error,omitempty"`
}

// BacklogResult is the bounded-memory row.
type BacklogResult struct {
	Backlog     int       `json:"backlog"`
	Concurrency int       `json:"concurrency"`
	LatencyMS   int       `json:"latencyMs"`
	Seconds     int       `json:"seconds"`
	RSSMB       []float64 `json:"rssMBPerSecond"`
	MinRSSMB    float64   `json:"minRssMB"`
	MaxRSSMB    float64   `json:"maxRssMB"`
	Completed   int64     `json:"completedWhileSampled"`
	PendingEnd  uint64    `json:"pendingAtEnd"`
	PeakRSSMB   float64   `json:"peakRssMB"`
	Err         string    `json:"error,omitempty"`
}

// Report is everything written to the JSON file.
type Report struct {
	Date    string         `json:"date"`
	Go      string         `json:"go"`
	CPUs    int            `json:"cpus"`
	Quick   bool           `json:"quick"`
	Window  string         `json:"window"`
	Repeat  int            `json:"repeat"`
	Rows    []Result       `json:"rows"`
	Fleet   *FleetResult   `json:"fleet,omitempty"`
	Backlog *BacklogResult `json:"backlog,omitempty"`
}

var (
	flagRole        = flag.String("role", "", "internal: run a pipeline process (worker|baseline)")
	flagOut         = flag.String("out", "perf/results", "directory for bench-<date>.{md,json,svg}")
	flagQuick       = flag.Bool("quick", false, "shorter windows (smoke run)")
	flagRows        = flag.String("rows", "", "regexp: run only rows whose name matches (also 'fleet', 'backlog')")
	flagFleetCold   = flag.Bool("fleet-cold", false, "fleet row: queue the backlog before the workers start (simultaneous cold start)")
	flagProfile     = flag.String("cpuprofile", "", "row name whose pipeline process (for -inproc rows: this process) writes a CPU profile to <out>/cpu-<row>.pprof")
	flagTrace       = flag.String("trace", "", "row name whose pipeline process (for -inproc rows: this process) writes a Go execution trace of 2s in the middle of the measurement window to <out>/trace-<row>.out (where the handlers wait: go tool trace -pprof=sync); with -repeat, every run of the row traces and the file keeps the last")
	flagRate        = flag.Float64("rate-limit", 6e6, "TMC_RATE_LIMIT and TMC_MONITORING_RATE_LIMIT for the throughput rows, per minute (default: far above any load here, so the budget's code runs without limiting; 0 = none)")
	flagRunning     = flag.Int("max-running", 0, "TMC_MAX_RUNNING for the throughput rows other than -capped ones (0 = no cap)")
	flagWindow      = flag.Duration("window", 0, "measurement window per row (default 12s, -quick 4s)")
	flagRepeat      = flag.Int("repeat", 1, "run every row this many times, interleaved; rows report their median run")
	flagFleetWindow = flag.Duration("fleet-window", 0, "fleet measurement window (default 40s, -quick 16s)")
)

func main() {
	flag.Parse()
	if *flagRole != "" {
		if err := childMain(*flagRole); err != nil {
			fmt.Fprintln(os.Stderr, "tmcbench", *flagRole+":", err)
			os.Exit(1)
		}
		return
	}
	if err := drive(); err != nil {
		fmt.Fprintln(os.Stderr, "tmcbench:", err)
		os.Exit(1)
	}
}

func specs() []Spec {
	var out []Spec
	add := func(lat, conc int, variants ...Spec) {
		out = append(out, Spec{Name: fmt.Sprintf("base-%dms-c%d", lat, conc), Pipeline: "baseline", LatencyMS: lat, Concurrency: conc})
		for _, v := range variants {
			v.Pipeline, v.LatencyMS, v.Concurrency = "worker", lat, conc
			v.Name = fmt.Sprintf("worker-%dms-c%d-%s", lat, conc, v.Tracing)
			if v.Follow {
				v.Name += "-follow"
			}
			if v.Capped {
				v.Name += "-capped"
			}
			out = append(out, v)
		}
	}
	add(0, 64, Spec{Tracing: "unsampled"}, Spec{Tracing: "sampled"}, Spec{Tracing: "unsampled", Follow: true})
	// Everything in one process, as in the quoted baseline.
	out = append(out,
		Spec{Name: "base-0ms-c64-inproc", Pipeline: "baseline", Concurrency: 64, InProcess: true},
		Spec{Name: "worker-0ms-c64-unsampled-inproc", Pipeline: "worker", Concurrency: 64, Tracing: "unsampled", InProcess: true},
		Spec{Name: "worker-0ms-c64-sampled-inproc", Pipeline: "worker", Concurrency: 64, Tracing: "sampled", InProcess: true},
		Spec{Name: "worker-0ms-c64-unsampled-follow-inproc", Pipeline: "worker", Concurrency: 64, Tracing: "unsampled", Follow: true, InProcess: true})
	add(0, 256, Spec{Tracing: "unsampled"}, Spec{Tracing: "sampled"})
	add(100, 128, Spec{Tracing: "unsampled"})
	add(100, 32, Spec{Tracing: "unsampled"}, Spec{Tracing: "unsampled", Capped: true})
	add(100, 512, Spec{Tracing: "unsampled"}, Spec{Tracing: "sampled"})
	out = append(out,
		Spec{Name: "base-100ms-c512-inproc", Pipeline: "baseline", LatencyMS: 100, Concurrency: 512, InProcess: true},
		Spec{Name: "worker-100ms-c512-unsampled-inproc", Pipeline: "worker", LatencyMS: 100, Concurrency: 512, Tracing: "unsampled", InProcess: true},
		Spec{Name: "worker-100ms-c512-sampled-inproc", Pipeline: "worker", LatencyMS: 100, Concurrency: 512, Tracing: "sampled", InProcess: true})
	return out
}

func drive() error {
	window, warm := 12*time.Second, 2*time.Second
	fleetWin := 40 * time.Second
	backlogSecs := 20
	if *flagQuick {
		window, warm, fleetWin, backlogSecs = 4*time.Second, time.Second, 16*time.Second, 10
	}
	if *flagWindow > 0 {
		window = *flagWindow
	}
	if *flagFleetWindow > 0 {
		fleetWin = *flagFleetWindow
	}
	var only *regexp.Regexp
	if *flagRows != "" {
		only = regexp.MustCompile(*flagRows)
	}
	want := func(name string) bool { return only == nil || only.MatchString(name) }
	if err := os.MkdirAll(*flagOut, 0o755); err != nil {
		return err
	}
	rep := Report{Date: time.Now().UTC().Format(time.RFC3339), Go: runtime.Version(), CPUs: runtime.NumCPU(),
		Quick: *flagQuick, Window: window.String()}
	fmt.Fprintf(os.Stderr, "tmcbench: %d CPUs, window %s per row\n", rep.CPUs, window)
	// Rows are run -repeat times, interleaved (every row once, then again),
	// so that a slow spell of a shared host hits baseline and worker rows
	// alike; each row reports its median run.
	runs := map[string][]Result{}
	for rep := 1; rep <= *flagRepeat; rep++ {
		for _, s := range specs() {
			if !want(s.Name) {
				continue
			}
			fmt.Fprintf(os.Stderr, "  %d/%d %-34s ", rep, *flagRepeat, s.Name)
			r := runRow(s, warm, window)
			if r.Err != "" {
				fmt.Fprintf(os.Stderr, "ERROR %s\n", r.Err)
			} else {
				fmt.Fprintf(os.Stderr, "%8.0f req/s  p50 %6.1fms  p99 %6.1fms  %5.0f µs/req  %5.1f MB\n", r.RPS, r.P50ms, r.P99ms, r.CPUusPerReq, r.PeakRSSMB)
			}
			runs[s.Name] = append(runs[s.Name], r)
		}
	}
	for _, s := range specs() {
		if rs := runs[s.Name]; len(rs) > 0 {
			rep.Rows = append(rep.Rows, medianRun(rs))
		}
	}
	rep.Repeat = *flagRepeat
	fillRatios(rep.Rows)
	if want("fleet") {
		fmt.Fprintf(os.Stderr, "  fleet (3 workers, %s) ...\n", fleetWin)
		f := runFleet(fleetWin)
		rep.Fleet = &f
	}
	if want("backlog") {
		fmt.Fprintf(os.Stderr, "  backlog (100k queued, %ds) ...\n", backlogSecs)
		b := runBacklog(100000, backlogSecs)
		rep.Backlog = &b
	}
	md := markdown(rep)
	fmt.Print(md)
	stamp := time.Now().UTC().Format("2006-01-02T150405")
	base := filepath.Join(*flagOut, "bench-"+stamp)
	svg := plotSVG(rep)
	md += fmt.Sprintf("\n![throughput vs concurrency](%s)\n", filepath.Base(base+".svg"))
	js, _ := json.MarshalIndent(rep, "", "  ")
	for path, data := range map[string][]byte{base + ".md": []byte(md), base + ".json": js, base + ".svg": []byte(svg)} {
		if err := os.WriteFile(path, data, 0o644); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "wrote %s.{md,json,svg}\n", base)
	return nil
}

// medianRun is the run with the median requests/s (the lower middle one
// for an even count), with every run's figure attached.
func medianRun(rs []Result) Result {
	sorted := slices.Clone(rs)
	slices.SortFunc(sorted, func(a, b Result) int { return cmp.Compare(a.RPS, b.RPS) })
	m := sorted[(len(sorted)-1)/2]
	m.Runs = nil
	for _, r := range rs {
		m.Runs = append(m.Runs, r.RPS)
	}
	return m
}

func fillRatios(rows []Result) {
	base := map[string]float64{}
	key := func(r Result) string { return fmt.Sprint(r.LatencyMS, "/", r.Concurrency, "/", r.InProcess) }
	for _, r := range rows {
		if r.Pipeline == "baseline" && r.Err == "" {
			base[key(r)] = r.RPS
		}
	}
	for i := range rows {
		r := &rows[i]
		if b := base[key(*r)]; b > 0 && r.Err == "" {
			r.Ratio = r.RPS / b
		}
		if r.LatencyMS > 0 {
			r.Efficiency = r.RPS / (float64(r.Concurrency) / (float64(r.LatencyMS) / 1000))
		}
	}
}

// env is the per-row infrastructure in the driver process.
type env struct {
	dir   string
	srv   *natsembed.Server
	sim   *talendsim.Simulator
	api   *httptest.Server
	otlp  *httptest.Server
	posts atomic.Int64
	nc    *nats.Conn
	js    jetstream.JetStream
}

func newEnv(latency time.Duration) (*env, error) {
	e := &env{}
	var err error
	if e.dir, err = os.MkdirTemp("", "tmcbench-"); err != nil {
		return nil, err
	}
	if e.srv, err = natsembed.Start(natsembed.Options{Port: -1, StoreDir: e.dir}); err != nil {
		return nil, err
	}
	e.sim = talendsim.New(talendsim.Options{KnowAll: true, Latency: latency})
	e.api = httptest.NewServer(e.sim)
	e.otlp = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if r.Method == http.MethodPost && r.URL.Path == "/v1/traces" {
			e.posts.Add(1)
			w.Header().Set("Content-Type", "application/x-protobuf")
			w.WriteHeader(http.StatusOK) // empty ExportTraceServiceResponse
			return
		}
		http.NotFound(w, r)
	}))
	if e.nc, err = nats.Connect(e.srv.URL()); err != nil {
		return nil, err
	}
	if e.js, err = jetstream.New(e.nc, jetstream.WithPublishAsyncMaxPending(4096)); err != nil {
		return nil, err
	}
	return e, nil
}

func (e *env) close() {
	if e.nc != nil {
		e.nc.Close()
	}
	if e.otlp != nil {
		e.otlp.Close()
	}
	if e.api != nil {
		e.api.CloseClientConnections()
		e.api.Close()
	}
	if e.srv != nil {
		e.srv.Stop()
	}
	os.RemoveAll(e.dir)
}

// pipelineInMsgs sums the messages the server received from the pipeline
// processes' connections (named "tmcbench ...").
func (e *env) pipelineInMsgs() int64 {
	cz, err := e.srv.Connz(&server.ConnzOptions{Limit: 1000})
	if err != nil {
		return 0
	}
	var n int64
	for _, c := range cz.Conns {
		if strings.HasPrefix(c.Name, "tmcbench ") {
			n += c.InMsgs
		}
	}
	return n
}

// cappedRunning is TMC_MAX_RUNNING in -capped rows: the configuration's
// maximum. The capped row runs at 100 ms × 32 (~310 runs/s), where the
// slots the follower has not yet freed stay far below it. At 100 ms × 128
// (~1,250 runs/s) all 10,000 were held after about 8 s and the cap bound
// (955 req/s, 12 s p50 in perf/results/bench-2026-12-05T001018.md): slots
// were freed more slowly than runs started. (The follower reads at most
// ten list pages of 100 per round, which would explain it; not measured.)
const cappedRunning = 10000

// workerEnv is the environment of a worker process.
func (e *env) workerEnv(conc int, tracing string, follow bool, rateLimit float64, maxRunning int) map[string]string {
	m := map[string]string{
		"NATS_URL":                  e.srv.URL(),
		"TALEND_API_URL":            e.api.URL,
		"TALEND_CLIENT_ID":          "dev-client",
		"TALEND_CLIENT_SECRET":      "dev-secret",
		"TMC_CONCURRENCY":           strconv.Itoa(conc),
		"TMC_RATE_LIMIT":            strconv.FormatFloat(rateLimit, 'f', -1, 64),
		"TMC_MONITORING_RATE_LIMIT": strconv.FormatFloat(rateLimit, 'f', -1, 64),
		"TMC_MAX_RUNNING":           strconv.Itoa(maxRunning),
		"TMC_AWAIT_RESULT":          strconv.FormatBool(follow),
		"TMC_ADMIN_ADDR":            "",
		"TMC_LOG_LEVEL":             "warn",
	}
	switch tracing {
	case "unsampled", "sampled":
		m["OTEL_TRACES_EXPORTER"] = "otlp"
		m["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = "http/protobuf"
		m["OTEL_EXPORTER_OTLP_ENDPOINT"] = e.otlp.URL
		m["OTEL_SERVICE_NAME"] = "tmcbench-worker"
		m["OTEL_TRACES_SAMPLER"] = "always_on"
		if tracing == "unsampled" {
			m["OTEL_TRACES_SAMPLER"] = "always_off"
		}
	default:
		m["OTEL_TRACES_EXPORTER"] = "none"
	}
	return m
}

// provisionWorker creates the worker's topology (the worker would too) so
// that requests can be published before it is up.
func (e *env) provisionWorker(m map[string]string) (broker.Topology, string, error) {
	cfg, err := config.Load(m)
	if err != nil {
		return broker.Topology{}, "", err
	}
	topo := cfg.Worker.Topology()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return topo, cfg.Worker.EventsStream, broker.Provision(ctx, e.js, topo)
}

func (e *env) provisionBaseline() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := e.js.CreateStream(ctx, jetstream.StreamConfig{Name: baseReqStream, Subjects: []string{baseReqPrefix + ".>"},
		Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage}); err != nil {
		return err
	}
	if _, err := e.js.CreateStream(ctx, jetstream.StreamConfig{Name: baseEvtStream, Subjects: []string{baseEvtPrefix + ".>"},
		Retention: jetstream.LimitsPolicy, Storage: jetstream.FileStorage}); err != nil {
		return err
	}
	_, err := e.js.CreateOrUpdateConsumer(ctx, baseReqStream, jetstream.ConsumerConfig{Durable: baseConsumer,
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MaxAckPending: 20000})
	return err
}

// child is one pipeline: a process, or goroutines of this one (cancel
// set).
type child struct {
	cmd    *exec.Cmd
	cancel context.CancelFunc
	mu     sync.Mutex
	stderr strings.Builder
	done   chan struct{}
}

func (c *child) pid() int {
	if c.cmd == nil {
		return os.Getpid()
	}
	return c.cmd.Process.Pid
}

// startInProcess runs the pipeline in this process. The worker reads its
// configuration (and the OpenTelemetry exporter its endpoint) from the
// process environment, so the row's variables are set for its duration.
func startInProcess(role string, extra map[string]string) (*child, error) {
	// A profiled row profiles the whole process: server, simulator, load
	// generator and pipeline.
	stopProfile := func() {}
	if path := extra["BENCH_CPUPROFILE"]; path != "" {
		f, err := os.Create(path)
		if err != nil {
			return nil, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return nil, err
		}
		stopProfile = func() { pprof.StopCPUProfile(); f.Close() }
	}
	for k, v := range extra {
		os.Setenv(k, v)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &child{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		defer stopProfile()
		defer func() {
			for k := range extra {
				os.Unsetenv(k)
			}
		}()
		if err := runPipeline(ctx, role, c); err != nil && ctx.Err() == nil {
			fmt.Fprintln(c, role+":", err)
		}
	}()
	return c, nil
}

func (c *child) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stderr.Len() < 64<<10 {
		c.stderr.Write(p)
	}
	return len(p), nil
}

func (c *child) output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stderr.String()
}

func startChild(role string, extra map[string]string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	c := &child{cmd: exec.Command(self, "-role", role), done: make(chan struct{})}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "NATS_") || strings.HasPrefix(k, "TALEND_") || strings.HasPrefix(k, "TMC_") ||
			strings.HasPrefix(k, "OTEL_") || strings.HasPrefix(k, "BENCH_") {
			continue
		}
		c.cmd.Env = append(c.cmd.Env, kv)
	}
	for k, v := range extra {
		c.cmd.Env = append(c.cmd.Env, k+"="+v)
	}
	c.cmd.Stderr = c
	c.cmd.Stdout = c
	if err := c.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = c.cmd.Wait(); close(c.done) }()
	return c, nil
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// traceWindow sleeps through the measurement window while the pipeline
// writes an execution trace of its middle 2 s (or half the window, if
// shorter): signalled to a child process, started here for an in-process
// pipeline (then the trace covers the whole process).
func traceWindow(c *child, path string, window time.Duration) {
	span := min(2*time.Second, window/2)
	lead := (window - span) / 2
	time.Sleep(lead)
	var stop func()
	if c.cmd != nil {
		_ = c.cmd.Process.Signal(syscall.SIGUSR1)
		stop = func() { _ = c.cmd.Process.Signal(syscall.SIGUSR2) }
	} else if f, err := os.Create(path); err != nil {
		fmt.Fprintln(os.Stderr, "trace:", err)
		stop = func() {}
	} else if err := trace.Start(f); err != nil {
		fmt.Fprintln(os.Stderr, "trace:", err)
		f.Close()
		stop = func() {}
	} else {
		stop = func() { trace.Stop(); f.Close() }
	}
	time.Sleep(span)
	stop()
	time.Sleep(window - lead - span)
}

// stop sends SIGTERM (the child stops a CPU profile and exits at once),
// then kills after 5 s.
func (c *child) stop() {
	if c.cmd == nil {
		c.cancel()
		select {
		case <-c.done:
		case <-time.After(30 * time.Second):
		}
		return
	}
	_ = c.cmd.Process.Signal(os.Interrupt)
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// requestBody is a run request whose metadata carries the publish time.
func requestBody(id string, i int) []byte {
	return fmt.Appendf(nil, `{"requestId":%q,"executable":"task-%d","metadata":{"t":%d}}`, id, i%50, time.Now().UnixNano())
}

func runRow(s Spec, warm, window time.Duration) (res Result) {
	res.Spec = s
	fail := func(err error, c ...*child) Result {
		res.Err = err.Error()
		for _, ch := range c {
			if ch != nil {
				if out := strings.TrimSpace(ch.output()); out != "" {
					res.Err += " | child: " + lastLines(out, 5)
				}
			}
		}
		return res
	}
	e, err := newEnv(time.Duration(s.LatencyMS) * time.Millisecond)
	if err != nil {
		return fail(err)
	}
	defer e.close()

	var reqSubject, evtFilter, evtStream string
	var childEnv map[string]string
	if s.Pipeline == "baseline" {
		if err := e.provisionBaseline(); err != nil {
			return fail(err)
		}
		reqSubject, evtFilter, evtStream = baseReqPrefix+".bench", baseEvtPrefix+".*.accepted", baseEvtStream
		childEnv = map[string]string{"BENCH_NATS_URL": e.srv.URL(), "BENCH_SIM_URL": e.api.URL, "BENCH_CONCURRENCY": strconv.Itoa(s.Concurrency)}
	} else {
		maxRunning := *flagRunning
		if s.Capped {
			maxRunning = cappedRunning
		}
		childEnv = e.workerEnv(s.Concurrency, s.Tracing, s.Follow, *flagRate, maxRunning)
		topo, stream, err := e.provisionWorker(childEnv)
		if err != nil {
			return fail(err)
		}
		reqSubject, evtFilter, evtStream = topo.RequestSubject("bench"), topo.EventsPrefix()+".bench.*.accepted", stream
	}
	if *flagProfile == s.Name {
		childEnv["BENCH_CPUPROFILE"], _ = filepath.Abs(filepath.Join(*flagOut, "cpu-"+s.Name+".pprof"))
	}
	var tracePath string
	if *flagTrace == s.Name {
		tracePath, _ = filepath.Abs(filepath.Join(*flagOut, "trace-"+s.Name+".out"))
		if !s.InProcess {
			childEnv["BENCH_TRACE"] = tracePath
		}
	}

	// Completion counting: a core subscription to the accepted events
	// releases a slot of the publish window.
	winSize := s.Concurrency*3/2 + 64
	sem := make(chan struct{}, winSize)
	var completed atomic.Int64
	first := make(chan struct{})
	var firstOnce sync.Once
	sub, err := e.nc.Subscribe(evtFilter, func(*nats.Msg) {
		completed.Add(1)
		firstOnce.Do(func() { close(first) })
		select {
		case <-sem:
		default:
		}
	})
	if err != nil {
		return fail(err)
	}
	defer sub.Unsubscribe()
	_ = sub.SetPendingLimits(-1, -1)

	var c *child
	if s.InProcess {
		inProcess = &inProcessLinks{nats: e.srv.Server, api: handlerTransport{h: e.sim}}
		defer func() { inProcess = nil }()
		c, err = startInProcess(s.Pipeline, childEnv)
	} else {
		c, err = startChild(s.Pipeline, childEnv)
	}
	if err != nil {
		return fail(err)
	}
	defer func() {
		if !c.exited() {
			c.stop()
		}
	}()

	// Publisher: at full speed, at most winSize requests outstanding, so the
	// pipeline is always saturated but the queue ahead of it stays short.
	stopPub := make(chan struct{})
	pubDone := make(chan struct{})
	var pubErrs, published atomic.Int64
	go func() {
		defer close(pubDone)
		for i := 0; ; i++ {
			select {
			case sem <- struct{}{}:
			case <-stopPub:
				return
			}
			msg := nats.NewMsg(reqSubject)
			id := fmt.Sprintf("r%d", i)
			msg.Data = requestBody(id, i)
			msg.Header.Set(jetstream.MsgIDHeader, id)
			if _, err := e.js.PublishMsgAsync(msg); err != nil {
				pubErrs.Add(1)
				time.Sleep(time.Millisecond)
				continue
			}
			published.Add(1)
		}
	}()
	defer func() {
		select {
		case <-stopPub:
		default:
			close(stopPub)
		}
		<-pubDone
	}()

	select {
	case <-first:
	case <-c.done:
		return fail(errors.New("pipeline process exited"), c)
	case <-time.After(60 * time.Second):
		return fail(errors.New("no accepted event within 60s"), c)
	}
	time.Sleep(warm)
	pid := c.pid()
	cpu0, _ := procCPU(pid)
	d0, _ := procCPU(os.Getpid())
	m0 := e.pipelineInMsgs()
	n0, t0 := completed.Load(), time.Now()
	if tracePath != "" {
		traceWindow(c, tracePath, window)
	} else {
		time.Sleep(window)
	}
	cpu1, _ := procCPU(pid)
	d1, _ := procCPU(os.Getpid())
	m1 := e.pipelineInMsgs()
	n1, t1 := completed.Load(), time.Now()
	close(stopPub)
	<-pubDone
	res.Completed = n1 - n0
	res.Seconds = t1.Sub(t0).Seconds()
	res.RPS = float64(res.Completed) / res.Seconds
	if res.Completed > 0 {
		res.CPUusPerReq = (cpu1 - cpu0).Seconds() * 1e6 / float64(res.Completed)
		res.DriverCPUusPerReq = (d1 - d0).Seconds() * 1e6 / float64(res.Completed)
		res.NATSMsgsPerReq = float64(m1-m0) / float64(res.Completed)
	}

	// Latency phase: by Little's law the closed loop above fixes latency
	// at outstanding/throughput, so latency is measured separately under
	// an open-loop load of 70% of the throughput just measured.
	waitDrain(&completed, published.Load(), 20*time.Second)
	latDur := max(window/2, 3*time.Second)
	res.LatencyLoadRPS = 0.7 * res.RPS
	p0 := time.Now()
	openLoop(e.js, reqSubject, res.LatencyLoadRPS, latDur, &published)
	p1 := time.Now()
	waitDrain(&completed, published.Load(), 20*time.Second)
	res.PeakRSSMB = procStatusMB(pid, "VmHWM")
	c.stop()
	res.SpansPosted = e.posts.Load()
	lat, err := eventLatencies(e.js, evtStream, evtFilter, p0, p1)
	if err != nil {
		res.Err = "latencies: " + err.Error()
	}
	res.Samples = len(lat)
	res.P50ms, res.P99ms = percentile(lat, 0.50), percentile(lat, 0.99)
	if s.Pipeline == "worker" {
		if st := e.sim.Stats(); st.RateLimited > 0 {
			res.Err = fmt.Sprintf("%d 429s", st.RateLimited)
		}
	}
	return res
}

// eventLatencies reads every accepted event from the events stream and
// returns, for requests published within [from, to] (metadata.t), the time
// from the publish to the event's stream timestamp, in ms.
func eventLatencies(js jetstream.JetStream, stream, filter string, from, to time.Time) ([]float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	info, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, err
	}
	if info.CachedInfo().State.Msgs == 0 {
		return nil, nil
	}
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	if err != nil {
		return nil, err
	}
	var out []float64
	var ev struct {
		Metadata struct {
			T int64 `json:"t"`
		} `json:"metadata"`
	}
	for {
		batch, err := cons.Fetch(2000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return out, err
		}
		got, last := 0, false
		for m := range batch.Messages() {
			got++
			md, err := m.Metadata()
			if err != nil {
				continue
			}
			if md.NumPending == 0 {
				last = true
			}
			ev.Metadata.T = 0
			if json.Unmarshal(m.Data(), &ev) == nil && ev.Metadata.T >= from.UnixNano() && ev.Metadata.T <= to.UnixNano() {
				out = append(out, float64(md.Timestamp.UnixNano()-ev.Metadata.T)/1e6)
			}
		}
		if last || got == 0 {
			return out, batch.Error()
		}
	}
}

func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	i := int(p * float64(len(v)-1))
	return v[i]
}

// procCPU is utime+stime of pid (clock ticks of 10 ms: CLK_TCK is 100 on
// Linux x86-64 and arm64).
func procCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	// fields[0] is field 3 (state); utime is field 14, stime 15.
	ut, _ := strconv.ParseInt(fields[11], 10, 64)
	st, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}

// procStatusMB reads a kB field (VmHWM, VmRSS) of /proc/<pid>/status in MB.
func procStatusMB(pid int, field string) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
			return kb / 1024
		}
	}
	return 0
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " / ")
}

// waitDrain waits until completed reaches want (or timeout).
func waitDrain(completed *atomic.Int64, want int64, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for completed.Load() < want && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
}

// openLoop publishes at rate requests/s for d, whatever the completions.
func openLoop(js jetstream.JetStream, subject string, rate float64, d time.Duration, published *atomic.Int64) {
	start := time.Now()
	sent := 0
	for {
		el := time.Since(start)
		if el >= d {
			return
		}
		for due := int(rate * el.Seconds()); sent < due; sent++ {
			msg := nats.NewMsg(subject)
			id := fmt.Sprintf("l%d", sent)
			msg.Data = requestBody(id, sent)
			msg.Header.Set(jetstream.MsgIDHeader, id)
			if _, err := js.PublishMsgAsync(msg); err == nil {
				published.Add(1)
			}
		}
		time.Sleep(time.Millisecond)
	}
}

// publishBacklog publishes n requests as fast as the stream takes them.
func publishBacklog(js jetstream.JetStream, subject string, n int, prefix string) error {
	for i := range n {
		msg := nats.NewMsg(subject)
		id := fmt.Sprintf("%s%d", prefix, i)
		msg.Data = requestBody(id, i)
		msg.Header.Set(jetstream.MsgIDHeader, id)
		if _, err := js.PublishMsgAsync(msg); err != nil {
			return err
		}
	}
	select {
	case <-js.PublishAsyncComplete():
		return nil
	case <-time.After(5 * time.Minute):
		return errors.New("backlog publishing did not complete")
	}
}

// runFleet runs three workers sharing a fleet budget of 1140/min against a
// simulator allowing 1200/min (200 per sliding 10 s window). Talend counts
// per minute; a shorter window than that magnifies what a per-minute budget
// allows to bunch up (each replica's token bucket starts a busy spell with
// one call in hand), so 10 s keeps the bench short without inventing 429s
// a per-minute limit would not give.
func runFleet(window time.Duration) (res FleetResult) {
	const budget, simReq, simPer = 1140.0, 200, 10 * time.Second
	res.Workers, res.BudgetPerMin, res.ColdStart = 3, budget, *flagFleetCold
	res.SimLimit = fmt.Sprintf("%d per %s (%.0f/min)", simReq, simPer, float64(simReq)*float64(time.Minute/simPer))
	e, err := newEnv(0)
	if err != nil {
		res.Err = err.Error()
		return res
	}
	defer e.close()
	e.sim.SetRateLimit(simReq, simPer)
	m := e.workerEnv(64, "none", false, budget, 0)
	topo, _, err := e.provisionWorker(m)
	if err != nil {
		res.Err = err.Error()
		return res
	}
	var completed atomic.Int64
	sub, err := e.nc.Subscribe(topo.EventsPrefix()+".bench.*.accepted", func(*nats.Msg) { completed.Add(1) })
	if err != nil {
		res.Err = err.Error()
		return res
	}
	defer sub.Unsubscribe()
	if *flagFleetCold {
		backlog := int(budget/60*(window.Seconds()+30)) + 500
		if err := publishBacklog(e.js, topo.RequestSubject("bench"), backlog, "f"); err != nil {
			res.Err = err.Error()
			return res
		}
	}
	var kids []*child
	for range 3 {
		c, err := startChild("worker", m)
		if err != nil {
			res.Err = err.Error()
			return res
		}
		kids = append(kids, c)
	}
	defer func() {
		for _, c := range kids {
			c.stop()
		}
	}()
	// Cold start (-fleet-cold): the backlog is queued before the workers
	// start. Otherwise the workers first find each other (heartbeat 2 s),
	// then the backlog arrives.
	if !*flagFleetCold {
		time.Sleep(8 * time.Second)
		backlog := int(budget/60*(window.Seconds()+30)) + 500
		if err := publishBacklog(e.js, topo.RequestSubject("bench"), backlog, "f"); err != nil {
			res.Err = err.Error()
			return res
		}
	}
	time.Sleep(5 * time.Second)
	cpu := func() (d time.Duration) {
		for _, c := range kids {
			x, _ := procCPU(c.cmd.Process.Pid)
			d += x
		}
		return d
	}
	c0, n0, t0, lim0 := cpu(), completed.Load(), time.Now(), e.sim.Stats().RateLimited
	time.Sleep(window)
	c1, n1, t1 := cpu(), completed.Load(), time.Now()
	for _, c := range kids {
		res.MaxPeakRSSMB = max(res.MaxPeakRSSMB, procStatusMB(c.cmd.Process.Pid, "VmHWM"))
		if c.exited() {
			res.Err = "a worker exited: " + lastLines(c.output(), 3)
		}
	}
	res.Completed = n1 - n0
	res.Seconds = t1.Sub(t0).Seconds()
	res.RPS = float64(res.Completed) / res.Seconds
	res.BudgetShare = res.RPS / (budget / 60)
	res.SimLimitShare = res.RPS / (float64(simReq) / simPer.Seconds())
	res.RateLimited = e.sim.Stats().RateLimited
	res.RateLimitedWin = res.RateLimited - lim0
	for _, c := range kids {
		res.BreakerOpened += strings.Count(c.output(), "circuit breaker open")
	}
	if res.Completed > 0 {
		res.CPUusPerRequest = (c1 - c0).Seconds() * 1e6 / float64(res.Completed)
	}
	return res
}

// runBacklog queues n requests, then runs one worker (concurrency 64) on a
// 50 ms simulator and samples its RSS every second.
func runBacklog(n, secs int) (res BacklogResult) {
	res.Backlog, res.Concurrency, res.LatencyMS, res.Seconds = n, 64, 50, secs
	e, err := newEnv(50 * time.Millisecond)
	if err != nil {
		res.Err = err.Error()
		return res
	}
	defer e.close()
	m := e.workerEnv(64, "unsampled", false, 0, 0)
	topo, _, err := e.provisionWorker(m)
	if err != nil {
		res.Err = err.Error()
		return res
	}
	if err := publishBacklog(e.js, topo.RequestSubject("bench"), n, "b"); err != nil {
		res.Err = err.Error()
		return res
	}
	var completed atomic.Int64
	sub, err := e.nc.Subscribe(topo.EventsPrefix()+".bench.*.accepted", func(*nats.Msg) { completed.Add(1) })
	if err != nil {
		res.Err = err.Error()
		return res
	}
	defer sub.Unsubscribe()
	c, err := startChild("worker", m)
	if err != nil {
		res.Err = err.Error()
		return res
	}
	defer c.stop()
	time.Sleep(3 * time.Second)
	n0 := completed.Load()
	pid := c.cmd.Process.Pid
	for range secs {
		time.Sleep(time.Second)
		if c.exited() {
			res.Err = "worker exited: " + lastLines(c.output(), 3)
			return res
		}
		res.RSSMB = append(res.RSSMB, round1(procStatusMB(pid, "VmRSS")))
	}
	res.Completed = completed.Load() - n0
	res.PeakRSSMB = procStatusMB(pid, "VmHWM")
	res.MinRSSMB, res.MaxRSSMB = slices.Min(res.RSSMB), slices.Max(res.RSSMB)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if cons, err := e.js.Consumer(ctx, topo.RunsStream, topo.Consumer); err == nil {
		if info, err := cons.Info(ctx); err == nil {
			res.PendingEnd = info.NumPending
		}
	}
	return res
}

func round1(f float64) float64 { return float64(int(f*10+0.5)) / 10 }
