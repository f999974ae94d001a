// Package config reads tmc-runner's settings from the environment
// (caarlos0/env) and validates them, reporting every problem at once.
//
// Conventional names come first (NATS_*, TALEND_*, OTEL_*); everything of
// tmc-runner's own is under TMC_. Secrets may also be given as *_FILE paths,
// which are re-read whenever they are needed so that a rotated Kubernetes
// secret is picked up without a restart.
package config

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"

	"github.com/tmc-runner/tmc-runner/broker"
	"github.com/tmc-runner/tmc-runner/talend"
)

// NATS is how to reach the NATS server.
type NATS struct {
	URL          string `env:"NATS_URL"`
	Creds        string `env:"NATS_CREDS"`
	NKey         string `env:"NATS_NKEY"`
	User         string `env:"NATS_USER"`
	Password     string `env:"NATS_PASSWORD"`
	PasswordFile string `env:"NATS_PASSWORD_FILE"`
	Token        string `env:"NATS_TOKEN"`
	TokenFile    string `env:"NATS_TOKEN_FILE"`
	CA           string `env:"NATS_CA"`
	Cert         string `env:"NATS_CERT"`
	Key          string `env:"NATS_KEY"`
	// InboxPrefix replaces _INBOX for replies: users limited to one route
	// may subscribe only to their own prefix (deployments/nats).
	InboxPrefix string `env:"NATS_INBOX_PREFIX"`
}

// Talend is how to reach Talend Cloud.
type Talend struct {
	APIURL           string        `env:"TALEND_API_URL"`
	Region           string        `env:"TALEND_REGION"`
	ClientID         string        `env:"TALEND_CLIENT_ID"`
	ClientIDFile     string        `env:"TALEND_CLIENT_ID_FILE"`
	ClientSecret     string        `env:"TALEND_CLIENT_SECRET"`
	ClientSecretFile string        `env:"TALEND_CLIENT_SECRET_FILE"`
	CAFile           string        `env:"TALEND_CA_FILE"`
	ServiceUserID    string        `env:"TALEND_SERVICE_USER_ID"`
	Timeout          time.Duration `env:"TMC_TALEND_TIMEOUT" envDefault:"30s"`
	TokenRefresh     time.Duration `env:"TMC_TOKEN_REFRESH_BEFORE" envDefault:"5m"`
	BreakerFailures  uint32        `env:"TMC_BREAKER_FAILURES" envDefault:"5"`
	BreakerOpenFor   time.Duration `env:"TMC_BREAKER_OPEN_FOR" envDefault:"30s"`
}

