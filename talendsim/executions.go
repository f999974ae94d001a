package talendsim

import (
	"container/heap"
	"hash/fnv"
	"net/http"
	"strconv"
	"strings"
	"time"
)

const (
	kindTask = "task"
	kindPlan = "plan"
)

// Task and plan statuses the simulator produces by itself.
const (
	statusDispatching = "dispatching"
	statusExecuting   = "executing"
	statusSuccessful  = "execution_successful"
	statusRejected    = "execution_rejected"
	statusFailed      = "execution_failed"
	statusDeployFail  = "deploy_failed"
	statusTerminated  = "terminated"
	statusTimeout     = "terminated_timeout"
	statusShutdown    = "terminated_shutdown"
	statusMisfired    = "execution_misfired"
)

// taskExecutionStatus maps a task status to the detailed executionStatus,
// following the table in the spec's description of `status`.
var taskExecutionStatus = map[string]string{
	statusDispatching: "DISPATCHING_FLOW",
	statusExecuting:   "STARTING_FLOW_EXECUTION",
	statusSuccessful:  "EXECUTION_SUCCESS",
	statusRejected:    "EXECUTION_REJECTED",
	statusFailed:      "EXECUTION_FAILED",
	statusDeployFail:  "DEPLOY_FAILED",
	statusTerminated:  "EXECUTION_TERMINATED",
	statusTimeout:     "EXECUTION_TERMINATED_TIMEOUT",
	statusShutdown:    "EXECUTION_TERMINATED_SHUTDOWN",
}

// planExecutionStatus maps a plan status to its detailed executionStatus.
var planExecutionStatus = map[string]string{
	statusExecuting:  "STARTED",
	statusSuccessful: "EXECUTION_SUCCESS",
	statusFailed:     "EXECUTION_FAILED",
	statusMisfired:   "EXECUTION_MISFIRED",
}

// ExecutionInfo is what the simulator knows about one execution, for test
// assertions. UserID and UserType are additions to the agreed API: they let
// tests tell our runs from foreign ones.
type ExecutionInfo struct {
	ID         string
	Executable string
	Kind       string // "task" or "plan"
	Status     string
	Parameters map[string]string
	LogLevel   string
	Timeout    int // minutes, 0 if unset
	Trigger    time.Time
	Finish     time.Time // zero while running
	UserID     string
	UserType   string // "SERVICE" or "HUMAN"
}

// execution is one recorded run. Its status is never stored: it is derived
// from the clock by state, so no goroutine or timer has to advance it.
type execution struct {
	id         string
	kind       string
	executable string
	params     map[string]string
	logLevel   string
	timeout    int // minutes
	trigger    time.Time

	dispatchFor time.Duration
	runFor      time.Duration
	outcome     string
	neverEnds   bool
	stoppedAt   time.Time // DELETE while running
	liveIdx     int       // index in Simulator.live, -1 once out of it
	endKey      time.Time // endAt while in Simulator.live

	userID, userType, executionType, apiVersion string
}

// execState is an execution seen at one instant.
type execState struct {
	status string
	start  time.Time // zero until it left dispatching (never for deploy_failed)
	finish time.Time // zero while running
}

func (e *execution) running(now time.Time) bool {
	end, _ := e.endAt()
	return end.IsZero() || now.Before(end)
}

// endAt is when the execution ends, with its end status; zero while it
// has no end in sight (neverEnds, no timeout, not stopped).
func (e *execution) endAt() (end time.Time, endStatus string) {
	started := e.started()
	endStatus = e.outcome
	switch {
	case e.outcome == statusDeployFail:
		end = started // never deployed, so it never ran
	case !e.neverEnds:
		end = started.Add(e.runFor)
	}
	if e.timeout > 0 {
		deadline := e.trigger.Add(time.Duration(e.timeout) * time.Minute)
		if end.IsZero() || deadline.Before(end) {
			end, endStatus = deadline, statusTimeout
		}
	}
	if !e.stoppedAt.IsZero() && (end.IsZero() || e.stoppedAt.Before(end)) {
		end, endStatus = e.stoppedAt, statusTerminated
	}
	return end, endStatus
}

// started is when the execution leaves dispatching.
func (e *execution) started() time.Time {
	if e.kind == kindPlan {
		return e.trigger // plans have no dispatching status; they execute at once
	}
	return e.trigger.Add(e.dispatchFor)
}

