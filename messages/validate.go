package messages

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Problem messages. They name rules, never values: a body may carry secrets
// and rejected events are readable by everyone who reads the route.
const (
	msgUnknownField   = "unknown field"
	msgDuplicateField = "duplicate field"
	msgRequired       = "is required"
	msgEmpty          = "must not be empty"
	msgString         = "must be a string"
	msgBool           = "must be a boolean"
	msgObject         = "must be an object"
	msgInteger        = "must be an integer"
	msgParamsType     = "must be an array or an object"
	msgKind           = "must be task or plan"
	msgLogLevel       = "must be one of OFF, ERROR, WARN, INFO"
	msgTimeoutMin     = "must be at least 1"
	msgOnUnknown      = "must be report or rerun"
	msgRFC3339        = "must be an RFC 3339 date-time, e.g. 2026-12-04T10:00:00Z"
	msgExpiresOrder   = "must be after notBefore"
	msgNotForPlan     = "must not be set for a plan"
	msgID             = "must be 1 to 128 characters of A-Z, a-z, 0-9, _ or -"
	msgRoute          = "the subject's last token must be 1 to 64 characters of A-Z, a-z, 0-9, _ or -"
	msgNotJSON        = "body is not valid JSON"
	msgNotObject      = "body must be a JSON object"
	msgParamEmptyName = "has a parameter with an empty name"
	msgDuplicateParam = "duplicate parameter name"
)

// maxTimeout is Talend's limit: the run endpoint's timeout is an int32.
const maxTimeout = math.MaxInt32

// maxProblems bounds the rejected event: a 64 KiB body of one-character
// unknown fields would otherwise yield an event far larger than the body,
// possibly above the server's max payload, and the rejection would be lost.
const maxProblems = 100

// Decode validates body against the run request contract. It returns either
// a valid Request or an *InvalidRequestError listing every problem found.
// It never panics and its result depends only on its arguments.
func (d Decoder) Decode(body []byte, src Source) (Request, error) {
	v := validation{src: src}
	v.decode(body, d.maxBody())
	if len(v.problems) > 0 {
		return Request{}, v.invalid()
	}
	return v.req, nil
}

func (d Decoder) maxBody() int {
	if d.MaxBody <= 0 {
		return DefaultMaxBody
	}
	return d.MaxBody
}

// validation is the state of one Decode call.
type validation struct {
	src      Source
	req      Request
	problems []Problem

	routeOK       bool
	bodyRead      bool // the body was a JSON object; best-effort fields are meaningful
	bodyID        bool // the body had a non-null requestId
	bodyIDOK      bool
	haveExec      bool
	kindOK        bool // kind absent or valid
	haveParams    bool // parameters set and not empty
	haveLogLevel  bool
	haveTimeout   bool
	haveNotBefore bool // present and valid
	haveExpiresAt bool
}

func (v *validation) add(field, message string) {
	v.problems = append(v.problems, Problem{Field: field, Message: message})
}

func (v *validation) decode(body []byte, maxBody int) {
	v.kindOK = true
	v.req.Kind = KindTask
	v.req.OnUnknown = OnUnknownReport

	v.req.Route = routeOf(v.src.Subject)
	v.routeOK = ValidRoute(v.req.Route)
	if !v.routeOK {
		v.req.Route = InvalidRoute
		v.add("route", msgRoute)
	}

	switch {
	case len(body) > maxBody:
		v.add("", fmt.Sprintf("body is larger than %d bytes", maxBody))
		return
	case !json.Valid(body):
		v.add("", msgNotJSON)
		return
	}
	members, ok := objectMembers(body)
	if !ok {
		v.add("", msgNotObject)
		return
	}
	v.bodyRead = true

	seen := make(map[string]struct{}, len(members))
	for _, m := range members {
		if _, dup := seen[m.key]; dup {
			// The first occurrence counts; validating the later one too
			// would report problems about a value that is ignored anyway.
			v.add(m.key, msgDuplicateField)
			continue
		}
		seen[m.key] = struct{}{}
		if isNull(m.raw) {
			// null means "not set": many serializers write nil fields as
			// null rather than leaving them out. A null executable is then
			// reported as missing.
			continue
		}
		v.field(m.key, m.raw)
	}
	v.crossField()
	v.chooseID()
}

