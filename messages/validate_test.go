package messages

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// secret is the value every test puts where a secret could be; no problem
// and no error text may ever contain it.
const secret = "s3cr3t-value"

var testSource = Source{Subject: "tmc.runs.request.billing", FallbackID: "s1733300000000-42"}

func prob(field, message string) Problem { return Problem{Field: field, Message: message} }

func ptr[T any](v T) *T { return &v }

// assertNoSecret fails when the secret leaked into the error or its problems.
func assertNoSecret(t *testing.T, err error) {
	t.Helper()
	if strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("Error() leaks a value: %s", err)
	}
	var ie *InvalidRequestError
	if errors.As(err, &ie) {
		for _, p := range ie.Problems {
			if strings.Contains(p.Field, "s3cr3t") || strings.Contains(p.Message, "s3cr3t") {
				t.Errorf("problem leaks a value: %+v", p)
			}
		}
	}
}

func decodeInvalid(t *testing.T, d Decoder, body string, src Source) *InvalidRequestError {
	t.Helper()
	req, err := d.Decode([]byte(body), src)
	if err == nil {
		t.Fatalf("Decode accepted an invalid request: %+v", req)
	}
	var ie *InvalidRequestError
	if !errors.As(err, &ie) {
		t.Fatalf("Decode error is %T, want *InvalidRequestError", err)
	}
	assertNoSecret(t, err)
	return ie
}

func TestDecodeValid(t *testing.T) {
	tests := []struct {
		name string
		body string
		want Request
	}{
		{
			name: "minimal",
			body: `{"executable":"exe-1"}`,
			want: Request{RequestID: "s1733300000000-42", Route: "billing", Executable: "exe-1", Kind: KindTask, OnUnknown: "report"},
		},
		{
			name: "everything, array form",
			body: `{
				"requestId": "order-4711-nightly",
				"executable": "5f0c1e",
				"kind": "task",
				"logLevel": "WARN",
				"timeout": 60,
				"parameters": [
					{"name": "basic_password", "value": "s3cr3t-value", "encrypted": true},
					{"name": "a_first", "value": ""}
				],
				"awaitResult": true,
				"onUnknown": "rerun",
				"notBefore": "2026-12-04T10:00:00Z",
				"expiresAt": "2026-12-04T13:00:00+01:00",
				"metadata": {"origin": "billing", "tags": [1, 2]},
				"redriveOf": "order-4711"
			}`,
			want: Request{
				RequestID:  "order-4711-nightly",
				Route:      "billing",
				Executable: "5f0c1e",
				Kind:       KindTask,
				LogLevel:   "WARN",
				Timeout:    60,
				Parameters: []Parameter{
					{Name: "basic_password", Value: secret, Encrypted: true},
					{Name: "a_first", Value: ""},
				},
				AwaitResult: ptr(true),
				OnUnknown:   "rerun",
				NotBefore:   time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC),
				ExpiresAt:   time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC),
				Metadata:    json.RawMessage(`{"origin":"billing","tags":[1,2]}`),
				RedriveOf:   "order-4711",
			},
		},
		{
			name: "object form is sorted by name",
			body: `{"executable":"e","parameters":{"zeta":"s3cr3t-value","alpha":"1","mid":""}}`,
			want: Request{
				RequestID: "s1733300000000-42", Route: "billing", Executable: "e", Kind: KindTask, OnUnknown: "report",
				Parameters: []Parameter{{Name: "alpha", Value: "1"}, {Name: "mid", Value: ""}, {Name: "zeta", Value: secret}},
			},
		},
		{
			name: "null means not set",
			body: `{"executable":"e","requestId":null,"kind":null,"logLevel":null,"timeout":null,"parameters":null,
				"awaitResult":null,"onUnknown":null,"notBefore":null,"expiresAt":null,"metadata":null,"redriveOf":null}`,
			want: Request{RequestID: "s1733300000000-42", Route: "billing", Executable: "e", Kind: KindTask, OnUnknown: "report"},
		},
		{
			name: "null encrypted in an item means false",
			body: `{"executable":"e","parameters":[{"name":"p","value":"v","encrypted":null}]}`,
			want: Request{
				RequestID: "s1733300000000-42", Route: "billing", Executable: "e", Kind: KindTask, OnUnknown: "report",
				Parameters: []Parameter{{Name: "p", Value: "v"}},
			},
		},
		{
			name: "whole float timeout and the int32 maximum",
			body: `{"executable":"e","timeout":2147483647.000}`,
			want: Request{RequestID: "s1733300000000-42", Route: "billing", Executable: "e", Kind: KindTask, OnUnknown: "report", Timeout: 2147483647},
		},
		{
			name: "plan with empty parameters",
			body: `{"executable":"p","kind":"plan","parameters":[]}`,
			want: Request{RequestID: "s1733300000000-42", Route: "billing", Executable: "p", Kind: KindPlan, OnUnknown: "report", Parameters: []Parameter{}},
		},
		{
			name: "awaitResult false, fractional seconds",
			body: ` {"executable":"e","awaitResult":false,"notBefore":"2026-01-02T03:04:05.678Z"} `,
			want: Request{
				RequestID: "s1733300000000-42", Route: "billing", Executable: "e", Kind: KindTask, OnUnknown: "report",
				AwaitResult: ptr(false), NotBefore: time.Date(2026, 1, 2, 3, 4, 5, 678e6, time.UTC),
			},
		},
		{
			name: "metadata is compacted but not re-escaped",
			body: `{"executable":"e","metadata": { "a" : "<b>&" , "n": 1.50 }}`,
			want: Request{
				RequestID: "s1733300000000-42", Route: "billing", Executable: "e", Kind: KindTask, OnUnknown: "report",
				Metadata: json.RawMessage(`{"a":"<b>&","n":1.50}`),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decoder{}.Decode([]byte(tt.body), testSource)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Decode =\n%#v\nwant\n%#v", got, tt.want)
			}
		})
	}
}

