// Package runner assembles a tmc-runner worker process from its parts —
// JetStream topology, Talend client with token cache and breaker, event
// publisher, worker, admin endpoints — exactly once, for `tmc-runner
// worker`, `tmc-runner dev` and the end-to-end tests alike.
package runner

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sony/gobreaker/v2"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/tmc-runner/tmc-runner/broker"
	"github.com/tmc-runner/tmc-runner/claims"
	"github.com/tmc-runner/tmc-runner/config"
	"github.com/tmc-runner/tmc-runner/follow"
	"github.com/tmc-runner/tmc-runner/internal/jswrite"
	"github.com/tmc-runner/tmc-runner/limits"
	"github.com/tmc-runner/tmc-runner/messages"
	"github.com/tmc-runner/tmc-runner/talend"
	"github.com/tmc-runner/tmc-runner/telemetry"
	"github.com/tmc-runner/tmc-runner/tokenshare"
	"github.com/tmc-runner/tmc-runner/worker"
)

// slotsDep is the worker's running cap, nil when none is configured.
func (r *Runner) slotsDep() worker.Slots {
	if r.slots == nil {
		return nil
	}
	return r.slots
}

// collectSlots frees running slots left by a crash between taking a slot
// and starting the run: held for a while by a request with no followed
// execution and no live claim.
func (r *Runner) collectSlots(ctx context.Context) error {
	stale := r.opts.Config.Worker.ClaimStale + r.opts.Config.Worker.ReconcileSettle
	ticker := time.NewTicker(10 * time.Second)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
		r.slots.Collect(ctx, 2*stale, func(ctx context.Context, requestID string) bool {
			if tracked, err := r.follower.Tracked(ctx, requestID); err != nil || tracked {
				return true
			}
			c, err := r.claims.Get(ctx, requestID)
			if err != nil {
				return true
			}
			return c != nil && c.State == claims.Starting && time.Since(c.HeartbeatTime()) < r.opts.Config.Worker.ClaimStale
		})
	}
}

// holderID names this replica in leases: host, process and a random part.
func holderID() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%x", host, os.Getpid(), b)
}

// talendRoute names a Talend API path without its ids, for span names.
func talendRoute(path string) string {
	switch {
	case path == "/processing/executions", path == "/processing/executions/plans",
		path == "/security/oauth/token", path == "/processing/executables/tasks/executions":
		return path
	case strings.HasPrefix(path, "/processing/executions/plans/"):
		return "/processing/executions/plans/{id}"
	case strings.HasPrefix(path, "/processing/executions/"):
		return "/processing/executions/{id}"
	case strings.HasPrefix(path, "/monitoring/executions/"):
		return "/monitoring/executions/{id}/logs"
	case strings.HasPrefix(path, "/processing/executables/"):
		return "/processing/executables/{kind}/{id}/executions"
	}
	return "other"
}

// Options wire a Runner.
type Options struct {
	Config         config.Config
	Conn           *nats.Conn // connected; the caller drains it after Run
	Logger         *slog.Logger
	TracerProvider trace.TracerProvider // nil: no tracing
	// Metrics serves /metrics; nil: a private registry is made.
	Metrics *telemetry.Metrics
	// AdminListener, when set, serves /healthz and /readyz instead of
	// listening on Config.Worker.AdminAddr (tests pass one on port 0).
	AdminListener net.Listener
	// Tune and TuneFollow adjust the worker and follower configuration
	// (tests shorten delays; experiments scale time).
	Tune       func(*worker.Config)
	TuneFollow func(*follow.Config)
	// TalendTransport, when set, carries the Talend calls instead of the
	// transport built from the configuration (proxy, CA file): the
	// benchmark's one-process rows serve the simulator without sockets.
	TalendTransport http.RoundTripper
}

// Runner is one assembled worker process.
type Runner struct {
	opts     Options
	log      *slog.Logger
	client   *talend.Client
	breaker  *talend.Breaker
	worker   *worker.Worker
	follower *follow.Follower
	fleet    *limits.Fleet
	slots    *limits.Slots
	claims   *claims.Store
	admin    *http.Server
	adminLn  net.Listener
}

