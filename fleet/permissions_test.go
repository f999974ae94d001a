package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"github.com/tmc-runner/tmc-runner/internal/testlog"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/broker"
	"github.com/tmc-runner/tmc-runner/messages"
	"github.com/tmc-runner/tmc-runner/talendsim"
)

// permissionsConf is the shipped example; the test loads this exact file.
const permissionsConf = "../deployments/nats/permissions.conf"

// Users and passwords of permissions.conf.
var confUsers = map[string]string{
	"worker":            "worker-example-pw",
	"submitter-billing": "submitter-billing-pw",
	"reader-billing":    "reader-billing-pw",
	"reader-all":        "reader-all-pw",
}

// inboxOf is the private inbox prefix each non-worker user must use.
var inboxOf = map[string]string{
	"submitter-billing": "_INBOX_billing",
	"reader-billing":    "_INBOX_reader_billing",
	"reader-all":        "_INBOX_reader_all",
}

// startConfServer runs a nats-server configured by permissions.conf, with
// JetStream storage and a free port set by the test.
func startConfServer(t *testing.T) *server.Server {
	t.Helper()
	opts, err := server.ProcessConfigFile(permissionsConf)
	if err != nil {
		t.Fatalf("%s: %v", permissionsConf, err)
	}
	opts.Host = "127.0.0.1"
	opts.Port = -1
	opts.HTTPPort = 0
	opts.JetStream = true
	opts.StoreDir = t.TempDir()
	opts.NoSigs = true
	opts.ServerName = "perm-test"
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	return srv
}

// client is one user's connection, recording the permission violations the
// server reports to it.
type client struct {
	t    *testing.T
	user string
	nc   *nats.Conn
	js   jetstream.JetStream

	mu         sync.Mutex
	violations []string
}

func connectAs(t *testing.T, url, user string) *client {
	t.Helper()
	c := &client{t: t, user: user}
	opts := []nats.Option{
		nats.UserInfo(user, confUsers[user]),
		nats.Name("fleet-test " + user),
		nats.PermissionErrOnSubscribe(true),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrPermissionViolation) {
				c.mu.Lock()
				c.violations = append(c.violations, err.Error())
				c.mu.Unlock()
			}
		}),
	}
	if p := inboxOf[user]; p != "" {
		opts = append(opts, nats.CustomInboxPrefix(p))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	c.nc = nc
	c.js, err = jetstream.New(nc, jetstream.WithDefaultTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *client) violationList() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.violations...)
}

