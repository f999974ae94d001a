package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Topology names and sizes everything tmc-runner keeps in JetStream. The
// zero value of a field means the DESIGN.md default (see Defaults).
type Topology struct {
	RunsStream     string // TMC_RUNS
	TimersStream   string // TMC_TIMERS
	EventsStream   string // TMC_EVENTS
	DeadStream     string // TMC_DEAD
	Consumer       string // tmc-runner, the durable shared by all replicas
	TimersConsumer string // tmc-runner-timers, moves due timers
	ClaimsBucket   string // tmc_claims
	TokensBucket   string // tmc_tokens: the fleet's encrypted Talend token

	SubjectPrefix string // "tmc.runs": requests are <prefix>.request.<route>

	Replicas        int           // 1 in dev, 3 in production
	EventsMaxAge    time.Duration // 7 days
	DeadMaxAge      time.Duration // 30 days
	ClaimsMaxAge    time.Duration // at least DeadMaxAge
	AckWait         time.Duration // of the request consumer, 30s
	MaxAckPending   int           // of the request consumer, across replicas
	DuplicateWindow time.Duration // Nats-Msg-Id de-duplication window, 2 minutes
}

// Defaults fills zero fields with the defaults of DESIGN.md.
func (t Topology) Defaults() Topology {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&t.RunsStream, "TMC_RUNS")
	def(&t.TimersStream, "TMC_TIMERS")
	def(&t.EventsStream, "TMC_EVENTS")
	def(&t.DeadStream, "TMC_DEAD")
	def(&t.Consumer, "tmc-runner")
	def(&t.TimersConsumer, "tmc-runner-timers")
	def(&t.ClaimsBucket, "tmc_claims")
	def(&t.TokensBucket, "tmc_tokens")
	def(&t.SubjectPrefix, "tmc.runs")
	if t.Replicas <= 0 {
		t.Replicas = 1
	}
	if t.EventsMaxAge <= 0 {
		t.EventsMaxAge = 7 * 24 * time.Hour
	}
	if t.DeadMaxAge <= 0 {
		t.DeadMaxAge = 30 * 24 * time.Hour
	}
	if t.ClaimsMaxAge < t.DeadMaxAge {
		t.ClaimsMaxAge = t.DeadMaxAge
	}
	if t.AckWait <= 0 {
		t.AckWait = 30 * time.Second
	}
	if t.MaxAckPending == 0 {
		// JetStream's default of 1000 would cap a fleet's concurrency far
		// below what Talend allows; the workers bound themselves.
		t.MaxAckPending = 20000
	}
	if t.DuplicateWindow <= 0 {
		t.DuplicateWindow = 2 * time.Minute
	}
	return t
}

// RequestSubject is where run requests of route are published.
func (t Topology) RequestSubject(route string) string {
	return t.SubjectPrefix + ".request." + route
}

// CancelSubject is where cancellations of one request are published.
func (t Topology) CancelSubject(route, requestID string) string {
	return t.SubjectPrefix + ".cancel." + route + "." + requestID
}

// EventsPrefix is the subject prefix of events.
func (t Topology) EventsPrefix() string { return t.SubjectPrefix + ".events" }

// EventsFilter selects every event of one request.
func (t Topology) EventsFilter(route, requestID string) string {
	return t.EventsPrefix() + "." + route + "." + requestID + ".>"
}

// DeadSubject is where the original message of a failed request is kept.
func (t Topology) DeadSubject(route, requestID string) string {
	return t.SubjectPrefix + ".dead." + route + "." + requestID
}

// TimerSubject holds the schedule of one request's deferred start.
func (t Topology) TimerSubject(requestID string) string {
	return t.SubjectPrefix + ".timer.sched." + requestID
}

// TimerDueSubject is where a schedule delivers when due.
func (t Topology) TimerDueSubject(requestID string) string {
	return t.SubjectPrefix + ".timer.due." + requestID
}

// RouteOfRequestSubject returns the route of a request subject, or "".
func (t Topology) RouteOfRequestSubject(subject string) string {
	route, ok := strings.CutPrefix(subject, t.SubjectPrefix+".request.")
	if !ok {
		return ""
	}
	return route
}

// IsCancelSubject reports whether subject is a cancellation.
func (t Topology) IsCancelSubject(subject string) bool {
	return strings.HasPrefix(subject, t.SubjectPrefix+".cancel.")
}

