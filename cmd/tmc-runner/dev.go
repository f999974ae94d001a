package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tmc-runner/tmc-runner/config"
	"github.com/tmc-runner/tmc-runner/natsembed"
	"github.com/tmc-runner/tmc-runner/runner"
	"github.com/tmc-runner/tmc-runner/talendsim"
	"github.com/tmc-runner/tmc-runner/telemetry"
)

// Dev-mode credentials: the simulator accepts them and the worker uses them.
const (
	devClientID = "dev-client"
	devSecret   = "dev-secret"
)

func runDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", ".tmc-dev", "folder for JetStream data")
	natsPort := fs.Int("nats-port", nats.DefaultPort, "NATS client port on 127.0.0.1 (submit's default is 4222)")
	simAddr := fs.String("sim-addr", "127.0.0.1:8089", "address of the Talend simulator")
	adminAddr := fs.String("admin-addr", "127.0.0.1:9090", "address of /healthz and /readyz")
	if err := fs.Parse(args); err != nil {
		return &exitError{code: 2}
	}
	cfg, err := config.Load(nil)
	if err != nil {
		return err
	}
	if cfg.Worker.LogFormat == "json" {
		cfg.Worker.LogFormat = "text" // readable in a terminal; TMC_LOG_FORMAT is still honoured in worker mode
	}
	log, err := telemetry.NewLogger(stderr, cfg.Worker.LogLevel, cfg.Worker.LogFormat)
	if err != nil {
		return err
	}

	srv, err := natsembed.Start(natsembed.Options{Port: *natsPort, StoreDir: filepath.Join(*dir, "nats"), ServerName: "tmc-dev"})
	if err != nil {
		return fmt.Errorf("start embedded NATS on port %d (is another server using it? try --nats-port): %w", *natsPort, err)
	}
	defer srv.Stop()

	sim := talendsim.New(talendsim.Options{KnowAll: true, Clients: map[string]string{devClientID: devSecret}})
	simLn, err := net.Listen("tcp", *simAddr)
	if err != nil {
		return fmt.Errorf("listen for the Talend simulator on %s (try --sim-addr): %w", *simAddr, err)
	}
	simServer := &http.Server{Handler: sim, ReadHeaderTimeout: 5 * time.Second}
	simDone := make(chan error, 1)
	go func() { simDone <- simServer.Serve(simLn) }()
	defer func() {
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = simServer.Shutdown(shutdownCtx)
		if err := <-simDone; err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("simulator stopped", "error", err)
		}
	}()

	cfg.NATS = config.NATS{URL: srv.URL()}
	cfg.Talend.APIURL = "http://" + simLn.Addr().String()
	cfg.Talend.Region = ""
	cfg.Talend.ClientID, cfg.Talend.ClientIDFile = devClientID, ""
	cfg.Talend.ClientSecret, cfg.Talend.ClientSecretFile = devSecret, ""
	cfg.Worker.AdminAddr = *adminAddr
	cfg.Worker.Provision = true

	// OTEL_TRACES_EXPORTER=console prints spans to the terminal.
	tracing, flush, err := setupTracing(ctx, log, stderr)
	if err != nil {
		return err
	}
	defer flush()
	nc, err := connect(cfg.NATS, "tmc-runner dev")
	if err != nil {
		return err
	}
	defer drain(nc)
	r, err := runner.New(ctx, runner.Options{Config: cfg, Conn: nc, Logger: log, TracerProvider: tracing.Provider})
	if err != nil {
		return err
	}
	submitHint := "tmc-runner submit --executable any-task-id --wait"
	if *natsPort != nats.DefaultPort {
		submitHint = fmt.Sprintf("NATS_URL=%s %s", srv.URL(), submitHint)
	}
	fmt.Fprintf(stdout, `tmc-runner dev is running (Ctrl-C to stop)
  NATS       %s  (JetStream data in %s)
  Talend     simulator at %s, knows every executable
  admin      http://%s/readyz  /metrics
Submit a run from another terminal:
  go run ./cmd/tmc-runner %s
`, srv.URL(), filepath.Join(*dir, "nats"), cfg.Talend.APIURL, r.AdminAddr(), submitHint[len("tmc-runner "):])
	return r.Run(ctx)
}