// expectPubViolation waits for the server's "Permissions Violation for
// Publish to <subject>" for this user; subject is a regular expression
// matched against the whole quoted subject. The violation is the concrete
// refusal: the message never reaches a stream or the JetStream API.
func (c *client) expectPubViolation(subject string) {
	c.t.Helper()
	re := regexp.MustCompile(`Permissions Violation for Publish to "` + subject + `"`)
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, v := range c.violationList() {
			if re.MatchString(v) {
				return
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: no publish violation matching %s; violations: %q", c.user, re, c.violationList())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// expectSubViolation subscribes to subject and expects the server's
// refusal.
func (c *client) expectSubViolation(subject string) {
	c.t.Helper()
	sub, err := c.nc.SubscribeSync(subject)
	if err != nil {
		c.t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	_, err = sub.NextMsg(5 * time.Second)
	if !errors.Is(err, nats.ErrPermissionViolation) || !strings.Contains(err.Error(), `Subscription to "`+subject+`"`) {
		c.t.Fatalf("%s: subscribe to %s: %v, want a permissions violation", c.user, subject, err)
	}
}

// jsAPIError sends a raw JetStream API request and returns its error code
// (0 when the API accepted it).
func (c *client) jsAPIError(subject string, body any) server.ErrorIdentifier {
	c.t.Helper()
	data, err := json.Marshal(body)
	if err != nil {
		c.t.Fatal(err)
	}
	msg, err := c.nc.Request(subject, data, 2*time.Second)
	if err != nil {
		c.t.Fatalf("%s: request %s: %v", c.user, subject, err)
	}
	var resp struct {
		Error *struct {
			Code    int    `json:"code"`
			ErrCode uint16 `json:"err_code"`
			Desc    string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		c.t.Fatalf("%s: %s answered %q: %v", c.user, subject, msg.Data, err)
	}
	if resp.Error == nil {
		return 0
	}
	c.t.Logf("%s: %s: %d %s", c.user, subject, resp.Error.ErrCode, resp.Error.Desc)
	return server.ErrorIdentifier(resp.Error.ErrCode)
}

// watch creates an ordered consumer on TMC_EVENTS as `submit --wait` does.
func (c *client) watch(filter string) jetstream.Consumer {
	c.t.Helper()
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy, MaxResetAttempts: 1}
	if filter != "" {
		cfg.FilterSubjects = []string{filter}
	}
	cons, err := c.js.OrderedConsumer(context.Background(), "TMC_EVENTS", cfg)
	if err != nil {
		c.t.Fatalf("%s: ordered consumer on %q: %v", c.user, filter, err)
	}
	return cons
}

// readUntil fetches events from cons until done says so.
func (c *client) readUntil(cons jetstream.Consumer, timeout time.Duration, done func([]*messages.Event) bool) []*messages.Event {
	c.t.Helper()
	var evs []*messages.Event
	deadline := time.Now().Add(timeout)
	for !done(evs) {
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: events so far %v", c.user, typesOf(evs))
		}
		batch, err := cons.Fetch(50, jetstream.FetchMaxWait(500*time.Millisecond))
		if err != nil {
			c.t.Fatalf("%s: fetch: %v", c.user, err)
		}
		for m := range batch.Messages() {
			ev, err := messages.DecodeEvent(m.Data())
			if err != nil {
				c.t.Fatalf("event on %s: %v", m.Subject(), err)
			}
			evs = append(evs, ev)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) {
			c.t.Fatalf("%s: fetch: %v", c.user, err)
		}
	}
	return evs
}

// createEventsConsumer asks for an ephemeral consumer on TMC_EVENTS as an
// ordered consumer would (one filter: the filtered create subject).
func (c *client) createEventsConsumer(name, filter string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := c.js.CreateConsumer(ctx, "TMC_EVENTS", jetstream.ConsumerConfig{
		Name: name, FilterSubject: filter, AckPolicy: jetstream.AckNonePolicy,
		InactiveThreshold: 5 * time.Minute, MemoryStorage: true, Replicas: 1,
	})
	return err
}

func hasTerminalFor(id string) func([]*messages.Event) bool {
	return func(evs []*messages.Event) bool {
		for _, e := range evs {
			if e.RequestID == id && isTerminal(e) {
				return true
			}
		}
		return false
	}
}

// The permission sets of deployments/nats/permissions.conf, on a real
// server with a real worker: each role can do its job and nothing more.
func TestPermissions(t *testing.T) {
	srv := startConfServer(t)
	url := srv.ClientURL()
	sim, simURL := startSim(t, talendsim.Options{})
	sim.SetBehaviour("missing-task", talendsim.Behaviour{Missing: true})

	// The worker provisions and runs with the worker user only. Results
	// are followed, so claims, leases, key-value watches, status reads and
	// results all run under the worker's permissions.
	w := connectAs(t, url, "worker")
	cfg := workerConfig(t, simURL, map[string]string{"TMC_AWAIT_RESULT": "true"})
	topo := cfg.Worker.Topology()
	if err := broker.Provision(context.Background(), w.js, topo); err != nil {
		t.Fatalf("provision as worker: %v", err)
	}
	logs := &testlog.Buffer{}
	startWorker(t, cfg, w.nc, logs)

	sub := connectAs(t, url, "submitter-billing")
	readerBilling := connectAs(t, url, "reader-billing")
	readerAll := connectAs(t, url, "reader-all")
	ctx := context.Background()

	// A request of another route, published by the worker user (the
	// submitter cannot), so that there are foreign events to refuse.
	otherID := "other-req-1"
	if _, err := w.js.PublishMsg(ctx, &nats.Msg{Subject: topo.RequestSubject("other"), Data: requestBody(t, otherID, "task-other", nil)}); err != nil {
		t.Fatalf("worker publishes to route other: %v", err)
	}

	t.Run("submitter", func(t *testing.T) {
		sub.t = t
		id := "billing-req-1"
		// Watch before publishing, as `submit --wait` does.
		watch := sub.watch(topo.EventsFilter("billing", id))
		ack, err := sub.js.PublishMsg(ctx, &nats.Msg{
			Subject: topo.RequestSubject("billing"),
			Header:  nats.Header{nats.MsgIdHdr: []string{id}},
			Data:    requestBody(t, id, "task-billing", map[string]any{"parameters": map[string]string{"p": "v"}}),
		})
		if err != nil {
			t.Fatalf("publish to %s: %v", topo.RequestSubject("billing"), err)
		}
		if ack.Stream != topo.RunsStream {
			t.Fatalf("request stored in %q", ack.Stream)
		}
		evs := sub.readUntil(watch, 30*time.Second, hasTerminalFor(id))
		last := evs[len(evs)-1]
		if last.Type != messages.Result || last.OK == nil || !*last.OK || last.Route != "billing" {
			t.Fatalf("events %v, last %+v: want a successful result on route billing", typesOf(evs), last)
		}
		for _, e := range evs {
			if e.RequestID != id {
				t.Errorf("watch of %s saw an event of %s", id, e.RequestID)
			}
		}
		if n := sim.Stats().Executions["task-billing"]; n != 1 {
			t.Errorf("%d executions of the submitted task, want 1", n)
		}

		// `status`: the stream's count, then the last event by subject
		// (a direct get).
		s, err := sub.js.Stream(ctx, topo.EventsStream)
		if err != nil {
			t.Fatalf("events stream info: %v", err)
		}
		raw, err := s.GetLastMsgForSubject(ctx, topo.EventsPrefix()+".billing."+id+".accepted")
		if err != nil {
			t.Fatalf("direct get of own event: %v", err)
		}
		if ev, err := messages.DecodeEvent(raw.Data); err != nil || ev.Type != messages.Accepted {
			t.Fatalf("direct get: %v %v", ev, err)
		}

		// A cancellation of its own route is accepted by the stream.
		if _, err := sub.js.PublishMsg(ctx, &nats.Msg{Subject: topo.CancelSubject("billing", "never-sent-1")}); err != nil {
			t.Fatalf("cancel on own route: %v", err)
		}

		// Another route's request subject: refused by the server.
		tctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_, err = sub.js.PublishMsg(tctx, &nats.Msg{Subject: topo.RequestSubject("other"), Data: requestBody(t, "sneaky-1", "task-sneaky", nil)})
		cancel()
		if err == nil {
			t.Fatal("publish to route other was acknowledged")
		}
		sub.expectPubViolation(regexp.QuoteMeta(topo.RequestSubject("other")))
		if err := sub.nc.Publish(topo.CancelSubject("other", otherID), nil); err != nil {
			t.Fatal(err)
		}
		sub.expectPubViolation(regexp.QuoteMeta(topo.CancelSubject("other", otherID)))
		// Nor can it forge events, dead letters or timers.
		for _, subj := range []string{topo.EventsPrefix() + ".billing." + id + ".accepted", topo.DeadSubject("billing", id), topo.TimerDueSubject(id)} {
			if err := sub.nc.Publish(subj, []byte("{}")); err != nil {
				t.Fatal(err)
			}
			sub.expectPubViolation(regexp.QuoteMeta(subj))
		}

		// Events of another route, or of all routes: no consumer.
		if err := sub.createEventsConsumer("sub-other", topo.EventsPrefix()+".other.>"); err == nil {
			t.Fatal("consumer on route other's events created")
		}
		sub.expectPubViolation(regexp.QuoteMeta("$JS.API.CONSUMER.CREATE.TMC_EVENTS.sub-other.tmc.runs.events.other.>"))
		if err := sub.createEventsConsumer("sub-all", ""); err == nil {
			t.Fatal("unfiltered consumer on events created")
		}
		sub.expectPubViolation(regexp.QuoteMeta("$JS.API.CONSUMER.CREATE.TMC_EVENTS.sub-all"))
		if err := sub.createEventsConsumer("sub-wild", topo.EventsPrefix()+".*.>"); err == nil {
			t.Fatal("consumer on every route's events created")
		}
		sub.expectPubViolation(regexp.QuoteMeta("$JS.API.CONSUMER.CREATE.TMC_EVENTS.sub-wild.tmc.runs.events.*.>"))
		if err := sub.createEventsConsumer("sub-type", topo.EventsPrefix()+".*.*.result"); err == nil {
			t.Fatal("consumer on one type of every route created")
		}
		sub.expectPubViolation(regexp.QuoteMeta("$JS.API.CONSUMER.CREATE.TMC_EVENTS.sub-type.tmc.runs.events.*.*.result"))
		// The allowed create subject with a wider filter in the body: the
		// JetStream API refuses it.
		if code := sub.jsAPIError("$JS.API.CONSUMER.CREATE.TMC_EVENTS.sneaky.tmc.runs.events.billing.>", map[string]any{
			"stream_name": "TMC_EVENTS",
			"config":      map[string]any{"name": "sneaky", "filter_subject": "tmc.runs.events.>", "ack_policy": "none"},
		}); code != server.JSConsumerCreateFilterSubjectMismatchErr {
			t.Fatalf("create with a wider body filter: error %d, want %d", code, server.JSConsumerCreateFilterSubjectMismatchErr)
		}
		if code := sub.jsAPIError("$JS.API.CONSUMER.CREATE.TMC_EVENTS.sneaky2.tmc.runs.events.billing.>", map[string]any{
			"stream_name": "TMC_EVENTS",
			"config": map[string]any{"name": "sneaky2", "ack_policy": "none",
				"filter_subjects": []string{"tmc.runs.events.billing.>", "tmc.runs.events.other.>"}},
		}); code != server.JSConsumerMultipleFiltersNotAllowed {
			t.Fatalf("create with extra body filters: error %d, want %d", code, server.JSConsumerMultipleFiltersNotAllowed)
		}
		// Direct gets of another route's events, and by sequence (which
		// could name any message), are refused.
		if _, err := sub.nc.Request("$JS.API.DIRECT.GET.TMC_EVENTS."+topo.EventsPrefix()+".other."+otherID+".accepted", nil, 300*time.Millisecond); err == nil {
			t.Fatal("direct get of route other's event answered")
		}
		sub.expectPubViolation(regexp.QuoteMeta("$JS.API.DIRECT.GET.TMC_EVENTS.tmc.runs.events.other." + otherID + ".accepted"))
		for _, subj := range []string{"$JS.API.DIRECT.GET.TMC_EVENTS", "$JS.API.STREAM.MSG.GET.TMC_EVENTS"} {
			if _, err := sub.nc.Request(subj, []byte(`{"seq":1}`), 300*time.Millisecond); err == nil {
				t.Fatalf("%s answered", subj)
			}
			sub.expectPubViolation(regexp.QuoteMeta(subj))
		}

		// The request stream: no consumer, no pull from tmc-runner.
		if _, err := sub.js.Consumer(ctx, topo.RunsStream, topo.Consumer); err == nil {
			t.Fatal("consumer tmc-runner looked up")
		}
		sub.expectPubViolation(regexp.QuoteMeta("$JS.API.CONSUMER.INFO.TMC_RUNS.tmc-runner"))
		if _, err := sub.nc.Request("$JS.API.CONSUMER.MSG.NEXT.TMC_RUNS.tmc-runner", []byte(`{"batch":1,"expires":100000000}`), 300*time.Millisecond); err == nil {
			t.Fatal("pull from tmc-runner answered")
		}
		sub.expectPubViolation(regexp.QuoteMeta("$JS.API.CONSUMER.MSG.NEXT.TMC_RUNS.tmc-runner"))
		cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_, err = sub.js.CreateConsumer(cctx, topo.RunsStream, jetstream.ConsumerConfig{Name: "steal", FilterSubject: topo.RequestSubject("billing")})
		cancel()
		if err == nil {
			t.Fatal("consumer on TMC_RUNS created")
		}
		sub.expectPubViolation(regexp.QuoteMeta("$JS.API.CONSUMER.CREATE.TMC_RUNS.steal.tmc.runs.request.billing"))
		// Nor the dead letters.
		if _, err := sub.js.Stream(ctx, topo.DeadStream); err == nil {
			t.Fatal("dead-letter stream info answered")
		}
		sub.expectPubViolation(regexp.QuoteMeta("$JS.API.STREAM.INFO.TMC_DEAD"))

		// The buckets: claims and the token cache.
		if _, err := sub.js.KeyValue(ctx, topo.ClaimsBucket); err == nil {
			t.Fatal("claims bucket opened")
		}
		sub.expectPubViolation(regexp.QuoteMeta("$JS.API.STREAM.INFO.KV_tmc_claims"))
		for _, subj := range []string{
			"$JS.API.DIRECT.GET.KV_tmc_claims.$KV.tmc_claims." + id,
			"$JS.API.DIRECT.GET.KV_tmc_claims",
			"$JS.API.STREAM.MSG.GET.KV_tmc_claims",
			"$JS.API.DIRECT.GET.KV_tmc_tokens.$KV.tmc_tokens.token",
			"$JS.API.STREAM.MSG.GET.KV_tmc_tokens",
		} {
			if _, err := sub.nc.Request(subj, []byte(`{"seq":1}`), 300*time.Millisecond); err == nil {
				t.Fatalf("%s answered", subj)
			}
			sub.expectPubViolation(regexp.QuoteMeta(subj))
		}
		if err := sub.nc.Publish("$KV.tmc_claims."+id, []byte("forged")); err != nil {
			t.Fatal(err)
		}
		sub.expectPubViolation(regexp.QuoteMeta("$KV.tmc_claims." + id))

		// Core subscriptions that would see requests, events, claims or
		// anyone's replies (the worker's deliveries arrive on _INBOX.).
		for _, subj := range []string{"_INBOX.>", "tmc.runs.request.>", "tmc.runs.events.other.>", "tmc.runs.events.billing.>", "$KV.tmc_claims.>", "$KV.tmc_tokens.>", ">"} {
			sub.expectSubViolation(subj)
		}
	})

	t.Run("reader-billing", func(t *testing.T) {
		readerBilling.t = t
		id := "billing-req-1"
		evs := readerBilling.readUntil(readerBilling.watch(topo.EventsPrefix()+".billing.>"), 10*time.Second, hasTerminalFor(id))
		for _, e := range evs {
			if e.Route != "billing" {
				t.Errorf("reader-billing saw %s of route %s", e.Type, e.Route)
			}
		}
		s, err := readerBilling.js.Stream(ctx, topo.EventsStream)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetLastMsgForSubject(ctx, topo.EventsPrefix()+".billing."+id+".result"); err != nil {
			t.Fatalf("direct get: %v", err)
		}
		if err := readerBilling.nc.Publish(topo.RequestSubject("billing"), requestBody(t, "reader-req", "x", nil)); err != nil {
			t.Fatal(err)
		}
		readerBilling.expectPubViolation(regexp.QuoteMeta(topo.RequestSubject("billing")))
		if err := readerBilling.nc.Publish(topo.CancelSubject("billing", id), nil); err != nil {
			t.Fatal(err)
		}
		readerBilling.expectPubViolation(regexp.QuoteMeta(topo.CancelSubject("billing", id)))
		if err := readerBilling.createEventsConsumer("rb-other", topo.EventsPrefix()+".other.>"); err == nil {
			t.Fatal("consumer on route other's events created")
		}
		readerBilling.expectPubViolation(regexp.QuoteMeta("$JS.API.CONSUMER.CREATE.TMC_EVENTS.rb-other.tmc.runs.events.other.>"))
		if _, err := readerBilling.js.KeyValue(ctx, topo.ClaimsBucket); err == nil {
			t.Fatal("claims bucket opened")
		}
		readerBilling.expectPubViolation(regexp.QuoteMeta("$JS.API.STREAM.INFO.KV_tmc_claims"))
		readerBilling.expectSubViolation("_INBOX.>")
	})

	t.Run("reader-all", func(t *testing.T) {
		readerAll.t = t
		evs := readerAll.readUntil(readerAll.watch(""), 30*time.Second, func(evs []*messages.Event) bool {
			return hasTerminalFor("billing-req-1")(evs) && hasTerminalFor(otherID)(evs)
		})
		routes := map[string]bool{}
		for _, e := range evs {
			routes[e.Route] = true
		}
		if !routes["billing"] || !routes["other"] {
			t.Fatalf("reader-all saw routes %v", routes)
		}
		// One type across routes (several filters: unfiltered create form).
		cons, err := readerAll.js.OrderedConsumer(ctx, topo.EventsStream, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{topo.EventsPrefix() + ".*.*.result", topo.EventsPrefix() + ".*.*.accepted"},
		})
		if err != nil {
			t.Fatal(err)
		}
		readerAll.readUntil(cons, 10*time.Second, hasTerminalFor(otherID))
		s, err := readerAll.js.Stream(ctx, topo.EventsStream)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetLastMsgForSubject(ctx, topo.EventsPrefix()+".other."+otherID+".accepted"); err != nil {
			t.Fatalf("direct get of route other: %v", err)
		}
		if _, err := s.GetMsg(ctx, 1); err != nil {
			t.Fatalf("get by sequence: %v", err)
		}
		if err := readerAll.nc.Publish(topo.RequestSubject("other"), requestBody(t, "reader-all-req", "x", nil)); err != nil {
			t.Fatal(err)
		}
		readerAll.expectPubViolation(regexp.QuoteMeta(topo.RequestSubject("other")))
		if _, err := readerAll.js.Stream(ctx, topo.RunsStream); err == nil {
			t.Fatal("request stream info answered")
		}
		readerAll.expectPubViolation(regexp.QuoteMeta("$JS.API.STREAM.INFO.TMC_RUNS"))
		if _, err := readerAll.js.KeyValue(ctx, topo.ClaimsBucket); err == nil {
			t.Fatal("claims bucket opened")
		}
		readerAll.expectPubViolation(regexp.QuoteMeta("$JS.API.STREAM.INFO.KV_tmc_claims"))
	})

	t.Run("worker", func(t *testing.T) {
		w.t = t
		// Dead letters and deferred starts (timers) under the worker's
		// permissions too.
		for _, r := range []struct {
			id, exec string
			extra    map[string]any
		}{
			{"w-missing", "missing-task", nil},
			{"w-deferred", "task-deferred", map[string]any{"notBefore": time.Now().Add(4 * time.Second).UTC().Format(time.RFC3339Nano)}},
		} {
			if _, err := w.js.PublishMsg(ctx, &nats.Msg{Subject: topo.RequestSubject("ops"), Data: requestBody(t, r.id, r.exec, r.extra)}); err != nil {
				t.Fatal(err)
			}
		}
		var evs map[string][]*messages.Event
		eventually(t, 30*time.Second, "terminal events of the worker's requests", func() bool {
			evs = readEvents(t, w.js, topo.EventsStream, "")
			return terminals(evs["w-missing"]) == 1 && terminals(evs["w-deferred"]) == 1
		})
		if e := evs["w-missing"]; e[len(e)-1].Type != messages.Failed {
			t.Errorf("w-missing: %v, want failed", typesOf(e))
		}
		if e := evs["w-deferred"]; e[len(e)-1].Type != messages.Result {
			t.Errorf("w-deferred: %v, want result", typesOf(e))
		}
		dead, err := w.js.Stream(ctx, topo.DeadStream)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := dead.GetLastMsgForSubject(ctx, topo.DeadSubject("ops", "w-missing")); err != nil {
			t.Errorf("dead letter: %v", err)
		}
		// Everything the worker did, it was allowed to do.
		if v := w.violationList(); len(v) > 0 {
			t.Errorf("worker hit permission violations: %q", v)
		}
		if n := strings.Count(logs.String(), "ermission"); n > 0 {
			t.Errorf("worker log mentions permissions %d times:\n%s", n, logs.Tail(20))
		}
	})
}
