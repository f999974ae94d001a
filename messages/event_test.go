package messages

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/golden from the current output")

// Fixed times keep the golden files stable; the nanoseconds check that
// event times are cut to milliseconds, the zone that they are written in UTC.
var (
	testNow    = time.Date(2026, 12, 4, 11, 0, 0, 123456789, time.FixedZone("CET", 3600))
	testStart  = time.Date(2026, 12, 4, 10, 0, 1, 500e6, time.UTC)
	testFinish = time.Date(2026, 12, 4, 10, 5, 2, 0, time.UTC)
)

func testRequest() *Request {
	return &Request{
		RequestID:  "order-4711-nightly-r1",
		Route:      "billing",
		Executable: "5f0c1e",
		Kind:       KindTask,
		Parameters: []Parameter{{Name: "basic_password", Value: secret, Encrypted: true}},
		Metadata:   json.RawMessage(`{"origin":"billing","note":"<a&b>"}`),
		RedriveOf:  "order-4711-nightly",
	}
}

func goldenEvents() map[string]*Event {
	r := testRequest()

	accepted := NewEvent(Accepted, r, 1, testNow)
	accepted.ExecutionID = "exec-1"
	accepted.Followed = ptr(true)

	status := NewEvent(Status, r, 1, testNow)
	status.ExecutionID = "exec-1"
	status.Status = "executing"

	result := NewEvent(Result, r, 1, testNow)
	result.ExecutionID = "exec-1"
	result.Status = "execution_failed"
	result.OK = ptr(false)
	result.TimedOut = ptr(false)
	result.StartTime = &testStart
	result.FinishTime = &testFinish
	result.ErrorType = "job_error"
	result.ErrorMessage = "tDBInput_1 failed"
	result.ProcessedRows = ptr(int64(1200))
	result.RejectedRows = ptr(int64(0))
	result.Logs = []LogLine{
		{Severity: "INFO", Time: testStart, Message: "Job started"},
		{Severity: "ERROR", Time: testFinish.Add(-time.Nanosecond), Message: "Exception in component tDBInput_1"},
	}

	failed := NewEvent(Failed, r, 3, testNow)
	failed.Reason = ReasonTalendError
	failed.HTTPStatus = 404
	failed.TalendError = &TalendError{Status: 404, Message: "Task not found", Detail: "no task 5f0c1e", RequestID: "t-req-9"}

	_, err := Decoder{}.Decode([]byte(`{"requestId":"bad id","executable":"5f0c1e","logLevel":"LOUD","metadata":{"origin":"billing"}}`), testSource)
	rejected := EventFromInvalid(err.(*InvalidRequestError), 1, testNow)

	unknown := NewEvent(Unknown, r, 2, testNow)
	unknown.Detail = "a worker died after calling Talend; no execution of this request is listed"

	return map[string]*Event{
		"accepted": accepted, "status": status, "result": result,
		"failed": failed, "rejected": rejected, "unknown": unknown,
	}
}

func TestGoldenEvents(t *testing.T) {
	for name, ev := range goldenEvents() {
		t.Run(name, func(t *testing.T) {
			b, err := ev.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(b, []byte("s3cr3t")) {
				t.Errorf("event leaks a parameter value: %s", b)
			}
			var pretty bytes.Buffer
			if err := json.Indent(&pretty, b, "", "  "); err != nil {
				t.Fatalf("Marshal wrote invalid JSON: %v", err)
			}
			pretty.WriteByte('\n')
			path := filepath.Join("testdata", "golden", name+".json")
			if *update {
				if err := os.WriteFile(path, pretty.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./messages -update to create it)", err)
			}
			if !bytes.Equal(pretty.Bytes(), want) {
				t.Errorf("%s differs from the golden file:\n%s", name, pretty.Bytes())
			}
		})
	}
}

func TestEventTimesAreMillisecondUTC(t *testing.T) {
	ev := goldenEvents()["result"]
	b, err := ev.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`"time":"2026-12-04T10:00:00.123Z"`,
		`"startTime":"2026-12-04T10:00:01.500Z"`,
		`"finishTime":"2026-12-04T10:05:02.000Z"`,
		`"time":"2026-12-04T10:05:01.999Z"`, // a log line: truncated, not rounded
	} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("missing %s in %s", want, b)
		}
	}
	// json.Marshal must agree with Marshal, apart from HTML escaping.
	std, err := json.Marshal(*ev)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(std, []byte(`"time":"2026-12-04T10:00:00.123Z"`)) {
		t.Errorf("json.Marshal ignores the event time format: %s", std)
	}
}

func TestMarshalRejectsUnrepresentableTime(t *testing.T) {
	ev := NewEvent(Accepted, testRequest(), 1, time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC))
	if _, err := ev.Marshal(); err == nil {
		t.Error("Marshal accepted a year beyond 9999")
	}
}