func TestDecodeInvalid(t *testing.T) {
	long := strings.Repeat("a", 129)
	tests := []struct {
		name string
		body string
		want []Problem
	}{
		// The body as a whole.
		{"empty body", ``, []Problem{prob("", msgNotJSON)}},
		{"truncated JSON", `{"executable":"s3cr3t-value"`, []Problem{prob("", msgNotJSON)}},
		{"trailing data", `{"executable":"e"} {}`, []Problem{prob("", msgNotJSON)}},
		{"array body", `[{"executable":"e"}]`, []Problem{prob("", msgNotObject)}},
		{"string body", `"s3cr3t-value"`, []Problem{prob("", msgNotObject)}},
		{"null body", `null`, []Problem{prob("", msgNotObject)}},

		// Top-level fields.
		{"unknown field", `{"executable":"e","secretive":"s3cr3t-value"}`, []Problem{prob("secretive", msgUnknownField)}},
		{"unknown fields all reported", `{"a":1,"executable":"e","b":2}`, []Problem{prob("a", msgUnknownField), prob("b", msgUnknownField)}},
		{"duplicate top-level key", `{"executable":"e","executable":"s3cr3t-value"}`, []Problem{prob("executable", msgDuplicateField)}},
		{"duplicate key reported once per repeat", `{"executable":"e","timeout":1,"timeout":"x","timeout":3}`,
			[]Problem{prob("timeout", msgDuplicateField), prob("timeout", msgDuplicateField)}},
		{"executable missing", `{}`, []Problem{prob("executable", msgRequired)}},
		{"executable null", `{"executable":null}`, []Problem{prob("executable", msgRequired)}},
		{"executable empty", `{"executable":""}`, []Problem{prob("executable", msgEmpty)}},
		{"executable blank", `{"executable":" \t"}`, []Problem{prob("executable", msgEmpty)}},
		{"executable not a string", `{"executable":42}`, []Problem{prob("executable", msgString)}},
		{"kind unknown", `{"executable":"e","kind":"Task"}`, []Problem{prob("kind", msgKind)}},
		{"kind not a string", `{"executable":"e","kind":1}`, []Problem{prob("kind", msgString)}},
		{"logLevel unknown", `{"executable":"e","logLevel":"DEBUG"}`, []Problem{prob("logLevel", msgLogLevel)}},
		{"logLevel empty", `{"executable":"e","logLevel":""}`, []Problem{prob("logLevel", msgLogLevel)}},
		{"logLevel lower case", `{"executable":"e","logLevel":"warn"}`, []Problem{prob("logLevel", msgLogLevel)}},
		{"logLevel not a string", `{"executable":"e","logLevel":true}`, []Problem{prob("logLevel", msgString)}},
		{"timeout zero", `{"executable":"e","timeout":0}`, []Problem{prob("timeout", msgTimeoutMin)}},
		{"timeout negative", `{"executable":"e","timeout":-5}`, []Problem{prob("timeout", msgTimeoutMin)}},
		{"timeout huge negative", `{"executable":"e","timeout":-99999999999999999999}`, []Problem{prob("timeout", msgTimeoutMin)}},
		{"timeout fraction", `{"executable":"e","timeout":1.5}`, []Problem{prob("timeout", msgInteger)}},
		{"timeout exponent", `{"executable":"e","timeout":1e2}`, []Problem{prob("timeout", msgInteger)}},
		{"timeout above int32", `{"executable":"e","timeout":2147483648}`, []Problem{prob("timeout", "must be at most 2147483647")}},
		{"timeout above int64", `{"executable":"e","timeout":99999999999999999999}`, []Problem{prob("timeout", "must be at most 2147483647")}},
		{"timeout a string", `{"executable":"e","timeout":"60"}`, []Problem{prob("timeout", msgInteger)}},
		{"awaitResult not a bool", `{"executable":"e","awaitResult":"yes"}`, []Problem{prob("awaitResult", msgBool)}},
		{"onUnknown unknown", `{"executable":"e","onUnknown":"ignore"}`, []Problem{prob("onUnknown", msgOnUnknown)}},
		{"onUnknown not a string", `{"executable":"e","onUnknown":1}`, []Problem{prob("onUnknown", msgString)}},
		{"notBefore not RFC 3339", `{"executable":"e","notBefore":"2026-12-04 10:00"}`, []Problem{prob("notBefore", msgRFC3339)}},
		{"expiresAt not RFC 3339", `{"executable":"e","expiresAt":"tomorrow"}`, []Problem{prob("expiresAt", msgRFC3339)}},
		{"expiresAt not a string", `{"executable":"e","expiresAt":1733300000}`, []Problem{prob("expiresAt", msgString)}},
		{"expiresAt before notBefore", `{"executable":"e","notBefore":"2026-12-04T10:00:00Z","expiresAt":"2026-12-04T09:00:00Z"}`,
			[]Problem{prob("expiresAt", msgExpiresOrder)}},
		{"expiresAt equal to notBefore", `{"executable":"e","expiresAt":"2026-12-04T11:00:00+01:00","notBefore":"2026-12-04T10:00:00Z"}`,
			[]Problem{prob("expiresAt", msgExpiresOrder)}},
		{"metadata not an object", `{"executable":"e","metadata":["s3cr3t-value"]}`, []Problem{prob("metadata", msgObject)}},
		{"metadata a string", `{"executable":"e","metadata":"s3cr3t-value"}`, []Problem{prob("metadata", msgObject)}},
		{"redriveOf invalid", `{"executable":"e","redriveOf":"no spaces"}`, []Problem{prob("redriveOf", msgID)}},
		{"redriveOf not a string", `{"executable":"e","redriveOf":true}`, []Problem{prob("redriveOf", msgString)}},
		{"requestId invalid", `{"executable":"e","requestId":"s3cr3t-value!"}`, []Problem{prob("requestId", msgID)}},
		{"requestId empty", `{"executable":"e","requestId":""}`, []Problem{prob("requestId", msgID)}},
		{"requestId too long", `{"executable":"e","requestId":"` + long + `"}`, []Problem{prob("requestId", msgID)}},
		{"requestId not a string", `{"executable":"e","requestId":7}`, []Problem{prob("requestId", msgString)}},

		// Parameters, array form.
		{"parameters wrong type", `{"executable":"e","parameters":"s3cr3t-value"}`, []Problem{prob("parameters", msgParamsType)}},
		{"item not an object", `{"executable":"e","parameters":[{"name":"a","value":"s3cr3t-value"},"s3cr3t-value",null]}`,
			[]Problem{prob("parameters[1]", msgObject), prob("parameters[2]", msgObject)}},
		{"item name missing", `{"executable":"e","parameters":[{"value":"s3cr3t-value"}]}`, []Problem{prob("parameters[0].name", msgRequired)}},
		{"item name empty", `{"executable":"e","parameters":[{"name":"","value":"s3cr3t-value"}]}`, []Problem{prob("parameters[0].name", msgEmpty)}},
		{"item name not a string", `{"executable":"e","parameters":[{"name":1,"value":"s3cr3t-value"}]}`, []Problem{prob("parameters[0].name", msgString)}},
		{"item value missing", `{"executable":"e","parameters":[{"name":"a"}]}`, []Problem{prob("parameters[0].value", msgRequired)}},
		{"item value null", `{"executable":"e","parameters":[{"name":"a","value":null}]}`, []Problem{prob("parameters[0].value", msgRequired)}},
		{"item value not a string", `{"executable":"e","parameters":[{"name":"a","value":{"s3cr3t-value":1}}]}`, []Problem{prob("parameters[0].value", msgString)}},
		{"item encrypted not a bool", `{"executable":"e","parameters":[{"name":"a","value":"s3cr3t-value","encrypted":"yes"}]}`,
			[]Problem{prob("parameters[0].encrypted", msgBool)}},
		{"item unknown field", `{"executable":"e","parameters":[{"name":"a","value":"s3cr3t-value","secure":true}]}`,
			[]Problem{prob("parameters[0].secure", msgUnknownField)}},
		{"item duplicate key", `{"executable":"e","parameters":[{"name":"a","value":"x","value":"s3cr3t-value"}]}`,
			[]Problem{prob("parameters[0].value", msgDuplicateField)}},
		{"duplicate names", `{"executable":"e","parameters":[{"name":"a","value":"1"},{"name":"b","value":"2"},{"name":"a","value":"s3cr3t-value"},{"name":"a","value":"3"}]}`,
			[]Problem{prob("parameters[2].name", "duplicate parameter name (first at parameters[0])"), prob("parameters[3].name", "duplicate parameter name (first at parameters[0])")}},
		{"every problem of an item", `{"executable":"e","parameters":[{"name":5,"value":6,"encrypted":7,"x":8}]}`,
			[]Problem{prob("parameters[0].name", msgString), prob("parameters[0].value", msgString), prob("parameters[0].encrypted", msgBool), prob("parameters[0].x", msgUnknownField)}},

		// Parameters, object form.
		{"object value not a string", `{"executable":"e","parameters":{"a":"ok","b":1,"c":null,"d":["s3cr3t-value"]}}`,
			[]Problem{prob("parameters.b", msgString), prob("parameters.c", msgString), prob("parameters.d", msgString)}},
		{"object duplicate names", `{"executable":"e","parameters":{"pw":"x","other":"y","pw":"s3cr3t-value"}}`,
			[]Problem{prob("parameters.pw", msgDuplicateParam)}},
		{"object empty name", `{"executable":"e","parameters":{"":"s3cr3t-value"}}`, []Problem{prob("parameters", msgParamEmptyName)}},

		// Plans.
		{"plan with parameters, logLevel and timeout", `{"kind":"plan","executable":"p","parameters":{"a":"s3cr3t-value"},"logLevel":"INFO","timeout":5}`,
			[]Problem{prob("parameters", msgNotForPlan), prob("logLevel", msgNotForPlan), prob("timeout", msgNotForPlan)}},
		{"plan with array parameters", `{"executable":"p","parameters":[{"name":"a","value":"s3cr3t-value"}],"kind":"plan"}`,
			[]Problem{prob("parameters", msgNotForPlan)}},
		{"plan with invalid logLevel gets both problems", `{"executable":"p","kind":"plan","logLevel":"LOUD"}`,
			[]Problem{prob("logLevel", msgLogLevel), prob("logLevel", msgNotForPlan)}},
		{"plan with wrongly typed parameters", `{"executable":"p","kind":"plan","parameters":1}`,
			[]Problem{prob("parameters", msgParamsType), prob("parameters", msgNotForPlan)}},

		// Everything at once, in body order, then cross-field rules.
		{"all problems reported", `{"timeout":"1","kind":"plan","logLevel":"x","parameters":{"a":1},"zzz":0,"notBefore":"2026-12-04T10:00:00Z","expiresAt":"2026-12-04T10:00:00Z"}`,
			[]Problem{
				prob("timeout", msgInteger),
				prob("logLevel", msgLogLevel),
				prob("parameters.a", msgString),
				prob("zzz", msgUnknownField),
				prob("executable", msgRequired),
				prob("parameters", msgNotForPlan),
				prob("logLevel", msgNotForPlan),
				prob("timeout", msgNotForPlan),
				prob("expiresAt", msgExpiresOrder),
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ie := decodeInvalid(t, Decoder{}, tt.body, testSource)
			if !reflect.DeepEqual(ie.Problems, tt.want) {
				t.Errorf("problems =\n%q\nwant\n%q", ie.Problems, tt.want)
			}
			if ie.Route != "billing" {
				t.Errorf("Route = %q, want billing", ie.Route)
			}
		})
	}
}

