package messages

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

// FuzzDecode checks the decoder's promises on arbitrary input: it never
// panics, it is deterministic, and it returns either a request whose id and
// route obey their rules or an *InvalidRequestError with at least one problem
// and a well-formed id and route for the rejected event's subject.
func FuzzDecode(f *testing.F) {
	seeds := []string{
		`{"executable":"e"}`,
		`{"requestId":"order-4711-nightly","executable":"5f0c1e","kind":"task","logLevel":"WARN","timeout":60,` +
			`"parameters":[{"name":"basic_password","value":"x","encrypted":true}],"awaitResult":true,"onUnknown":"report",` +
			`"notBefore":"2026-12-04T10:00:00Z","expiresAt":"2026-12-04T12:00:00Z","metadata":{"origin":"billing"}}`,
		`{"executable":"e","parameters":{"b":"1","a":"2","a":"3"}}`,
		`{"executable":"p","kind":"plan","parameters":[],"logLevel":"INFO","timeout":1.0}`,
		`{"executable":"e","parameters":[{"name":"a","value":"1"},{"name":"a","value":2,"x":null},3]}`,
		`{"executable":"","executable":null,"timeout":-1e400,"requestId":"a b","redriveOf":7}`,
		`{"executable":"e","timeout":99999999999999999999.000}`,
		`{"executable":"e","notBefore":"2026-12-04T10:00:00Z","expiresAt":"2026-12-04T10:00:00+00:00"}`,
		`{"executable":"e","metadata":{"a":{"b":[1,{"c":null}]}},"\u0000":1}`,
		`[1,2]`, `null`, `"x"`, ``, `{`, `{"a":"\xff"}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s), "tmc.runs.request.billing", "", "", uint64(42))
	}
	f.Add([]byte(`{"executable":"e"}`), "tmc.runs.request.b d", "msg-1", "", uint64(1))
	f.Add([]byte(`{"executable":"e"}`), "x", "bad id", "pinned-1", uint64(0))
	f.Add([]byte(`{"executable":"e"}`), "", "", "bad.pinned", uint64(7))

	created := time.UnixMilli(1733300000000)
	d := Decoder{MaxBody: 4 << 10} // small enough that the fuzzer reaches the limit
	f.Fuzz(func(t *testing.T, body []byte, subject, msgID, pinnedID string, seq uint64) {
		src := Source{Subject: subject, MsgID: msgID, PinnedID: pinnedID, FallbackID: FallbackID(created, seq)}
		req, err := d.Decode(body, src)
		req2, err2 := d.Decode(body, src)
		if !reflect.DeepEqual(req, req2) || !reflect.DeepEqual(err, err2) {
			t.Fatalf("Decode is not deterministic:\n%+v %v\n%+v %v", req, err, req2, err2)
		}
		if err == nil {
			if !ValidRequestID(req.RequestID) || !ValidRoute(req.Route) {
				t.Fatalf("accepted request with id %q route %q", req.RequestID, req.Route)
			}
			if req.Executable == "" || (req.Kind != KindTask && req.Kind != KindPlan) {
				t.Fatalf("accepted request without executable or kind: %+v", req)
			}
			if req.Kind == KindPlan && (len(req.Parameters) > 0 || req.LogLevel != "" || req.Timeout != 0) {
				t.Fatalf("accepted plan with task options: %+v", req)
			}
			return
		}
		var ie *InvalidRequestError
		if !errors.As(err, &ie) {
			t.Fatalf("error is %T, want *InvalidRequestError", err)
		}
		if len(ie.Problems) == 0 || len(ie.Problems) > maxProblems {
			t.Fatalf("%d problems", len(ie.Problems))
		}
		if !ValidRequestID(ie.RequestID) || (ie.Route != InvalidRoute && !ValidRoute(ie.Route)) {
			t.Fatalf("rejection with id %q route %q", ie.RequestID, ie.Route)
		}
		if _, err := EventFromInvalid(ie, 1, created).Marshal(); err != nil {
			t.Fatalf("rejected event does not marshal: %v", err)
		}
	})
}
