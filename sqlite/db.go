// Package sqlite is the embedded broker.Store on a single SQLite file
// (pure Go, modernc.org/sqlite). One writer goroutine owns the only write
// connection and commits concurrent writes in groups: every caller's change
// is durable (WAL, synchronous=FULL) before its call returns, and one fsync
// covers the whole group.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	broker "github.com/sandbox-broker/broker"
	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// maxBatch caps how many writes share one transaction.
const maxBatch = 512

// Store is a broker.Store on one SQLite file. Use Open; call Close.
type Store struct {
	path    string
	writer  *sql.DB // exactly one connection, used only by the writer goroutine
	readers *sql.DB
	wstmts  *stmtCache
	ops     chan *writeOp
	stop    chan struct{}
	done    chan struct{}
	closeMu sync.Once
}

var _ broker.Store = (*Store)(nil)

// stmtCache holds the writer's prepared statements. The writer pool has a
// single connection, so a statement prepared on it is parsed once for the
// life of the store (re-parsing every statement cost half the CPU of an
// allocation). A statement cannot be prepared while a transaction holds that
// connection: a miss runs unprepared and is remembered, and the writer
// goroutine prepares what it remembered between transactions.
type stmtCache struct {
	mu      sync.Mutex
	db      *sql.DB
	stmts   map[string]*sql.Stmt
	missing map[string]bool
}

func (c *stmtCache) get(q string) *sql.Stmt {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok := c.stmts[q]
	if !ok && c.missing != nil {
		c.missing[q] = true
	}
	return st
}

// prepareMissing prepares the statements that missed; call it only while no
// transaction is open on the writer.
func (c *stmtCache) prepareMissing(ctx context.Context) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for q := range c.missing {
		if st, err := c.db.PrepareContext(ctx, q); err == nil {
			c.stmts[q] = st
		}
		delete(c.missing, q)
	}
}

func (c *stmtCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, st := range c.stmts {
		st.Close()
	}
	c.stmts, c.missing = map[string]*sql.Stmt{}, nil
}

// exec, qrow and query run q inside tx, prepared when the cache has it.
func (s *Store) exec(ctx context.Context, tx *sql.Tx, q string, args ...any) (sql.Result, error) {
	if st := s.wstmts.get(q); st != nil {
		return tx.StmtContext(ctx, st).ExecContext(ctx, args...)
	}
	return tx.ExecContext(ctx, q, args...)
}

func (s *Store) qrow(ctx context.Context, tx *sql.Tx, q string, args ...any) *sql.Row {
	if st := s.wstmts.get(q); st != nil {
		return tx.StmtContext(ctx, st).QueryRowContext(ctx, args...)
	}
	return tx.QueryRowContext(ctx, q, args...)
}

func (s *Store) query(ctx context.Context, tx *sql.Tx, q string, args ...any) (*sql.Rows, error) {
	if st := s.wstmts.get(q); st != nil {
		return tx.StmtContext(ctx, st).QueryContext(ctx, args...)
	}
	return tx.QueryContext(ctx, q, args...)
}

type writeOp struct {
	ctx context.Context // the caller's values (actor), never its cancellation
	fn  func(ctx context.Context, tx *sql.Tx) error
	err chan error
}

// Open opens (creating if needed) the database at path, applies the
// embedded migrations and starts the writer. Returns EUNAVAILABLE when the
// file cannot be opened.
func Open(ctx context.Context, path string) (*Store, error) {
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("sqlite: create directory for %s: %w", path, err)
		}
	}
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=busy_timeout(10000)&_txlock=immediate"
	w, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	r, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=query_only(1)")
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("sqlite: open readers on %s: %w", path, err)
	}
	r.SetMaxOpenConns(8)
	r.SetMaxIdleConns(8)
	s := &Store{path: path, writer: w, readers: r, wstmts: &stmtCache{db: w, stmts: map[string]*sql.Stmt{}, missing: map[string]bool{}}, ops: make(chan *writeOp, maxBatch), stop: make(chan struct{}), done: make(chan struct{})}
	if err := s.migrate(ctx); err != nil {
		w.Close()
		r.Close()
		return nil, err
	}
	go s.run()
	return s, nil
}

// Close stops the writer after the writes already queued and closes the file.
func (s *Store) Close() error {
	var err error
	s.closeMu.Do(func() {
		close(s.stop)
		<-s.done
		s.wstmts.close()
		err = errors.Join(s.writer.Close(), s.readers.Close())
	})
	return err
}

