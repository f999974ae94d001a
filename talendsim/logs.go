package talendsim

import (
	"errors"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

const (
	defaultLogCount = 50
	maxLogCount     = 200
)

// logEntry is one item of the logs response's data array.
type logEntry struct {
	Severity     string `json:"severity"`
	LogType      string `json:"logType"`
	LogTimestamp int64  `json:"logTimestamp"`
	LogMessage   string `json:"logMessage"`
}

// logsPage is the 200 answer of GET /monitoring/executions/{id}/logs.
type logsPage struct {
	Size              int        `json:"size"`
	TotalSize         int        `json:"totalSize"`
	TotalSizeFiltered *int       `json:"totalSizeFiltered,omitempty"`
	Data              []logEntry `json:"data"`
	NextIndex         *int       `json:"nextIndex,omitempty"`
}

// logLines returns the lines an execution has written by now, oldest first.
// They are derived from its timeline, so the same execution always gives the
// same lines. They never contain parameter values.
func (e *execution) logLines(now time.Time) []logEntry {
	st := e.state(now)
	line := func(at time.Time, severity, msg string) logEntry {
		return logEntry{Severity: severity, LogType: "USER", LogTimestamp: at.UnixMilli(), LogMessage: msg}
	}
	lines := []logEntry{line(e.trigger, "INFO", "Execution "+e.id+" of task "+e.executable+" received")}
	if !st.start.IsZero() {
		lines = append(lines,
			line(st.start, "INFO", "Task deployed on the cloud engine"),
			line(st.start, "INFO", "Job started"))
		if mid := st.start.Add(e.runFor / 2); !now.Before(mid) && (st.finish.IsZero() || !st.finish.Before(mid)) {
			lines = append(lines, line(mid, "INFO", "Processing rows"))
		}
	}
	if st.finish.IsZero() {
		return lines
	}
	at := st.finish
	switch st.status {
	case statusSuccessful:
		lines = append(lines, line(at, "INFO", "Job finished successfully"))
	case statusRejected:
		lines = append(lines,
			line(at, "WARN", "Some rows were rejected"),
			line(at, "INFO", "Job finished with rejected rows"))
	case statusTerminated:
		lines = append(lines, line(at, "WARN", "Execution terminated on request"))
	default:
		_, msg := failure(st.status)
		if msg == "" {
			msg = "Execution ended with status " + st.status
		}
		lines = append(lines, line(at, "ERROR", msg))
	}
	return lines
}

// logQuery is a validated logs request.
type logQuery struct {
	count, startIndex  int
	descending         bool
	startTime, endTime time.Time
	filtered           bool
}

func parseLogQuery(q url.Values) (logQuery, error) {
	lq := logQuery{count: defaultLogCount, descending: true}
	// count and startIndex are typed "number" in the spec; integral values
	// such as 50.0 are therefore accepted.
	num := func(name string) (int, bool, error) {
		v := q.Get(name)
		if v == "" {
			return 0, false, nil
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f != math.Trunc(f) || math.IsInf(f, 0) {
			return 0, false, errors.New(name + " must be a whole number")
		}
		if f > math.MaxInt32 || f < math.MinInt32 {
			return 0, false, errors.New(name + " is out of range")
		}
		return int(f), true, nil
	}
	count, hasCount, err := num("count")
	if err != nil {
		return lq, err
	}
	if hasCount {
		if count < 1 || count > maxLogCount {
			return lq, errors.New("count must be between 1 and 200")
		}
		lq.count = count
	}
	start, _, err := num("startIndex")
	if err != nil {
		return lq, err
	}
	if start < 0 {
		return lq, errors.New("startIndex must be greater than or equal to 0")
	}
	lq.startIndex = start
	switch strings.ToUpper(q.Get("order")) {
	case "", "DESC":
	case "ASC":
		lq.descending = false
	default:
		return lq, errors.New("order must be ASC or DESC")
	}
	for name, dst := range map[string]*time.Time{"startTime": &lq.startTime, "endTime": &lq.endTime} {
		if v := q.Get(name); v != "" {
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				return lq, errors.New(name + " must be an RFC 3339 date-time")
			}
			*dst = t
			lq.filtered = true
		}
	}
	return lq, nil
}

// handleLogs serves GET /monitoring/executions/{id}/logs for task
// executions.
func (s *Simulator) handleLogs(w http.ResponseWriter, r *http.Request, params map[string]string) {
	lq, err := parseLogQuery(r.URL.Query())
	if err != nil {
		writeError(w, http.StatusBadRequest, "Bad Request", err.Error())
		return
	}
	s.mu.Lock()
	e, ok := s.lookupLocked(params["id"], kindTask)
	var all []logEntry
	if ok {
		all = e.logLines(s.now())
	}
	s.mu.Unlock()
	if !ok {
		writeError(w, http.StatusNotFound, "Not Found", "execution not found")
		return
	}

	total := len(all)
	selected := all
	if lq.filtered {
		selected = nil
		for _, l := range all {
			at := time.UnixMilli(l.LogTimestamp)
			if (!lq.startTime.IsZero() && at.Before(lq.startTime)) || (!lq.endTime.IsZero() && at.After(lq.endTime)) {
				continue
			}
			selected = append(selected, l)
		}
	}
	if lq.descending {
		rev := make([]logEntry, len(selected))
		for i, l := range selected {
			rev[len(selected)-1-i] = l
		}
		selected = rev
	}
	data := page(selected, lq.startIndex, lq.count)
	body := logsPage{Size: len(data), TotalSize: total, Data: data}
	if lq.filtered {
		n := len(selected)
		body.TotalSizeFiltered = &n
	}
	if next := lq.startIndex + len(data); next < len(selected) {
		body.NextIndex = &next
	}
	writeJSON(w, http.StatusOK, body)
}