// Streams returns the stream configurations tmc-runner expects.
func (t Topology) Streams() []jetstream.StreamConfig {
	p := t.SubjectPrefix
	return []jetstream.StreamConfig{
		{
			Name:        t.RunsStream,
			Description: "tmc-runner run requests and cancellations",
			Subjects:    []string{p + ".request.*", p + ".cancel.*.*"},
			Retention:   jetstream.WorkQueuePolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    t.Replicas,
			Duplicates:  t.DuplicateWindow,
			Discard:     jetstream.DiscardOld,
		},
		{
			Name:              t.TimersStream,
			Description:       "tmc-runner durable timers (deferred starts, follow-ups)",
			Subjects:          []string{p + ".timer.>"},
			Retention:         jetstream.WorkQueuePolicy,
			Storage:           jetstream.FileStorage,
			Replicas:          t.Replicas,
			Duplicates:        t.DuplicateWindow,
			AllowMsgSchedules: true,
		},
		{
			Name:        t.EventsStream,
			Description: "tmc-runner events about run requests",
			Subjects:    []string{p + ".events.>"},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    t.Replicas,
			MaxAge:      t.EventsMaxAge,
			Duplicates:  t.DuplicateWindow,
			// Reading one subject's last message (event confirmation,
			// `status`, `submit --wait`) is a direct get on any replica.
			AllowDirect: true,
		},
		{
			Name:        t.DeadStream,
			Description: "tmc-runner dead letters: original messages of failed requests",
			Subjects:    []string{p + ".dead.*.*"},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    t.Replicas,
			MaxAge:      t.DeadMaxAge,
			Duplicates:  t.DuplicateWindow,
			AllowDirect: true,
		},
	}
}

// Consumers returns the durable consumers tmc-runner expects, by stream.
func (t Topology) Consumers() map[string]jetstream.ConsumerConfig {
	return map[string]jetstream.ConsumerConfig{
		t.RunsStream: {
			Durable:     t.Consumer,
			Description: "tmc-runner workers (shared by all replicas)",
			AckPolicy:   jetstream.AckExplicitPolicy,
			// Unlimited: the worker, not the server, decides when to give up,
			// because systemic faults must never count as attempts.
			MaxDeliver:    -1,
			AckWait:       t.AckWait,
			MaxAckPending: t.MaxAckPending,
			DeliverPolicy: jetstream.DeliverAllPolicy,
			Replicas:      t.Replicas,
		},
		t.TimersStream: {
			Durable:       t.TimersConsumer,
			Description:   "tmc-runner timer mover (shared by all replicas)",
			AckPolicy:     jetstream.AckExplicitPolicy,
			MaxDeliver:    -1,
			AckWait:       t.AckWait,
			FilterSubject: t.SubjectPrefix + ".timer.due.>",
			DeliverPolicy: jetstream.DeliverAllPolicy,
			Replicas:      t.Replicas,
		},
	}
}

// Buckets returns the KV bucket configurations.
func (t Topology) Buckets() []jetstream.KeyValueConfig {
	return []jetstream.KeyValueConfig{{
		Bucket:      t.ClaimsBucket,
		Description: "tmc-runner idempotency claims, execution owners, follow-ups, leases",
		History:     1,
		TTL:         t.ClaimsMaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
	}, {
		Bucket:      t.TokensBucket,
		Description: "tmc-runner fleet-wide Talend token (encrypted) and its refresh lease",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
	}}
}

// ErrConflict is returned by Provision when an existing stream, consumer or
// bucket differs from the contract.
var ErrConflict = errors.New("existing JetStream resource differs from what tmc-runner expects")

