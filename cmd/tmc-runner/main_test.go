package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/internal/testenv"
	"github.com/tmc-runner/tmc-runner/messages"
	"github.com/tmc-runner/tmc-runner/natsembed"
	"github.com/tmc-runner/tmc-runner/talendsim"
)

// binary is the tmc-runner built once for these tests: they run it as a
// user or an operator would, signals and exit codes included.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tmc-runner-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "tmc-runner")
	build := exec.Command("go", "build", "-race", "-o", binary, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build tmc-runner:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// process is a running tmc-runner with its output captured.
type process struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	out    bytes.Buffer
	lines  chan string
	exited chan struct{}
	err    error
}

func start(t *testing.T, env []string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(binary, args...), lines: make(chan string, 1000), exited: make(chan struct{})}
	p.cmd.Env = env
	stdout, _ := p.cmd.StdoutPipe()
	stderr, _ := p.cmd.StderrPipe()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var readers sync.WaitGroup
	for _, r := range []io.Reader{stdout, stderr} {
		readers.Go(func() {
			s := bufio.NewScanner(r)
			s.Buffer(make([]byte, 1<<20), 1<<20)
			for s.Scan() {
				p.mu.Lock()
				p.out.WriteString(s.Text() + "\n")
				p.mu.Unlock()
				select {
				case p.lines <- s.Text():
				default:
				}
			}
		})
	}
	go func() {
		readers.Wait()
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

func (p *process) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func (p *process) waitFor(t *testing.T, timeout time.Duration, fragment string) {
	t.Helper()
	deadline := time.After(timeout)
	for !strings.Contains(p.output(), fragment) {
		select {
		case <-deadline:
			t.Fatalf("no %q within %s; output:\n%s", fragment, timeout, p.output())
		case <-p.exited:
			if !strings.Contains(p.output(), fragment) {
				t.Fatalf("exited (%v) without %q; output:\n%s", p.err, fragment, p.output())
			}
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (p *process) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(timeout):
		t.Fatalf("still running after %s; output:\n%s", timeout, p.output())
	}
	return p.cmd.ProcessState.ExitCode()
}

func portFree(addr string) bool {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// The README's two steps: `tmc-runner dev`, then in another terminal
// `tmc-runner submit --executable any-task-id --wait` with no settings at
// all, prints an accepted event with an executionId and exits 0.
func TestDevAndSubmitDefaultsMeet(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:4222", "127.0.0.1:8089", "127.0.0.1:9090"} {
		if !portFree(addr) {
			t.Skipf("%s is taken on this machine; the defaults cannot be tested here", addr)
		}
	}
	dir := t.TempDir()
	dev := start(t, testenv.Clean(), "dev", "--dir", filepath.Join(dir, "dev"))
	dev.waitFor(t, 30*time.Second, "worker started")

	submit := exec.Command(binary, "submit", "--executable", "any-task-id", "--wait", "--wait-timeout", "30s")
	submit.Env = testenv.Clean()
	out, err := submit.CombinedOutput()
	if err != nil {
		t.Fatalf("submit: %v\n%s\ndev output:\n%s", err, out, dev.output())
	}
	// The requestId, then the events as JSON lines: accepted (followed by
	// default), status changes, and the result.
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 3 {
		t.Fatalf("submit printed %d lines, want the requestId, accepted ... result:\n%s", len(lines), out)
	}
	accepted, err := messages.DecodeEvent([]byte(lines[1]))
	if err != nil {
		t.Fatal(err)
	}
	if accepted.Type != messages.Accepted || accepted.ExecutionID == "" || accepted.RequestID != lines[0] {
		t.Errorf("first event %+v, want accepted with an executionId for %s", accepted, lines[0])
	}
	result, err := messages.DecodeEvent([]byte(lines[len(lines)-1]))
	if err != nil {
		t.Fatal(err)
	}
	if result.Type != messages.Result || result.OK == nil || !*result.OK || result.ExecutionID != accepted.ExecutionID {
		t.Errorf("last event %+v, want an ok result of the same execution", result)
	}
	if !strings.Contains(dev.output(), "submit --executable any-task-id --wait") {
		t.Errorf("dev did not print how to submit:\n%s", dev.output())
	}
	_ = dev.cmd.Process.Signal(syscall.SIGINT)
	if code := dev.wait(t, 30*time.Second); code != 0 {
		t.Errorf("dev exited %d after SIGINT:\n%s", code, dev.output())
	}
}

// submit --wait maps each way a request ends to its exit code.
func TestSubmitExitCodes(t *testing.T) {
	w := newWorkerEnv(t, 0)
	p := start(t, w.env(), "worker")
	p.waitFor(t, 30*time.Second, "worker started")
	w.sim.SetBehaviour("paused", talendsim.Behaviour{Paused: true})
	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"--executable", "fine"}, exitOK},
		{[]string{"--executable", "paused"}, exitFailed},
		{[]string{"--executable", "p", "--plan", "--log-level", "WARN"}, exitRejected},
	} {
		cmd := exec.Command(binary, append([]string{"submit", "--wait", "--wait-timeout", "20s"}, c.args...)...)
		cmd.Env = w.env()
		out, _ := cmd.CombinedOutput()
		if got := cmd.ProcessState.ExitCode(); got != c.code {
			t.Errorf("submit %v: exit %d, want %d\n%s", c.args, got, c.code, out)
		}
	}
}

