package follow

import (
	"encoding/json"
	"time"

	"github.com/tmc-runner/tmc-runner/messages"
)

// Record is one followed execution, as stored in the bucket.
type Record struct {
	RequestID   string          `json:"requestId"`
	Route       string          `json:"route"`
	Executable  string          `json:"executable"`
	Kind        messages.Kind   `json:"kind"`
	ExecutionID string          `json:"executionId"`
	Attempt     int             `json:"attempt"`
	RedriveOf   string          `json:"redriveOf,omitempty"`
	Metadata    json.RawMessage `json:"metadata,omitempty"`
	// AcceptedAt is when Talend returned the executionId; Deadline is when
	// the follow-up gives up with a timed-out result.
	AcceptedAt time.Time `json:"acceptedAt"`
	Deadline   time.Time `json:"deadline"`
	// LastStatus is the last Talend status published as a `status` event.
	LastStatus string `json:"lastStatus,omitempty"`
	// Silent records are followed without events: with a running cap,
	// every execution is followed until its end is seen, including those
	// whose requester did not ask for a result.
	Silent bool `json:"silent,omitempty"`
	// Slot is the running-cap slot the execution holds until its end.
	Slot string `json:"slot,omitempty"`
}

// key is the record's key in the bucket.
func key(requestID string) string { return "follow." + requestID }

// request rebuilds the request fields events echo.
func (r *Record) request() *messages.Request {
	return &messages.Request{
		RequestID: r.RequestID, Route: r.Route, Executable: r.Executable, Kind: r.Kind,
		Metadata: r.Metadata, RedriveOf: r.RedriveOf,
	}
}

// Terminal task statuses (DESIGN.md); anything else — a stopping run, a
// misfire, a value added later — is not an ending.
var taskTerminal = map[string]bool{
	"execution_successful": true, "execution_rejected": true, "execution_failed": true,
	"deploy_failed": true, "terminated": true, "terminated_timeout": true, "terminated_shutdown": true,
}

// Terminal plan statuses.
var planTerminal = map[string]bool{
	"execution_successful": true, "execution_failed": true, "execution_misfired": true,
}

func terminal(kind messages.Kind, status string) bool {
	if kind == messages.KindPlan {
		return planTerminal[status]
	}
	return taskTerminal[status]
}

// failedStatus says whether logs are worth attaching to the result.
func failedStatus(status string) bool {
	switch status {
	case "execution_failed", "deploy_failed", "terminated", "terminated_timeout", "terminated_shutdown", "execution_misfired":
		return true
	}
	return false
}
