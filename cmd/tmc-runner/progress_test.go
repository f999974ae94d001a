package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tmc-runner/tmc-runner/messages"
)

type stepClock struct{ t time.Time }

func (c *stepClock) now() time.Time          { return c.t }
func (c *stepClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func boolp(b bool) *bool { return &b }

// followedRun is the event sequence of a followed run that succeeds.
func followedRun() []*messages.Event {
	return []*messages.Event{
		{RequestID: "req-1", Type: messages.Accepted, ExecutionID: "x", Followed: boolp(true)},
		{RequestID: "req-1", Type: messages.Status, Status: "dispatching"},
		{RequestID: "req-1", Type: messages.Status, Status: "executing"},
		{RequestID: "req-1", Type: messages.Result, Status: "execution_successful", OK: boolp(true), TimedOut: boolp(false)},
	}
}

// On a terminal: one line redrawn in place each tick and state change,
// cleared before each event line so stdout and stderr on the same screen
// do not interleave, and ended with a newline before the final event.
func TestProgressTerminal(t *testing.T) {
	clock := &stepClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	var screen bytes.Buffer // stdout and stderr on one terminal
	p := newProgress("req-1", &screen, true, clock.now)
	p.Begin()
	if got := screen.String(); got != "\rreq-1  queued  00:00\x1b[K" {
		t.Fatalf("initial line %q", got)
	}
	clock.advance(time.Second)
	p.Tick()
	if !strings.HasSuffix(screen.String(), "\rreq-1  queued  00:01\x1b[K") {
		t.Fatalf("after a tick: %q", screen.String())
	}
	evs := followedRun()
	screen.Reset()
	clock.advance(time.Second)
	p.Event(evs[0], func() { screen.WriteString("{accepted}\n") })
	if got, want := screen.String(), "\r\x1b[K{accepted}\n\rreq-1  accepted  00:02\x1b[K"; got != want {
		t.Errorf("accepted: %q, want %q", got, want)
	}
	screen.Reset()
	p.Event(evs[1], func() { screen.WriteString("{dispatching}\n") })
	clock.advance(40 * time.Second)
	p.Event(evs[2], func() { screen.WriteString("{executing}\n") })
	p.Tick()
	if !strings.HasSuffix(screen.String(), "\rreq-1  executing  00:42\x1b[K") {
		t.Errorf("executing: %q", screen.String())
	}
	screen.Reset()
	clock.advance(time.Hour)
	p.Event(evs[3], func() { screen.WriteString("{result}\n") })
	if got, want := screen.String(), "\rreq-1  execution_successful  1:00:42\x1b[K\n{result}\n"; got != want {
		t.Errorf("result: %q, want %q", got, want)
	}
	// After the end nothing more is drawn, whatever the ticker does.
	screen.Reset()
	p.Tick()
	p.Finish()
	if screen.Len() != 0 {
		t.Errorf("drawn after the end: %q", screen.String())
	}
}

// A wait that ends without a terminal event still leaves the cursor on a
// fresh line.
func TestProgressTerminalFinishOnTimeout(t *testing.T) {
	clock := &stepClock{t: time.Now()}
	var screen bytes.Buffer
	p := newProgress("req-2", &screen, true, clock.now)
	p.Begin()
	p.Finish()
	if !strings.HasSuffix(screen.String(), "\x1b[K\n") {
		t.Errorf("no newline after an unfinished line: %q", screen.String())
	}
}

// Not on a terminal: one plain line per state change, no control
// characters, nothing for repeated states, ticks or the terminal event.
func TestProgressPlain(t *testing.T) {
	clock := &stepClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	var stderr, stdout bytes.Buffer
	p := newProgress("req-1", &stderr, false, clock.now)
	p.Begin()
	p.Tick()
	evs := followedRun()
	dup := *evs[2]
	steps := []struct {
		after time.Duration
		ev    *messages.Event
	}{{0, evs[0]}, {time.Second, evs[1]}, {2 * time.Second, evs[2]}, {time.Second, &dup}, {65 * time.Second, evs[3]}}
	for _, s := range steps {
		clock.advance(s.after)
		p.Event(s.ev, func() { stdout.WriteString(string(s.ev.Type) + "\n") })
		p.Tick()
	}
	p.Finish()
	want := "req-1 accepted after 0s\nreq-1 dispatching after 1s\nreq-1 executing after 3s\n"
	if stderr.String() != want {
		t.Errorf("stderr %q, want %q", stderr.String(), want)
	}
	if stdout.String() != "accepted\nstatus\nstatus\nstatus\nresult\n" {
		t.Errorf("stdout %q: every event must still be printed", stdout.String())
	}
}

// isTerminal says no to pipes and non-files, as under go test.
func TestIsTerminalFalseForPipesAndBuffers(t *testing.T) {
	if isTerminal(&bytes.Buffer{}) {
		t.Error("a buffer is not a terminal")
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if isTerminal(w) {
		t.Error("a pipe is not a terminal")
	}
}

func TestStateOfAndClockTime(t *testing.T) {
	for ev, want := range map[*messages.Event]string{
		{Type: messages.Failed, Reason: "cancelled"}: "failed (cancelled)",
		{Type: messages.Rejected}:                    "rejected",
		{Type: messages.Status, Status: "executing"}: "executing",
		{Type: messages.Result}:                      "result",
	} {
		if got := stateOf(ev); got != want {
			t.Errorf("stateOf(%+v) = %q, want %q", ev, got, want)
		}
	}
	for d, want := range map[time.Duration]string{0: "00:00", 42 * time.Second: "00:42", 61*time.Minute + 5*time.Second: "1:01:05", -time.Second: "00:00"} {
		if got := clockTime(d); got != want {
			t.Errorf("clockTime(%s) = %q, want %q", d, got, want)
		}
	}
}
