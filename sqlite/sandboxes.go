package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"time"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/internal/sqlutil"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

const columns = sqlutil.Columns

// event appends one audit record inside tx, attributed to ctx's actor.
func (s *Store) event(ctx context.Context, tx *sql.Tx, id string, from, to broker.Status, at time.Time) error {
	a := broker.ActorFrom(ctx)
	_, err := s.exec(ctx, tx, `INSERT INTO events (sandbox_id, from_status, to_status, actor, request_id, at) VALUES (?, ?, ?, ?, ?, ?)`,
		id, string(from), string(to), a.Name, a.RequestID, sqlutil.Unix(at))
	return err
}

// Allocate implements broker.SandboxStore. The common case is one UPDATE:
// it claims the first matching available sandbox for (owner, key); if
// (owner, key) already holds one, the partial unique index rejects the
// update and the held sandbox is returned as a replay. When nothing matches,
// a held sandbox is still a replay, else ENOSANDBOX.
func (s *Store) Allocate(ctx context.Context, req broker.AllocateRequest) (broker.Allocation, error) {
	var out broker.Allocation
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		pick, pickArgs := pickQuery(req.NamePrefix)
		now := sqlutil.Unix(req.Now)
		expires := sqlutil.Unix(broker.ExpiresAt(req.Now, req.LabDuration))
		args := append([]any{req.Owner, req.Key, req.TrackName, now, int64(req.LabDuration / time.Second), expires, now}, pickArgs...)
		sb, err := sqlutil.ScanSandbox(s.qrow(ctx, tx, `UPDATE sandboxes SET status = 'allocated', owner = ?, idem_key = ?,
			track_name = ?, allocated_at = ?, lab_duration_sec = ?, expires_at = ?, updated_at = ?,
			deletion_requested_at = 0, deletion_attempts = 0, next_attempt_at = 0, last_error = ''
			WHERE status = 'available' AND id = (`+pick+`) RETURNING `+columns, args...))
		switch {
		case err == nil:
			out = broker.Allocation{Sandbox: sb}
			return s.event(ctx, tx, sb.ID, broker.StatusAvailable, broker.StatusAllocated, req.Now)
		case !errors.Is(err, sql.ErrNoRows) && !isUniqueViolation(err):
			return err
		}
		held, herr := sqlutil.ScanSandbox(s.qrow(ctx, tx, `SELECT `+columns+` FROM sandboxes
			WHERE owner = ? AND idem_key = ? AND status = 'allocated'`, req.Owner, req.Key))
		switch {
		case herr == nil:
			out = broker.Allocation{Sandbox: held, Replayed: true}
			return nil
		case errors.Is(herr, sql.ErrNoRows) && errors.Is(err, sql.ErrNoRows):
			return broker.Errorf(broker.ENOSANDBOX, "no sandbox available in the pool")
		case errors.Is(herr, sql.ErrNoRows):
			return err // a unique violation without a holder: not ours to explain
		}
		return herr
	})
	if err != nil {
		return broker.Allocation{}, dbErr(err)
	}
	return out, nil
}

// isUniqueViolation reports whether err is SQLite's UNIQUE constraint
// failure (here: the one-allocation-per-(owner, key) index). SQLite aborts
// only the failing statement; the transaction goes on.
func isUniqueViolation(err error) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE
}

// The allocation pick queries walk the partial index of available sandboxes
// in name order; INDEXED BY keeps the planner from choosing the status index
// and sorting the whole pool instead (see TestQueryPlans).
const (
	pickAny   = `SELECT id FROM sandboxes INDEXED BY sandboxes_available_name WHERE status = 'available' ORDER BY name LIMIT 1`
	pickRange = `SELECT id FROM sandboxes INDEXED BY sandboxes_available_name WHERE status = 'available' AND name >= ? AND name < ? ORDER BY name LIMIT 1`
	pickFrom  = `SELECT id FROM sandboxes INDEXED BY sandboxes_available_name WHERE status = 'available' AND name >= ? ORDER BY name LIMIT 1`
)

// pickQuery returns the query choosing the sandbox to allocate and its args.
func pickQuery(prefix string) (string, []any) {
	if prefix == "" {
		return pickAny, nil
	}
	if upper, ok := sqlutil.PrefixUpperBound(prefix); ok {
		return pickRange, []any{prefix, upper}
	}
	return pickFrom, []any{prefix}
}