// state computes the execution's status at now: dispatching for
// dispatchFor, executing for runFor, then the outcome; a timeout or a stop
// cuts the run short.
func (e *execution) state(now time.Time) execState {
	started := e.started()
	end, endStatus := e.endAt()

	var st execState
	if !now.Before(started) && endStatus != statusDeployFail {
		st.start = started
	}
	switch {
	case !end.IsZero() && !now.Before(end):
		st.status, st.finish = endStatus, end
		if st.start.After(end) {
			st.start = time.Time{}
		}
	case now.Before(started):
		st.status = statusDispatching
	default:
		st.status = statusExecuting
	}
	if e.kind == kindPlan {
		st.start = e.trigger // required by PlanExecutionStatus
	}
	return st
}

func (e *execution) info(now time.Time) ExecutionInfo {
	st := e.state(now)
	return ExecutionInfo{
		ID: e.id, Executable: e.executable, Kind: e.kind, Status: st.status,
		Parameters: copyStrings(e.params), LogLevel: e.logLevel, Timeout: e.timeout,
		Trigger: e.trigger, Finish: st.finish, UserID: e.userID, UserType: e.userType,
	}
}

// Execution returns what the simulator knows about execution id.
func (s *Simulator) Execution(id string) (ExecutionInfo, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.execs[id]
	if !ok {
		return ExecutionInfo{}, false
	}
	return e.info(s.now()), true
}

// AddForeignExecution records a run of taskID started by someone else (a
// schedule, a human in the UI) at trigger, so list tests see executions that
// are not ours. userType "HUMAN" gives a MANUAL run, anything else a
// SCHEDULED one. It ends successfully after the usual dispatch and run times.
func (s *Simulator) AddForeignExecution(taskID, userType, userID string, trigger time.Time) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	execType := "SCHEDULED"
	if userType == "HUMAN" {
		execType = "MANUAL"
	}
	e := &execution{
		id: newID(), kind: kindTask, executable: taskID, trigger: trigger,
		dispatchFor: s.opts.DispatchFor, runFor: s.opts.RunFor, outcome: statusSuccessful,
		userID: userID, userType: userType, executionType: execType,
	}
	s.addLocked(e)
	return e.id
}

// startLocked records a run of executable started through the API now.
func (s *Simulator) startLocked(kind, executable string, params map[string]string, logLevel string, timeout int) *execution {
	b := s.behaviours[executable]
	e := &execution{
		id: newID(), kind: kind, executable: executable, params: params,
		logLevel: logLevel, timeout: timeout, trigger: s.now(),
		dispatchFor: s.opts.DispatchFor, runFor: s.opts.RunFor,
		outcome: b.Outcome, neverEnds: b.NeverEnds,
		userID: s.opts.ServiceUserID, userType: "SERVICE", executionType: "MANUAL",
		apiVersion: simAPIVersion,
	}
	if b.RunFor > 0 {
		e.runFor = b.RunFor
	}
	if e.outcome == "" {
		e.outcome = statusSuccessful
	}
	s.addLocked(e)
	s.stats.Executions[executable]++
	s.stats.ExecutionsTotal++
	return e
}

// addLocked stores e and updates MaxRunning. Running counts only rise at a
// trigger time, so counting at each new trigger finds the maximum.
//
// The executions that may still be running are kept in a heap ordered by
// their end: those that ended by e's trigger are popped, and what is left
// is the count. (It was a scan of every live execution on each run: at
// 9,000 runs/s of 250 ms that was a third of a one-process benchmark's CPU
// and made the baseline look slow.)
func (s *Simulator) addLocked(e *execution) {
	s.execs[e.id] = e
	for len(s.live) > 0 && !s.live[0].running(e.trigger) {
		heap.Pop(&s.live)
	}
	e.endKey, _ = e.endAt()
	heap.Push(&s.live, e)
	n := len(s.live)
	if e.trigger.Before(s.lastTrigger) {
		// A foreign execution added with a trigger in the past: count what
		// ran at that moment among those still held (an approximation
		// tests do not depend on; those popped since are not seen).
		n = 0
		for _, other := range s.live {
			if !other.trigger.After(e.trigger) && other.running(e.trigger) {
				n++
			}
		}
	} else {
		s.lastTrigger = e.trigger
	}
	if n > s.stats.MaxRunning {
		s.stats.MaxRunning = n
	}
}

// endedLocked re-sorts e after its end moved (a stop).
func (s *Simulator) endedLocked(e *execution) {
	if e.liveIdx >= 0 && e.liveIdx < len(s.live) && s.live[e.liveIdx] == e {
		e.endKey, _ = e.endAt()
		heap.Fix(&s.live, e.liveIdx)
	}
}

// liveHeap orders executions by end; those without an end come last.
type liveHeap []*execution