// Worker tunes the worker and names its JetStream resources.
type Worker struct {
	Concurrency        int           `env:"TMC_CONCURRENCY" envDefault:"64"`
	Prefetch           *int          `env:"TMC_PREFETCH"` // unset: a quarter of Concurrency
	AdminAddr          string        `env:"TMC_ADMIN_ADDR" envDefault:":9090"`
	EventSource        string        `env:"TMC_EVENT_SOURCE" envDefault:"tmc-runner"`
	Provision          bool          `env:"TMC_PROVISION" envDefault:"true"`
	ShutdownGrace      time.Duration `env:"TMC_SHUTDOWN_GRACE" envDefault:"45s"`
	MaxAttempts        int           `env:"TMC_MAX_ATTEMPTS" envDefault:"5"`
	MaxAge             time.Duration `env:"TMC_MAX_AGE" envDefault:"24h"`
	BackoffMin         time.Duration `env:"TMC_BACKOFF_MIN" envDefault:"1s"`
	BackoffMax         time.Duration `env:"TMC_BACKOFF_MAX" envDefault:"5m"`
	MaxBody            int           `env:"TMC_MAX_BODY" envDefault:"65536"`
	ReadyBreakerClosed bool          `env:"TMC_READY_REQUIRES_BREAKER_CLOSED" envDefault:"false"`
	RateLimit          float64       `env:"TMC_RATE_LIMIT" envDefault:"1500"`
	MonitoringLimit    float64       `env:"TMC_MONITORING_RATE_LIMIT" envDefault:"500"`
	MaxRunning         int           `env:"TMC_MAX_RUNNING" envDefault:"0"`
	AwaitResult        bool          `env:"TMC_AWAIT_RESULT" envDefault:"true"`
	FollowMinInterval  time.Duration `env:"TMC_FOLLOW_MIN_INTERVAL" envDefault:"2s"`
	FollowMaxInterval  time.Duration `env:"TMC_FOLLOW_MAX_INTERVAL" envDefault:"30s"`
	FollowStartupLag   time.Duration `env:"TMC_FOLLOW_STARTUP_LAG" envDefault:"30s"`
	FollowDeadline     time.Duration `env:"TMC_FOLLOW_DEADLINE" envDefault:"24h"`
	FollowMargin       time.Duration `env:"TMC_FOLLOW_MARGIN" envDefault:"10m"`
	FollowLeaseTTL     time.Duration `env:"TMC_FOLLOW_LEASE_TTL" envDefault:"15s"`
	ResultLogLines     int           `env:"TMC_RESULT_LOG_LINES" envDefault:"20"`
	RejectedIsOK       bool          `env:"TMC_REJECTED_IS_OK" envDefault:"true"`
	ClaimHeartbeat     time.Duration `env:"TMC_CLAIM_HEARTBEAT" envDefault:"5s"`
	ClaimStale         time.Duration `env:"TMC_CLAIM_STALE" envDefault:"45s"`
	ReconcileSettle    time.Duration `env:"TMC_RECONCILE_SETTLE" envDefault:"10s"`
	ClockSkew          time.Duration `env:"TMC_CLOCK_SKEW" envDefault:"5s"`
	ReconcileTimeout   time.Duration `env:"TMC_RECONCILE_TIMEOUT" envDefault:"10m"`
	LogLevel           string        `env:"TMC_LOG_LEVEL" envDefault:"info"`
	LogFormat          string        `env:"TMC_LOG_FORMAT" envDefault:"json"`

	SubjectPrefix string        `env:"TMC_SUBJECT_PREFIX" envDefault:"tmc.runs"`
	RunsStream    string        `env:"TMC_RUNS_STREAM" envDefault:"TMC_RUNS"`
	TimersStream  string        `env:"TMC_TIMERS_STREAM" envDefault:"TMC_TIMERS"`
	EventsStream  string        `env:"TMC_EVENTS_STREAM" envDefault:"TMC_EVENTS"`
	DeadStream    string        `env:"TMC_DEAD_STREAM" envDefault:"TMC_DEAD"`
	Consumer      string        `env:"TMC_CONSUMER" envDefault:"tmc-runner"`
	ClaimsBucket  string        `env:"TMC_CLAIMS_BUCKET" envDefault:"tmc_claims"`
	TokensBucket  string        `env:"TMC_TOKENS_BUCKET" envDefault:"tmc_tokens"`
	ShareToken    bool          `env:"TMC_SHARE_TOKEN" envDefault:"true"`
	Replicas      int           `env:"TMC_REPLICAS" envDefault:"1"`
	EventsMaxAge  time.Duration `env:"TMC_EVENTS_MAX_AGE" envDefault:"168h"`
	DeadMaxAge    time.Duration `env:"TMC_DEAD_MAX_AGE" envDefault:"720h"`
	ClaimsMaxAge  time.Duration `env:"TMC_CLAIMS_MAX_AGE" envDefault:"720h"`
	AckWait       time.Duration `env:"TMC_ACK_WAIT" envDefault:"30s"`
	MaxAckPending int           `env:"TMC_MAX_ACK_PENDING" envDefault:"20000"`
}

// Config is everything a tmc-runner process reads from its environment.
type Config struct {
	NATS   NATS
	Talend Talend
	Worker Worker
}

// Load reads the environment (environ nil: the process's own) and
// validates it. The error names every problem found.
func Load(environ map[string]string) (Config, error) {
	var cfg Config
	opts := env.Options{Environment: environ}
	var problems []string
	if err := env.ParseWithOptions(&cfg, opts); err != nil {
		var agg env.AggregateError
		if errors.As(err, &agg) {
			for _, e := range agg.Errors {
				problems = append(problems, e.Error())
			}
		} else {
			problems = append(problems, err.Error())
		}
	}
	problems = append(problems, cfg.problems()...)
	if len(problems) > 0 {
		return cfg, &Error{Problems: problems}
	}
	return cfg, nil
}

// Error lists every configuration problem.
type Error struct{ Problems []string }

func (e *Error) Error() string {
	return "invalid configuration:\n  - " + strings.Join(e.Problems, "\n  - ")
}

