// Package postgres is the broker.Store on PostgreSQL (pgx v5 with a
// pgxpool connection pool), for running several broker replicas against one
// database.
//
// Every state change is one conditional statement on the current status,
// checked by PostgreSQL under row locks, so replicas need no coordination of
// their own: allocation picks a row with FOR UPDATE SKIP LOCKED and a partial
// unique index on (owner, idem_key) WHERE status = 'allocated' makes
// idempotency a database guarantee. The audit event of a change is written by
// the same statement (a data-modifying CTE).
//
// The URL passed to Open and Migrate is a pgx connection string; besides
// host, user and database it takes, among others:
//
//	pool_max_conns=N           pool size (Options.MaxConns wins; default DefaultMaxConns)
//	connect_timeout=S          seconds to establish a connection (default 5)
//	statement_timeout=MS       a server-side bound on every statement (default none)
//	application_name=NAME      shown in pg_stat_activity (default sandbox-broker)
//	search_path=SCHEMA         the schema holding the tables (default public)
//	default_query_exec_mode=exec  behind a pooler that cannot keep prepared statements
package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	broker "github.com/sandbox-broker/broker"
)

// Pool sizing. Statements are short and a broker replica mostly waits on
// network round trips, so a few connections per core keep it busy; the cap
// keeps several replicas together under PostgreSQL's default
// max_connections of 100 (4 replicas x 20 = 80).
const (
	connsPerCore    = 4
	minDefaultConns = 4
	maxDefaultConns = 20
)

// defaultConnectTimeout bounds establishing one connection when the URL has
// no connect_timeout.
const defaultConnectTimeout = 5 * time.Second

// Options tunes a Store. The zero value is usable.
type Options struct {
	// MaxConns is the pool size. 0 means the URL's pool_max_conns if set,
	// else DefaultMaxConns().
	MaxConns int32
	// Logger receives migration and retry messages; nil means slog.Default().
	Logger *slog.Logger
}

// DefaultMaxConns is the pool size used when neither Options.MaxConns nor
// the URL's pool_max_conns is set: 4 x GOMAXPROCS, at least 4 and at most 20.
func DefaultMaxConns() int32 {
	n := int32(connsPerCore * runtime.GOMAXPROCS(0))
	return max(minDefaultConns, min(n, maxDefaultConns))
}

// Store is a broker.Store on PostgreSQL. Use Open; call Close.
type Store struct {
	pool *pgxpool.Pool
	log  *slog.Logger
}

var _ broker.Store = (*Store)(nil)

// Open connects to the database at url (a postgres:// URL or a key=value
// DSN, as pgx accepts), applies the embedded migrations under an advisory
// lock (safe when many replicas start at once) and returns a Store with a
// connection pool. Returns EINVALID for a malformed url, EUNAVAILABLE when
// the database cannot be reached, EINTERNAL when a migration fails.
func Open(ctx context.Context, url string, opts Options) (*Store, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, &broker.Error{Code: broker.EINVALID, Message: "the database URL is not valid", Err: fmt.Errorf("postgres: parse url: %w", err)}
	}
	switch {
	case opts.MaxConns > 0:
		cfg.MaxConns = opts.MaxConns
	case !strings.Contains(url, "pool_max_conns"):
		cfg.MaxConns = DefaultMaxConns()
	}
	configureConn(cfg.ConnConfig)

	if err := migrate(ctx, cfg.ConnConfig.Copy(), log); err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, dbErr(ctx, fmt.Errorf("postgres: create pool: %w", err))
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, dbErr(ctx, fmt.Errorf("postgres: ping: %w", err))
	}
	return &Store{pool: pool, log: log}, nil
}

// configureConn fills in the connection defaults the URL left unset.
func configureConn(c *pgx.ConnConfig) {
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = defaultConnectTimeout
	}
	if c.RuntimeParams == nil {
		c.RuntimeParams = map[string]string{}
	}
	if c.RuntimeParams["application_name"] == "" {
		c.RuntimeParams["application_name"] = "sandbox-broker"
	}
}

// Close waits for the calls in flight and closes every connection.
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

// Ping checks that the database answers. Returns EUNAVAILABLE.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return dbErr(ctx, fmt.Errorf("postgres: ping: %w", err))
	}
	return nil
}

// Retry limits for statements that failed in a way that is safe to retry.
const (
	maxAttempts  = 3
	retryBackoff = 10 * time.Millisecond
)

// do runs fn and retries it when that cannot apply a change twice: after a
// deadlock or serialization failure (PostgreSQL rolled the statement back),
// after an error raised before anything was sent, and, when idempotent is
// set (the operation gives the same outcome when repeated), after a lost
// connection. The error is mapped with dbErr.
func (s *Store) do(ctx context.Context, idempotent bool, fn func(ctx context.Context) error) error {
	var err error
	for attempt := 1; ; attempt++ {
		err = fn(ctx)
		if err == nil || attempt == maxAttempts || !retryable(ctx, err, idempotent) {
			break
		}
		s.log.DebugContext(ctx, "postgres: retrying statement", "attempt", attempt, "err", err)
		if !sleep(ctx, time.Duration(attempt)*retryBackoff) {
			break
		}
	}
	return dbErr(ctx, err)
}

// sleep waits for d or until ctx ends; it reports whether d elapsed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// isNoRows reports whether err is pgx's "no rows in result set".
func isNoRows(err error) bool { return errors.Is(err, pgx.ErrNoRows) }
