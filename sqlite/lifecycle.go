package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"time"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/internal/sqlutil"
)

// syncChunk is how many accounts one group-commit write handles: large
// enough that a sync of 100,000 accounts needs few fsyncs, small enough that
// allocations queued behind it wait only milliseconds.
const syncChunk = 2000

// rowsPerInsert is how many rows one multi-row INSERT carries (8 parameters
// each, well under SQLite's limit of 32,766).
const rowsPerInsert = 250

// UpsertAccounts implements broker.LifecycleStore. Inside the writer's
// transaction nothing else writes, so the statuses read at the start of a
// chunk are the ones its conditional writes are checked against.
func (s *Store) UpsertAccounts(ctx context.Context, accounts []broker.Account, now time.Time) (broker.UpsertResult, error) {
	var total broker.UpsertResult
	for start := 0; start < len(accounts); start += syncChunk {
		chunk := accounts[start:min(start+syncChunk, len(accounts))]
		var res broker.UpsertResult
		err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
			var err error
			res, err = s.upsertChunk(ctx, tx, chunk, now)
			return err
		})
		if err != nil {
			return total, dbErr(err)
		}
		total.Inserted += res.Inserted
		total.Refreshed += res.Refreshed
		total.Revived += res.Revived
	}
	return total, nil
}

type knownSandbox struct {
	status, name, externalID, sfdc string
}

func (s *Store) upsertChunk(ctx context.Context, tx *sql.Tx, chunk []broker.Account, now time.Time) (broker.UpsertResult, error) {
	var res broker.UpsertResult
	known := make(map[string]knownSandbox, len(chunk))
	ids := make([]any, len(chunk))
	for i, a := range chunk {
		ids[i] = a.ID
	}
	rows, err := tx.QueryContext(ctx, `SELECT id, status, name, external_id, sfdc_account_id FROM sandboxes WHERE id IN (?`+strings.Repeat(",?", len(ids)-1)+`)`, ids...)
	if err != nil {
		return res, err
	}
	for rows.Next() {
		var id string
		var k knownSandbox
		if err := rows.Scan(&id, &k.status, &k.name, &k.externalID, &k.sfdc); err != nil {
			rows.Close()
			return res, err
		}
		known[id] = k
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return res, err
	}
	ts := sqlutil.Unix(now)
	var fresh []broker.Account
	var unchanged []any
	seen := make(map[string]bool, len(chunk))
	for _, a := range chunk {
		if seen[a.ID] {
			continue // a duplicate in one answer: the first one wins
		}
		seen[a.ID] = true
		k, ok := known[a.ID]
		switch {
		case !ok:
			fresh = append(fresh, a)
		case k.status == string(broker.StatusAvailable) && k.name == a.Name && k.externalID == a.ExternalID && k.sfdc == a.SFDCAccountID:
			unchanged = append(unchanged, a.ID)
			res.Refreshed++
		case k.status == string(broker.StatusAvailable) || k.status == string(broker.StatusStale):
			if _, err := s.exec(ctx, tx, `UPDATE sandboxes SET name = ?, external_id = ?, sfdc_account_id = ?, status = 'available',
				updated_at = ?, last_synced = ? WHERE id = ? AND status = ?`,
				a.Name, a.ExternalID, a.SFDCAccountID, ts, ts, a.ID, k.status); err != nil {
				return res, err
			}
			if k.status == string(broker.StatusAvailable) {
				res.Refreshed++
				continue
			}
			res.Revived++
			if err := s.event(ctx, tx, a.ID, broker.StatusStale, broker.StatusAvailable, now); err != nil {
				return res, err
			}
		}
		// any other status: allocated, pending deletion, ...: never touched
	}
	if len(unchanged) > 0 {
		args := append([]any{ts}, unchanged...)
		if _, err := tx.ExecContext(ctx, `UPDATE sandboxes SET last_synced = ? WHERE status = 'available' AND id IN (?`+strings.Repeat(",?", len(unchanged)-1)+`)`, args...); err != nil {
			return res, err
		}
	}
	actor := broker.ActorFrom(ctx)
	for start := 0; start < len(fresh); start += rowsPerInsert {
		part := fresh[start:min(start+rowsPerInsert, len(fresh))]
		sbArgs := make([]any, 0, 7*len(part))
		evArgs := make([]any, 0, 4*len(part))
		for _, a := range part {
			sbArgs = append(sbArgs, a.ID, a.Name, a.ExternalID, a.SFDCAccountID, sqlutil.Unix(a.CreatedAt), ts, ts)
			evArgs = append(evArgs, a.ID, actor.Name, actor.RequestID, ts)
		}
		if _, err := s.exec(ctx, tx, `INSERT INTO sandboxes (id, name, external_id, sfdc_account_id, status, created_at, updated_at, last_synced) VALUES `+
			repeatTuple("(?, ?, ?, ?, 'available', ?, ?, ?)", len(part)), sbArgs...); err != nil {
			return res, err
		}
		if _, err := s.exec(ctx, tx, `INSERT INTO events (sandbox_id, from_status, to_status, actor, request_id, at) VALUES `+
			repeatTuple("(?, '', 'available', ?, ?, ?)", len(part)), evArgs...); err != nil {
			return res, err
		}
		res.Inserted += len(part)
	}
	return res, nil
}

