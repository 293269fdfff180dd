package postgres

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	broker "github.com/sandbox-broker/broker"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// migrationLockKey is the pg_advisory_lock key that serializes migrations
// across replicas ("sbbroker" in ASCII). Advisory locks are per database, so
// replicas on different schemas of one database migrate one after another.
const migrationLockKey int64 = 0x7362_6272_6f6b_6572

// Migrate applies the embedded migrations that the database at url has not
// applied yet, for the `sandbox-broker migrate` subcommand; Open does the
// same. Concurrent calls (from many replicas) are safe: they take turns on an
// advisory lock held by a dedicated connection. Returns EINVALID for a
// malformed url, EUNAVAILABLE when the database cannot be reached, EINTERNAL
// when a migration fails.
func Migrate(ctx context.Context, url string) error {
	// Parsed as for a pool, so that the pool_* parameters Open accepts are
	// understood here too (pgx alone would send them to the server).
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return &broker.Error{Code: broker.EINVALID, Message: "the database URL is not valid", Err: fmt.Errorf("postgres: parse url: %w", err)}
	}
	configureConn(cfg.ConnConfig)
	return migrate(ctx, cfg.ConnConfig, slog.Default())
}

type migration struct {
	version int
	name    string
	body    string
}

func loadMigrations() ([]migration, error) {
	names, err := fs.Glob(migrationFS, "migrations/*.sql")
	if err != nil {
		return nil, fmt.Errorf("postgres: list migrations: %w", err)
	}
	sort.Strings(names)
	out := make([]migration, 0, len(names))
	for _, name := range names {
		version, err := strconv.Atoi(strings.SplitN(path.Base(name), "_", 2)[0])
		if err != nil {
			return nil, fmt.Errorf("postgres: migration %s: name must start with a number: %w", name, err)
		}
		body, err := migrationFS.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("postgres: read migration %s: %w", name, err)
		}
		out = append(out, migration{version: version, name: path.Base(name), body: string(body)})
	}
	return out, nil
}

// migrate applies the pending migrations over one dedicated connection
// holding the advisory lock, each in its own transaction.
func migrate(ctx context.Context, cfg *pgx.ConnConfig, log *slog.Logger) error {
	migrations, err := loadMigrations()
	if err != nil {
		return &broker.Error{Code: broker.EINTERNAL, Message: "an internal error occurred", Err: err}
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return dbErr(ctx, fmt.Errorf("postgres: connect: %w", err))
	}
	// Closing the connection also releases the advisory lock, whatever
	// happened before.
	defer conn.Close(context.WithoutCancel(ctx))

	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, migrationLockKey); err != nil {
		return dbErr(ctx, fmt.Errorf("postgres: take migration lock: %w", err))
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		applied_at BIGINT NOT NULL)`); err != nil {
		return dbErr(ctx, fmt.Errorf("postgres: create schema_migrations: %w", err))
	}
	for _, m := range migrations {
		applied, err := applyMigration(ctx, conn, m)
		if err != nil {
			return dbErr(ctx, fmt.Errorf("postgres: migration %s: %w", m.name, err))
		}
		if applied {
			log.InfoContext(ctx, "postgres: applied migration", "migration", m.name)
		}
	}
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, migrationLockKey); err != nil {
		return dbErr(ctx, fmt.Errorf("postgres: release migration lock: %w", err))
	}
	return nil
}

// applyMigration runs m unless it is recorded in schema_migrations, and
// reports whether it ran.
func applyMigration(ctx context.Context, conn *pgx.Conn, m migration) (bool, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return false, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var done bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)`, m.version).Scan(&done); err != nil {
		return false, err
	}
	if done {
		return false, nil
	}
	if _, err := tx.Exec(ctx, m.body); err != nil {
		return false, err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)`, m.version, time.Now().Unix()); err != nil {
		return false, err
	}
	return true, tx.Commit(ctx)
}
