package chaos

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Binaries built once per test run: the worker under test (with the race
// detector, as the cmd tests build it) and a real nats-server from the
// module's own dependency.
var (
	runnerBin string
	natsBin   string
)

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "tmc-chaos-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	runnerBin = filepath.Join(dir, "tmc-runner")
	natsBin = filepath.Join(dir, "nats-server")
	for _, args := range [][]string{
		{"build", "-race", "-o", runnerBin, "./cmd/tmc-runner"},
		{"build", "-o", natsBin, "github.com/nats-io/nats-server/v2"},
	} {
		build := exec.Command("go", args...)
		build.Dir = root
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "go %v: %v\n", args, err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
