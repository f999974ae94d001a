package messages

import (
	"errors"
	"strings"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
)

// DefaultEventSource is the CloudEvents source when none is configured.
const DefaultEventSource = "tmc-runner"

// CloudEvents 1.0 binary-mode header names (NATS protocol binding).
const (
	HeaderCESpecVersion     = "ce-specversion"
	HeaderCEID              = "ce-id"
	HeaderCEType            = "ce-type"
	HeaderCESource          = "ce-source"
	HeaderCESubject         = "ce-subject"
	HeaderCETime            = "ce-time"
	HeaderCEDataContentType = "ce-datacontenttype"
)

// Header returns the headers to publish e with: Nats-Msg-Id for JetStream
// de-duplication, Content-Type, and the CloudEvents attributes so generic
// CloudEvents consumers can read events without knowing this package.
// source "" means DefaultEventSource. Trace context is added by the caller.
func (e *Event) Header(source string) nats.Header {
	if source == "" {
		source = DefaultEventSource
	}
	id := e.MsgID()
	h := make(nats.Header, 9)
	h.Set(nats.MsgIdHdr, id)
	h.Set("Content-Type", "application/json")
	h.Set(HeaderCESpecVersion, "1.0")
	h.Set(HeaderCEID, PercentEncode(id))
	h.Set(HeaderCEType, PercentEncode("tmc.run."+string(e.Type)+".v1"))
	h.Set(HeaderCESource, PercentEncode(source))
	h.Set(HeaderCESubject, PercentEncode(e.RequestID))
	h.Set(HeaderCETime, FormatTime(e.Time))
	h.Set(HeaderCEDataContentType, "application/json")
	return h
}

const upperHex = "0123456789ABCDEF"

// PercentEncode encodes a CloudEvents attribute for a header as the HTTP
// binding (which the NATS binding follows) says: space, '"', '%' and every
// byte outside printable ASCII become %XX of the UTF-8 bytes. Invalid UTF-8
// is replaced by U+FFFD first, so the result always decodes.
func PercentEncode(s string) string {
	if !needsEncoding(s) {
		return s
	}
	s = strings.ToValidUTF8(s, "\uFFFD")
	var b strings.Builder
	b.Grow(len(s) + 16)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if encodeByte(c) {
			b.WriteByte('%')
			b.WriteByte(upperHex[c>>4])
			b.WriteByte(upperHex[c&0xf])
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

func needsEncoding(s string) bool {
	for i := 0; i < len(s); i++ {
		if encodeByte(s[i]) {
			return true
		}
	}
	return false
}

// encodeByte: space is 0x20, so the printable range test covers it.
func encodeByte(c byte) bool { return c < 0x21 || c > 0x7e || c == '"' || c == '%' }

// ErrPercentEncoding is returned by PercentDecode for malformed input.
var ErrPercentEncoding = errors.New("messages: malformed percent-encoding")

// PercentDecode reverses PercentEncode. It fails on a '%' not followed by
// two hex digits and on a result that is not valid UTF-8.
func PercentDecode(s string) (string, error) {
	if strings.IndexByte(s, '%') < 0 {
		if !utf8.ValidString(s) {
			return "", ErrPercentEncoding
		}
		return s, nil
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '%' {
			b = append(b, c)
			continue
		}
		if i+2 >= len(s) {
			return "", ErrPercentEncoding
		}
		hi, ok1 := unhex(s[i+1])
		lo, ok2 := unhex(s[i+2])
		if !ok1 || !ok2 {
			return "", ErrPercentEncoding
		}
		b = append(b, hi<<4|lo)
		i += 2
	}
	if !utf8.Valid(b) {
		return "", ErrPercentEncoding
	}
	return string(b), nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
