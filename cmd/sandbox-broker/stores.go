package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/config"
	"github.com/sandbox-broker/broker/dynamostore"
	"github.com/sandbox-broker/broker/sqlite"
)

// openStore opens the store BROKER_DATABASE_URL selects and applies its
// migrations.
func openStore(ctx context.Context, cfg config.Config, log *slog.Logger) (broker.Store, string, error) {
	kind, loc, err := cfg.Store()
	if err != nil {
		return nil, "", usageError{err}
	}
	switch kind {
	case "sqlite":
		s, err := sqlite.Open(ctx, loc)
		if err != nil {
			return nil, "", fmt.Errorf("open SQLite store %s: %w", loc, err)
		}
		return s, "sqlite:" + loc, nil
	}
	return openRemoteStore(ctx, kind, loc, cfg, log)
}

func runMigrate(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("migrate takes no arguments; set BROKER_DATABASE_URL")}
	}
	cfg, err := config.Load(getenv)
	if err != nil {
		return usageError{err}
	}
	if kind, table, err := cfg.Store(); err == nil && kind == "dynamodb" {
		res, err := dynamostore.Migrate(ctx, dynamoConfig(cfg, table, slog.New(slog.DiscardHandler)))
		if err != nil {
			return fmt.Errorf("migrate DynamoDB table %s: %w", table, err)
		}
		fmt.Fprintf(stdout, "DynamoDB table %s ready (created table: %v, created indexes: %v)\n", table, res.CreatedTable, res.CreatedIndexes)
		return nil
	}
	s, name, err := openStore(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	defer s.Close()
	fmt.Fprintf(stdout, "migrations applied to %s\n", redact(name))
	return nil
}