func TestDecodeOversize(t *testing.T) {
	body := `{"executable":"e","parameters":{"p":"s3cr3t-value"}}`
	d := Decoder{MaxBody: len(body) - 1}
	ie := decodeInvalid(t, d, body, testSource)
	want := []Problem{prob("", fmt.Sprintf("body is larger than %d bytes", len(body)-1))}
	if !reflect.DeepEqual(ie.Problems, want) {
		t.Errorf("problems = %q, want %q", ie.Problems, want)
	}
	if _, err := (Decoder{MaxBody: len(body)}).Decode([]byte(body), testSource); err != nil {
		t.Errorf("a body of exactly MaxBody bytes: %v", err)
	}
	big := `{"executable":"` + strings.Repeat("x", DefaultMaxBody) + `"}`
	ie = decodeInvalid(t, Decoder{}, big, testSource)
	if len(ie.Problems) != 1 || ie.Problems[0].Field != "" {
		t.Errorf("zero MaxBody should mean DefaultMaxBody; problems = %q", ie.Problems)
	}
}

func TestRequestIDPrecedence(t *testing.T) {
	const fallback = "s1733300000000-42"
	src := func(msgID, pinned string) Source {
		return Source{Subject: "tmc.runs.request.billing", MsgID: msgID, PinnedID: pinned, FallbackID: fallback}
	}
	headerMsg := func(h string) []Problem { return []Problem{prob("requestId", "the "+h+" header "+msgID)} }
	tests := []struct {
		name   string
		body   string
		src    Source
		wantID string
		want   []Problem // nil: valid
	}{
		{"body wins", `{"executable":"e","requestId":"body-id"}`, src("msg-id", "pinned-id"), "body-id", nil},
		{"body wins over invalid headers", `{"executable":"e","requestId":"body-id"}`, src("bad id", "bad id"), "body-id", nil},
		{"pinned over msg id", `{"executable":"e"}`, src("msg-id", "pinned-id"), "pinned-id", nil},
		{"msg id", `{"executable":"e"}`, src("msg-id", ""), "msg-id", nil},
		{"fallback", `{"executable":"e"}`, src("", ""), fallback, nil},
		{"null body id falls to headers", `{"executable":"e","requestId":null}`, src("msg-id", ""), "msg-id", nil},
		{"invalid body id uses fallback", `{"executable":"e","requestId":"a.b"}`, src("msg-id", "pinned-id"), fallback, []Problem{prob("requestId", msgID)}},
		{"invalid pinned id", `{"executable":"e"}`, src("msg-id", "pinned id"), fallback, headerMsg("Tmc-Request-Id")},
		{"invalid msg id", `{"executable":"e"}`, src("msg.id", ""), fallback, headerMsg("Nats-Msg-Id")},
		{"msg id too long", `{"executable":"e"}`, src(strings.Repeat("m", 129), ""), fallback, headerMsg("Nats-Msg-Id")},
		{"msg id at the limit", `{"executable":"e"}`, src(strings.Repeat("m", 128), ""), strings.Repeat("m", 128), nil},
		{"unreadable body keeps a valid header id", `not json`, src("msg-id", ""), "msg-id", []Problem{prob("", msgNotJSON)}},
		{"unreadable body, invalid header id", `not json`, src("msg id", ""), fallback, []Problem{prob("", msgNotJSON)}},
		{"other problems keep the body id", `{"executable":"","requestId":"body-id"}`, src("", ""), "body-id", []Problem{prob("executable", msgEmpty)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := Decoder{}.Decode([]byte(tt.body), tt.src)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Decode: %v", err)
				}
				if req.RequestID != tt.wantID {
					t.Errorf("RequestID = %q, want %q", req.RequestID, tt.wantID)
				}
				return
			}
			ie := decodeInvalid(t, Decoder{}, tt.body, tt.src)
			if ie.RequestID != tt.wantID {
				t.Errorf("RequestID = %q, want %q", ie.RequestID, tt.wantID)
			}
			if !reflect.DeepEqual(ie.Problems, tt.want) {
				t.Errorf("problems = %q, want %q", ie.Problems, tt.want)
			}
		})
	}
}