// field validates one top-level member.
func (v *validation) field(key string, raw json.RawMessage) {
	switch key {
	case "requestId":
		v.bodyID = true
		if s, ok := v.str(key, raw); ok {
			if ValidRequestID(s) {
				v.req.RequestID, v.bodyIDOK = s, true
			} else {
				v.add(key, msgID)
			}
		}
	case "executable":
		v.haveExec = true
		if s, ok := v.str(key, raw); ok {
			v.req.Executable = s
			if strings.TrimSpace(s) == "" {
				v.add(key, msgEmpty)
			}
		}
	case "kind":
		v.kindOK = false
		if s, ok := v.str(key, raw); ok {
			switch Kind(s) {
			case KindTask, KindPlan:
				v.req.Kind, v.kindOK = Kind(s), true
			default:
				v.add(key, msgKind)
			}
		}
		if !v.kindOK {
			v.req.Kind = ""
		}
	case "logLevel":
		v.haveLogLevel = true
		if s, ok := v.str(key, raw); ok {
			switch s {
			case "OFF", "ERROR", "WARN", "INFO":
				v.req.LogLevel = s
			default:
				v.add(key, msgLogLevel)
			}
		}
	case "timeout":
		v.haveTimeout = true
		v.timeout(raw)
	case "parameters":
		v.parameters(raw)
	case "awaitResult":
		if b, ok := v.boolean(key, raw); ok {
			v.req.AwaitResult = &b
		}
	case "onUnknown":
		if s, ok := v.str(key, raw); ok {
			switch s {
			case OnUnknownReport, OnUnknownRerun:
				v.req.OnUnknown = s
			default:
				v.add(key, msgOnUnknown)
			}
		}
	case "notBefore":
		v.req.NotBefore, v.haveNotBefore = v.dateTime(key, raw)
	case "expiresAt":
		v.req.ExpiresAt, v.haveExpiresAt = v.dateTime(key, raw)
	case "metadata":
		if kindOf(raw) != '{' {
			v.add(key, msgObject)
			return
		}
		var buf bytes.Buffer
		if err := json.Compact(&buf, raw); err != nil {
			v.add(key, msgObject) // unreachable: the body was valid JSON
			return
		}
		v.req.Metadata = buf.Bytes()
	case "redriveOf":
		if s, ok := v.str(key, raw); ok {
			if ValidRequestID(s) {
				v.req.RedriveOf = s
			} else {
				v.add(key, msgID)
			}
		}
	default:
		v.add(key, msgUnknownField)
	}
}

// crossField checks the rules that involve more than one field; they run
// after all members because JSON objects are unordered.
func (v *validation) crossField() {
	if !v.haveExec {
		v.add("executable", msgRequired)
	}
	if v.req.Kind == KindPlan {
		// Talend's plan endpoint takes the executable only; silently
		// dropping these would run something other than what was asked.
		if v.haveParams {
			v.add("parameters", msgNotForPlan)
		}
		if v.haveLogLevel {
			v.add("logLevel", msgNotForPlan)
		}
		if v.haveTimeout {
			v.add("timeout", msgNotForPlan)
		}
	}
	if v.haveNotBefore && v.haveExpiresAt && !v.req.ExpiresAt.After(v.req.NotBefore) {
		v.add("expiresAt", msgExpiresOrder)
	}
}

// chooseID applies the requestId precedence: body, pinned header, Nats-Msg-Id,
// fallback. An invalid choice is a problem; the rejection then uses the
// fallback id so its event subject is still well-formed.
func (v *validation) chooseID() {
	if v.bodyID {
		if !v.bodyIDOK {
			v.req.RequestID = v.src.FallbackID
		}
		return
	}
	id, header := v.headerID()
	switch {
	case ValidRequestID(id):
		v.req.RequestID = id
	case header == "":
		// A caller bug (FallbackID must always be valid), but accepting a
		// request without a usable id would break idempotency.
		v.req.RequestID = id
		v.add("requestId", "the fallback id "+msgID)
	default:
		v.req.RequestID = v.src.FallbackID
		v.add("requestId", "the "+header+" header "+msgID)
	}
}

// headerID returns the id the headers propose and the header it came from
// ("" for the fallback).
func (v *validation) headerID() (id, header string) {
	switch {
	case v.src.PinnedID != "":
		return v.src.PinnedID, PinnedIDHeader
	case v.src.MsgID != "":
		return v.src.MsgID, "Nats-Msg-Id"
	}
	return v.src.FallbackID, ""
}