// New provisions (unless disabled) and wires everything; Run starts it.
func New(ctx context.Context, opts Options) (*Runner, error) {
	cfg := opts.Config
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	tp := opts.TracerProvider
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	if opts.Metrics == nil {
		m, err := telemetry.NewMetrics()
		if err != nil {
			return nil, err
		}
		opts.Metrics = m
	}
	mp := opts.Metrics.Provider
	topo := cfg.Worker.Topology()
	js, err := jetstream.New(opts.Conn)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	if cfg.Worker.Provision {
		if err := broker.Provision(ctx, js, topo); err != nil {
			return nil, fmt.Errorf("provision: %w", err)
		}
	}
	runs, err := js.Stream(ctx, topo.RunsStream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", topo.RunsStream, err)
	}
	requests, err := js.Consumer(ctx, topo.RunsStream, topo.Consumer)
	if err != nil {
		return nil, fmt.Errorf("consumer %s: %w", topo.Consumer, err)
	}
	timers, err := js.Consumer(ctx, topo.TimersStream, topo.TimersConsumer)
	if err != nil {
		return nil, fmt.Errorf("consumer %s: %w", topo.TimersConsumer, err)
	}
	kv, err := js.KeyValue(ctx, topo.ClaimsBucket)
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", topo.ClaimsBucket, err)
	}

	holder := holderID()
	var shared talend.SharedTokens
	if cfg.Worker.ShareToken {
		tokensKV, err := js.KeyValue(ctx, topo.TokensBucket)
		if err != nil {
			return nil, fmt.Errorf("bucket %s: %w", topo.TokensBucket, err)
		}
		shared = tokenshare.New(tokensKV, tokenshare.Options{Holder: holder, Credentials: cfg.Talend.Credentials()})
	}
	r := &Runner{opts: opts, log: log}
	r.fleet = limits.New(kv, limits.Options{
		Holder: holder, PerMinute: cfg.Worker.RateLimit, MonitoringPerMinute: cfg.Worker.MonitoringLimit,
	})
	if cfg.Worker.MaxRunning > 0 {
		r.slots = limits.NewSlots(kv, cfg.Worker.MaxRunning, nil)
	}
	transport := opts.TalendTransport
	if transport == nil {
		t, err := talend.NewTransport(talend.TransportOptions{CAFile: cfg.Talend.CAFile, MaxConnsPerHost: cfg.Worker.Concurrency})
		if err != nil {
			return nil, err
		}
		transport = t
	}
	recordTransition := talend.BreakerMetrics(mp, func() *talend.Breaker { return r.breaker })
	// Fleet limits outside, breaker inside: a call waits for budget first
	// and only then asks the breaker, so no call admitted before the
	// breaker opened is sent after it, merely delayed by the budget.
	// Without tracing (no OTEL_* exporter) the HTTP instrumentation would
	// only cost time on every call: leave it out.
	traced := http.RoundTripper(transport)
	if _, off := tp.(noop.TracerProvider); !off {
		traced = telemetry.HTTPClientSpans(transport, tp, func(r *http.Request) string {
			return "talend " + r.Method + " " + talendRoute(r.URL.Path)
		})
	}
	r.breaker = talend.NewBreaker(traced, talend.BreakerSettings{
		ConsecutiveFailures: cfg.Talend.BreakerFailures,
		OpenFor:             cfg.Talend.BreakerOpenFor,
		OnStateChange: func(from, to gobreaker.State) {
			recordTransition(from, to)
			if to == gobreaker.StateOpen {
				// The other replicas pause fetching too.
				r.fleet.BreakerOpened(context.Background(), cfg.Talend.BreakerOpenFor)
			}
			level := slog.LevelWarn
			if to == gobreaker.StateClosed {
				level = slog.LevelInfo
			}
			log.Log(context.Background(), level, "Talend circuit breaker "+to.String(), "from", from.String())
		},
	})
	var credsMu sync.Mutex
	lastCredsValid := true
	r.client, err = talend.NewClient(talend.Config{
		BaseURL:     cfg.Talend.BaseURL(),
		Credentials: cfg.Talend.Credentials(),
		API:         &http.Client{Transport: &limits.Transport{Next: r.breaker, Fleet: r.fleet}},
		CallTimeout: cfg.Talend.Timeout,
		TokenHTTP: &http.Client{
			Transport: traced,
			Timeout:   cfg.Talend.Timeout,
		},
		TracerProvider: tp,
		MeterProvider:  mp,
		Shared:         shared,
		Admit:          r.fleet.WaitBy,
		Tokens: talend.TokenCacheSettings{
			RefreshBefore: cfg.Talend.TokenRefresh,
			OnCredentials: func(valid bool) {
				credsMu.Lock()
				defer credsMu.Unlock()
				if valid == lastCredsValid {
					return
				}
				lastCredsValid = valid
				if valid {
					log.Info("Talend credentials accepted again; resuming")
				} else {
					log.Error("Talend token endpoint rejects the service-account credentials: not fetching requests until they work; check TALEND_CLIENT_ID / TALEND_CLIENT_SECRET(_FILE) and the account's permissions")
				}
			},
		},
	})
	if err != nil {
		return nil, err
	}
	// The writes every request makes (claim, call record, accepted event)
	// take the lighter path; see internal/jswrite.
	writer := jswrite.New(opts.Conn, 5*time.Second)
	publisher := broker.NewPublisher(js, topo, cfg.Worker.EventSource, tp, mp)
	publisher.UseWriter(writer)
	fcfg := follow.Config{
		MinInterval:    cfg.Worker.FollowMinInterval,
		MaxInterval:    cfg.Worker.FollowMaxInterval,
		StartupLag:     cfg.Worker.FollowStartupLag,
		LeaseTTL:       cfg.Worker.FollowLeaseTTL,
		LogLines:       cfg.Worker.ResultLogLines,
		RejectedIsOK:   cfg.Worker.RejectedIsOK,
		Holder:         holder,
		Logger:         log,
		TracerProvider: tp,
		MeterProvider:  mp,
	}
	if cfg.Worker.ResultLogLines == 0 {
		fcfg.LogLines = -1
	}
	if opts.TuneFollow != nil {
		opts.TuneFollow(&fcfg)
	}
	r.follower = follow.New(fcfg, kv, r.client, publisher)
	wcfg := worker.Config{
		AwaitResult:             cfg.Worker.AwaitResult,
		FollowDeadline:          cfg.Worker.FollowDeadline,
		FollowMargin:            cfg.Worker.FollowMargin,
		ClaimHeartbeat:          cfg.Worker.ClaimHeartbeat,
		ClaimStale:              cfg.Worker.ClaimStale,
		ReconcileSettle:         cfg.Worker.ReconcileSettle,
		ClockSkew:               cfg.Worker.ClockSkew,
		ReconcileTimeout:        cfg.Worker.ReconcileTimeout,
		CallTimeout:             cfg.Talend.Timeout,
		FleetUserID:             cfg.Talend.ServiceUserID,
		Concurrency:             cfg.Worker.Concurrency,
		Prefetch:                prefetch(cfg.Worker.Prefetch),
		AckWait:                 requests.CachedInfo().Config.AckWait,
		ShutdownGrace:           cfg.Worker.ShutdownGrace,
		MaxAttempts:             cfg.Worker.MaxAttempts,
		MaxAge:                  cfg.Worker.MaxAge,
		BackoffMin:              cfg.Worker.BackoffMin,
		BackoffMax:              cfg.Worker.BackoffMax,
		ReadyNeedsBreakerClosed: cfg.Worker.ReadyBreakerClosed,
		StreamCreated:           runs.CachedInfo().Created,
		Decoder:                 messages.Decoder{MaxBody: cfg.Worker.MaxBody},
		Topology:                topo,
		Logger:                  log,
		TracerProvider:          tp,
		MeterProvider:           mp,
	}
	if opts.Tune != nil {
		opts.Tune(&wcfg)
	}
	r.claims = claims.NewStore(kv, holder, nil)
	r.claims.UseWriter(writer)
	r.worker, err = worker.New(wcfg, worker.Deps{
		Talend:           r.client,
		Events:           publisher,
		Attempts:         broker.NewAttempts(kv),
		Follower:         r.follower,
		Claims:           r.claims,
		Slots:            r.slotsDep(),
		Requests:         requests,
		Timers:           timers,
		BreakerOpen:      func() bool { return r.breaker.Open() || r.fleet.BreakerOpenElsewhere() },
		CredentialsValid: r.client.Tokens().CredentialsValid,
		Connected:        opts.Conn.IsConnected,
		Pending: func(ctx context.Context) (uint64, error) {
			info, err := requests.Info(ctx)
			if err != nil {
				return 0, err
			}
			return info.NumPending, nil
		},
	})
	if err != nil {
		r.client.Close()
		return nil, err
	}
	if err := r.listenAdmin(); err != nil {
		r.client.Close()
		return nil, err
	}
	return r, nil
}

