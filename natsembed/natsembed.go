// Package natsembed runs a nats-server with JetStream inside the process: the
// broker of `tmc-runner dev` and of the integration tests, so that both use a
// real server rather than a mock.
package natsembed

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Options configure an embedded server.
type Options struct {
	// Host and Port to listen on; Port -1 picks a free port (tests).
	Host string
	Port int
	// StoreDir holds JetStream data; it survives restarts of the server.
	StoreDir string
	// ServerName identifies the server in logs and JetStream metadata.
	ServerName string
	// SyncAlways fsyncs every JetStream write (production durability; slower).
	SyncAlways bool
	// Logs sends the server's own log lines to stderr.
	Logs bool
}

// Server is a running embedded nats-server.
type Server struct {
	*server.Server
}

// Start starts a server and waits until it accepts connections.
func Start(opts Options) (*Server, error) {
	if opts.StoreDir == "" {
		return nil, errors.New("natsembed: StoreDir is required")
	}
	host := opts.Host
	if host == "" {
		host = "127.0.0.1"
	}
	name := opts.ServerName
	if name == "" {
		name = "tmc-embedded"
	}
	sopts := &server.Options{
		ServerName: name,
		Host:       host,
		Port:       opts.Port,
		JetStream:  true,
		StoreDir:   opts.StoreDir,
		NoSigs:     true,
		// Defaults of a production server would refuse the event fan-out of a
		// busy test; these are still far above what a worker needs.
		MaxPayload: 1 << 20,
	}
	if opts.SyncAlways {
		sopts.SyncAlways = true
	}
	srv, err := server.NewServer(sopts)
	if err != nil {
		return nil, fmt.Errorf("natsembed: new server: %w", err)
	}
	if opts.Logs {
		srv.ConfigureLogger()
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, errors.New("natsembed: server not ready within 10s")
	}
	return &Server{Server: srv}, nil
}

// URL is the client URL to connect to.
func (s *Server) URL() string { return s.ClientURL() }

// Stop shuts the server down and waits until it has.
func (s *Server) Stop() {
	s.Shutdown()
	s.WaitForShutdown()
}
