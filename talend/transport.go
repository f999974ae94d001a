package talend

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"
)

// TransportOptions shape the HTTP transport shared by all Talend calls.
type TransportOptions struct {
	// CAFile is an extra PEM bundle trusted besides the system roots
	// (a corporate TLS-inspecting proxy, a private simulator).
	CAFile string
	// MaxConnsPerHost is how many idle connections to Talend are kept
	// (normally the worker's concurrency). Go's default of 2 idle
	// connections per host makes a busy worker open and close connections
	// all the time. Connections are not capped: the worker's concurrency
	// already bounds calls, and a cap could queue token requests behind
	// slow API calls on the shared transport.
	MaxConnsPerHost int
}

// NewTransport returns an *http.Transport that honours Go's proxy variables
// (HTTPS_PROXY, HTTP_PROXY, NO_PROXY) and trusts the optional CA file.
func NewTransport(opts TransportOptions) (*http.Transport, error) {
	conns := opts.MaxConnsPerHost
	if conns <= 0 {
		conns = 64
	}
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	if opts.CAFile != "" {
		pem, err := os.ReadFile(opts.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read Talend CA file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("the Talend CA file %s holds no PEM certificate", opts.CAFile)
		}
		tlsConfig.RootCAs = pool
	}
	return &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   10 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		TLSClientConfig:       tlsConfig,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          conns * 2,
		MaxIdleConnsPerHost:   conns,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}, nil
}
