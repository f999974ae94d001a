package messages

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// decodeMembersTokens is the json.Decoder-token implementation that
// objectMembers replaced: the reference its results are checked against.
func decodeMembersTokens(raw []byte) (members []member, ok bool) {
	if kindOf(raw) != '{' {
		return nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if _, err := dec.Token(); err != nil {
		return nil, false
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, false
		}
		key, isString := tok.(string)
		if !isString {
			return nil, false
		}
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			return nil, false
		}
		members = append(members, member{key: key, raw: bytes.TrimSpace(value)})
	}
	return members, true
}

func sameMembers(t *testing.T, raw []byte) {
	t.Helper()
	if !json.Valid(raw) {
		return // objectMembers is only given valid JSON
	}
	got, gotOK := objectMembers(raw)
	want, wantOK := decodeMembersTokens(raw)
	if gotOK != wantOK || len(got) != len(want) {
		t.Fatalf("objectMembers(%q) = %d members, %v; reference %d, %v", raw, len(got), gotOK, len(want), wantOK)
	}
	for i := range got {
		if got[i].key != want[i].key || !bytes.Equal(got[i].raw, want[i].raw) {
			t.Fatalf("objectMembers(%q) member %d = %q: %s; reference %q: %s", raw, i, got[i].key, got[i].raw, want[i].key, want[i].raw)
		}
	}
}

func TestObjectMembersMatchesTokenDecoder(t *testing.T) {
	cases := []string{
		`{}`, ` { } `, `[]`, `"x"`, `1`, `null`,
		`{"a":1,"a":2}`,
		`{"a" : [1, {"b": "]}"}], "c":{"d":[]} , "e":"\"}\\"}`,
		"{\"\\u00e9t\\u00e9\":true,\"caf\xc3\xa9\":false,\"bad\xff\":null}",
		`{"n":-1.5e+10,"z":0,"s":"","t":true,"f":false,"x":null}`,
		"{\n\t\"k\"\r\n:\n\"v\"\n}\n",
		`{"parameters":[{"name":"a","value":"x"},{"name":"a","value":"y"}],"metadata":{"t":1}}`,
	}
	files, _ := filepath.Glob(filepath.Join("testdata", "*", "*.json"))
	more, _ := filepath.Glob(filepath.Join("testdata", "*.json"))
	for _, f := range append(files, more...) {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		cases = append(cases, string(data))
	}
	for _, c := range cases {
		sameMembers(t, []byte(c))
		// Nested objects go through the same function.
		if m, ok := objectMembers([]byte(c)); ok {
			for _, mm := range m {
				sameMembers(t, mm.raw)
			}
		}
	}
}

func FuzzObjectMembers(f *testing.F) {
	for _, s := range []string{`{"a":1,"a":[{"b":"}"}]}`, `{"\u00e9":"x\"y"}`, "{\"k\xff\":2}", `{}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) { sameMembers(t, raw) })
}