// A worker started without the settings it needs exits 1 naming every
// missing one in one message.
func TestWorkerReportsAllConfigProblems(t *testing.T) {
	p := start(t, testenv.Clean("TMC_CONCURRENCY=0", "TMC_LOG_LEVEL=loud"), "worker")
	if code := p.wait(t, 30*time.Second); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	out := p.output()
	for _, want := range []string{"TMC_CONCURRENCY", "TMC_LOG_LEVEL"} {
		if !strings.Contains(out, want) {
			t.Errorf("message lacks %s:\n%s", want, out)
		}
	}
	p = start(t, testenv.Clean(), "worker")
	if code := p.wait(t, 30*time.Second); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	out = p.output()
	for _, want := range []string{"NATS_URL", "TALEND_API_URL or TALEND_REGION", "TALEND_CLIENT_ID", "TALEND_CLIENT_SECRET"} {
		if !strings.Contains(out, want) {
			t.Errorf("message lacks %s:\n%s", want, out)
		}
	}
}

// workerEnv is an embedded NATS server and a simulator for worker
// processes started by the test.
type workerEnv struct {
	srv    *natsembed.Server
	sim    *talendsim.Simulator
	simURL string
	nc     *nats.Conn
	js     jetstream.JetStream
}

func newWorkerEnv(t *testing.T, latency time.Duration) *workerEnv {
	t.Helper()
	return newWorkerEnvWith(t, talendsim.Options{KnowAll: true, Latency: latency})
}

