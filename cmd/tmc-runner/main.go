// Command tmc-runner runs Talend Cloud tasks from NATS JetStream run
// requests. See README.md; `tmc-runner help` lists the subcommands.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// exitError carries a specific exit code (submit --wait uses them).
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

const usage = `tmc-runner — run Talend Cloud tasks from NATS JetStream

usage: tmc-runner <command> [flags]

commands:
  dev         embedded NATS + Talend simulator + worker in one process
  worker      a production worker (NATS_URL and Talend credentials required)
  provision   create or verify streams, consumers and the claims bucket
  submit      publish one run request; --wait prints its events until the end
  status      a request's events so far: tmc-runner status ID [--route R]
  cancel      cancel a request or stop its run: tmc-runner cancel ID [--route R] [--wait]
  redrive     list dead letters, or re-send them: tmc-runner redrive [--route R] [--all | ID ...] [--dry-run]
  simulator   the Talend Cloud API simulator alone

Configuration comes from the environment; see README.md.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		var ee *exitError
		if errors.As(err, &ee) {
			if ee.msg != "" {
				fmt.Fprintln(os.Stderr, "tmc-runner:", ee.msg)
			}
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "tmc-runner:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return &exitError{code: 2}
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "dev":
		return runDev(ctx, rest, stdout, stderr)
	case "worker":
		return runWorker(ctx, rest, stderr)
	case "provision":
		return runProvision(ctx, rest, stdout)
	case "submit":
		return runSubmit(ctx, rest, stdout, stderr)
	case "status":
		return runStatus(ctx, rest, stdout, stderr)
	case "cancel":
		return runCancel(ctx, rest, stdout, stderr)
	case "redrive":
		return runRedrive(ctx, rest, stdout, stderr)
	case "simulator":
		return runSimulator(ctx, rest, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return &exitError{code: 2, msg: fmt.Sprintf("unknown command %q", cmd)}
}