func (h liveHeap) Len() int { return len(h) }
func (h liveHeap) Less(i, j int) bool {
	ei, ej := h[i].endKey, h[j].endKey
	switch {
	case ei.IsZero():
		return false
	case ej.IsZero():
		return true
	}
	return ei.Before(ej)
}
func (h liveHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].liveIdx, h[j].liveIdx = i, j
}
func (h *liveHeap) Push(x any) {
	e := x.(*execution)
	e.liveIdx = len(*h)
	*h = append(*h, e)
}
func (h *liveHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	e.liveIdx = -1
	*h = old[:len(old)-1]
	return e
}

// refuseLocked says whether a run of executable must be refused, and how.
func (s *Simulator) refuseLocked(executable, kind string) (status int, message, detail string) {
	b := s.behaviours[executable]
	switch {
	case !s.knownLocked(executable, kind):
		return http.StatusNotFound, "Not Found", kind + " not found"
	case b.Forbidden:
		return http.StatusForbidden, "Forbidden", "no permission to run this " + kind
	case b.Paused:
		return http.StatusMethodNotAllowed, "Method Not Allowed", kind + " is paused"
	case b.NotConfigured:
		return http.StatusNotImplemented, "Not Implemented", kind + " is not configured"
	}
	return 0, "", ""
}

var logLevels = map[string]bool{"OFF": true, "ERROR": true, "WARN": true, "INFO": true}

// handleRunTask serves POST /processing/executions (body: Executabletask).
func (s *Simulator) handleRunTask(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	fields, err := decodeObject(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, "Bad Request", err.Error())
		return
	}
	var (
		executable, logLevel string
		params               map[string]string
		timeout              int
	)
	for name, raw := range fields {
		ok := true
		switch name {
		case "executable":
			executable, ok = asString(raw)
			ok = ok && strings.TrimSpace(executable) != ""
		case "logLevel":
			logLevel, ok = asString(raw)
			ok = ok && logLevels[logLevel]
		case "timeout":
			timeout, ok = asInt32(raw)
			ok = ok && timeout >= 1
		case "parameters":
			// The object form only: the array of {name, value} pairs some
			// other Talend endpoints take is refused here.
			params, ok = asStringMap(raw)
		default:
			writeError(w, http.StatusBadRequest, "Bad Request", "unknown field "+strconv.Quote(name))
			return
		}
		if !ok {
			writeError(w, http.StatusBadRequest, "Bad Request", "invalid "+name+": "+fieldRules[name])
			return
		}
	}
	if executable == "" {
		writeError(w, http.StatusBadRequest, "Bad Request", "executable is required")
		return
	}

	s.mu.Lock()
	if status, msg, detail := s.refuseLocked(executable, kindTask); status != 0 {
		s.mu.Unlock()
		writeError(w, status, msg, detail)
		return
	}
	e := s.startLocked(kindTask, executable, params, logLevel, timeout)
	s.mu.Unlock()
	writeJSON(w, http.StatusCreated, executionIdentifier{ExecutionID: e.id})
}

// fieldRules explain a refused field without echoing its value.
var fieldRules = map[string]string{
	"executable":           "a non-empty string is required",
	"logLevel":             "must be one of OFF, ERROR, WARN, INFO",
	"timeout":              "must be an integer number of minutes, at least 1",
	"parameters":           "must be an object whose values are strings",
	"executionPlanId":      "must be a string",
	"stepId":               "must be a string",
	"rerunOnlyFailedTasks": "must be a boolean",
}

