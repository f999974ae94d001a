package messages

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// EventType is the last token of an event subject and the "type" field.
type EventType string

const (
	Accepted EventType = "accepted"
	Status   EventType = "status"
	Result   EventType = "result"
	Failed   EventType = "failed"
	Rejected EventType = "rejected"
	Unknown  EventType = "unknown"
)

// Reasons of a Failed event.
const (
	ReasonTalendError      = "talend_error"
	ReasonRetriesExhausted = "retries_exhausted"
	ReasonExpired          = "expired"
	ReasonCancelled        = "cancelled"
)

// DefaultEventPrefix is the subject prefix of events when none is configured.
const DefaultEventPrefix = "tmc.runs.events"

// TalendError is Talend's error body, echoed in Failed events.
type TalendError struct {
	Status    int    `json:"status"`
	Message   string `json:"message,omitempty"`
	Detail    string `json:"detail,omitempty"`
	RequestID string `json:"requestId,omitempty"`
}

// LogLine is one line of a run's Talend log, carried by Result events.
type LogLine struct {
	Severity string    `json:"severity"`
	Time     time.Time `json:"time"`
	Message  string    `json:"message"`
}

// Event is the body of everything tmc-runner says about a request. Which
// optional fields are set depends on Type; see DESIGN.md "Events".
type Event struct {
	RequestID     string          `json:"requestId"`
	Route         string          `json:"route"`
	Type          EventType       `json:"type"`
	Time          time.Time       `json:"time"`
	Executable    string          `json:"executable"`
	Kind          Kind            `json:"kind"`
	Attempt       int             `json:"attempt"`
	RedriveOf     string          `json:"redriveOf,omitempty"`
	Metadata      json.RawMessage `json:"metadata,omitempty"`
	ExecutionID   string          `json:"executionId,omitempty"`
	Followed      *bool           `json:"followed,omitempty"`
	Status        string          `json:"status,omitempty"`
	OK            *bool           `json:"ok,omitempty"`
	TimedOut      *bool           `json:"timedOut,omitempty"`
	StartTime     *time.Time      `json:"startTime,omitempty"`
	FinishTime    *time.Time      `json:"finishTime,omitempty"`
	ErrorType     string          `json:"errorType,omitempty"`
	ErrorMessage  string          `json:"errorMessage,omitempty"`
	ProcessedRows *int64          `json:"processedRows,omitempty"`
	RejectedRows  *int64          `json:"rejectedRows,omitempty"`
	Logs          []LogLine       `json:"logs,omitempty"`
	Reason        string          `json:"reason,omitempty"`
	HTTPStatus    int             `json:"httpStatus,omitempty"`
	TalendError   *TalendError    `json:"talendError,omitempty"`
	Errors        []Problem       `json:"errors,omitempty"`
	Detail        string          `json:"detail,omitempty"`
}

// NewEvent starts an event about r with the fields every event carries.
func NewEvent(t EventType, r *Request, attempt int, now time.Time) *Event {
	e := &Event{Type: t, Time: now, Attempt: attempt}
	if r != nil {
		e.RequestID = r.RequestID
		e.Route = r.Route
		e.Executable = r.Executable
		e.Kind = r.Kind
		e.RedriveOf = r.RedriveOf
		e.Metadata = r.Metadata
	}
	return e
}

// EventFromInvalid builds the Rejected event for a request Decode refused.
func EventFromInvalid(ie *InvalidRequestError, attempt int, now time.Time) *Event {
	return &Event{
		RequestID:  ie.RequestID,
		Route:      ie.Route,
		Type:       Rejected,
		Time:       now,
		Executable: ie.Executable,
		Kind:       ie.Kind,
		Attempt:    attempt,
		Metadata:   ie.Metadata,
		Errors:     ie.Problems,
	}
}

// Subject is "<prefix>.<route>.<requestId>.<type>"; prefix "" means
// DefaultEventPrefix. Route and requestId are valid subject tokens by the
// request rules.
func (e *Event) Subject(prefix string) string {
	if prefix == "" {
		prefix = DefaultEventPrefix
	}
	return prefix + "." + e.Route + "." + e.RequestID + "." + string(e.Type)
}

