package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/tmc-runner/tmc-runner/messages"
)

// progress renders the state of one waited-for request on stderr while
// submit --wait prints its events on stdout. stdout stays pure JSON lines
// because scripts parse it; the human view lives on stderr only.
//
// On a terminal it keeps one line, redrawn in place ("\r" + clear to end of
// line) on every state change and every tick, so the elapsed time moves
// even while Talend says nothing. Anywhere else (a log file, CI) redrawing
// would leave carriage-return garbage, so it writes a plain line per state
// change instead.
type progress struct {
	mu    sync.Mutex
	w     io.Writer
	tty   bool
	now   func() time.Time
	id    string
	start time.Time
	state string
	drawn bool // tty: a status line is on screen, without its newline
	done  bool
}

// newProgress starts the clock of request id now: elapsed time is counted
// from here, so create it just before the request is published.
func newProgress(id string, w io.Writer, tty bool, now func() time.Time) *progress {
	return &progress{w: w, tty: tty, now: now, id: id, start: now(), state: "queued"}
}

// isTerminal reports whether w is a character device, without
// golang.org/x/term (not a dependency of this module). /dev/null is one
// too; redrawing into it is harmless.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// Begin shows the initial state (terminal only: a plain "queued" line
// would say nothing the requestId on stdout does not).
func (p *progress) Begin() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty {
		p.drawLocked()
	}
}

// Tick redraws the terminal line so the elapsed time advances.
func (p *progress) Tick() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty && !p.done {
		p.drawLocked()
	}
}

// Event takes one event of the request; print writes it to stdout. When
// stdout and stderr share a terminal the status line is cleared first, so
// the event's JSON line never lands after the status text. A terminal
// event finishes the status line with a newline before it is printed.
func (p *progress) Event(ev *messages.Event, print func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	state := stateOf(ev)
	_, terminal := exitCodeOf(ev)
	if p.done {
		print()
		return
	}
	if terminal {
		p.state = state
		if p.tty {
			p.drawLocked()
			fmt.Fprint(p.w, "\n")
		}
		// Plain mode says nothing here: the terminal event itself follows
		// on stdout and the exit code (with its message) tells how it ended.
		p.done, p.drawn = true, false
		print()
		return
	}
	if p.tty && p.drawn {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.drawn = false
	}
	print()
	changed := state != p.state
	p.state = state
	switch {
	case p.tty:
		p.drawLocked()
	case changed:
		fmt.Fprintf(p.w, "%s %s after %s\n", p.id, p.state, p.now().Sub(p.start).Round(time.Second))
	}
}

// Finish ends a terminal line left open (wait timeout, interrupt), so the
// shell prompt or error message starts on a line of its own.
func (p *progress) Finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty && p.drawn {
		fmt.Fprint(p.w, "\n")
	}
	p.drawn, p.done = false, true
}

func (p *progress) drawLocked() {
	fmt.Fprintf(p.w, "\r%s  %s  %s\x1b[K", p.id, p.state, clockTime(p.now().Sub(p.start)))
	p.drawn = true
}

// clockTime formats d as mm:ss, or h:mm:ss from an hour on.
func clockTime(d time.Duration) string {
	s := int(d.Round(time.Second) / time.Second)
	if s < 0 {
		s = 0
	}
	if s >= 3600 {
		return fmt.Sprintf("%d:%02d:%02d", s/3600, s/60%60, s%60)
	}
	return fmt.Sprintf("%02d:%02d", s/60, s%60)
}

// stateOf names the state a request is in after ev: the latest Talend
// status while it runs, the way it ended otherwise.
func stateOf(ev *messages.Event) string {
	switch ev.Type {
	case messages.Status, messages.Result:
		if ev.Status != "" {
			return ev.Status
		}
	case messages.Failed:
		if ev.Reason != "" {
			return "failed (" + ev.Reason + ")"
		}
	}
	return string(ev.Type)
}

// tickProgress redraws p every second until stop is closed.
func tickProgress(p *progress, stop <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			p.Tick()
		case <-stop:
			return
		}
	}
}
