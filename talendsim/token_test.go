package talendsim

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestToken(t *testing.T) {
	tests := []struct {
		name       string
		opts       Options
		id, secret string
		body       any
		want       int
	}{
		{name: "json and basic", id: "dev-client", secret: "dev-secret", body: goodTokenBody, want: 200},
		{name: "json with charset", id: "dev-client", secret: "dev-secret",
			body: rawBody{"application/json; charset=utf-8", `{"audience":"a","grant_type":"client_credentials"}`}, want: 200},
		{name: "form body", id: "dev-client", secret: "dev-secret",
			body: rawBody{"application/x-www-form-urlencoded", "grant_type=client_credentials&audience=a"}, want: 400},
		{name: "json body labelled as form", id: "dev-client", secret: "dev-secret",
			body: rawBody{"application/x-www-form-urlencoded", `{"audience":"a","grant_type":"client_credentials"}`}, want: 400},
		{name: "no body", id: "dev-client", secret: "dev-secret", body: nil, want: 400},
		{name: "missing audience", id: "dev-client", secret: "dev-secret", body: `{"grant_type":"client_credentials"}`, want: 400},
		{name: "missing grant_type", id: "dev-client", secret: "dev-secret", body: `{"audience":"a"}`, want: 400},
		{name: "wrong grant_type", id: "dev-client", secret: "dev-secret", body: `{"audience":"a","grant_type":"password"}`, want: 400},
		{name: "unknown field", id: "dev-client", secret: "dev-secret", body: `{"audience":"a","grant_type":"client_credentials","scope":"x"}`, want: 400},
		{name: "audience not a string", id: "dev-client", secret: "dev-secret", body: `{"audience":1,"grant_type":"client_credentials"}`, want: 400},
		{name: "wrong secret", id: "dev-client", secret: "nope", body: goodTokenBody, want: 401},
		{name: "unknown client", id: "other", secret: "dev-secret", body: goodTokenBody, want: 401},
		{name: "no credentials", body: goodTokenBody, want: 401},
		{name: "configured clients", opts: Options{Clients: map[string]string{"c1": "s1"}}, id: "c1", secret: "s1", body: goodTokenBody, want: 200},
		{name: "default client not accepted when clients set", opts: Options{Clients: map[string]string{"c1": "s1"}}, id: "dev-client", secret: "dev-secret", body: goodTokenBody, want: 401},
		{name: "forbidden client", opts: Options{ForbiddenClients: map[string]bool{"dev-client": true}}, id: "dev-client", secret: "dev-secret", body: goodTokenBody, want: 403},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.opts)
			resp, body := h.tokenRequest(tc.id, tc.secret, tc.body)
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.want, body)
			}
			st := h.sim.Stats()
			if st.TokenRequests != 1 {
				t.Errorf("TokenRequests %d, want 1", st.TokenRequests)
			}
			if tc.want != 200 {
				errorBody(t, resp, body)
				if st.TokensIssued != 0 {
					t.Errorf("TokensIssued %d, want 0", st.TokensIssued)
				}
				if strings.Contains(string(body), "dev-secret") {
					t.Errorf("error body echoes the secret: %s", body)
				}
				return
			}
			var m map[string]any
			mustUnmarshal(t, body, &m)
			if m["token_type"] != "Bearer" || m["access_token"] == "" || m["expires_in"] != "1800" {
				t.Errorf("token response %v", m)
			}
			if st.TokensIssued != 1 {
				t.Errorf("TokensIssued %d, want 1", st.TokensIssued)
			}
		})
	}
}

func TestTokenExpiresIn(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want any
	}{
		{"string by default", Options{}, "1800"},
		{"number when asked", Options{ExpiresInNumber: true}, float64(1800)},
		{"custom lifetime", Options{TokenLifetime: time.Hour}, "3600"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.opts)
			_, body := h.tokenRequest("dev-client", "dev-secret", goodTokenBody)
			var m map[string]any
			mustUnmarshal(t, body, &m)
			if m["expires_in"] != tc.want {
				t.Errorf("expires_in %#v, want %#v", m["expires_in"], tc.want)
			}
		})
	}
}

func TestBearerAuth(t *testing.T) {
	tests := []struct {
		name    string
		auth    func(h *harness) string
		prepare func(h *harness)
		want    int
	}{
		{name: "valid", auth: func(h *harness) string { return "Bearer " + h.token() }, want: 200},
		{name: "lower-case scheme", auth: func(h *harness) string { return "bearer " + h.token() }, want: 200},
		{name: "missing", auth: func(h *harness) string { return "" }, want: 401},
		{name: "basic instead", auth: func(h *harness) string { return "Basic ZGV2LWNsaWVudDpkZXYtc2VjcmV0" }, want: 401},
		{name: "unknown token", auth: func(h *harness) string { return "Bearer not-a-token" }, want: 401},
		{name: "ExpireTokens", auth: func(h *harness) string { return "Bearer " + h.token() },
			prepare: func(h *harness) { h.sim.ExpireTokens() }, want: 401},
		{name: "lifetime over", auth: func(h *harness) string { return "Bearer " + h.token() },
			prepare: func(h *harness) { h.clock.Advance(30 * time.Minute) }, want: 401},
		{name: "just before expiry", auth: func(h *harness) string { return "Bearer " + h.token() },
			prepare: func(h *harness) { h.clock.Advance(30*time.Minute - time.Second) }, want: 200},
		{name: "rotated secret keeps tokens", auth: func(h *harness) string { return "Bearer " + h.token() },
			prepare: func(h *harness) { h.sim.SetClients(map[string]string{"x": "y"}) }, want: 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Options{KnowAll: true})
			id := h.runTask("t1")
			auth := tc.auth(h)
			if tc.prepare != nil {
				tc.prepare(h)
			}
			resp, body := h.request(http.MethodGet, "/processing/executions/"+id, nil, map[string]string{"Authorization": auth})
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.want, body)
			}
			wantUnauthorized := 0
			if tc.want == 401 {
				wantUnauthorized = 1
				errorBody(t, resp, body)
			}
			if got := h.sim.Stats().Unauthorized; got != wantUnauthorized {
				t.Errorf("Unauthorized %d, want %d", got, wantUnauthorized)
			}
		})
	}
}

func TestSetClients(t *testing.T) {
	h := newHarness(t, Options{})
	h.sim.SetClients(map[string]string{"new": "secret"})
	if resp, _ := h.tokenRequest("dev-client", "dev-secret", goodTokenBody); resp.StatusCode != 401 {
		t.Errorf("old client: %d, want 401", resp.StatusCode)
	}
	if resp, _ := h.tokenRequest("new", "secret", goodTokenBody); resp.StatusCode != 200 {
		t.Errorf("new client: %d, want 200", resp.StatusCode)
	}
}

func TestTokensAreOpaqueAndDistinct(t *testing.T) {
	h := newHarness(t, Options{})
	seen := map[string]bool{}
	for range 5 {
		_, body := h.tokenRequest("dev-client", "dev-secret", goodTokenBody)
		var tr tokenResponse
		mustUnmarshal(t, body, &tr)
		tok := tr.AccessToken
		if len(tok) < 32 || seen[tok] {
			t.Fatalf("token %q short or repeated", tok)
		}
		seen[tok] = true
	}
}