// Ping checks that the file can be read. Returns EUNAVAILABLE.
func (s *Store) Ping(ctx context.Context) error {
	var one int
	if err := s.readers.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
		return broker.Unavailable(err)
	}
	return nil
}

func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.writer.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("sqlite: create schema_migrations: %w", err)
	}
	names, err := fs.Glob(migrationFS, "migrations/*.sql")
	if err != nil {
		return fmt.Errorf("sqlite: list migrations: %w", err)
	}
	sort.Strings(names)
	for _, name := range names {
		version, err := strconv.Atoi(strings.SplitN(filepath.Base(name), "_", 2)[0])
		if err != nil {
			return fmt.Errorf("sqlite: migration %s: name must start with a number: %w", name, err)
		}
		body, err := migrationFS.ReadFile(name)
		if err != nil {
			return fmt.Errorf("sqlite: read migration %s: %w", name, err)
		}
		if err := s.applyMigration(ctx, version, string(body)); err != nil {
			return fmt.Errorf("sqlite: migration %s: %w", name, err)
		}
	}
	return nil
}

func (s *Store) applyMigration(ctx context.Context, version int, body string) error {
	tx, err := s.writer.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM schema_migrations WHERE version = ?`, version).Scan(&n); err != nil {
		return err
	}
	if n > 0 {
		return nil
	}
	if _, err := tx.ExecContext(ctx, body); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`, version, time.Now().Unix()); err != nil {
		return err
	}
	return tx.Commit()
}

// write runs fn inside the next group transaction. fn gets a context
// without the caller's cancellation: a client going away must not fail the
// writes grouped with its own. It returns once that transaction is
// committed (or failed). fn must not block on anything but the database and
// must not write before returning a domain error.
func (s *Store) write(ctx context.Context, fn func(ctx context.Context, tx *sql.Tx) error) error {
	closed := broker.Unavailable(errors.New("store is closed"))
	select {
	case <-s.stop:
		return closed
	default:
	}
	op := &writeOp{ctx: context.WithoutCancel(ctx), fn: fn, err: make(chan error, 1)}
	select {
	case s.ops <- op:
	case <-s.stop:
		return closed
	case <-ctx.Done():
		return ctx.Err()
	}
	// Once queued the op runs unless the writer already stopped; wait for
	// it so that a reported failure never hides a committed change.
	select {
	case err := <-op.err:
		return err
	case <-s.done:
		select {
		case err := <-op.err: // finished while the writer drained
			return err
		default:
			return closed
		}
	}
}

func (s *Store) run() {
	defer close(s.done)
	batch := make([]*writeOp, 0, maxBatch)
	for {
		select {
		case op := <-s.ops:
			batch = append(batch[:0], op)
		case <-s.stop:
			for {
				select {
				case op := <-s.ops:
					s.commit([]*writeOp{op})
				default:
					return
				}
			}
		}
	drain:
		for len(batch) < maxBatch {
			select {
			case op := <-s.ops:
				batch = append(batch, op)
			default:
				break drain
			}
		}
		s.commit(batch)
		s.wstmts.prepareMissing(context.Background())
	}
}

// commit runs a group of writes in one transaction. An op that returns a
// domain error (*broker.Error: not found, no sandbox, lost claim, ...) must
// not have written anything, so it simply fails alone. Any other error is a
// database failure: the whole group is rolled back and every op fails with
// EUNAVAILABLE, so a reported failure never hides a committed change.
func (s *Store) commit(batch []*writeOp) {
	ctx := context.Background()
	errs := make([]error, len(batch))
	fail := func(err error) {
		for _, op := range batch {
			op.err <- broker.Unavailable(err)
		}
	}
	tx, err := s.writer.BeginTx(ctx, nil)
	if err != nil {
		fail(err)
		return
	}
	for i, op := range batch {
		errs[i] = op.fn(op.ctx, tx)
		var de *broker.Error
		if errs[i] != nil && !errors.As(errs[i], &de) {
			tx.Rollback()
			fail(errs[i])
			return
		}
	}
	if err := tx.Commit(); err != nil {
		fail(err)
		return
	}
	for i, op := range batch {
		op.err <- errs[i]
	}
}

// dbErr maps a driver error to a domain error: callers see EUNAVAILABLE,
// the cause stays in the chain for logs.
func dbErr(err error) error {
	if err == nil {
		return nil
	}
	var e *broker.Error
	if errors.As(err, &e) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return broker.Unavailable(err)
}