// invalid builds the error from the state, with the best-effort values.
func (v *validation) invalid() *InvalidRequestError {
	e := &InvalidRequestError{
		RequestID:  v.req.RequestID,
		Route:      v.req.Route,
		Executable: v.req.Executable,
		Kind:       v.req.Kind,
		Metadata:   v.req.Metadata,
		Problems:   v.problems,
	}
	if !v.bodyRead {
		// The body could not be read, so its requestId is unknown; a valid
		// header id still lets `submit --wait` see the rejection.
		e.RequestID = v.src.FallbackID
		if id, h := v.headerID(); h != "" && ValidRequestID(id) {
			e.RequestID = id
		}
	}
	if len(e.Problems) > maxProblems {
		more := len(e.Problems) - (maxProblems - 1)
		e.Problems = append(e.Problems[:maxProblems-1:maxProblems-1],
			Problem{Message: fmt.Sprintf("%d more problems not listed", more)})
	}
	return e
}

func (v *validation) timeout(raw json.RawMessage) {
	if kindOf(raw) != '0' {
		v.add("timeout", msgInteger)
		return
	}
	n, ok := parseInteger(string(raw))
	switch {
	case !ok:
		v.add("timeout", msgInteger)
	case n < 1:
		v.add("timeout", msgTimeoutMin)
	case n > maxTimeout:
		v.add("timeout", fmt.Sprintf("must be at most %d", maxTimeout))
	default:
		v.req.Timeout = int(n)
	}
}

// parseInteger parses a JSON number literal that denotes an integer. It
// takes "60" and also "60.0" (Python writes whole floats that way) but not
// exponents, which no serializer uses for small integers. Literals too large
// for int64 come back clamped so the range check still says which bound.
func parseInteger(lit string) (int64, bool) {
	if i := strings.IndexByte(lit, '.'); i >= 0 {
		if strings.Trim(lit[i+1:], "0") != "" {
			return 0, false
		}
		lit = lit[:i]
	}
	n, err := strconv.ParseInt(lit, 10, 64)
	if err != nil {
		if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
			return n, true // ParseInt returns the bound it hit
		}
		return 0, false
	}
	return n, true
}

// parameters accepts the array form [{name, value, encrypted?}] and the
// object form {name: value}. Object-form members are sorted by name so the
// result does not depend on key order.
func (v *validation) parameters(raw json.RawMessage) {
	switch kindOf(raw) {
	case '[':
		v.parameterArray(raw)
	case '{':
		v.parameterObject(raw)
	default:
		v.haveParams = true // set, just wrong; a plan is told too
		v.add("parameters", msgParamsType)
	}
}

func (v *validation) parameterArray(raw json.RawMessage) {
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		v.add("parameters", msgParamsType) // unreachable: kind was '['
		return
	}
	v.haveParams = len(items) > 0
	first := make(map[string]int, len(items))
	params := make([]Parameter, 0, len(items))
	for i, item := range items {
		item = bytes.TrimSpace(item)
		path := "parameters[" + strconv.Itoa(i) + "]"
		p, ok := v.parameterItem(path, item)
		if !ok {
			continue
		}
		if j, dup := first[p.Name]; dup {
			v.add(path+".name", fmt.Sprintf("%s (first at parameters[%d])", msgDuplicateParam, j))
			continue
		}
		first[p.Name] = i
		params = append(params, p)
	}
	v.req.Parameters = params
}

// parameterItem validates one array-form item; ok is false when it had a
// problem (already reported).
func (v *validation) parameterItem(path string, raw json.RawMessage) (p Parameter, ok bool) {
	members, isObject := objectMembers(raw)
	if !isObject {
		v.add(path, msgObject)
		return p, false
	}
	before := len(v.problems)
	var haveName, haveValue bool
	seen := make(map[string]struct{}, 3)
	for _, m := range members {
		field := path + "." + m.key
		if _, dup := seen[m.key]; dup {
			v.add(field, msgDuplicateField)
			continue
		}
		seen[m.key] = struct{}{}
		if isNull(m.raw) {
			continue // as at the top level: null is "not set"
		}
		switch m.key {
		case "name":
			haveName = true
			if s, ok := v.str(field, m.raw); ok {
				p.Name = s
				if s == "" {
					v.add(field, msgEmpty)
				}
			}
		case "value":
			haveValue = true
			if s, ok := v.str(field, m.raw); ok {
				p.Value = s
			}
		case "encrypted":
			if b, ok := v.boolean(field, m.raw); ok {
				p.Encrypted = b
			}
		default:
			v.add(field, msgUnknownField)
		}
	}
	if !haveName {
		v.add(path+".name", msgRequired)
	}
	if !haveValue {
		v.add(path+".value", msgRequired)
	}
	return p, len(v.problems) == before
}

