package talend

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Execution is a task execution's status (JobExecutionStatusV21, the
// fields tmc-runner reads).
type Execution struct {
	ExecutionID     string     `json:"executionId"`
	Status          string     `json:"status"`
	JobID           string     `json:"jobId,omitempty"`
	TriggerTime     *time.Time `json:"triggerTimestamp,omitempty"`
	StartTime       *time.Time `json:"startTimestamp,omitempty"`
	FinishTime      *time.Time `json:"finishTimestamp,omitempty"`
	ErrorType       string     `json:"errorType,omitempty"`
	ErrorMessage    string     `json:"errorMessage,omitempty"`
	ProcessedRows   *int64     `json:"numberOfProcessedRows,omitempty"`
	RejectedRows    *int64     `json:"numberOfRejectedRows,omitempty"`
	UserID          string     `json:"userId,omitempty"`
	UserType        string     `json:"userType,omitempty"`
	APIVersion      string     `json:"apiVersion,omitempty"`
	ExecutionStatus string     `json:"executionStatus,omitempty"`
}

// ListedExecution is one item of a task execution list
// (TaskExecutionStatus).
type ListedExecution struct {
	ExecutionID  string     `json:"executionId"`
	TaskID       string     `json:"taskId"`
	Status       string     `json:"status"`
	TriggerTime  *time.Time `json:"triggerTimestamp,omitempty"`
	StartTime    *time.Time `json:"startTimestamp,omitempty"`
	FinishTime   *time.Time `json:"finishTimestamp,omitempty"`
	ErrorMessage string     `json:"errorMessage,omitempty"`
	UserID       string     `json:"userId,omitempty"`
	UserType     string     `json:"userType,omitempty"`
	APIVersion   string     `json:"apiVersion,omitempty"`
}

// ExecutionPage is one page of an execution list.
type ExecutionPage struct {
	Items  []ListedExecution `json:"items"`
	Total  int               `json:"total"`
	Offset int               `json:"offset"`
	Limit  int               `json:"limit"`
}

// PlanExecution is a plan execution's status (PlanExecutionStatus).
type PlanExecution struct {
	ExecutionID string     `json:"executionId"`
	PlanID      string     `json:"planId"`
	Status      string     `json:"status"`
	StartTime   *time.Time `json:"startTimestamp,omitempty"`
	FinishTime  *time.Time `json:"finishTimestamp,omitempty"`
	UserID      string     `json:"userId,omitempty"`
	UserType    string     `json:"userType,omitempty"`
}

// LogLine is one line of an execution's log.
type LogLine struct {
	Severity string `json:"severity"`
	// TimestampMillis is the spec's logTimestamp: epoch milliseconds.
	TimestampMillis int64  `json:"logTimestamp"`
	Message         string `json:"logMessage"`
}

// Time is the line's timestamp.
func (l LogLine) Time() time.Time { return time.UnixMilli(l.TimestampMillis).UTC() }

// GetExecution reads a task execution's status.
func (c *Client) GetExecution(ctx context.Context, executionID string) (Execution, error) {
	var out Execution
	err := c.call(ctx, "get execution", http.MethodGet, "/processing/executions/"+url.PathEscape(executionID), nil, http.StatusOK, &out)
	return out, err
}

// GetPlanExecution reads a plan execution's status.
func (c *Client) GetPlanExecution(ctx context.Context, executionID string) (PlanExecution, error) {
	var out PlanExecution
	err := c.call(ctx, "get plan execution", http.MethodGet, "/processing/executions/plans/"+url.PathEscape(executionID), nil, http.StatusOK, &out)
	return out, err
}

// ListTaskExecutions reads one page of the executions of every task whose
// life overlaps [from, to]: all executions still running in the account,
// plus those that ended in the window. limit is at most 100.
func (c *Client) ListTaskExecutions(ctx context.Context, from, to time.Time, offset, limit int) (ExecutionPage, error) {
	q := url.Values{}
	q.Set("from", strconv.FormatInt(from.UnixMilli(), 10))
	q.Set("to", strconv.FormatInt(to.UnixMilli(), 10))
	q.Set("offset", strconv.Itoa(offset))
	q.Set("limit", strconv.Itoa(min(max(limit, 1), 100)))
	var out ExecutionPage
	err := c.call(ctx, "list executions", http.MethodGet, "/processing/executables/tasks/executions?"+q.Encode(), nil, http.StatusOK, &out)
	return out, err
}

// StopExecution stops a running task execution.
func (c *Client) StopExecution(ctx context.Context, executionID string) error {
	return c.call(ctx, "stop execution", http.MethodDelete, "/processing/executions/"+url.PathEscape(executionID), nil, http.StatusNoContent, nil)
}

// ExecutionLogs returns the last count lines of an execution's log, newest
// first, as far as Talend has them (they are complete ~30 s after the end).
func (c *Client) ExecutionLogs(ctx context.Context, executionID string, count int) ([]LogLine, error) {
	var out struct {
		Data []LogLine `json:"data"`
	}
	path := fmt.Sprintf("/monitoring/executions/%s/logs?count=%d&order=DESC", url.PathEscape(executionID), min(max(count, 1), 200))
	if err := c.call(ctx, "get logs", http.MethodGet, path, nil, http.StatusOK, &out); err != nil {
		return nil, err
	}
	return out.Data, nil
}

// ListExecutionsOf reads one page of the executions of one task (or, with
// plan true, one plan) whose life overlaps [from, to]. Plan items carry
// their start time as TriggerTime.
func (c *Client) ListExecutionsOf(ctx context.Context, plan bool, executable string, from, to time.Time, offset, limit int) (ExecutionPage, error) {
	q := url.Values{}
	q.Set("from", strconv.FormatInt(from.UnixMilli(), 10))
	q.Set("to", strconv.FormatInt(to.UnixMilli(), 10))
	q.Set("offset", strconv.Itoa(offset))
	q.Set("limit", strconv.Itoa(min(max(limit, 1), 100)))
	kind := "tasks"
	if plan {
		kind = "plans"
	}
	var out ExecutionPage
	path := "/processing/executables/" + kind + "/" + url.PathEscape(executable) + "/executions?" + q.Encode()
	if err := c.call(ctx, "list executions of "+kind[:len(kind)-1], http.MethodGet, path, nil, http.StatusOK, &out); err != nil {
		return ExecutionPage{}, err
	}
	if plan {
		for i := range out.Items {
			if out.Items[i].TriggerTime == nil {
				out.Items[i].TriggerTime = out.Items[i].StartTime
			}
		}
	}
	return out, nil
}
