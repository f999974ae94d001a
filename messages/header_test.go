package messages

import (
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
)

func TestHeader(t *testing.T) {
	ev := NewEvent(Status, testRequest(), 1, testNow)
	ev.Status = "executing"
	tests := []struct {
		source     string
		wantSource string
	}{
		{"", "tmc-runner"},
		{"urn:tmc runner/eu-1", "urn:tmc%20runner/eu-1"},
	}
	for _, tt := range tests {
		t.Run(tt.wantSource, func(t *testing.T) {
			h := ev.Header(tt.source)
			want := map[string]string{
				nats.MsgIdHdr:        "order-4711-nightly-r1.status.executing",
				"Content-Type":       "application/json",
				"ce-specversion":     "1.0",
				"ce-id":              "order-4711-nightly-r1.status.executing",
				"ce-type":            "tmc.run.status.v1",
				"ce-source":          tt.wantSource,
				"ce-subject":         "order-4711-nightly-r1",
				"ce-time":            "2026-12-04T10:00:00.123Z",
				"ce-datacontenttype": "application/json",
			}
			for k, v := range want {
				// Index the map directly: NATS header names are case
				// sensitive and must be stored exactly as written.
				if got := h[k]; len(got) != 1 || got[0] != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
			if len(h) != len(want) {
				t.Errorf("%d headers, want %d: %v", len(h), len(want), h)
			}
		})
	}
}

func TestPercentEncoding(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"plain-ASCII_0.9/~!", "plain-ASCII_0.9/~!"},
		{"a b", "a%20b"},
		{`say "hi"`, "say%20%22hi%22"},
		{"100%", "100%25"},
		{"Grüße", "Gr%C3%BC%C3%9Fe"},
		{"日本", "%E6%97%A5%E6%9C%AC"},
		{"emoji 🚀", "emoji%20%F0%9F%9A%80"},
		{"tab\tnl\n\x7f", "tab%09nl%0A%7F"},
		{"", ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got := PercentEncode(tt.in)
			if got != tt.want {
				t.Errorf("PercentEncode(%q) = %q, want %q", tt.in, got, tt.want)
			}
			back, err := PercentDecode(got)
			if err != nil || back != tt.in {
				t.Errorf("PercentDecode(%q) = %q, %v; want %q", got, back, err, tt.in)
			}
		})
	}
}

func TestPercentEncodeInvalidUTF8(t *testing.T) {
	got := PercentEncode("a\xffb")
	if got != "a%EF%BF%BDb" {
		t.Errorf("PercentEncode of invalid UTF-8 = %q, want U+FFFD encoded", got)
	}
	if _, err := PercentDecode(got); err != nil {
		t.Errorf("PercentDecode(%q): %v", got, err)
	}
}

func TestPercentDecode(t *testing.T) {
	if got, err := PercentDecode("%c3%a9t%C3%A9"); err != nil || got != "été" {
		t.Errorf("lower-case hex: %q, %v", got, err)
	}
	for _, bad := range []string{"%", "%4", "%G0", "a%2", "%FF", "\xff"} {
		if got, err := PercentDecode(bad); !errors.Is(err, ErrPercentEncoding) {
			t.Errorf("PercentDecode(%q) = %q, %v; want ErrPercentEncoding", bad, got, err)
		}
	}
}

func FuzzPercentRoundTrip(f *testing.F) {
	for _, s := range []string{"", "a b", "100%", `"`, "Grüße", "\x00\x7f"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		enc := PercentEncode(s)
		for i := 0; i < len(enc); i++ {
			if c := enc[i]; c < 0x21 || c > 0x7e || c == '"' {
				t.Fatalf("PercentEncode(%q) = %q keeps byte %#x", s, enc, c)
			}
		}
		dec, err := PercentDecode(enc)
		if err != nil {
			t.Fatalf("PercentDecode(PercentEncode(%q)): %v", s, err)
		}
		if want := strings.ToValidUTF8(s, "\uFFFD"); dec != want {
			t.Fatalf("round trip of %q = %q", s, dec)
		}
	})
}