// handleRunPlan serves POST /processing/executions/plans (body:
// PlanExecutable). A re-run names a finished, unsuccessful execution of the
// same plan; anything else answers 422.
func (s *Simulator) handleRunPlan(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	fields, err := decodeObject(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, "Bad Request", err.Error())
		return
	}
	var executable, rerunOf, stepID string
	for name, raw := range fields {
		ok := true
		switch name {
		case "executable":
			executable, ok = asString(raw)
			ok = ok && strings.TrimSpace(executable) != ""
		case "executionPlanId":
			rerunOf, ok = asString(raw)
		case "stepId":
			stepID, ok = asString(raw)
		case "rerunOnlyFailedTasks":
			_, ok = asBool(raw)
		default:
			writeError(w, http.StatusBadRequest, "Bad Request", "unknown field "+strconv.Quote(name))
			return
		}
		if !ok {
			writeError(w, http.StatusBadRequest, "Bad Request", "invalid "+name+": "+fieldRules[name])
			return
		}
	}
	if executable == "" {
		writeError(w, http.StatusBadRequest, "Bad Request", "executable is required")
		return
	}
	if rerunOf != "" && stepID == "" {
		writeError(w, http.StatusBadRequest, "Bad Request", "stepId is required to re-run a plan execution")
		return
	}

	s.mu.Lock()
	if status, msg, detail := s.refuseLocked(executable, kindPlan); status != 0 {
		s.mu.Unlock()
		writeError(w, status, msg, detail)
		return
	}
	if rerunOf != "" {
		prev, ok := s.execs[rerunOf]
		if !ok || prev.kind != kindPlan || prev.executable != executable {
			s.mu.Unlock()
			writeError(w, http.StatusUnprocessableEntity, "Unprocessable Entity", "no execution of this plan to re-run")
			return
		}
		if st := prev.state(s.now()).status; st == statusExecuting || st == statusSuccessful {
			s.mu.Unlock()
			writeError(w, http.StatusUnprocessableEntity, "Unprocessable Entity", "only a finished, unsuccessful plan execution can be re-run")
			return
		}
	}
	e := s.startLocked(kindPlan, executable, nil, "", 0)
	s.mu.Unlock()
	writeJSON(w, http.StatusCreated, executionIdentifier{ExecutionID: e.id})
}

// executionIdentifier is the spec's Executionidentifier.
type executionIdentifier struct {
	ExecutionID string `json:"executionId"`
}

// jobExecutionStatus is the spec's JobExecutionStatusV21, limited to the
// fields the simulator has values for.
type jobExecutionStatus struct {
	ExecutionID           string `json:"executionId"`
	StartTimestamp        string `json:"startTimestamp,omitempty"`
	TriggerTimestamp      string `json:"triggerTimestamp"`
	FinishTimestamp       string `json:"finishTimestamp,omitempty"`
	UserID                string `json:"userId"`
	UserType              string `json:"userType"`
	JobID                 string `json:"jobId"`
	JobVersion            string `json:"jobVersion"`
	EnvironmentVersion    string `json:"environmentVersion"`
	ExecutionStatus       string `json:"executionStatus"`
	ExecutionType         string `json:"executionType"`
	APIVersion            string `json:"apiVersion,omitempty"`
	ExecutionDestination  string `json:"executionDestination"`
	NumberOfProcessedRows *int64 `json:"numberOfProcessedRows,omitempty"`
	NumberOfRejectedRows  *int64 `json:"numberOfRejectedRows,omitempty"`
	AccountID             string `json:"accountId"`
	WorkspaceID           string `json:"workspaceId"`
	ErrorType             string `json:"errorType,omitempty"`
	ErrorMessage          string `json:"errorMessage,omitempty"`
	Timeout               int    `json:"timeout,omitempty"`
	Status                string `json:"status"`
}

// planStatus is the spec's PlanExecutionStatus.
type planStatus struct {
	ExecutionID     string `json:"executionId"`
	StartTimestamp  string `json:"startTimestamp"`
	FinishTimestamp string `json:"finishTimestamp,omitempty"`
	UserID          string `json:"userId"`
	UserType        string `json:"userType"`
	PlanID          string `json:"planId"`
	ExecutionStatus string `json:"executionStatus"`
	Status          string `json:"status"`
	ExecutionType   string `json:"executionType"`
	APIVersion      string `json:"apiVersion,omitempty"`
}

// timestamp formats t the way Talend does: UTC, milliseconds, Z.
func timestamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z")
}

// detailedTaskStatus returns the executionStatus matching status. An
// outcome outside the spec (set by a test to probe clients) maps to
// STOPPING_FLOW_EXECUTION, the one detailed status that is neither running
// nor terminal.
func detailedTaskStatus(status string) string {
	if d, ok := taskExecutionStatus[status]; ok {
		return d
	}
	return "STOPPING_FLOW_EXECUTION"
}

// failure returns errorType and errorMessage for unsuccessful ends.
func failure(status string) (errorType, message string) {
	switch status {
	case statusFailed:
		return "EXECUTION_FAILED", "The job finished with errors (simulated)"
	case statusDeployFail:
		return "DEPLOY_FAILED", "The task could not be deployed to the engine (simulated)"
	case statusTimeout:
		return "EXECUTION_TIMEOUT", "The execution exceeded its timeout"
	case statusShutdown:
		return "EXECUTION_SHUTDOWN", "The engine shut down during the execution (simulated)"
	}
	return "", ""
}

// rowCounts are deterministic per execution so that tests can compare runs.
func rowCounts(e *execution, status string) (processed, rejected int64) {
	h := fnv.New32a()
	h.Write([]byte(e.id))
	processed = 100 + int64(h.Sum32()%900)
	if status == statusRejected {
		rejected = 1 + processed/10
	}
	return processed, rejected
}