func (c Config) problems() []string {
	var p []string
	w := c.Worker
	if w.Concurrency < 1 || w.Concurrency > 10000 {
		p = append(p, fmt.Sprintf("TMC_CONCURRENCY=%d: must be between 1 and 10000", w.Concurrency))
	}
	if w.Prefetch != nil && (*w.Prefetch < 0 || *w.Prefetch > 10000) {
		p = append(p, fmt.Sprintf("TMC_PREFETCH=%d: must be between 0 and 10000 (unset: a quarter of TMC_CONCURRENCY)", *w.Prefetch))
	}
	if w.MaxAttempts < 1 {
		p = append(p, "TMC_MAX_ATTEMPTS: must be at least 1")
	}
	if w.BackoffMin <= 0 || w.BackoffMax < w.BackoffMin {
		p = append(p, "TMC_BACKOFF_MIN/TMC_BACKOFF_MAX: need 0 < min <= max")
	}
	if w.AckWait < time.Second {
		p = append(p, "TMC_ACK_WAIT: must be at least 1s")
	}
	if w.FollowMinInterval <= 0 || w.FollowMaxInterval < w.FollowMinInterval {
		p = append(p, "TMC_FOLLOW_MIN_INTERVAL/TMC_FOLLOW_MAX_INTERVAL: need 0 < min <= max")
	}
	if w.ClaimHeartbeat <= 0 || w.ClaimStale < 2*w.ClaimHeartbeat {
		p = append(p, "TMC_CLAIM_STALE: must be at least twice TMC_CLAIM_HEARTBEAT (a slow holder must not be taken for dead)")
	}
	if w.ClaimStale <= c.Talend.Timeout+w.ClaimHeartbeat {
		// A holder cut off from NATS may still be waiting for Talend: its
		// claim must not look dead before that call has timed out.
		p = append(p, "TMC_CLAIM_STALE: must exceed TMC_TALEND_TIMEOUT plus TMC_CLAIM_HEARTBEAT")
	}
	if w.FollowLeaseTTL < 3*time.Second {
		p = append(p, "TMC_FOLLOW_LEASE_TTL: must be at least 3s (far above scheduling jitter)")
	}
	if w.ResultLogLines < 0 || w.ResultLogLines > 200 {
		p = append(p, "TMC_RESULT_LOG_LINES: must be between 0 (off) and 200")
	}
	if w.RateLimit < 0 || w.MonitoringLimit < 0 {
		p = append(p, "TMC_RATE_LIMIT/TMC_MONITORING_RATE_LIMIT: requests per minute, 0 for no limit")
	}
	if w.MaxRunning < 0 || w.MaxRunning > 10000 {
		p = append(p, "TMC_MAX_RUNNING: 0 (no cap) or a number of executions (Talend allows 200 per account)")
	}
	if w.MaxBody < 256 {
		p = append(p, "TMC_MAX_BODY: must be at least 256 bytes")
	}
	if w.Replicas != 1 && w.Replicas != 3 && w.Replicas != 5 {
		p = append(p, fmt.Sprintf("TMC_REPLICAS=%d: must be 1, 3 or 5", w.Replicas))
	}
	if w.ClaimsMaxAge < w.DeadMaxAge {
		p = append(p, "TMC_CLAIMS_MAX_AGE: must not be shorter than TMC_DEAD_MAX_AGE (a redrive checks the original's claim)")
	}
	switch strings.ToLower(w.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		p = append(p, fmt.Sprintf("TMC_LOG_LEVEL=%q: must be debug, info, warn or error", w.LogLevel))
	}
	switch w.LogFormat {
	case "json", "text":
	default:
		p = append(p, fmt.Sprintf("TMC_LOG_FORMAT=%q: must be json or text", w.LogFormat))
	}
	if w.SubjectPrefix == "" || strings.ContainsAny(w.SubjectPrefix, "*> ") {
		p = append(p, "TMC_SUBJECT_PREFIX: must be a literal subject prefix")
	}
	t := c.Talend
	if t.APIURL != "" && t.Region != "" {
		p = append(p, "TALEND_API_URL and TALEND_REGION: set one, not both")
	}
	if t.APIURL != "" {
		if u, err := url.Parse(t.APIURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			p = append(p, "TALEND_API_URL: must be an http(s) URL")
		}
	}
	if t.Region != "" && !validRegion(t.Region) {
		p = append(p, fmt.Sprintf("TALEND_REGION=%q: must be one of %s", t.Region, strings.Join(regions, ", ")))
	}
	if t.ClientID != "" && t.ClientIDFile != "" {
		p = append(p, "TALEND_CLIENT_ID and TALEND_CLIENT_ID_FILE: set one, not both")
	}
	if t.ClientSecret != "" && t.ClientSecretFile != "" {
		p = append(p, "TALEND_CLIENT_SECRET and TALEND_CLIENT_SECRET_FILE: set one, not both")
	}
	if t.Timeout <= 0 {
		p = append(p, "TMC_TALEND_TIMEOUT: must be positive")
	}
	n := c.NATS
	if n.Password != "" && n.PasswordFile != "" {
		p = append(p, "NATS_PASSWORD and NATS_PASSWORD_FILE: set one, not both")
	}
	if n.Token != "" && n.TokenFile != "" {
		p = append(p, "NATS_TOKEN and NATS_TOKEN_FILE: set one, not both")
	}
	if (n.Cert == "") != (n.Key == "") {
		p = append(p, "NATS_CERT and NATS_KEY: set both or neither")
	}
	return p
}

