package main

import (
	"context"
	"io"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel"

	"github.com/tmc-runner/tmc-runner/telemetry"
)

// setupTracing builds the tracer provider from OTEL_* and installs it as
// otel's global once, for libraries that read the globals; tmc-runner's own
// packages get it passed in. The returned func flushes pending spans.
func setupTracing(ctx context.Context, log *slog.Logger, console io.Writer) (*telemetry.Tracing, func(), error) {
	tracing, err := telemetry.NewTracing(ctx, telemetry.TracingOptions{Console: console})
	if err != nil {
		return nil, nil, err
	}
	otel.SetTracerProvider(tracing.Provider)
	otel.SetTextMapPropagator(telemetry.Propagator)
	if log != nil {
		// Export failures would otherwise be printed by otel's default
		// handler as plain text in the middle of the JSON log.
		otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
			log.Warn("telemetry export failed", "error", err)
		}))
		log.Info("tracing", "exporter", tracing.Exporter)
	}
	return tracing, func() {
		flushCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := tracing.Shutdown(flushCtx); err != nil && log != nil {
			log.Warn("flushing spans failed", "error", err)
		}
	}, nil
}