// MsgID is the event's Nats-Msg-Id: "<requestId>.<type>", and for status
// events "<requestId>.status.<status>" so each distinct status is stored
// once. The status comes from Talend; anything but an id character is
// replaced so it cannot break the header.
func (e *Event) MsgID() string {
	id := e.RequestID + "." + string(e.Type)
	if e.Type == Status {
		id += "." + sanitizeToken(e.Status)
	}
	return id
}

func sanitizeToken(s string) string {
	if validID(s, len(s)) {
		return s
	}
	b := []byte(s)
	for i, c := range b {
		if !isIDByte(c) {
			b[i] = '_'
		}
	}
	return string(b)
}

// Terminal reports whether e ends its request: result, failed, rejected and
// unknown always do; accepted does when the execution is not followed.
func (e *Event) Terminal(followed bool) bool {
	switch e.Type {
	case Accepted:
		return !followed
	case Status:
		return false
	}
	return true
}

// Marshal encodes the event as JSON. Times are RFC 3339 in UTC with exactly
// millisecond precision, so bodies (and golden files) are stable and sort as
// text. HTML characters are not escaped so metadata is echoed as sent.
func (e *Event) Marshal() ([]byte, error) {
	// MarshalJSON directly: through json.Marshal the result would be
	// encoded twice (once here, then validated and compacted again).
	b, err := e.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("marshal %s event %s: %w", e.Type, e.RequestID, err)
	}
	return b, nil
}

// eventFields has Event's fields without its methods, so MarshalJSON can
// encode them without recursing into itself.
type eventFields Event

// MarshalJSON overrides the time fields with the millisecond format. A value
// receiver, so json.Marshal of an Event value (not only a pointer) agrees.
func (e Event) MarshalJSON() ([]byte, error) {
	// Fields of the outer struct shadow the embedded ones of the same JSON
	// name, so the encoder writes these instead of the time.Time values.
	return marshalNoEscape(struct {
		*eventFields
		Time       jsonTime  `json:"time"`
		StartTime  *jsonTime `json:"startTime,omitempty"`
		FinishTime *jsonTime `json:"finishTime,omitempty"`
	}{
		eventFields: (*eventFields)(&e),
		Time:        jsonTime(e.Time),
		StartTime:   (*jsonTime)(e.StartTime),
		FinishTime:  (*jsonTime)(e.FinishTime),
	})
}

type logLineFields LogLine

// MarshalJSON writes the line's time in the millisecond format.
func (l LogLine) MarshalJSON() ([]byte, error) {
	return marshalNoEscape(struct {
		logLineFields
		Time jsonTime `json:"time"`
	}{logLineFields(l), jsonTime(l.Time)})
}

func marshalNoEscape(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte{'\n'}), nil
}

// TimeLayout is RFC 3339 with exactly three fractional digits.
const TimeLayout = "2006-01-02T15:04:05.000Z07:00"

// FormatTime renders t the way events do: UTC, milliseconds, RFC 3339.
func FormatTime(t time.Time) string {
	return t.UTC().Truncate(time.Millisecond).Format(TimeLayout)
}

// jsonTime marshals as FormatTime. Decoding needs no counterpart: the output
// is RFC 3339, which time.Time parses.
type jsonTime time.Time

func (t jsonTime) MarshalJSON() ([]byte, error) {
	tt := time.Time(t).UTC()
	if y := tt.Year(); y < 0 || y > 9999 {
		// Same limit as time.Time.MarshalJSON: RFC 3339 has 4-digit years.
		return nil, errors.New("event time year outside of range [0,9999]")
	}
	b := make([]byte, 0, len(TimeLayout)+2)
	b = append(b, '"')
	b = tt.Truncate(time.Millisecond).AppendFormat(b, TimeLayout)
	return append(b, '"'), nil
}

// DecodeEvent parses an event body for readers (submit --wait, status).
// Unknown fields are ignored so older readers keep working when events grow.
func DecodeEvent(data []byte) (*Event, error) {
	var e Event
	if err := json.Unmarshal(data, &e); err != nil {
		return nil, fmt.Errorf("decode event: %w", err)
	}
	if e.RequestID == "" || e.Type == "" {
		return nil, errors.New("decode event: requestId and type are required")
	}
	return &e, nil
}