// Get implements broker.SandboxStore.
func (s *Store) Get(ctx context.Context, id string) (broker.Sandbox, error) {
	sb, err := sqlutil.ScanSandbox(s.readers.QueryRowContext(ctx, `SELECT `+columns+` FROM sandboxes WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return sb, broker.Errorf(broker.ENOTFOUND, "sandbox %s not found", id)
	}
	return sb, dbErr(err)
}

// MarkForDeletion implements broker.SandboxStore.
func (s *Store) MarkForDeletion(ctx context.Context, req broker.MarkRequest) (broker.Sandbox, error) {
	var out broker.Sandbox
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		now := sqlutil.Unix(req.Now)
		sb, err := sqlutil.ScanSandbox(s.qrow(ctx, tx, `UPDATE sandboxes SET status = 'pending_deletion',
			deletion_requested_at = ?, updated_at = ?, next_attempt_at = 0
			WHERE id = ? AND status = 'allocated' AND owner = ? RETURNING `+columns, now, now, req.ID, req.Owner))
		if err == nil {
			out = sb
			return s.event(ctx, tx, sb.ID, broker.StatusAllocated, broker.StatusPendingDeletion, req.Now)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		// The conditional write did not match: say why.
		cur, err := sqlutil.ScanSandbox(s.qrow(ctx, tx, `SELECT `+columns+` FROM sandboxes WHERE id = ?`, req.ID))
		if errors.Is(err, sql.ErrNoRows) {
			return broker.Errorf(broker.ENOTFOUND, "sandbox %s not found", req.ID)
		}
		if err != nil {
			return err
		}
		out = cur
		return broker.MarkRejection(cur, req.Owner)
	})
	if err != nil {
		return broker.Sandbox{}, dbErr(err)
	}
	return out, nil
}

// List implements broker.SandboxStore.
func (s *Store) List(ctx context.Context, f broker.ListFilter) (broker.ListPage, error) {
	after := ""
	if f.Cursor != "" {
		var err error
		if after, err = sqlutil.DecodeCursor(f.Cursor); err != nil {
			return broker.ListPage{}, err
		}
	}
	if f.Limit < 1 || f.Limit > 100 {
		f.Limit = 100
	}
	q := `SELECT ` + columns + ` FROM sandboxes WHERE id > ?`
	args := []any{after}
	if f.Status != "" {
		q += ` AND status = ?`
		args = append(args, string(f.Status))
	}
	if f.NamePrefix != "" {
		q += ` AND name >= ?`
		args = append(args, f.NamePrefix)
		if upper, ok := sqlutil.PrefixUpperBound(f.NamePrefix); ok {
			q += ` AND name < ?`
			args = append(args, upper)
		}
	}
	if f.TrackName != "" {
		q += ` AND track_name = ?`
		args = append(args, f.TrackName)
	}
	if f.Owner != "" {
		q += ` AND owner = ?`
		args = append(args, f.Owner)
	}
	q += ` ORDER BY id LIMIT ?`
	args = append(args, f.Limit+1)
	rows, err := s.readers.QueryContext(ctx, q, args...)
	if err != nil {
		return broker.ListPage{}, dbErr(err)
	}
	defer rows.Close()
	var page broker.ListPage
	for rows.Next() {
		sb, err := sqlutil.ScanSandbox(rows)
		if err != nil {
			return broker.ListPage{}, dbErr(err)
		}
		page.Sandboxes = append(page.Sandboxes, sb)
	}
	if err := rows.Err(); err != nil {
		return broker.ListPage{}, dbErr(err)
	}
	if len(page.Sandboxes) > f.Limit {
		page.Sandboxes = page.Sandboxes[:f.Limit]
		page.Cursor = sqlutil.EncodeCursor(page.Sandboxes[f.Limit-1].ID)
	}
	return page, nil
}

// Stats implements broker.SandboxStore.
func (s *Store) Stats(ctx context.Context) (broker.Stats, error) {
	st := broker.Stats{ByStatus: map[broker.Status]int{}, ByTrack: map[string]int{}}
	tx, err := s.readers.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return st, dbErr(err)
	}
	defer tx.Rollback()
	if err := countInto(ctx, tx, `SELECT status, count(*) FROM sandboxes GROUP BY status`, func(k string, n int) {
		st.ByStatus[broker.Status(k)] = n
		st.Total += n
	}); err != nil {
		return st, dbErr(err)
	}
	if err := countInto(ctx, tx, `SELECT track_name, count(*) FROM sandboxes WHERE track_name <> '' GROUP BY track_name`, func(k string, n int) {
		st.ByTrack[k] = n
	}); err != nil {
		return st, dbErr(err)
	}
	var oldest int64
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(min(deletion_requested_at), 0) FROM sandboxes
		WHERE status IN ('pending_deletion', 'deleting')`).Scan(&oldest); err != nil {
		return st, dbErr(err)
	}
	st.OldestDeletionRequest = sqlutil.Time(oldest)
	return st, nil
}

func countInto(ctx context.Context, tx *sql.Tx, q string, add func(string, int)) error {
	rows, err := tx.QueryContext(ctx, q)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var k string
		var n int
		if err := rows.Scan(&k, &n); err != nil {
			return err
		}
		add(k, n)
	}
	return rows.Err()
}