// Ready reports whether the worker can take work (the /readyz answer).
func (r *Runner) Ready() error { return r.worker.Ready() }

// Breaker is the Talend circuit breaker.
func (r *Runner) Breaker() *talend.Breaker { return r.breaker }

// AdminAddr is where /healthz and /readyz are served ("" if nowhere).
func (r *Runner) AdminAddr() string {
	if r.adminLn == nil {
		return ""
	}
	return r.adminLn.Addr().String()
}

// Run runs the worker until ctx ends and everything has stopped.
func (r *Runner) Run(ctx context.Context) error {
	defer r.client.Close()
	var adminDone chan error
	if r.admin != nil {
		adminDone = make(chan error, 1)
		go func() { adminDone <- r.admin.Serve(r.adminLn) }()
	}
	// The follower, fleet limits and slots serve the worker: they stop
	// after it, so in-flight calls keep their budget during the drain.
	helperCtx, stopHelpers := context.WithCancel(context.WithoutCancel(ctx))
	var helpers sync.WaitGroup
	var helperErrs []error
	var errMu sync.Mutex
	runHelper := func(f func(context.Context) error) {
		helpers.Go(func() {
			if err := f(helperCtx); err != nil {
				errMu.Lock()
				helperErrs = append(helperErrs, err)
				errMu.Unlock()
			}
		})
	}
	runHelper(r.fleet.Run)
	select {
	case <-r.fleet.Ready():
	case <-time.After(5 * time.Second):
		r.log.Warn("fleet membership not known after 5s; starting with this replica's view")
	case <-ctx.Done():
	}
	if r.slots != nil {
		runHelper(r.slots.Run)
		runHelper(r.collectSlots)
	}
	followCtx, stopFollowing := context.WithCancel(ctx)
	followDone := make(chan error, 1)
	go func() { followDone <- r.follower.Run(followCtx) }()
	err := r.worker.Run(ctx)
	stopFollowing()
	if ferr := <-followDone; ferr != nil {
		err = errors.Join(err, ferr)
	}
	stopHelpers()
	helpers.Wait()
	err = errors.Join(append(helperErrs, err)...)
	if r.admin != nil {
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = r.admin.Shutdown(shutdownCtx)
		cancel()
		if aerr := <-adminDone; aerr != nil && !errors.Is(aerr, http.ErrServerClosed) {
			err = errors.Join(err, fmt.Errorf("admin server: %w", aerr))
		}
	}
	return err
}

func (r *Runner) listenAdmin() error {
	ln := r.opts.AdminListener
	if ln == nil {
		addr := r.opts.Config.Worker.AdminAddr
		if addr == "" {
			return nil
		}
		var err error
		ln, err = net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("admin listener on %s (TMC_ADMIN_ADDR): %w", addr, err)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", r.opts.Metrics.Handler)
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := r.worker.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	r.adminLn = ln
	r.admin = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return nil
}

// prefetch maps TMC_PREFETCH (unset: the worker's default; 0: none) to
// worker.Config.Prefetch (0: default; negative: none).
func prefetch(p *int) int {
	switch {
	case p == nil:
		return 0
	case *p == 0:
		return -1
	}
	return *p
}