func (v *validation) parameterObject(raw json.RawMessage) {
	members, _ := objectMembers(raw)
	v.haveParams = len(members) > 0
	seen := make(map[string]struct{}, len(members))
	params := make([]Parameter, 0, len(members))
	for _, m := range members {
		field := "parameters." + m.key
		if m.key == "" {
			v.add("parameters", msgParamEmptyName)
			continue
		}
		if _, dup := seen[m.key]; dup {
			// encoding/json would silently keep the last one, and which
			// value the publisher meant cannot be known.
			v.add(field, msgDuplicateParam)
			continue
		}
		seen[m.key] = struct{}{}
		if s, ok := v.str(field, m.raw); ok {
			params = append(params, Parameter{Name: m.key, Value: s})
		}
	}
	sort.Slice(params, func(i, j int) bool { return params[i].Name < params[j].Name })
	v.req.Parameters = params
}

func (v *validation) str(field string, raw json.RawMessage) (string, bool) {
	var s string
	if kindOf(raw) != '"' || json.Unmarshal(raw, &s) != nil {
		v.add(field, msgString)
		return "", false
	}
	return s, true
}

func (v *validation) boolean(field string, raw json.RawMessage) (bool, bool) {
	switch string(raw) {
	case "true":
		return true, true
	case "false":
		return false, true
	}
	v.add(field, msgBool)
	return false, false
}

func (v *validation) dateTime(field string, raw json.RawMessage) (time.Time, bool) {
	s, ok := v.str(field, raw)
	if !ok {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		v.add(field, msgRFC3339)
		return time.Time{}, false
	}
	return t.UTC(), true
}

// member is one name/value pair of a JSON object, in document order.
type member struct {
	key string
	raw json.RawMessage
}

// objectMembers splits a JSON object into its members, keeping duplicates
// (encoding/json's map and struct decoding silently keep only the last).
// raw must be valid JSON; ok is false when it is not an object. Values are
// slices of raw.
//
// A scanner rather than json.Decoder tokens: every request goes through it,
// and the token API allocated for every key and value (the decoder's
// largest cost; decodeMembersTokens in the tests is the reference it is
// checked against).
func objectMembers(raw []byte) (members []member, ok bool) {
	i := skipSpace(raw, 0)
	if i >= len(raw) || raw[i] != '{' {
		return nil, false
	}
	i = skipSpace(raw, i+1)
	if i < len(raw) && raw[i] == '}' {
		return nil, true
	}
	for i < len(raw) && raw[i] == '"' {
		end := endOfString(raw, i)
		if end < 0 {
			return nil, false
		}
		key, ok := jsonString(raw[i:end])
		if !ok {
			return nil, false
		}
		i = skipSpace(raw, end)
		if i >= len(raw) || raw[i] != ':' {
			return nil, false
		}
		start := skipSpace(raw, i+1)
		end = endOfValue(raw, start)
		if end < 0 {
			return nil, false
		}
		members = append(members, member{key: key, raw: raw[start:end:end]})
		i = skipSpace(raw, end)
		if i >= len(raw) {
			return nil, false
		}
		switch raw[i] {
		case ',':
			i = skipSpace(raw, i+1)
		case '}':
			return members, true
		default:
			return nil, false
		}
	}
	return nil, false
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// endOfString returns the index just past the string starting at b[i]
// (a '"'), or -1.
func endOfString(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return -1
}

// endOfValue returns the index just past the JSON value starting at b[i],
// or -1.
func endOfValue(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '"':
		return endOfString(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				end := endOfString(b, j)
				if end < 0 {
					return -1
				}
				j = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return -1
	}
	j := i
	for j < len(b) {
		switch b[j] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return j
		}
		j++
	}
	return j
}

// jsonString decodes a quoted JSON string; plain ASCII without escapes is
// the common case and needs no decoder.
func jsonString(quoted []byte) (string, bool) {
	inner := quoted[1 : len(quoted)-1]
	plain := true
	for _, c := range inner {
		if c == '\\' || c >= utf8.RuneSelf {
			plain = false
			break
		}
	}
	if plain {
		return string(inner), true
	}
	var s string
	if err := json.Unmarshal(quoted, &s); err != nil {
		return "", false
	}
	return s, true
}

// kindOf classifies a JSON value by its first byte: '{', '[', '"', 't'
// (true), 'f' (false), 'n' (null) or '0' for a number.
func kindOf(raw []byte) byte {
	raw = bytes.TrimLeft(raw, " \t\r\n")
	if len(raw) == 0 {
		return 0
	}
	switch c := raw[0]; c {
	case '{', '[', '"', 't', 'f', 'n':
		return c
	}
	return '0'
}

func isNull(raw []byte) bool { return kindOf(raw) == 'n' }
