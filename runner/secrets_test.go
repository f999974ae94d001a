package runner

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/talendsim"
)

// No log line, event body or header, or dead-letter summary holds a token,
// the client secret, base64 of id:secret, or a parameter value — in plain,
// JSON-escaped or URL-escaped form — whatever path a request takes.
func TestSecretsNeverLeak(t *testing.T) {
	h := newHarness(t)
	h.sim.SetBehaviour("missing-task", talendsim.Behaviour{Missing: true})
	h.start()
	// Values with characters that escape differently in JSON and URLs.
	values := []string{`pa ss"w0rd/&=ü`, "s3cr3t-token-value", `{"nested":"json"}`}
	params := map[string]string{"basic_password": values[0], "api_key": values[1]}
	arrayForm := []map[string]any{
		{"name": "basic_password", "value": values[2], "encrypted": true},
		{"name": "user", "value": values[1], "encrypted": false},
	}
	h.request("ok-object", "task-a", map[string]any{"parameters": params})
	h.request("ok-array", "task-b", map[string]any{"parameters": arrayForm})
	h.request("failed", "missing-task", map[string]any{"parameters": params})
	h.request("expired", "task-c", map[string]any{"parameters": params, "expiresAt": "2000-01-01T00:00:00Z"})
	// Invalid: a problem next to parameter values must not quote them.
	h.request("rejected", "task-d", map[string]any{"parameters": arrayForm, "logLevel": values[1]})
	h.publish("default", `{"requestId":"rejected-2","executable":"x","parameters":{"a":"`+values[1]+`","a":"`+values[1]+`"}}`, "rejected-2")
	h.waitTerminal(30*time.Second, "ok-object", "ok-array", "failed", "expired", "rejected", "rejected-2")
	// A stale token and a 5xx burst exercise the retry and refresh paths.
	h.sim.ExpireTokens()
	h.sim.InjectFault(talendsim.Fault{Status: 503, Count: 2})
	h.request("retried", "task-e", map[string]any{"parameters": params})
	h.waitTerminal(30*time.Second, "ok-object", "ok-array", "failed", "expired", "rejected", "rejected-2", "retried")
	resp, err := http.Get("http://" + h.runner.AdminAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metricsText, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	h.stop()

	tokens := h.tokens()
	if len(tokens) < 2 {
		t.Fatalf("saw %d bearer tokens; the test needs the issued tokens to search for", len(tokens))
	}
	secrets := map[string]string{
		"client secret": testSecret,
		"basic auth":    base64.StdEncoding.EncodeToString([]byte(testClientID + ":" + testSecret)),
	}
	for i, tok := range tokens {
		secrets["token "+string(rune('A'+i))] = tok
	}
	for i, v := range values {
		secrets["parameter value "+string(rune('1'+i))] = v
	}

	var corpus []string
	corpus = append(corpus, h.logs.String(), string(metricsText))
	for _, sp := range h.spans.Ended() {
		corpus = append(corpus, sp.Name(), sp.Status().Description)
		for _, kv := range sp.Attributes() {
			corpus = append(corpus, string(kv.Key)+"="+kv.Value.String())
		}
		for _, ev := range sp.Events() {
			for _, kv := range ev.Attributes {
				corpus = append(corpus, string(kv.Key)+"="+kv.Value.String())
			}
		}
	}
	ctx := context.Background()
	for _, stream := range []string{h.topo.EventsStream, h.topo.DeadStream} {
		c, err := h.js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{})
		if err != nil {
			t.Fatal(err)
		}
		batch, err := c.Fetch(1000, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			hdr, _ := json.Marshal(m.Headers())
			corpus = append(corpus, string(hdr))
			if stream == h.topo.EventsStream {
				corpus = append(corpus, string(m.Data()))
			}
			// A dead letter's body is the original request, kept on purpose
			// under the request stream's access rules; its headers are the
			// summary and must be clean.
		}
		if n == 0 {
			t.Fatalf("no messages read from %s", stream)
		}
	}
	all := strings.Join(corpus, "\n")
	for name, secret := range secrets {
		for form, s := range forms(secret) {
			if strings.Contains(all, s) {
				idx := strings.Index(all, s)
				t.Errorf("%s found (%s form) near: %q", name, form, all[max(0, idx-80):min(len(all), idx+len(s)+40)])
			}
		}
	}
	// The corpus must hold what the requests produced, or the search above
	// proves nothing: every request's events and the duplicate parameter's
	// name (names are fine, values are not).
	for _, want := range []string{`"requestId":"ok-array"`, `"type":"failed"`, `"type":"rejected"`, `parameters.a`, `"outcome":"retry"`,
		"tmc_requests_total", "tmc.request_id=ok-array", "http.request.method=POST", `"trace_id":"`} {
		if !strings.Contains(all, want) {
			t.Errorf("corpus lacks %s: the search covered less than it should", want)
		}
	}
}

// forms returns the encodings under which a secret could appear.
func forms(s string) map[string]string {
	j, _ := json.Marshal(s)
	return map[string]string{
		"plain":        s,
		"json-escaped": strings.Trim(string(j), `"`),
		"url-query":    url.QueryEscape(s),
		"url-path":     url.PathEscape(s),
	}
}