// Provision creates what is missing and verifies what exists. It never
// changes an existing resource: a difference in a contract setting is
// reported, all of them in one error, and the caller must refuse to start.
func Provision(ctx context.Context, js jetstream.JetStream, t Topology) error {
	var diffs []string
	for _, want := range t.Streams() {
		stream, err := js.Stream(ctx, want.Name)
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound):
			if _, err := js.CreateStream(ctx, want); err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				return fmt.Errorf("create stream %s: %w", want.Name, err)
			}
			continue
		case err != nil:
			return fmt.Errorf("look up stream %s: %w", want.Name, err)
		}
		diffs = append(diffs, streamDiffs(want, stream.CachedInfo().Config)...)
	}
	for streamName, want := range t.Consumers() {
		cons, err := js.Consumer(ctx, streamName, want.Durable)
		switch {
		case errors.Is(err, jetstream.ErrConsumerNotFound):
			if _, err := js.CreateConsumer(ctx, streamName, want); err != nil && !errors.Is(err, jetstream.ErrConsumerExists) {
				return fmt.Errorf("create consumer %s on %s: %w", want.Durable, streamName, err)
			}
			continue
		case err != nil:
			return fmt.Errorf("look up consumer %s on %s: %w", want.Durable, streamName, err)
		}
		diffs = append(diffs, consumerDiffs(streamName, want, cons.CachedInfo().Config)...)
	}
	for _, want := range t.Buckets() {
		kv, err := js.KeyValue(ctx, want.Bucket)
		switch {
		case errors.Is(err, jetstream.ErrBucketNotFound):
			if _, err := js.CreateKeyValue(ctx, want); err != nil && !errors.Is(err, jetstream.ErrBucketExists) {
				return fmt.Errorf("create bucket %s: %w", want.Bucket, err)
			}
			continue
		case err != nil:
			return fmt.Errorf("look up bucket %s: %w", want.Bucket, err)
		}
		status, err := kv.Status(ctx)
		if err != nil {
			return fmt.Errorf("bucket %s status: %w", want.Bucket, err)
		}
		diffs = append(diffs, bucketDiffs(want, status)...)
	}
	if len(diffs) > 0 {
		return fmt.Errorf("%w:\n  %s", ErrConflict, strings.Join(diffs, "\n  "))
	}
	return nil
}

func streamDiffs(want, got jetstream.StreamConfig) []string {
	var d []string
	add := func(field string, w, g any) {
		d = append(d, fmt.Sprintf("stream %s: %s is %v, expected %v", want.Name, field, g, w))
	}
	if !slices.Equal(sorted(want.Subjects), sorted(got.Subjects)) {
		add("subjects", want.Subjects, got.Subjects)
	}
	if want.Retention != got.Retention {
		add("retention", want.Retention, got.Retention)
	}
	if want.Storage != got.Storage {
		add("storage", want.Storage, got.Storage)
	}
	if want.Replicas != max(got.Replicas, 1) {
		add("replicas", want.Replicas, got.Replicas)
	}
	if want.MaxAge != got.MaxAge {
		add("max age", want.MaxAge, got.MaxAge)
	}
	if want.AllowMsgSchedules && !got.AllowMsgSchedules {
		add("message schedules", true, false)
	}
	if got.MaxMsgs > 0 || got.MaxBytes > 0 || got.MaxMsgsPerSubject > 0 {
		// Limits would silently drop requests or events.
		add("limits (max msgs/bytes/per subject)", "none", fmt.Sprintf("%d/%d/%d", got.MaxMsgs, got.MaxBytes, got.MaxMsgsPerSubject))
	}
	return d
}

func consumerDiffs(stream string, want, got jetstream.ConsumerConfig) []string {
	var d []string
	add := func(field string, w, g any) {
		d = append(d, fmt.Sprintf("consumer %s on %s: %s is %v, expected %v", want.Durable, stream, field, g, w))
	}
	if want.AckPolicy != got.AckPolicy {
		add("ack policy", want.AckPolicy, got.AckPolicy)
	}
	if want.MaxDeliver != got.MaxDeliver {
		add("max deliver", want.MaxDeliver, got.MaxDeliver)
	}
	if want.FilterSubject != got.FilterSubject || len(got.FilterSubjects) > 0 {
		add("filter subject", want.FilterSubject, got.FilterSubject+strings.Join(got.FilterSubjects, ","))
	}
	if want.DeliverPolicy != got.DeliverPolicy {
		add("deliver policy", want.DeliverPolicy, got.DeliverPolicy)
	}
	if got.DeliverSubject != "" {
		add("type", "pull", "push")
	}
	return d
}

func bucketDiffs(want jetstream.KeyValueConfig, got jetstream.KeyValueStatus) []string {
	var d []string
	add := func(field string, w, g any) {
		d = append(d, fmt.Sprintf("bucket %s: %s is %v, expected %v", want.Bucket, field, g, w))
	}
	if got.History() != int64(want.History) {
		add("history", want.History, got.History())
	}
	if got.TTL() != want.TTL {
		add("ttl", want.TTL, got.TTL())
	}
	if info, ok := got.(*jetstream.KeyValueBucketStatus); ok {
		cfg := info.StreamInfo().Config
		if cfg.Replicas != want.Replicas {
			add("replicas", want.Replicas, cfg.Replicas)
		}
		if cfg.Storage != want.Storage {
			add("storage", want.Storage, cfg.Storage)
		}
	}
	return d
}

func sorted(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}