func TestRoute(t *testing.T) {
	tests := []struct {
		subject string
		want    string // InvalidRoute: rejected
	}{
		{"tmc.runs.request.billing", "billing"},
		{"tmc.runs.request.Team_A-1", "Team_A-1"},
		{"custom.prefix.default", "default"},
		{"tmc.runs.request." + strings.Repeat("r", 64), strings.Repeat("r", 64)},
		{"tmc.runs.request." + strings.Repeat("r", 65), InvalidRoute},
		{"tmc.runs.request.b$d", InvalidRoute},
		{"tmc.runs.request.bäd", InvalidRoute},
		{"tmc.runs.request.", InvalidRoute},
		{"", InvalidRoute},
	}
	for _, tt := range tests {
		t.Run(tt.subject, func(t *testing.T) {
			src := Source{Subject: tt.subject, FallbackID: "s1-1"}
			req, err := Decoder{}.Decode([]byte(`{"executable":"e"}`), src)
			if tt.want != InvalidRoute {
				if err != nil {
					t.Fatalf("Decode: %v", err)
				}
				if req.Route != tt.want {
					t.Errorf("Route = %q, want %q", req.Route, tt.want)
				}
				return
			}
			ie := decodeInvalid(t, Decoder{}, `{"executable":"e"}`, src)
			if ie.Route != InvalidRoute {
				t.Errorf("Route = %q, want %q", ie.Route, InvalidRoute)
			}
			want := []Problem{prob("route", msgRoute)}
			if !reflect.DeepEqual(ie.Problems, want) {
				t.Errorf("problems = %q, want %q", ie.Problems, want)
			}
		})
	}
	t.Run("route problem comes first and does not hide body problems", func(t *testing.T) {
		ie := decodeInvalid(t, Decoder{}, `{"x":1}`, Source{Subject: "a.b c", FallbackID: "s1-1"})
		want := []Problem{prob("route", msgRoute), prob("x", msgUnknownField), prob("executable", msgRequired)}
		if !reflect.DeepEqual(ie.Problems, want) {
			t.Errorf("problems = %q, want %q", ie.Problems, want)
		}
	})
}

