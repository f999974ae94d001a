package talendsim

import (
	"errors"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"time"
)

const (
	defaultListLimit = 100
	maxListLimit     = 100
	// maxListRange is the longest from/to window, and the default one, the
	// spec allows ("a datetime period ... not exceeding a 60-day range").
	maxListRange = 60 * 24 * time.Hour
)

var taskStatuses = map[string]bool{
	statusDispatching: true, statusDeployFail: true, statusExecuting: true,
	statusRejected: true, statusSuccessful: true, statusFailed: true,
	statusTerminated: true, statusTimeout: true, statusShutdown: true,
}

var planStatuses = map[string]bool{
	statusExecuting: true, statusSuccessful: true, statusFailed: true, statusMisfired: true,
}

// listQuery is a validated list request.
type listQuery struct {
	from, to      time.Time
	offset, limit int
	status        string
	workspaceID   string
	environmentID string
}

// parseListQuery validates the query parameters shared by the list
// endpoints; statuses is the enum of the status filter.
func parseListQuery(q url.Values, now time.Time, statuses map[string]bool) (listQuery, error) {
	lq := listQuery{limit: defaultListLimit, to: now, status: q.Get("status"),
		workspaceID: q.Get("workspaceId"), environmentID: q.Get("environmentId")}
	intParam := func(name string, bits int) (int64, bool, error) {
		v := q.Get(name)
		if v == "" {
			return 0, false, nil
		}
		n, err := strconv.ParseInt(v, 10, bits)
		if err != nil {
			return 0, false, errors.New(name + " must be an integer")
		}
		return n, true, nil
	}
	from, hasFrom, err := intParam("from", 64)
	if err != nil {
		return lq, err
	}
	to, hasTo, err := intParam("to", 64)
	if err != nil {
		return lq, err
	}
	offset, _, err := intParam("offset", 32)
	if err != nil {
		return lq, err
	}
	limit, hasLimit, err := intParam("limit", 32)
	if err != nil {
		return lq, err
	}
	lastDays, hasLastDays, err := intParam("lastDays", 32)
	if err != nil {
		return lq, err
	}
	if offset < 0 {
		return lq, errors.New("offset must be greater than or equal to 0")
	}
	lq.offset = int(offset)
	if hasLimit {
		if limit < 1 || limit > maxListLimit {
			return lq, errors.New("limit must be in range [1, 100]")
		}
		lq.limit = int(limit)
	}
	if lq.status != "" && !statuses[lq.status] {
		return lq, errors.New("status is not a valid execution status")
	}
	switch {
	case hasFrom || hasTo:
		if hasTo {
			lq.to = time.UnixMilli(to)
		}
		lq.from = lq.to.Add(-maxListRange)
		if hasFrom {
			lq.from = time.UnixMilli(from)
		}
	case hasLastDays:
		if lastDays < 1 {
			return lq, errors.New("lastDays must be at least 1")
		}
		lq.from = now.Add(-time.Duration(lastDays) * 24 * time.Hour)
	default:
		lq.from = now.Add(-maxListRange)
	}
	if lq.from.After(lq.to) {
		return lq, errors.New("from must not be after to")
	}
	if lq.to.Sub(lq.from) > maxListRange {
		return lq, errors.New("the time range must not exceed 60 days")
	}
	return lq, nil
}

// listedLocked returns the executions of kind (of executable, unless "")
// that lq selects at now, newest trigger first. An execution is listed when
// its life [trigger, finish or now] overlaps [from, to] and it is older
// than Options.ListLag.
func (s *Simulator) listedLocked(kind, executable string, lq listQuery, now time.Time) []*execution {
	if (lq.workspaceID != "" && lq.workspaceID != simWorkspaceID) ||
		(lq.environmentID != "" && lq.environmentID != simEnvironmentID) {
		return nil
	}
	visibleBefore := now.Add(-s.opts.ListLag)
	var out []*execution
	for _, e := range s.execs {
		if e.kind != kind || (executable != "" && e.executable != executable) {
			continue
		}
		if e.trigger.After(visibleBefore) {
			continue
		}
		st := e.state(now)
		end := st.finish
		if end.IsZero() {
			end = now
		}
		if e.trigger.After(lq.to) || end.Before(lq.from) {
			continue
		}
		if lq.status != "" && st.status != lq.status {
			continue
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].trigger.Equal(out[j].trigger) {
			return out[i].trigger.After(out[j].trigger)
		}
		return out[i].id < out[j].id
	})
	return out
}

// page cuts one page out of a sorted list.
func page[T any](all []T, offset, limit int) []T {
	if offset >= len(all) {
		return []T{}
	}
	return all[offset:min(offset+limit, len(all))]
}

