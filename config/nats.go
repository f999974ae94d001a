package config

import (
	"fmt"

	"github.com/nats-io/nats.go"
)

// Options are the nats.Connect options these settings call for.
func (n NATS) Options(name string) ([]nats.Option, error) {
	opts := []nats.Option{
		nats.Name(name),
		// A worker must ride out a server restart or a cluster node loss.
		nats.MaxReconnects(-1),
	}
	if n.Creds != "" {
		opts = append(opts, nats.UserCredentials(n.Creds))
	}
	if n.NKey != "" {
		opt, err := nats.NkeyOptionFromSeed(n.NKey)
		if err != nil {
			return nil, fmt.Errorf("NATS_NKEY: %w", err)
		}
		opts = append(opts, opt)
	}
	if n.User != "" {
		password, err := valueOrFile(n.Password, n.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("NATS_PASSWORD_FILE: %w", err)
		}
		opts = append(opts, nats.UserInfo(n.User, password))
	}
	if n.Token != "" || n.TokenFile != "" {
		token, err := valueOrFile(n.Token, n.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("NATS_TOKEN_FILE: %w", err)
		}
		opts = append(opts, nats.Token(token))
	}
	if n.CA != "" {
		opts = append(opts, nats.RootCAs(n.CA))
	}
	if n.Cert != "" {
		opts = append(opts, nats.ClientCert(n.Cert, n.Key))
	}
	if n.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(n.InboxPrefix))
	}
	return opts, nil
}
