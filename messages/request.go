package messages

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"
)

// Kind says which Talend endpoint runs the executable.
type Kind string

const (
	KindTask Kind = "task"
	KindPlan Kind = "plan"
)

// Parameter is one context parameter of a task run. Encrypted is only a hint
// carried from the array form; values are never logged or echoed either way.
type Parameter struct {
	Name      string
	Value     string
	Encrypted bool
}

// Request is a validated run request. Every field holds a value the rules
// in DESIGN.md accept, so the worker can use it without checking again.
type Request struct {
	RequestID   string
	Route       string
	Executable  string
	Kind        Kind   // defaulted to KindTask
	LogLevel    string // "" or OFF|ERROR|WARN|INFO
	Timeout     int    // minutes, 0 = unset, else >= 1
	Parameters  []Parameter
	AwaitResult *bool  // nil = operator default
	OnUnknown   string // OnUnknownReport (default) or OnUnknownRerun
	NotBefore   time.Time
	ExpiresAt   time.Time
	Metadata    json.RawMessage // a compacted JSON object, or nil
	RedriveOf   string
}

// Values of Request.OnUnknown.
const (
	OnUnknownReport = "report"
	OnUnknownRerun  = "rerun"
)

// ParamMap returns the parameters in the object form {name: value} that
// Talend's run endpoint takes, or nil when there are none so the caller can
// omit the field.
func (r *Request) ParamMap() map[string]string {
	if len(r.Parameters) == 0 {
		return nil
	}
	m := make(map[string]string, len(r.Parameters))
	for _, p := range r.Parameters {
		m[p.Name] = p.Value
	}
	return m
}

// Source says where a message came from; the requestId and route rules need it.
type Source struct {
	Subject    string // e.g. "tmc.runs.request.billing"; the route is its last token
	MsgID      string // Nats-Msg-Id header, may be ""
	PinnedID   string // Tmc-Request-Id header set by tmc-runner when it re-publishes a request; wins over MsgID
	FallbackID string // built with FallbackID; always a valid requestId
}

// PinnedIDHeader is the header tmc-runner sets when it re-publishes a request
// (deferred starts, redrives) so the requestId survives the new message.
const PinnedIDHeader = "Tmc-Request-Id"

// FallbackID names a message that carries no requestId of its own. The
// stream sequence alone is not unique for ever (a stream can be deleted and
// recreated), so it is qualified by the stream's creation time in Unix
// milliseconds. The result always satisfies the requestId rule.
func FallbackID(streamCreated time.Time, seq uint64) string {
	b := make([]byte, 0, 48)
	b = append(b, 's')
	ms := streamCreated.UnixMilli()
	if ms < 0 {
		// A '-' sign is a legal id character, but "s-5-42" reads as noise;
		// streams are never created before 1970 anyway.
		ms = 0
	}
	b = strconv.AppendInt(b, ms, 10)
	b = append(b, '-')
	b = strconv.AppendUint(b, seq, 10)
	return string(b)
}

// DefaultMaxBody is the largest request body Decoder accepts by default.
const DefaultMaxBody = 64 << 10

// Decoder decodes and validates run requests. The zero value is ready to
// use. It is a value type without mutable state: safe to copy and share.
type Decoder struct {
	MaxBody int // bytes; zero or less means DefaultMaxBody
}

// Problem is one thing wrong with a request. Field is a path into the body
// ("timeout", "parameters[2].name", "parameters.foo"), "route" for the
// subject, "requestId" for header ids, or "" for the body as a whole.
type Problem struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

// InvalidRequestError is returned by Decode for a request that must be
// rejected. Besides the problems it carries what could be read of the
// request, so the rejected event still lands under the right subject and
// echoes what the publisher needs to recognise it.
type InvalidRequestError struct {
	RequestID  string // the chosen id when valid, else Source.FallbackID
	Route      string // the route, or InvalidRoute
	Executable string
	Kind       Kind // "" when the body's kind was invalid
	Metadata   json.RawMessage
	Problems   []Problem
}

// InvalidRoute is the route of a rejection whose subject had no valid route.
const InvalidRoute = "_invalid"

func (e *InvalidRequestError) Error() string {
	var b strings.Builder
	b.WriteString("invalid run request ")
	b.WriteString(e.RequestID)
	b.WriteString(": ")
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteString("; ")
		}
		if p.Field != "" {
			b.WriteString(quoteField(p.Field))
			b.WriteString(": ")
		}
		b.WriteString(p.Message)
	}
	return b.String()
}

// quoteField keeps log lines one line long: field names come from the body
// and may hold newlines or control characters.
func quoteField(f string) string {
	for i := 0; i < len(f); i++ {
		c := f[i]
		if c < 0x21 || c > 0x7e || c == '"' || c == ';' || c == ':' {
			return strconv.QuoteToASCII(f)
		}
	}
	return f
}

// validID reports whether s is 1..max characters of A-Z a-z 0-9 _ -.
// A loop instead of a regexp: it runs on every message and every header.
func validID(s string, max int) bool {
	if len(s) == 0 || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isIDByte(s[i]) {
			return false
		}
	}
	return true
}

func isIDByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-'
}

const (
	maxRequestIDLen = 128
	maxRouteLen     = 64
)

// ValidRequestID reports whether s satisfies the requestId rule.
func ValidRequestID(s string) bool { return validID(s, maxRequestIDLen) }

// ValidRoute reports whether s satisfies the route rule.
func ValidRoute(s string) bool { return validID(s, maxRouteLen) }

// routeOf returns the last token of a request subject. The prefix is
// configurable, so only the last token is looked at.
func routeOf(subject string) string {
	return subject[strings.LastIndexByte(subject, '.')+1:]
}