func (e *execution) jobStatus(now time.Time) jobExecutionStatus {
	st := e.state(now)
	out := jobExecutionStatus{
		ExecutionID:          e.id,
		StartTimestamp:       timestamp(st.start),
		TriggerTimestamp:     timestamp(e.trigger),
		FinishTimestamp:      timestamp(st.finish),
		UserID:               e.userID,
		UserType:             e.userType,
		JobID:                "job-" + e.executable,
		JobVersion:           simJobVersion,
		EnvironmentVersion:   "1.3",
		ExecutionStatus:      detailedTaskStatus(st.status),
		ExecutionType:        e.executionType,
		APIVersion:           e.apiVersion,
		ExecutionDestination: "CLOUD",
		AccountID:            simAccountID,
		WorkspaceID:          simWorkspaceID,
		Timeout:              e.timeout,
		Status:               st.status,
	}
	if !st.finish.IsZero() && !st.start.IsZero() {
		processed, rejected := rowCounts(e, st.status)
		out.NumberOfProcessedRows, out.NumberOfRejectedRows = &processed, &rejected
	}
	out.ErrorType, out.ErrorMessage = failure(st.status)
	return out
}

func (e *execution) planStatus(now time.Time) planStatus {
	st := e.state(now)
	detailed, ok := planExecutionStatus[st.status]
	if !ok {
		detailed = "UNDEFINED"
	}
	return planStatus{
		ExecutionID:     e.id,
		StartTimestamp:  timestamp(st.start),
		FinishTimestamp: timestamp(st.finish),
		UserID:          e.userID,
		UserType:        e.userType,
		PlanID:          e.executable,
		ExecutionStatus: detailed,
		Status:          st.status,
		ExecutionType:   e.executionType,
		APIVersion:      e.apiVersion,
	}
}

// lookupLocked finds an execution of kind; the task endpoints do not serve
// plan executions and vice versa.
func (s *Simulator) lookupLocked(id, kind string) (*execution, bool) {
	e, ok := s.execs[id]
	if !ok || e.kind != kind {
		return nil, false
	}
	return e, true
}

// readableLocked is lookupLocked for status reads: during Options.StatusLag
// after its trigger an execution is not yet in Talend's read model, so it
// is not found, exactly as an unknown id would be.
func (s *Simulator) readableLocked(id, kind string, now time.Time) (*execution, bool) {
	e, ok := s.lookupLocked(id, kind)
	if ok && s.opts.StatusLag > 0 && now.Before(e.trigger.Add(s.opts.StatusLag)) {
		return nil, false
	}
	return e, ok
}

// handleGetTaskExecution serves GET /processing/executions/{executionId}.
func (s *Simulator) handleGetTaskExecution(w http.ResponseWriter, _ *http.Request, params map[string]string) {
	s.mu.Lock()
	now := s.now()
	e, ok := s.readableLocked(params["executionId"], kindTask, now)
	var body jobExecutionStatus
	if ok {
		body = e.jobStatus(now)
	}
	s.mu.Unlock()
	if !ok {
		writeError(w, http.StatusNotFound, "Not Found", "execution not found")
		return
	}
	writeJSON(w, http.StatusOK, body)
}

// handleDeleteTaskExecution serves DELETE /processing/executions/{executionId}:
// a running execution ends as terminated now; a finished one is left as is.
func (s *Simulator) handleDeleteTaskExecution(w http.ResponseWriter, _ *http.Request, params map[string]string) {
	s.mu.Lock()
	e, ok := s.lookupLocked(params["executionId"], kindTask)
	if ok {
		now := s.now()
		if e.running(now) {
			e.stoppedAt = now
			s.endedLocked(e)
		}
	}
	s.mu.Unlock()
	if !ok {
		writeError(w, http.StatusNotFound, "Not Found", "execution not found")
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handleGetPlanExecution serves GET /processing/executions/plans/{planExecutionId}.
func (s *Simulator) handleGetPlanExecution(w http.ResponseWriter, _ *http.Request, params map[string]string) {
	s.mu.Lock()
	now := s.now()
	e, ok := s.readableLocked(params["planExecutionId"], kindPlan, now)
	var body planStatus
	if ok {
		body = e.planStatus(now)
	}
	s.mu.Unlock()
	if !ok {
		writeError(w, http.StatusNotFound, "Not Found", "plan execution not found")
		return
	}
	writeJSON(w, http.StatusOK, body)
}
