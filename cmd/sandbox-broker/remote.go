package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/config"
	"github.com/sandbox-broker/broker/postgres"
)

// openRemoteStore opens the PostgreSQL or DynamoDB store.
func openRemoteStore(ctx context.Context, kind, loc string, cfg config.Config, log *slog.Logger) (broker.Store, string, error) {
	switch kind {
	case "postgres":
		s, err := postgres.Open(ctx, loc, postgres.Options{MaxConns: int32(cfg.DBMaxConns), Logger: log})
		if err != nil {
			return nil, "", fmt.Errorf("open PostgreSQL store (BROKER_DATABASE_URL=%s): %w", redact(loc), err)
		}
		return s, loc, nil
	}
	return nil, "", usageError{fmt.Errorf("store %s is not built into this binary yet", kind)}
}

// redact hides a password in a database URL for logs.
func redact(u string) string {
	p, err := url.Parse(u)
	if err != nil || p.User == nil {
		return u
	}
	if _, ok := p.User.Password(); ok {
		p.User = url.UserPassword(p.User.Username(), "xxxxx")
	}
	return p.String()
}