// History implements broker.SandboxStore.
func (s *Store) History(ctx context.Context, id string) ([]broker.Event, error) {
	rows, err := s.readers.QueryContext(ctx, `SELECT sandbox_id, from_status, to_status, actor, request_id, at
		FROM events WHERE sandbox_id = ? ORDER BY seq`, id)
	if err != nil {
		return nil, dbErr(err)
	}
	defer rows.Close()
	out := []broker.Event{}
	for rows.Next() {
		var e broker.Event
		var from, to string
		var at int64
		if err := rows.Scan(&e.SandboxID, &from, &to, &e.Actor, &e.RequestID, &at); err != nil {
			return nil, dbErr(err)
		}
		e.From, e.To, e.At = broker.Status(from), broker.Status(to), sqlutil.Time(at)
		out = append(out, e)
	}
	return out, dbErr(rows.Err())
}

// BulkDelete implements broker.SandboxStore.
func (s *Store) BulkDelete(ctx context.Context, status broker.Status, dryRun bool, now time.Time) (int, error) {
	if dryRun {
		var n int
		err := s.readers.QueryRowContext(ctx, `SELECT count(*) FROM sandboxes WHERE status = ?`, string(status)).Scan(&n)
		return n, dbErr(err)
	}
	var n int
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		var err error
		n, err = s.deleteWhere(ctx, tx, `status = ?`, []any{string(status)}, now)
		return err
	})
	return n, dbErr(err)
}

// deleteWhere removes the sandboxes matching cond and records a "deleted"
// event for each.
func (s *Store) deleteWhere(ctx context.Context, tx *sql.Tx, cond string, args []any, now time.Time) (int, error) {
	rows, err := s.query(ctx, tx, `DELETE FROM sandboxes WHERE `+cond+` RETURNING id, status`, args...)
	if err != nil {
		return 0, err
	}
	type gone struct{ id, status string }
	var deleted []gone
	for rows.Next() {
		var g gone
		if err := rows.Scan(&g.id, &g.status); err != nil {
			rows.Close()
			return 0, err
		}
		deleted = append(deleted, g)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	for _, g := range deleted {
		if err := s.event(ctx, tx, g.id, broker.Status(g.status), broker.StatusDeleted, now); err != nil {
			return 0, err
		}
	}
	return len(deleted), nil
}

// RetryDeletion implements broker.SandboxStore.
func (s *Store) RetryDeletion(ctx context.Context, id string, now time.Time) (broker.Sandbox, error) {
	var out broker.Sandbox
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		sb, err := sqlutil.ScanSandbox(s.qrow(ctx, tx, `UPDATE sandboxes SET status = 'pending_deletion',
			deletion_attempts = 0, next_attempt_at = 0, updated_at = ? WHERE id = ? AND status = 'deletion_failed'
			RETURNING `+columns, sqlutil.Unix(now), id))
		if errors.Is(err, sql.ErrNoRows) {
			return s.diagnose(ctx, tx, id, "is %s, not deletion_failed")
		}
		if err != nil {
			return err
		}
		out = sb
		return s.event(ctx, tx, id, broker.StatusDeletionFailed, broker.StatusPendingDeletion, now)
	})
	if err != nil {
		return broker.Sandbox{}, dbErr(err)
	}
	return out, nil
}

// diagnose returns ENOTFOUND or ECONFLICT (with format applied to the
// current status) for a conditional write that matched no row.
func (s *Store) diagnose(ctx context.Context, tx *sql.Tx, id, format string) error {
	var status string
	err := s.qrow(ctx, tx, `SELECT status FROM sandboxes WHERE id = ?`, id).Scan(&status)
	if errors.Is(err, sql.ErrNoRows) {
		return broker.Errorf(broker.ENOTFOUND, "sandbox %s not found", id)
	}
	if err != nil {
		return err
	}
	return broker.Errorf(broker.ECONFLICT, "sandbox %s "+format, id, status)
}