func TestInvalidRequestErrorBestEffort(t *testing.T) {
	body := `{"requestId":"r-1","executable":"exe","kind":"plan","timeout":3,"metadata":{ "k" : "v" },"parameters":{"p":"s3cr3t-value"}}`
	ie := decodeInvalid(t, Decoder{}, body, testSource)
	if ie.RequestID != "r-1" || ie.Route != "billing" || ie.Executable != "exe" || ie.Kind != KindPlan || string(ie.Metadata) != `{"k":"v"}` {
		t.Errorf("best-effort values = %+v", ie)
	}
	ie = decodeInvalid(t, Decoder{}, `{"executable":"exe","kind":"job"}`, testSource)
	if ie.Kind != "" {
		t.Errorf("Kind of an invalid kind = %q, want empty", ie.Kind)
	}
	ie = decodeInvalid(t, Decoder{}, `{"executable":"exe","x":1}`, testSource)
	if ie.Kind != KindTask {
		t.Errorf("Kind of an absent kind = %q, want task", ie.Kind)
	}
	want := `invalid run request s1733300000000-42: x: unknown field`
	if ie.Error() != want {
		t.Errorf("Error() = %q, want %q", ie.Error(), want)
	}
}

func TestErrorQuotesOddFieldNames(t *testing.T) {
	ie := decodeInvalid(t, Decoder{}, `{"executable":"e","a\nb: c":1}`, testSource)
	if got := ie.Error(); strings.Contains(got, "\n") || !strings.Contains(got, `"a\nb: c": unknown field`) {
		t.Errorf("Error() = %q", got)
	}
}

