package talend

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tmc-runner/tmc-runner/talendsim"
)

func writeCA(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ca.pem")
	block := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(path, block, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestTransportCAFile(t *testing.T) {
	t.Parallel()
	sim := talendsim.New(talendsim.Options{KnowAll: true, Clients: map[string]string{testClientID: testSecret}})
	srv := httptest.NewTLSServer(sim)
	t.Cleanup(srv.Close)
	caFile := writeCA(t, srv)

	newClient := func(t *testing.T, opts TransportOptions) *Client {
		tr, err := NewTransport(opts)
		if err != nil {
			t.Fatalf("NewTransport: %v", err)
		}
		t.Cleanup(tr.CloseIdleConnections)
		c, err := NewClient(Config{
			BaseURL:     srv.URL,
			Credentials: staticCreds(testClientID, testSecret),
			API:         &http.Client{Transport: NewBreaker(tr, BreakerSettings{}), Timeout: 10 * time.Second},
			TokenHTTP:   &http.Client{Transport: tr, Timeout: 10 * time.Second},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		return c
	}

	t.Run("with CA file", func(t *testing.T) {
		t.Parallel()
		c := newClient(t, TransportOptions{CAFile: caFile})
		if _, err := c.RunTask(context.Background(), TaskRun{Executable: "t"}); err != nil {
			t.Fatalf("RunTask over TLS with the CA file: %v", err)
		}
	})
	t.Run("without CA file", func(t *testing.T) {
		t.Parallel()
		c := newClient(t, TransportOptions{})
		_, err := c.RunTask(context.Background(), TaskRun{Executable: "t"})
		var unknown x509.UnknownAuthorityError
		var verify *tls.CertificateVerificationError
		if !errors.As(err, &unknown) && !errors.As(err, &verify) {
			t.Fatalf("RunTask without the CA = %v, want a certificate verification error", err)
		}
		if !errors.Is(err, ErrTokenUnavailable) || !IsSystemic(err) {
			t.Fatalf("RunTask without the CA = %v, want systemic ErrTokenUnavailable", err)
		}
	})
}

func TestTransportCAFileErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, path string }{
		{"missing file", filepath.Join(dir, "absent.pem")},
		{"no PEM inside", garbage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewTransport(TransportOptions{CAFile: tc.path}); err == nil {
				t.Fatalf("NewTransport accepted CA file %s", tc.path)
			}
		})
	}
}

const proxyChildEnv = "TALEND_TEST_PROXY_CHILD"

// TestProxyFromEnvironment checks that the transport honours HTTP_PROXY.
// Go reads the proxy variables once per process and never proxies
// loopback addresses, so the test runs itself again in a child process with
// HTTP_PROXY set, and the child calls a host that only the proxy can reach.
func TestProxyFromEnvironment(t *testing.T) {
	if os.Getenv(proxyChildEnv) == "1" {
		proxyChild(t)
		return
	}
	t.Parallel()
	sim := talendsim.New(talendsim.Options{KnowAll: true, Clients: map[string]string{testClientID: testSecret}})
	var proxied atomic.Int32
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A forward proxy receives absolute URIs.
		if !r.URL.IsAbs() || r.URL.Host != "talend.example.invalid" {
			http.Error(w, "proxy: unexpected target "+r.URL.String(), http.StatusBadGateway)
			return
		}
		proxied.Add(1)
		sim.ServeHTTP(w, r)
	}))
	t.Cleanup(proxy.Close)

	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(name) {
		case "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "REQUEST_METHOD", proxyChildEnv:
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "HTTP_PROXY="+proxy.URL, proxyChildEnv+"=1")

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestProxyFromEnvironment$", "-test.count=1", "-test.v")
	cmd.Env = env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("child process: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "PROXY-CHILD-OK") {
		t.Fatalf("child did not report success:\n%s", out.String())
	}
	st := sim.Stats()
	if st.TokensIssued != 1 || st.ExecutionsTotal != 1 {
		t.Fatalf("through the proxy: %d tokens, %d executions; want 1 and 1", st.TokensIssued, st.ExecutionsTotal)
	}
	if got := proxied.Load(); got != 2 {
		t.Fatalf("proxy forwarded %d requests, want 2 (token and run)", got)
	}
}

func proxyChild(t *testing.T) {
	tr, err := NewTransport(TransportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(Config{
		BaseURL:     "http://talend.example.invalid",
		Credentials: staticCreds(testClientID, testSecret),
		API:         &http.Client{Transport: NewBreaker(tr, BreakerSettings{}), Timeout: 20 * time.Second},
		TokenHTTP:   &http.Client{Transport: tr, Timeout: 20 * time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	id, err := c.RunTask(context.Background(), TaskRun{Executable: "t"})
	if err != nil {
		t.Fatalf("RunTask through the proxy: %v", err)
	}
	fmt.Println("PROXY-CHILD-OK", id)
}
