package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// TracingOptions configure NewTracing.
type TracingOptions struct {
	// Getenv reads the OTEL_* variables (default os.Getenv).
	Getenv func(string) string
	// Console receives spans when OTEL_TRACES_EXPORTER=console (dev).
	Console io.Writer
	// ServiceName is the default service.name; OTEL_SERVICE_NAME wins.
	ServiceName string
	// Processor, when set, receives every span besides any exporter (tests
	// pass an in-memory span recorder).
	Processor sdktrace.SpanProcessor
}

// Tracing is a configured tracer provider.
type Tracing struct {
	Provider trace.TracerProvider
	// Exporter names what spans go to: "none", "otlp/http", "otlp/grpc",
	// "console" (for the start-up log line).
	Exporter string
	shutdown func(context.Context) error
}

// Shutdown flushes pending spans and stops the exporter.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t.shutdown == nil {
		return nil
	}
	return t.shutdown(ctx)
}

// NewTracing builds the tracer provider from the standard OpenTelemetry
// environment:
//
//   - OTEL_SDK_DISABLED=true, or OTEL_TRACES_EXPORTER=none: no tracing.
//   - OTEL_TRACES_EXPORTER=otlp, or unset with OTEL_EXPORTER_OTLP_ENDPOINT or
//     OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set: OTLP over
//     OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL (http/protobuf by default, or
//     grpc), endpoint and headers read by the exporter from the same
//     variables.
//   - OTEL_TRACES_EXPORTER=console: spans pretty-printed to Console.
//   - Nothing configured: no exporter and no connection attempt. This
//     departs on purpose from the SDK, whose OTLP exporter defaults to
//     localhost: a worker without a collector must not dial one forever.
//
// OTEL_TRACES_SAMPLER(_ARG), OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
// apply as the SDK defines them.
func NewTracing(ctx context.Context, opts TracingOptions) (*Tracing, error) {
	getenv := opts.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") {
		return &Tracing{Provider: noop.NewTracerProvider(), Exporter: "none"}, nil
	}
	exporters := strings.Split(strings.ToLower(getenv("OTEL_TRACES_EXPORTER")), ",")
	if len(exporters) > 1 {
		return nil, fmt.Errorf("OTEL_TRACES_EXPORTER=%q: tmc-runner supports one exporter", getenv("OTEL_TRACES_EXPORTER"))
	}
	exporterName := strings.TrimSpace(exporters[0])
	if exporterName == "" {
		exporterName = "none"
		if getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "" {
			exporterName = "otlp"
		}
	}
	var exporter sdktrace.SpanExporter
	var err error
	switch exporterName {
	case "none":
	case "otlp":
		protocol := getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
		if protocol == "" {
			protocol = getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
		}
		switch strings.ToLower(strings.TrimSpace(protocol)) {
		case "", "http/protobuf":
			exporter, err = otlptracehttp.New(ctx)
			exporterName = "otlp/http"
		case "grpc":
			exporter, err = otlptracegrpc.New(ctx)
			exporterName = "otlp/grpc"
		default:
			return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL=%q: want http/protobuf or grpc", protocol)
		}
	case "console":
		w := opts.Console
		if w == nil {
			w = os.Stderr
		}
		exporter, err = stdouttrace.New(stdouttrace.WithWriter(w), stdouttrace.WithPrettyPrint())
	default:
		return nil, fmt.Errorf("OTEL_TRACES_EXPORTER=%q: want otlp, console or none", exporterName)
	}
	if err != nil {
		return nil, fmt.Errorf("trace exporter %s: %w", exporterName, err)
	}
	if exporter == nil && opts.Processor == nil {
		return &Tracing{Provider: noop.NewTracerProvider(), Exporter: "none"}, nil
	}
	serviceName := opts.ServiceName
	if name := getenv("OTEL_SERVICE_NAME"); name != "" {
		serviceName = name // the SDK reads it too; this makes Getenv authoritative in tests
	}
	res, err := newResource(ctx, serviceName)
	if err != nil {
		return nil, err
	}
	tpOpts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if exporter != nil {
		tpOpts = append(tpOpts, sdktrace.WithBatcher(exporter))
	}
	if opts.Processor != nil {
		tpOpts = append(tpOpts, sdktrace.WithSpanProcessor(opts.Processor))
	}
	tp := sdktrace.NewTracerProvider(tpOpts...)
	return &Tracing{Provider: tp, Exporter: exporterName, shutdown: func(ctx context.Context) error {
		// Shutdown alone hands the last export's error to otel's global
		// handler and returns nil: flush first to see it.
		return errors.Join(tp.ForceFlush(ctx), tp.Shutdown(ctx))
	}}, nil
}

func newResource(ctx context.Context, serviceName string) (*resource.Resource, error) {
	if serviceName == "" {
		serviceName = "tmc-runner"
	}
	env, err := resource.New(ctx, resource.WithFromEnv(), resource.WithTelemetrySDK())
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("resource from OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	base := resource.NewWithAttributes(semconv.SchemaURL, semconv.ServiceName(serviceName))
	// Merge: the environment's service.name (OTEL_SERVICE_NAME) wins.
	res, err := resource.Merge(base, env)
	if err != nil {
		return resource.NewSchemaless(append(base.Attributes(), env.Attributes()...)...), nil
	}
	return res, nil
}