func TestProblemCap(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"executable":"e"`)
	for i := range 150 {
		fmt.Fprintf(&b, `,"f%d":"s3cr3t-value"`, i)
	}
	b.WriteString("}")
	ie := decodeInvalid(t, Decoder{}, b.String(), testSource)
	if len(ie.Problems) != maxProblems {
		t.Fatalf("%d problems, want %d", len(ie.Problems), maxProblems)
	}
	if last := ie.Problems[maxProblems-1]; last != prob("", "51 more problems not listed") {
		t.Errorf("last problem = %+v", last)
	}
	if ie.Problems[maxProblems-2] != prob("f98", msgUnknownField) {
		t.Errorf("problem before the summary = %+v", ie.Problems[maxProblems-2])
	}
}

func TestParamMap(t *testing.T) {
	r := Request{Parameters: []Parameter{{Name: "a", Value: "1"}, {Name: "b", Value: "", Encrypted: true}}}
	if got, want := r.ParamMap(), map[string]string{"a": "1", "b": ""}; !reflect.DeepEqual(got, want) {
		t.Errorf("ParamMap = %v, want %v", got, want)
	}
	if got := (&Request{}).ParamMap(); got != nil {
		t.Errorf("ParamMap without parameters = %v, want nil", got)
	}
}

func TestFallbackID(t *testing.T) {
	created := time.UnixMilli(1733300000000)
	tests := []struct {
		created time.Time
		seq     uint64
		want    string
	}{
		{created, 42, "s1733300000000-42"},
		{created, 0, "s1733300000000-0"},
		{created, ^uint64(0), "s1733300000000-18446744073709551615"},
		{time.Time{}, 1, "s0-1"},
	}
	for _, tt := range tests {
		got := FallbackID(tt.created, tt.seq)
		if got != tt.want {
			t.Errorf("FallbackID(%v, %d) = %q, want %q", tt.created, tt.seq, got, tt.want)
		}
		if !ValidRequestID(got) {
			t.Errorf("FallbackID %q breaks the requestId rule", got)
		}
	}
}

func TestInvalidFallbackIDIsNotAccepted(t *testing.T) {
	ie := decodeInvalid(t, Decoder{}, `{"executable":"e"}`, Source{Subject: "tmc.runs.request.billing"})
	want := []Problem{prob("requestId", "the fallback id "+msgID)}
	if !reflect.DeepEqual(ie.Problems, want) {
		t.Errorf("problems = %q, want %q", ie.Problems, want)
	}
}