func repeatTuple(tuple string, n int) string {
	return strings.TrimSuffix(strings.Repeat(tuple+", ", n), ", ")
}

// IDsWithStatus implements broker.LifecycleStore.
func (s *Store) IDsWithStatus(ctx context.Context, status broker.Status) ([]string, error) {
	rows, err := s.readers.QueryContext(ctx, `SELECT id FROM sandboxes WHERE status = ? ORDER BY id`, string(status))
	if err != nil {
		return nil, dbErr(err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, dbErr(err)
		}
		ids = append(ids, id)
	}
	return ids, dbErr(rows.Err())
}

// MarkStale implements broker.LifecycleStore.
func (s *Store) MarkStale(ctx context.Context, ids []string, now time.Time) (int, error) {
	total := 0
	for start := 0; start < len(ids); start += syncChunk {
		chunk := ids[start:min(start+syncChunk, len(ids))]
		n := 0
		err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
			n = 0
			for _, id := range chunk {
				r, err := s.exec(ctx, tx, `UPDATE sandboxes SET status = 'stale', updated_at = ? WHERE id = ? AND status = 'available'`, sqlutil.Unix(now), id)
				if err != nil {
					return err
				}
				if k, _ := r.RowsAffected(); k == 1 {
					n++
					if err := s.event(ctx, tx, id, broker.StatusAvailable, broker.StatusStale, now); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			return total, dbErr(err)
		}
		total += n
	}
	return total, nil
}

// ExpireAllocations implements broker.LifecycleStore.
func (s *Store) ExpireAllocations(ctx context.Context, now time.Time, grace time.Duration, limit int) ([]string, error) {
	var ids []string
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		ids = nil
		ts := sqlutil.Unix(now)
		rows, err := s.query(ctx, tx, `UPDATE sandboxes SET status = 'pending_deletion', deletion_requested_at = ?,
			updated_at = ?, next_attempt_at = 0 WHERE id IN (SELECT id FROM sandboxes INDEXED BY sandboxes_expiry WHERE status = 'allocated'
			AND expires_at <= ? ORDER BY expires_at LIMIT ?) AND status = 'allocated' RETURNING id`,
			ts, ts, ts-int64(grace/time.Second), limit)
		if err != nil {
			return err
		}
		ids, err = collectIDs(rows)
		if err != nil {
			return err
		}
		for _, id := range ids {
			if err := s.event(ctx, tx, id, broker.StatusAllocated, broker.StatusPendingDeletion, now); err != nil {
				return err
			}
		}
		return nil
	})
	return ids, dbErr(err)
}

