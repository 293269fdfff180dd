package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/config"
	"github.com/sandbox-broker/broker/dynamostore"
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
	case "dynamodb":
		s, err := dynamostore.Open(ctx, dynamoConfig(cfg, loc, log))
		if err != nil {
			return nil, "", fmt.Errorf("open DynamoDB store (table %s): %w", loc, err)
		}
		return s, "dynamodb://" + loc, nil
	}
	return nil, "", usageError{fmt.Errorf("unknown store %q", kind)}
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

// dynamoConfig maps the reference's DDB_* variables onto the store config.
func dynamoConfig(cfg config.Config, table string, log *slog.Logger) dynamostore.Config {
	return dynamostore.Config{Table: table, Endpoint: cfg.DDBEndpoint, Region: cfg.AWSRegion, Logger: log, CreateIfMissing: cfg.DDBCreateTable}
}
