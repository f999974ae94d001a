package worker

import (
	"context"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

const scope = "github.com/tmc-runner/tmc-runner/worker"

// instruments are the worker's metrics. Labels are fixed words (outcome,
// reason): never a request id or a value from a request.
type instruments struct {
	requests metric.Int64Counter
	inflight metric.Int64UpDownCounter
	nakDelay metric.Float64Histogram
}

func newInstruments(mp metric.MeterProvider, pending func(context.Context) (uint64, error)) *instruments {
	if mp == nil {
		mp = noop.NewMeterProvider()
	}
	m := mp.Meter(scope)
	in := &instruments{}
	in.requests, _ = m.Int64Counter("tmc.requests",
		metric.WithDescription("Run-request messages by decision: accepted, failed (by reason), rejected, retry (systemic, not counted), attempt (counted), parked, duplicate, shutdown, panic, ignored"),
		metric.WithUnit("{request}"))
	in.inflight, _ = m.Int64UpDownCounter("tmc.inflight",
		metric.WithDescription("Messages being handled now"), metric.WithUnit("{message}"))
	in.nakDelay, _ = m.Float64Histogram("tmc.nak.delay",
		metric.WithDescription("Delays of messages given back to the stream"), metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300))
	if pending != nil {
		var (
			mu      sync.Mutex
			last    int64
			fetched time.Time
		)
		_, _ = m.Int64ObservableGauge("tmc.consumer.pending",
			metric.WithDescription("Requests waiting in the stream for the durable consumer (from JetStream consumer info)"),
			metric.WithUnit("{message}"),
			metric.WithInt64Callback(func(ctx context.Context, o metric.Int64Observer) error {
				mu.Lock()
				defer mu.Unlock()
				// A scrape must not turn into a JetStream API call per
				// scrape from every replica: reuse a recent answer.
				if time.Since(fetched) > 5*time.Second {
					ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
					n, err := pending(ctx)
					cancel()
					if err == nil {
						last, fetched = int64(n), time.Now()
					}
				}
				o.Observe(last)
				return nil
			}))
	}
	return in
}

func (in *instruments) decided(ctx context.Context, d decision) {
	attrs := []attribute.KeyValue{attribute.String("outcome", d.outcome)}
	if d.reason != "" {
		attrs = append(attrs, attribute.String("reason", d.reason))
	}
	in.requests.Add(ctx, 1, metric.WithAttributes(attrs...))
	if d.act == actNak {
		in.nakDelay.Record(ctx, d.delay.Seconds())
	}
}