func TestDecodeEventRoundTrip(t *testing.T) {
	for name, ev := range goldenEvents() {
		t.Run(name, func(t *testing.T) {
			b, err := ev.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeEvent(b)
			if err != nil {
				t.Fatal(err)
			}
			want := *ev
			want.Time = want.Time.UTC().Truncate(time.Millisecond)
			if want.Logs != nil {
				want.Logs = append([]LogLine(nil), want.Logs...)
				for i := range want.Logs {
					want.Logs[i].Time = want.Logs[i].Time.UTC().Truncate(time.Millisecond)
				}
			}
			if !reflect.DeepEqual(got, &want) {
				t.Errorf("DecodeEvent =\n%+v\nwant\n%+v", got, &want)
			}
		})
	}
}

func TestDecodeEventErrors(t *testing.T) {
	for _, body := range []string{``, `[]`, `{}`, `{"requestId":"r"}`, `{"type":"accepted"}`, `{"requestId":"r","type":"accepted","time":"yesterday"}`} {
		if _, err := DecodeEvent([]byte(body)); err == nil {
			t.Errorf("DecodeEvent(%q) succeeded", body)
		}
	}
	ev, err := DecodeEvent([]byte(`{"requestId":"r","type":"accepted","future":{"x":1}}`))
	if err != nil || ev.RequestID != "r" {
		t.Errorf("DecodeEvent with an unknown field = %+v, %v; want it ignored", ev, err)
	}
}

func TestNewEvent(t *testing.T) {
	r := testRequest()
	ev := NewEvent(Status, r, 2, testNow)
	want := &Event{
		RequestID: r.RequestID, Route: r.Route, Type: Status, Time: testNow, Executable: r.Executable,
		Kind: r.Kind, Attempt: 2, RedriveOf: r.RedriveOf, Metadata: r.Metadata,
	}
	if !reflect.DeepEqual(ev, want) {
		t.Errorf("NewEvent = %+v, want %+v", ev, want)
	}
	if ev := NewEvent(Failed, nil, 1, testNow); ev.Type != Failed {
		t.Errorf("NewEvent without a request = %+v", ev)
	}
}

func TestEventFromInvalid(t *testing.T) {
	ie := &InvalidRequestError{RequestID: "s1-1", Route: InvalidRoute, Executable: "e", Kind: KindTask,
		Metadata: json.RawMessage(`{"a":1}`), Problems: []Problem{prob("route", msgRoute)}}
	ev := EventFromInvalid(ie, 1, testNow)
	want := &Event{RequestID: "s1-1", Route: InvalidRoute, Type: Rejected, Time: testNow, Executable: "e",
		Kind: KindTask, Attempt: 1, Metadata: ie.Metadata, Errors: ie.Problems}
	if !reflect.DeepEqual(ev, want) {
		t.Errorf("EventFromInvalid = %+v, want %+v", ev, want)
	}
	if got := ev.Subject(""); got != "tmc.runs.events._invalid.s1-1.rejected" {
		t.Errorf("Subject = %q", got)
	}
}

func TestSubjectAndMsgID(t *testing.T) {
	tests := []struct {
		ev          Event
		prefix      string
		wantSubject string
		wantMsgID   string
	}{
		{Event{RequestID: "r1", Route: "billing", Type: Accepted}, "", "tmc.runs.events.billing.r1.accepted", "r1.accepted"},
		{Event{RequestID: "r1", Route: "billing", Type: Result}, "acme.events", "acme.events.billing.r1.result", "r1.result"},
		{Event{RequestID: "r1", Route: "b", Type: Status, Status: "executing"}, "", "tmc.runs.events.b.r1.status", "r1.status.executing"},
		{Event{RequestID: "r1", Route: "b", Type: Status, Status: "new state\r\nX: y"}, "", "tmc.runs.events.b.r1.status", "r1.status.new_state__X__y"},
	}
	for _, tt := range tests {
		if got := tt.ev.Subject(tt.prefix); got != tt.wantSubject {
			t.Errorf("Subject(%q) = %q, want %q", tt.prefix, got, tt.wantSubject)
		}
		if got := tt.ev.MsgID(); got != tt.wantMsgID {
			t.Errorf("MsgID = %q, want %q", got, tt.wantMsgID)
		}
	}
}

func TestTerminal(t *testing.T) {
	tests := []struct {
		typ      EventType
		followed bool
		want     bool
	}{
		{Accepted, true, false},
		{Accepted, false, true},
		{Status, true, false},
		{Status, false, false},
		{Result, true, true},
		{Failed, false, true},
		{Rejected, false, true},
		{Unknown, false, true},
	}
	for _, tt := range tests {
		ev := Event{Type: tt.typ}
		if got := ev.Terminal(tt.followed); got != tt.want {
			t.Errorf("%s.Terminal(%v) = %v, want %v", tt.typ, tt.followed, got, tt.want)
		}
	}
}

func TestFormatTime(t *testing.T) {
	if got, want := FormatTime(testNow), "2026-12-04T10:00:00.123Z"; got != want {
		t.Errorf("FormatTime = %q, want %q", got, want)
	}
	if got := FormatTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)); !strings.HasSuffix(got, ".000Z") {
		t.Errorf("FormatTime of a whole second = %q, want 3 fixed digits", got)
	}
}
