// Package testenv builds environments for the tmc-runner processes tests
// start.
package testenv

import (
	"os"
	"strings"
)

// Clean is the process environment without any tmc-runner setting (NATS_,
// TALEND_, TMC_, OTEL_), so that a started process sees the defaults a
// newcomer gets, plus extra.
func Clean(extra ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "NATS_") || strings.HasPrefix(k, "TALEND_") || strings.HasPrefix(k, "TMC_") || strings.HasPrefix(k, "OTEL_") {
			continue
		}
		out = append(out, kv)
	}
	return append(out, extra...)
}
