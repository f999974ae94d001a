package talendsim

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"
)

// maxBody bounds request bodies; the real bodies are a few hundred bytes.
const maxBody = 1 << 20

// decodeObject reads a JSON object body field by field. Decoding into raw
// fields (rather than a struct) lets each endpoint reject unknown fields and
// wrong JSON types precisely, which is what makes the simulator useful for
// catching client bugs the real API would also refuse.
func decodeObject(r *http.Request) (map[string]json.RawMessage, error) {
	mediaType, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mediaType != "application/json" {
		return nil, errors.New("the body must be application/json")
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return nil, errors.New("cannot read the body")
	}
	if len(body) > maxBody {
		return nil, errors.New("the body is too large")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	var fields map[string]json.RawMessage
	if err := dec.Decode(&fields); err != nil || fields == nil {
		return nil, errors.New("the body must be a JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("unexpected data after the JSON object")
	}
	return fields, nil
}

// asBool decodes raw as a JSON boolean.
func asBool(raw json.RawMessage) (bool, bool) {
	switch string(raw) {
	case "true":
		return true, true
	case "false":
		return false, true
	}
	return false, false
}

// asInt32 decodes raw as a JSON integer that fits an int32 (the spec's
// format); 1.5, 1e3 and "5" are refused.
func asInt32(raw json.RawMessage) (int, bool) {
	n, err := strconv.ParseInt(string(raw), 10, 32)
	if err != nil {
		return 0, false
	}
	return int(n), true
}

// asStringMap decodes raw as a JSON object whose values are all strings.
func asStringMap(raw json.RawMessage) (map[string]string, bool) {
	if len(raw) == 0 || raw[0] != '{' {
		return nil, false
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, false
	}
	out := make(map[string]string, len(fields))
	for k, v := range fields {
		s, ok := asString(v)
		if !ok {
			return nil, false
		}
		out[k] = s
	}
	return out, true
}