// RequireProduction adds the settings a production worker cannot do
// without: a NATS URL, a Talend API and credentials.
func (c Config) RequireProduction() error {
	var p []string
	if c.NATS.URL == "" {
		p = append(p, "NATS_URL: required")
	}
	if c.Talend.APIURL == "" && c.Talend.Region == "" {
		p = append(p, "TALEND_API_URL or TALEND_REGION: required")
	}
	if c.Talend.ClientID == "" && c.Talend.ClientIDFile == "" {
		p = append(p, "TALEND_CLIENT_ID (or TALEND_CLIENT_ID_FILE): required")
	}
	if c.Talend.ClientSecret == "" && c.Talend.ClientSecretFile == "" {
		p = append(p, "TALEND_CLIENT_SECRET (or TALEND_CLIENT_SECRET_FILE): required")
	}
	for _, f := range []struct{ name, path string }{
		{"TALEND_CLIENT_ID_FILE", c.Talend.ClientIDFile},
		{"TALEND_CLIENT_SECRET_FILE", c.Talend.ClientSecretFile},
		{"TALEND_CA_FILE", c.Talend.CAFile},
		{"NATS_CREDS", c.NATS.Creds},
		{"NATS_NKEY", c.NATS.NKey},
		{"NATS_CA", c.NATS.CA},
		{"NATS_PASSWORD_FILE", c.NATS.PasswordFile},
		{"NATS_TOKEN_FILE", c.NATS.TokenFile},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			p = append(p, fmt.Sprintf("%s=%s: %v", f.name, f.path, errors.Unwrap(err)))
		}
	}
	if len(p) > 0 {
		return &Error{Problems: p}
	}
	return nil
}

var regions = []string{"us", "eu", "ap", "au", "us-west"}

func validRegion(r string) bool {
	for _, v := range regions {
		if v == r {
			return true
		}
	}
	return false
}

// BaseURL is the Talend API root.
func (t Talend) BaseURL() string {
	if t.APIURL != "" {
		return strings.TrimRight(t.APIURL, "/")
	}
	if t.Region != "" {
		return "https://api." + t.Region + ".cloud.talend.com"
	}
	return ""
}

// Credentials returns a function that reads the credentials afresh on every
// call, from the variables or their *_FILE paths.
func (t Talend) Credentials() talend.CredentialsFunc {
	return func() (talend.Credentials, error) {
		id, err := valueOrFile(t.ClientID, t.ClientIDFile)
		if err != nil {
			return talend.Credentials{}, fmt.Errorf("TALEND_CLIENT_ID_FILE: %w", err)
		}
		secret, err := valueOrFile(t.ClientSecret, t.ClientSecretFile)
		if err != nil {
			return talend.Credentials{}, fmt.Errorf("TALEND_CLIENT_SECRET_FILE: %w", err)
		}
		return talend.Credentials{ClientID: id, Secret: secret}, nil
	}
}

func valueOrFile(value, file string) (string, error) {
	if file == "" {
		return value, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// Topology is the JetStream layout these settings name.
func (w Worker) Topology() broker.Topology {
	return broker.Topology{
		RunsStream:    w.RunsStream,
		TimersStream:  w.TimersStream,
		EventsStream:  w.EventsStream,
		DeadStream:    w.DeadStream,
		Consumer:      w.Consumer,
		ClaimsBucket:  w.ClaimsBucket,
		TokensBucket:  w.TokensBucket,
		SubjectPrefix: w.SubjectPrefix,
		Replicas:      w.Replicas,
		EventsMaxAge:  w.EventsMaxAge,
		DeadMaxAge:    w.DeadMaxAge,
		ClaimsMaxAge:  w.ClaimsMaxAge,
		AckWait:       w.AckWait,
		MaxAckPending: w.MaxAckPending,
	}.Defaults()
}