// newWorkerEnvWith is newWorkerEnv with simulator options of the test's
// choosing (the client is always w-client/w-secret).
func newWorkerEnvWith(t *testing.T, simOpts talendsim.Options) *workerEnv {
	t.Helper()
	srv, err := natsembed.Start(natsembed.Options{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	simOpts.Clients = map[string]string{"w-client": "w-secret"}
	sim := talendsim.New(simOpts)
	hs := httptest.NewServer(sim)
	t.Cleanup(hs.Close)
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	return &workerEnv{srv: srv, sim: sim, simURL: hs.URL, nc: nc, js: js}
}

func (w *workerEnv) env(extra ...string) []string {
	return testenv.Clean(append([]string{
		"NATS_URL=" + w.srv.URL(),
		"TALEND_API_URL=" + w.simURL,
		"TALEND_CLIENT_ID=w-client",
		"TALEND_CLIENT_SECRET=w-secret",
		"TMC_ADMIN_ADDR=127.0.0.1:0",
		"TMC_BACKOFF_MIN=100ms",
		"TMC_BACKOFF_MAX=500ms",
	}, extra...)...)
}

func (w *workerEnv) events(t *testing.T) map[string][]*messages.Event {
	t.Helper()
	ctx := context.Background()
	out := map[string][]*messages.Event{}
	c, err := w.js.OrderedConsumer(ctx, "TMC_EVENTS", jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := c.Fetch(10000, jetstream.FetchMaxWait(500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		ev, err := messages.DecodeEvent(m.Data())
		if err != nil {
			t.Fatal(err)
		}
		out[ev.RequestID] = append(out[ev.RequestID], ev)
	}
	return out
}

// SIGTERM with Talend calls in flight: the worker stops fetching, lets the
// calls finish and records them, gives back the rest, drains and exits 0;
// a second worker finishes the rest. No request is lost or run twice.
func TestWorkerSIGTERMLosesNothing(t *testing.T) {
	w := newWorkerEnv(t, 800*time.Millisecond)
	first := start(t, w.env("TMC_AWAIT_RESULT=false", "TMC_CONCURRENCY=6", "TMC_SHUTDOWN_GRACE=10s", "TMC_LOG_LEVEL=debug"), "worker")
	first.waitFor(t, 30*time.Second, "worker started")
	const n = 30
	for i := range n {
		id := fmt.Sprintf("term-%02d", i)
		msg := nats.NewMsg("tmc.runs.request.default")
		msg.Data, _ = json.Marshal(map[string]string{"requestId": id, "executable": "task-" + id})
		if _, err := w.js.PublishMsg(context.Background(), msg); err != nil {
			t.Fatal(err)
		}
	}
	// Calls are in flight once the first six messages are being handled.
	time.Sleep(400 * time.Millisecond)
	if err := first.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := first.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("worker exited %d after SIGTERM:\n%s", code, first.output())
	}
	if !strings.Contains(first.output(), "worker stopped") {
		t.Errorf("no orderly stop logged:\n%s", first.output())
	}
	accepted := 0
	for _, evs := range w.events(t) {
		accepted += len(evs)
	}
	if accepted == 0 || accepted == n {
		t.Fatalf("%d of %d accepted by the first worker: the test needs calls in flight at SIGTERM and work left over", accepted, n)
	}
	if w.sim.Stats().ExecutionsTotal != accepted {
		t.Fatalf("first worker: %d executions for %d accepted events (a call in flight was lost)", w.sim.Stats().ExecutionsTotal, accepted)
	}

	second := start(t, w.env("TMC_AWAIT_RESULT=false", "TMC_CONCURRENCY=16"), "worker")
	second.waitFor(t, 30*time.Second, "worker started")
	deadline := time.Now().Add(60 * time.Second)
	for {
		evs := w.events(t)
		if len(evs) == n {
			for id, e := range evs {
				if len(e) != 1 || e[0].Type != messages.Accepted {
					t.Errorf("%s: %d events, want one accepted", id, len(e))
				}
				if c := w.sim.Stats().Executions["task-"+id]; c != 1 {
					t.Errorf("%s: %d executions, want 1", id, c)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d requests ended after restart\n%s", len(evs), n, second.output())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if w.sim.Stats().ExecutionsTotal != n {
		t.Errorf("%d executions for %d requests", w.sim.Stats().ExecutionsTotal, n)
	}
}

// A worker that starts while NATS is away (a server restarting, a pod
// scheduled first) waits for it instead of exiting; what it logs meanwhile
// does not show the password in NATS_URL.
func TestWorkerWaitsForNATSAtStart(t *testing.T) {
	port := freePort(t)
	p := startWorkerOn(t, "nats://tmc:s3cret-pw@127.0.0.1:"+strconv.Itoa(port))
	p.waitFor(t, 10*time.Second, "NATS not reachable yet")
	serveThenStop(t, p, port)
	if strings.Contains(p.output(), "s3cret-pw") {
		t.Errorf("the NATS password appears in the output:\n%s", p.output())
	}
}

// A worker that reaches a server whose JetStream is not up yet (here: a
// server without JetStream, then one with it on the same port) waits for it
// instead of exiting.
func TestWorkerWaitsForJetStreamAtStart(t *testing.T) {
	port := freePort(t)
	plain := plainServer(t, port)
	p := startWorkerOn(t, "nats://127.0.0.1:"+strconv.Itoa(port))
	p.waitFor(t, 10*time.Second, "JetStream not available yet")
	plain.Shutdown()
	plain.WaitForShutdown()
	serveThenStop(t, p, port)
}

// A worker stopped while it waits for NATS or JetStream at start exits 0:
// nothing had started, and a stop is not a failure.
func TestWorkerStoppedWhileWaitingExitsZero(t *testing.T) {
	t.Run("NATS", func(t *testing.T) {
		p := startWorkerOn(t, "nats://127.0.0.1:"+strconv.Itoa(freePort(t)))
		p.waitFor(t, 10*time.Second, "NATS not reachable yet")
		stopCleanly(t, p)
	})
	t.Run("JetStream", func(t *testing.T) {
		port := freePort(t)
		plainServer(t, port)
		p := startWorkerOn(t, "nats://127.0.0.1:"+strconv.Itoa(port))
		p.waitFor(t, 10*time.Second, "JetStream not available yet")
		stopCleanly(t, p)
	})
}

// freePort is a local TCP port nothing listens on (for a server started
// after the worker).
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startWorkerOn starts a worker process against natsURL and a simulator.
func startWorkerOn(t *testing.T, natsURL string) *process {
	t.Helper()
	sim := talendsim.New(talendsim.Options{Clients: map[string]string{"w-client": "w-secret"}})
	hs := httptest.NewServer(sim)
	t.Cleanup(hs.Close)
	return start(t, testenv.Clean(
		"NATS_URL="+natsURL,
		"TALEND_API_URL="+hs.URL, "TALEND_CLIENT_ID=w-client", "TALEND_CLIENT_SECRET=w-secret",
		"TMC_ADMIN_ADDR=127.0.0.1:0",
	), "worker")
}

// serveThenStop starts a JetStream server on port, expects the waiting
// worker p to start on it, then to stop with exit code 0 on SIGTERM.
func serveThenStop(t *testing.T, p *process, port int) {
	t.Helper()
	srv, err := natsembed.Start(natsembed.Options{Port: port, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	p.waitFor(t, 30*time.Second, "worker started")
	stopCleanly(t, p)
}

// stopCleanly sends SIGTERM and expects exit code 0.
func stopCleanly(t *testing.T, p *process) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("worker exited %d:\n%s", code, p.output())
	}
}

// plainServer starts a nats-server without JetStream on port.
func plainServer(t *testing.T, port int) *server.Server {
	t.Helper()
	plain, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go plain.Start()
	t.Cleanup(plain.Shutdown)
	if !plain.ReadyForConnections(5 * time.Second) {
		t.Fatal("plain nats-server not ready")
	}
	return plain
}

func TestRedactURLs(t *testing.T) {
	for in, want := range map[string]string{
		"nats://a:pw@h1:4222, nats://h2:4222": "nats://a:xxxxx@h1:4222, nats://h2:4222",
		"nats://tok@h:4222":                   "nats://xxxxx@h:4222",
		"nats://h:4222":                       "nats://h:4222",
		"":                                    "",
	} {
		if got := redactURLs(in); got != want {
			t.Errorf("redactURLs(%q) = %q, want %q", in, got, want)
		}
	}
}
