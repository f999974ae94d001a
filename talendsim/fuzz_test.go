package talendsim

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// FuzzRunTaskBody feeds arbitrary bodies to POST /processing/executions:
// the simulator must never panic and must answer 201 or 400 only.
func FuzzRunTaskBody(f *testing.F) {
	for _, seed := range []string{
		`{"executable":"t1"}`,
		`{"executable":"t1","logLevel":"WARN","timeout":5,"parameters":{"a":"1"}}`,
		`{"executable":"t1","parameters":[{"name":"a","value":"1"}]}`,
		`{"executable":"t1","timeout":1e3}`,
		`null`, `[]`, `{`, ``,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, body string) {
		sim := New(Options{KnowAll: true})
		sim.tokens["fuzz"] = sim.now().Add(time.Hour)
		req := httptest.NewRequest(http.MethodPost, "/processing/executions", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer fuzz")
		rec := httptest.NewRecorder()
		sim.ServeHTTP(rec, req)
		if rec.Code != http.StatusCreated && rec.Code != http.StatusBadRequest {
			t.Fatalf("status %d for %q: %s", rec.Code, body, rec.Body)
		}
	})
}
