package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/tmc-runner/tmc-runner/talendsim"
)

func runSimulator(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("simulator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8089", "listen address")
	client := fs.String("client", devClientID+":"+devSecret, "accepted service account as id:secret")
	knowAll := fs.Bool("know-all", true, "every executable id exists")
	latency := fs.Duration("latency", 0, "added to every answer")
	tokenLife := fs.Duration("token-lifetime", 30*time.Minute, "lifetime of issued tokens")
	dispatch := fs.Duration("dispatch-for", 50*time.Millisecond, "how long executions stay dispatching")
	runFor := fs.Duration("run-for", 200*time.Millisecond, "how long executions stay executing")
	listLag := fs.Duration("list-lag", 0, "how long a new execution stays out of lists")
	errRate := fs.Float64("error-rate", 0, "fraction of API calls answered with --error-status")
	errStatus := fs.Int("error-status", http.StatusServiceUnavailable, "status of injected errors (e.g. 500, 503, 429)")
	retryAfter := fs.String("retry-after", "", "Retry-After header value sent with injected 429/503")
	if err := fs.Parse(args); err != nil {
		return &exitError{code: 2}
	}
	id, secret, ok := strings.Cut(*client, ":")
	if !ok || id == "" {
		return &exitError{code: 2, msg: "--client must be id:secret"}
	}
	sim := talendsim.New(talendsim.Options{
		Clients:       map[string]string{id: secret},
		KnowAll:       *knowAll,
		Latency:       *latency,
		TokenLifetime: *tokenLife,
		DispatchFor:   *dispatch,
		RunFor:        *runFor,
		ListLag:       *listLag,
	})
	if *errRate > 0 {
		sim.SetErrorRate(*errStatus, *errRate, *retryAfter)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", *addr, err)
	}
	srv := &http.Server{Handler: sim, ReadHeaderTimeout: 5 * time.Second}
	fmt.Fprintf(stdout, "Talend simulator on http://%s (client id %q)\n", ln.Addr(), id)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdownCtx)
	if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
