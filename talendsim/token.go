package talendsim

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
)

// tokenResponse is the spec's TokenResponse. ExpiresIn is a string in the
// spec; Options.ExpiresInNumber switches it to a number, which real
// deployments have been seen to send.
type tokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   any    `json:"expires_in"`
}

// handleToken serves POST /security/oauth/token: client credentials in HTTP
// Basic auth, a JSON TokenRequest body.
func (s *Simulator) handleToken(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	id, secret, ok := r.BasicAuth()
	s.mu.Lock()
	want, known := s.clients[id]
	forbidden := s.opts.ForbiddenClients[id]
	s.mu.Unlock()
	if !ok || !known || subtle.ConstantTimeCompare([]byte(secret), []byte(want)) != 1 {
		writeError(w, http.StatusUnauthorized, "Unauthorized", "the client id or secret is missing or invalid")
		return
	}
	if forbidden {
		writeError(w, http.StatusForbidden, "Forbidden", "the service account lacks the permission to get tokens")
		return
	}

	fields, err := decodeObject(r)
	if err != nil {
		// Talend wants JSON; a form-encoded body (what most OAuth libraries
		// send) lands here.
		writeError(w, http.StatusBadRequest, "Bad Request", err.Error())
		return
	}
	var grantType, audience string
	for name, raw := range fields {
		switch name {
		case "grant_type":
			grantType, ok = asString(raw)
		case "audience":
			audience, ok = asString(raw)
		default:
			writeError(w, http.StatusBadRequest, "Bad Request", "unknown field "+strconv.Quote(name))
			return
		}
		if !ok {
			writeError(w, http.StatusBadRequest, "Bad Request", name+" must be a string")
			return
		}
	}
	switch {
	case grantType == "":
		writeError(w, http.StatusBadRequest, "Bad Request", "grant_type is required")
		return
	case grantType != "client_credentials":
		writeError(w, http.StatusBadRequest, "Bad Request", "grant_type must be client_credentials")
		return
	case strings.TrimSpace(audience) == "":
		writeError(w, http.StatusBadRequest, "Bad Request", "audience is required")
		return
	}

	token := newToken()
	s.mu.Lock()
	lifetime := s.opts.TokenLifetime
	s.tokens[token] = s.now().Add(lifetime)
	s.stats.TokensIssued++
	s.mu.Unlock()

	seconds := int64(lifetime.Seconds())
	resp := tokenResponse{AccessToken: token, TokenType: "Bearer", ExpiresIn: strconv.FormatInt(seconds, 10)}
	if s.opts.ExpiresInNumber {
		resp.ExpiresIn = seconds
	}
	writeJSON(w, http.StatusOK, resp)
}

// authorize checks the bearer token of an API call and answers 401 when it
// is missing, unknown or expired.
func (s *Simulator) authorize(w http.ResponseWriter, r *http.Request) bool {
	scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	token = strings.TrimSpace(token)
	if !strings.EqualFold(scheme, "Bearer") || token == "" {
		writeError(w, http.StatusUnauthorized, "Unauthorized", "a bearer token is required")
		return false
	}
	s.mu.Lock()
	expiry, ok := s.tokens[token]
	valid := ok && s.now().Before(expiry)
	if ok && !valid {
		delete(s.tokens, token)
	}
	s.mu.Unlock()
	if !valid {
		writeError(w, http.StatusUnauthorized, "Unauthorized", "the token is invalid or expired")
		return false
	}
	return true
}

// newToken returns an opaque random access token. Real tokens are JWTs, but
// clients must treat them as opaque, so the simulator does not pretend.
func newToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// asString decodes raw as a JSON string, rejecting every other type.
func asString(raw json.RawMessage) (string, bool) {
	if len(raw) == 0 || raw[0] != '"' {
		return "", false
	}
	var v string
	if err := json.Unmarshal(raw, &v); err != nil {
		return "", false
	}
	return v, true
}