func collectIDs(rows *sql.Rows) ([]string, error) {
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// ClaimDeletions implements broker.LifecycleStore.
func (s *Store) ClaimDeletions(ctx context.Context, req broker.ClaimRequest) ([]broker.Sandbox, error) {
	var out []broker.Sandbox
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		out = nil
		ts := sqlutil.Unix(req.Now)
		type claimed struct {
			id   string
			from broker.Status
		}
		var picked []claimed
		rows, err := s.query(ctx, tx, `SELECT id, status FROM (
			SELECT id, status FROM sandboxes INDEXED BY sandboxes_due WHERE status = 'pending_deletion' AND next_attempt_at <= ?
			UNION ALL
			SELECT id, status FROM sandboxes INDEXED BY sandboxes_lease WHERE status = 'deleting' AND lease_until < ?) LIMIT ?`, ts, ts, req.Limit)
		if err != nil {
			return err
		}
		for rows.Next() {
			var c claimed
			if err := rows.Scan(&c.id, &c.from); err != nil {
				rows.Close()
				return err
			}
			picked = append(picked, c)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		until := sqlutil.Unix(req.Now.Add(req.Lease))
		for _, c := range picked {
			sb, err := sqlutil.ScanSandbox(s.qrow(ctx, tx, `UPDATE sandboxes SET status = 'deleting', claim_token = ?, lease_until = ?, updated_at = ?
				WHERE id = ? AND ((status = 'pending_deletion' AND next_attempt_at <= ?) OR (status = 'deleting' AND lease_until < ?))
				RETURNING `+columns, req.Token, until, ts, c.id, ts, ts))
			if errors.Is(err, sql.ErrNoRows) {
				continue
			}
			if err != nil {
				return err
			}
			if c.from != broker.StatusDeleting {
				if err := s.event(ctx, tx, c.id, c.from, broker.StatusDeleting, req.Now); err != nil {
					return err
				}
			}
			out = append(out, sb)
		}
		return nil
	})
	return out, dbErr(err)
}

// CompleteDeletion implements broker.LifecycleStore.
func (s *Store) CompleteDeletion(ctx context.Context, id, token string, now time.Time) error {
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		n, err := s.deleteWhere(ctx, tx, `id = ? AND status = 'deleting' AND claim_token = ?`, []any{id, token}, now)
		if err != nil {
			return err
		}
		if n == 0 {
			return lostClaim(id)
		}
		return nil
	})
	return dbErr(err)
}

func lostClaim(id string) error {
	return broker.Errorf(broker.ECONFLICT, "sandbox %s is no longer claimed by this worker", id)
}

// FailDeletion implements broker.LifecycleStore.
func (s *Store) FailDeletion(ctx context.Context, req broker.FailRequest) (broker.Status, error) {
	var to broker.Status
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		var status string
		err := s.qrow(ctx, tx, `UPDATE sandboxes SET
			deletion_attempts = deletion_attempts + 1,
			status = CASE WHEN deletion_attempts + 1 >= ? THEN 'deletion_failed' ELSE 'pending_deletion' END,
			next_attempt_at = ?, last_error = ?, claim_token = '', lease_until = 0, updated_at = ?
			WHERE id = ? AND status = 'deleting' AND claim_token = ? RETURNING status`,
			req.MaxAttempts, sqlutil.Unix(req.NextAttemptAt), req.Error, sqlutil.Unix(req.Now), req.ID, req.Token).Scan(&status)
		if errors.Is(err, sql.ErrNoRows) {
			return lostClaim(req.ID)
		}
		if err != nil {
			return err
		}
		to = broker.Status(status)
		return s.event(ctx, tx, req.ID, broker.StatusDeleting, to, req.Now)
	})
	return to, dbErr(err)
}

// ReleaseDeletion implements broker.LifecycleStore.
func (s *Store) ReleaseDeletion(ctx context.Context, id, token string, now time.Time) error {
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		r, err := s.exec(ctx, tx, `UPDATE sandboxes SET status = 'pending_deletion', claim_token = '', lease_until = 0, updated_at = ?
			WHERE id = ? AND status = 'deleting' AND claim_token = ?`, sqlutil.Unix(now), id, token)
		if err != nil {
			return err
		}
		if n, _ := r.RowsAffected(); n == 0 {
			return lostClaim(id)
		}
		return s.event(ctx, tx, id, broker.StatusDeleting, broker.StatusPendingDeletion, now)
	})
	return dbErr(err)
}

// PurgeStale implements broker.LifecycleStore.
func (s *Store) PurgeStale(ctx context.Context, cutoff, now time.Time) (int, error) {
	var n int
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		var err error
		n, err = s.deleteWhere(ctx, tx, `status = 'stale' AND updated_at <= ?`, []any{sqlutil.Unix(cutoff)}, now)
		return err
	})
	return n, dbErr(err)
}
