package talend

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/sony/gobreaker/v2"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// instruments are the client's metrics. Label values are fixed words and
// status classes: never an id, a URL or a value from a request.
type instruments struct {
	callDuration metric.Float64Histogram
	tokenFetches metric.Int64Counter
}

func newInstruments(mp metric.MeterProvider) *instruments {
	if mp == nil {
		mp = noop.NewMeterProvider()
	}
	m := mp.Meter("github.com/tmc-runner/tmc-runner/talend")
	in := &instruments{}
	// Errors creating instruments only happen for invalid names, which
	// these are not; a nil-safe noop instrument is kept then.
	in.callDuration, _ = m.Float64Histogram("tmc.talend.call.duration",
		metric.WithDescription("Duration of Talend API calls by operation and HTTP status class"),
		metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
	in.tokenFetches, _ = m.Int64Counter("tmc.talend.token.fetches",
		metric.WithDescription("Service-account token requests by result (ok, error, credentials_rejected)"),
		metric.WithUnit("{request}"))
	return in
}

func (in *instruments) call(ctx context.Context, op string, started time.Time, status int, err error) {
	in.callDuration.Record(ctx, time.Since(started).Seconds(), metric.WithAttributes(
		attribute.String("operation", op), attribute.String("status_class", statusClass(status, err))))
}

func (in *instruments) token(ctx context.Context, err error) {
	result := "ok"
	switch {
	case errors.Is(err, ErrCredentials):
		result = "credentials_rejected"
	case err != nil:
		result = "error"
	}
	in.tokenFetches.Add(ctx, 1, metric.WithAttributes(attribute.String("result", result)))
}

func statusClass(status int, err error) string {
	switch {
	case errors.Is(err, ErrBreakerOpen):
		return "breaker_open"
	case status == 0:
		return "error"
	}
	return strconv.Itoa(status/100) + "xx"
}

// BreakerMetrics registers the breaker's state gauge (0 closed, 1
// half-open, 2 open) and returns the transition recorder to pass as
// OnStateChange.
func BreakerMetrics(mp metric.MeterProvider, b func() *Breaker) func(from, to gobreaker.State) {
	if mp == nil {
		return func(from, to gobreaker.State) {}
	}
	m := mp.Meter("github.com/tmc-runner/tmc-runner/talend")
	transitions, _ := m.Int64Counter("tmc.talend.breaker.transitions",
		metric.WithDescription("Circuit breaker state changes"), metric.WithUnit("{transition}"))
	_, _ = m.Int64ObservableGauge("tmc.talend.breaker.state",
		metric.WithDescription("Circuit breaker state: 0 closed, 1 half-open, 2 open"),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			if br := b(); br != nil {
				o.Observe(int64(breakerStateValue(br.State())))
			}
			return nil
		}))
	return func(from, to gobreaker.State) {
		transitions.Add(context.Background(), 1, metric.WithAttributes(
			attribute.String("from", from.String()), attribute.String("to", to.String())))
	}
}

func breakerStateValue(s gobreaker.State) int {
	switch s {
	case gobreaker.StateHalfOpen:
		return 1
	case gobreaker.StateOpen:
		return 2
	}
	return 0
}