// taskListItem is the spec's TaskExecutionStatus.
type taskListItem struct {
	ExecutionID      string   `json:"executionId"`
	TaskID           string   `json:"taskId"`
	TaskVersion      string   `json:"taskVersion"`
	ExecutionType    string   `json:"executionType"`
	APIVersion       string   `json:"apiVersion,omitempty"`
	Status           string   `json:"status"`
	ExecutionStatus  string   `json:"executionStatus"`
	Runtime          *runtime `json:"runtime,omitempty"`
	ErrorMessage     string   `json:"errorMessage,omitempty"`
	Timeout          int      `json:"timeout,omitempty"`
	StartTimestamp   string   `json:"startTimestamp,omitempty"`
	TriggerTimestamp string   `json:"triggerTimestamp"`
	FinishTimestamp  string   `json:"finishTimestamp,omitempty"`
	UserID           string   `json:"userId"`
	UserType         string   `json:"userType"`
}

type runtime struct {
	Type string `json:"type"`
}

type taskPage struct {
	Items  []taskListItem `json:"items"`
	Limit  int            `json:"limit"`
	Offset int            `json:"offset"`
	Total  int            `json:"total"`
}

type planPage struct {
	Items  []planStatus `json:"items"`
	Limit  int          `json:"limit"`
	Offset int          `json:"offset"`
	Total  int          `json:"total"`
}

func (e *execution) taskListItem(now time.Time) taskListItem {
	st := e.state(now)
	_, errMsg := failure(st.status)
	return taskListItem{
		ExecutionID:      e.id,
		TaskID:           e.executable,
		TaskVersion:      simJobVersion,
		ExecutionType:    e.executionType,
		APIVersion:       e.apiVersion,
		Status:           st.status,
		ExecutionStatus:  detailedTaskStatus(st.status),
		Runtime:          &runtime{Type: "CLOUD"},
		ErrorMessage:     errMsg,
		Timeout:          e.timeout,
		StartTimestamp:   timestamp(st.start),
		TriggerTimestamp: timestamp(e.trigger),
		FinishTimestamp:  timestamp(st.finish),
		UserID:           e.userID,
		UserType:         e.userType,
	}
}

// listTasks answers a task list; taskID "" lists every task.
func (s *Simulator) listTasks(w http.ResponseWriter, r *http.Request, taskID string) {
	s.mu.Lock()
	now := s.now()
	lq, err := parseListQuery(r.URL.Query(), now, taskStatuses)
	if err != nil {
		s.mu.Unlock()
		writeError(w, http.StatusBadRequest, "Bad Request", err.Error())
		return
	}
	if taskID != "" {
		// workspaceId and environmentId are filters of the all-tasks list only.
		lq.workspaceID, lq.environmentID = "", ""
	}
	if taskID != "" && !s.knownLocked(taskID, kindTask) && !s.hasExecutionsLocked(taskID, kindTask) {
		s.mu.Unlock()
		writeError(w, http.StatusNotFound, "Not Found", "task not found")
		return
	}
	all := s.listedLocked(kindTask, taskID, lq, now)
	body := taskPage{Items: []taskListItem{}, Limit: lq.limit, Offset: lq.offset, Total: len(all)}
	for _, e := range page(all, lq.offset, lq.limit) {
		body.Items = append(body.Items, e.taskListItem(now))
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, body)
}

// listPlans answers a plan list; planID "" lists every plan.
func (s *Simulator) listPlans(w http.ResponseWriter, r *http.Request, planID string) {
	s.mu.Lock()
	now := s.now()
	lq, err := parseListQuery(r.URL.Query(), now, planStatuses)
	if err != nil {
		s.mu.Unlock()
		writeError(w, http.StatusBadRequest, "Bad Request", err.Error())
		return
	}
	if planID != "" {
		lq.workspaceID, lq.environmentID = "", ""
	}
	if planID != "" && !s.knownLocked(planID, kindPlan) && !s.hasExecutionsLocked(planID, kindPlan) {
		s.mu.Unlock()
		writeError(w, http.StatusNotFound, "Not Found", "plan not found")
		return
	}
	all := s.listedLocked(kindPlan, planID, lq, now)
	body := planPage{Items: []planStatus{}, Limit: lq.limit, Offset: lq.offset, Total: len(all)}
	for _, e := range page(all, lq.offset, lq.limit) {
		body.Items = append(body.Items, e.planStatus(now))
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, body)
}

func (s *Simulator) hasExecutionsLocked(executable, kind string) bool {
	for _, e := range s.execs {
		if e.kind == kind && e.executable == executable {
			return true
		}
	}
	return false
}

// handleListAllTasks serves GET /processing/executables/tasks/executions.
func (s *Simulator) handleListAllTasks(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	s.listTasks(w, r, "")
}

// handleListTask serves GET /processing/executables/tasks/{taskId}/executions.
func (s *Simulator) handleListTask(w http.ResponseWriter, r *http.Request, params map[string]string) {
	s.listTasks(w, r, params["taskId"])
}

// handleListAllPlans serves GET /processing/executables/plans/executions.
func (s *Simulator) handleListAllPlans(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	s.listPlans(w, r, "")
}

// handleListPlan serves GET /processing/executables/plans/{planId}/executions.
func (s *Simulator) handleListPlan(w http.ResponseWriter, r *http.Request, params map[string]string) {
	s.listPlans(w, r, params["planId"])
}
