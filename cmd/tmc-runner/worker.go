package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/broker"
	"github.com/tmc-runner/tmc-runner/config"
	"github.com/tmc-runner/tmc-runner/runner"
	"github.com/tmc-runner/tmc-runner/telemetry"
)

func runWorker(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return &exitError{code: 2}
	}
	cfg, err := config.Load(nil)
	if err != nil {
		return err
	}
	if err := cfg.RequireProduction(); err != nil {
		return err
	}
	log, err := telemetry.NewLogger(stderr, cfg.Worker.LogLevel, cfg.Worker.LogFormat)
	if err != nil {
		return err
	}
	tracing, flush, err := setupTracing(ctx, log, stderr)
	if err != nil {
		return err
	}
	defer flush()
	nc, err := connectWaiting(ctx, cfg.NATS, "tmc-runner worker", log, startWait)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped (SIGTERM) while waiting: nothing had started
		}
		return err
	}
	defer drain(nc)
	if err := waitJetStream(ctx, nc, log, startWait); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	r, err := runner.New(ctx, runner.Options{Config: cfg, Conn: nc, Logger: log, TracerProvider: tracing.Provider})
	if err != nil {
		return err
	}
	return r.Run(ctx)
}

// connect dials NATS with the configured options.
func connect(n config.NATS, name string) (*nats.Conn, error) {
	opts, err := n.Options(name)
	if err != nil {
		return nil, err
	}
	url := n.URL
	if url == "" {
		url = nats.DefaultURL
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", redactURLs(url), err)
	}
	return nc, nil
}

// redactURLs hides the passwords a NATS_URL may carry (a comma-separated
// list of URLs, user:password@ in any of them) before it is logged.
func redactURLs(list string) string {
	parts := strings.Split(list, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			if _, hasPassword := u.User.Password(); !hasPassword {
				u.User = url.User("xxxxx") // a token alone as the user name
			}
			parts[i] = u.Redacted()
		}
	}
	return strings.Join(parts, ",")
}

// startWait is how long a starting worker waits for NATS to be reachable:
// a server restarting (or a pod starting before it) is not a reason to
// exit, a server that stays away is.
const startWait = 30 * time.Second

// connectWaiting is connect, tried again while no server is reachable, for
// at most wait (or until ctx ends).
func connectWaiting(ctx context.Context, n config.NATS, name string, log *slog.Logger, wait time.Duration) (*nats.Conn, error) {
	deadline := time.Now().Add(wait)
	for {
		nc, err := connect(n, name)
		if err == nil || !errors.Is(err, nats.ErrNoServers) || time.Now().After(deadline) {
			return nc, err
		}
		log.Warn("NATS not reachable yet, trying again", "error", err, "until", deadline.Format(time.RFC3339))
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(time.Second):
		}
	}
}

// waitJetStream returns once the JetStream API answers, waiting up to wait
// while it does not: a server just restarted may accept connections before
// JetStream has recovered its streams (or, in a cluster, elected its meta
// leader). Without this the worker would exit and be restarted with a
// back-off. The price: a server configured without JetStream for this
// account, or a user denied $JS.API.INFO (NATS reports that as a timeout
// here), is reported only after the wait. Other errors return at once.
func waitJetStream(ctx context.Context, nc *nats.Conn, log *slog.Logger, wait time.Duration) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	deadline := time.Now().Add(wait)
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := js.AccountInfo(actx)
		cancel()
		if err == nil {
			return nil
		}
		if !jetStreamUnavailable(err) || time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("JetStream not available: %w", err)
		}
		log.Warn("JetStream not available yet, trying again", "error", err, "until", deadline.Format(time.RFC3339))
		select {
		case <-ctx.Done():
			return fmt.Errorf("JetStream not available: %w", err)
		case <-time.After(time.Second):
		}
	}
}

// jetStreamUnavailable tells errors that may pass (JetStream not up yet, no
// answer, 503 while a cluster elects its leader) from the rest.
func jetStreamUnavailable(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrJetStreamNotEnabled) ||
		errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, context.DeadlineExceeded) ||
		(errors.As(err, &apiErr) && apiErr.Code == 503)
}

// drain flushes what the connection still has to send, then closes it.
func drain(nc *nats.Conn) {
	done := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(done) })
	if err := nc.Drain(); err != nil {
		nc.Close()
		return
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		nc.Close()
	}
}

// openJetStream is what the client commands (submit, status, cancel,
// redrive) share: the configuration from the environment, a NATS
// connection and a JetStream handle.
func openJetStream(name string) (broker.Topology, jetstream.JetStream, func(), error) {
	cfg, err := config.Load(nil)
	if err != nil {
		return broker.Topology{}, nil, nil, err
	}
	nc, err := connect(cfg.NATS, name)
	if err != nil {
		return broker.Topology{}, nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return broker.Topology{}, nil, nil, err
	}
	return cfg.Worker.Topology(), js, nc.Close, nil
}
