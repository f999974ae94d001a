package main

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime/trace"
	"syscall"
	"testing"
	"time"
)

// The child traces from SIGUSR1 to SIGUSR2, and the file is a complete
// execution trace once the second signal has been handled.
func TestTraceOnSignals(t *testing.T) {
	path := filepath.Join(t.TempDir(), "trace.out")
	stop := traceOnSignals(path)
	defer stop()
	if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, trace.IsEnabled)
	time.Sleep(20 * time.Millisecond)
	if err := syscall.Kill(os.Getpid(), syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return !trace.IsEnabled() })
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(data, []byte("go 1.")) || len(data) < 100 {
		t.Fatalf("not an execution trace (%d bytes): %q", len(data), data[:min(len(data), 16)])
	}
}

func waitFor(t *testing.T, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
