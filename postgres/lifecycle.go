package postgres

import (
	"context"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/internal/sqlutil"
)

// syncChunk is how many accounts (or ids) one statement handles, so that a
// sync of 100,000 accounts holds its row locks only briefly at a time.
const syncChunk = 1000

// upsertSQL applies one chunk of provider accounts, passed as parallel
// arrays. Three conditional writes in one snapshot touch disjoint rows:
// available rows get their metadata refreshed, stale rows are revived,
// unknown ids are inserted; every other status is left alone. Under
// READ COMMITTED each UPDATE re-checks its status condition on the latest
// row version after waiting for a concurrent writer, so a row allocated
// meanwhile is skipped, never reverted. Parameters: $1..$5 ids, names,
// external ids, SFDC ids, created-at; $6 now, $7 actor, $8 request id.
const upsertSQL = `WITH input AS (
	SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])
		AS t(id, name, external_id, sfdc_account_id, created_at)
), refreshed AS (
	UPDATE sandboxes s SET name = i.name, external_id = i.external_id, sfdc_account_id = i.sfdc_account_id,
		updated_at = $6::bigint, last_synced = $6::bigint
	FROM input i WHERE s.id = i.id AND s.status = 'available'
	RETURNING s.id
), revived AS (
	UPDATE sandboxes s SET name = i.name, external_id = i.external_id, sfdc_account_id = i.sfdc_account_id,
		status = 'available', updated_at = $6::bigint, last_synced = $6::bigint
	FROM input i WHERE s.id = i.id AND s.status = 'stale'
	RETURNING s.id
), inserted AS (
	INSERT INTO sandboxes (id, name, external_id, sfdc_account_id, status, created_at, updated_at, last_synced)
	SELECT id, name, external_id, sfdc_account_id, 'available', created_at, $6::bigint, $6::bigint FROM input
	ON CONFLICT (id) DO NOTHING
	RETURNING id
), event AS (
	INSERT INTO events (sandbox_id, from_status, to_status, actor, request_id, at)
	SELECT id, '', 'available', $7::text, $8::text, $6::bigint FROM inserted
	UNION ALL
	SELECT id, 'stale', 'available', $7::text, $8::text, $6::bigint FROM revived
)
SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM refreshed), (SELECT count(*) FROM revived)`

// UpsertAccounts inserts unknown accounts as available, refreshes the
// metadata of available ones and makes stale ones available again, never
// touching a sandbox in any other status, even one allocated concurrently.
// It works in chunks of syncChunk accounts, each one statement (so a failure
// leaves the earlier chunks applied); when an id is listed twice the last
// listing wins. Returns EUNAVAILABLE, EINVALID for values PostgreSQL cannot
// store.
func (s *Store) UpsertAccounts(ctx context.Context, accounts []broker.Account, now time.Time) (broker.UpsertResult, error) {
	accounts = dedupeAccounts(accounts)
	actor, requestID := eventArgs(ctx)
	ts := sqlutil.Unix(now)
	var total broker.UpsertResult
	for chunk := range slices.Chunk(accounts, syncChunk) {
		ids := make([]string, len(chunk))
		names := make([]string, len(chunk))
		externalIDs := make([]string, len(chunk))
		sfdcIDs := make([]string, len(chunk))
		created := make([]int64, len(chunk))
		for i, a := range chunk {
			ids[i], names[i], externalIDs[i], sfdcIDs[i], created[i] = a.ID, a.Name, a.ExternalID, a.SFDCAccountID, sqlutil.Unix(a.CreatedAt)
		}
		var res broker.UpsertResult
		err := s.do(ctx, false, func(ctx context.Context) error {
			return s.pool.QueryRow(ctx, upsertSQL, ids, names, externalIDs, sfdcIDs, created, ts, actor, requestID).
				Scan(&res.Inserted, &res.Refreshed, &res.Revived)
		})
		if err != nil {
			return total, err
		}
		total.Inserted += res.Inserted
		total.Refreshed += res.Refreshed
		total.Revived += res.Revived
	}
	return total, nil
}

// dedupeAccounts returns accounts sorted by id, keeping the last listing of
// an id: one statement must not write a row twice, and a fixed order makes
// concurrent syncs lock rows in the same order.
func dedupeAccounts(accounts []broker.Account) []broker.Account {
	out := slices.Clone(accounts)
	slices.SortStableFunc(out, func(a, b broker.Account) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	// Keep the last of each run of equal ids.
	w := 0
	for i := range out {
		if i+1 < len(out) && out[i+1].ID == out[i].ID {
			continue
		}
		out[w] = out[i]
		w++
	}
	return out[:w]
}

// IDsWithStatus returns the ids of every sandbox in status, in byte order.
// Returns EUNAVAILABLE.
func (s *Store) IDsWithStatus(ctx context.Context, status broker.Status) ([]string, error) {
	var ids []string
	err := s.do(ctx, true, func(ctx context.Context) error {
		rows, err := s.pool.Query(ctx, `SELECT id FROM sandboxes WHERE status = $1 ORDER BY id`, string(status))
		if err != nil {
			return err
		}
		ids, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	return ids, err
}

// markStaleSQL moves the listed available sandboxes to stale. Parameters:
// $1 ids, $2 now, $3 actor, $4 request id.
const markStaleSQL = `WITH staled AS (
	UPDATE sandboxes SET status = 'stale', updated_at = $2::bigint
	WHERE id = ANY($1::text[]) AND status = 'available'
	RETURNING id
), event AS (
	INSERT INTO events (sandbox_id, from_status, to_status, actor, request_id, at)
	SELECT id, 'available', 'stale', $3::text, $4::text, $2::bigint FROM staled
)
SELECT count(*) FROM staled`

// MarkStale moves the given sandboxes from available to stale; the ones no
// longer available are skipped. Returns how many moved, EUNAVAILABLE.
func (s *Store) MarkStale(ctx context.Context, ids []string, now time.Time) (int, error) {
	actor, requestID := eventArgs(ctx)
	ids = slices.Sorted(slices.Values(ids))
	total := 0
	for chunk := range slices.Chunk(ids, syncChunk) {
		var n int
		err := s.do(ctx, false, func(ctx context.Context) error {
			return s.pool.QueryRow(ctx, markStaleSQL, chunk, sqlutil.Unix(now), actor, requestID).Scan(&n)
		})
		if err != nil {
			return total, err
		}
		total += n
	}
	return total, nil
}

// expireSQL moves allocated sandboxes whose expires_at <= $3 to
// pending_deletion, at most $4 of them (NULL: no limit). Rows locked by a
// concurrent change (the owner marking it) are skipped: that change wins.
// Parameters: $1 now, $2 request id, $3 cutoff, $4 limit, $5 actor.
const expireSQL = `WITH due AS (
	SELECT id FROM sandboxes WHERE status = 'allocated' AND expires_at > 0 AND expires_at <= $3::bigint
	ORDER BY expires_at LIMIT $4::bigint
	FOR UPDATE SKIP LOCKED
), expired AS (
	UPDATE sandboxes SET status = 'pending_deletion', deletion_requested_at = $1::bigint,
		updated_at = $1::bigint, next_attempt_at = 0
	WHERE id IN (SELECT id FROM due) AND status = 'allocated'
	RETURNING id
), event AS (
	INSERT INTO events (sandbox_id, from_status, to_status, actor, request_id, at)
	SELECT id, 'allocated', 'pending_deletion', $5::text, $2::text, $1::bigint FROM expired
)
SELECT id FROM expired ORDER BY id`

// ExpireAllocations moves allocated sandboxes whose ExpiresAt+grace <= now
// to pending_deletion, at most limit of them (a negative limit means no
// limit), and returns their ids. Returns EUNAVAILABLE.
func (s *Store) ExpireAllocations(ctx context.Context, now time.Time, grace time.Duration, limit int) ([]string, error) {
	if limit == 0 {
		return nil, nil
	}
	var lim *int64
	if limit > 0 {
		l := int64(limit)
		lim = &l
	}
	actor, requestID := eventArgs(ctx)
	ts := sqlutil.Unix(now)
	var ids []string
	err := s.do(ctx, false, func(ctx context.Context) error {
		rows, err := s.pool.Query(ctx, expireSQL, ts, requestID, ts-int64(grace/time.Second), lim, actor)
		if err != nil {
			return err
		}
		ids, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	return ids, err
}

// claimSQL moves up to $3 sandboxes that are pending_deletion and due, or
// deleting under an expired lease, to deleting under token $4. SKIP LOCKED
// keeps concurrent claims apart; each claimed row is re-checked under its
// lock. Parameters: $1 now, $2 lease until, $3 limit, $4 token, $5 actor,
// $6 request id.
const claimSQL = `WITH pick AS (
	SELECT id AS pick_id, status AS from_status FROM sandboxes
	WHERE (status = 'pending_deletion' AND next_attempt_at <= $1::bigint)
		OR (status = 'deleting' AND lease_until < $1::bigint)
	LIMIT $3::bigint
	FOR UPDATE SKIP LOCKED
), claimed AS (
	UPDATE sandboxes s SET status = 'deleting', claim_token = $4::text, lease_until = $2::bigint, updated_at = $1::bigint
	FROM pick WHERE s.id = pick.pick_id
		AND ((s.status = 'pending_deletion' AND s.next_attempt_at <= $1::bigint)
			OR (s.status = 'deleting' AND s.lease_until < $1::bigint))
	RETURNING pick.from_status, ` + qualifiedColumns + `
), event AS (
	INSERT INTO events (sandbox_id, from_status, to_status, actor, request_id, at)
	SELECT id, from_status, 'deleting', $5::text, $6::text, $1::bigint FROM claimed
	WHERE from_status <> 'deleting'
)
SELECT ` + columns + ` FROM claimed ORDER BY id`

// qualifiedColumns is columns on the table aliased s.
const qualifiedColumns = `s.id, s.name, s.external_id, s.sfdc_account_id, s.status, s.owner, s.track_name, s.idem_key,
	s.allocated_at, s.lab_duration_sec, s.expires_at, s.deletion_requested_at, s.deletion_attempts,
	s.next_attempt_at, s.lease_until, s.claim_token, s.last_error, s.created_at, s.updated_at, s.last_synced`

// ClaimDeletions moves up to req.Limit sandboxes that are pending_deletion
// (and due) or deleting with an expired lease to deleting under req.Token,
// and returns them. Two concurrent claims never return the same sandbox; a
// claim may return fewer than are due while others are being claimed.
// Returns EUNAVAILABLE.
func (s *Store) ClaimDeletions(ctx context.Context, req broker.ClaimRequest) ([]broker.Sandbox, error) {
	if req.Limit <= 0 {
		return nil, nil
	}
	actor, requestID := eventArgs(ctx)
	ts := sqlutil.Unix(req.Now)
	var out []broker.Sandbox
	err := s.do(ctx, false, func(ctx context.Context) error {
		rows, err := s.pool.Query(ctx, claimSQL, ts, sqlutil.Unix(req.Now.Add(req.Lease)), int64(req.Limit), req.Token, actor, requestID)
		if err != nil {
			return err
		}
		out, err = collectSandboxes(rows)
		return err
	})
	return out, err
}

// CompleteDeletion removes a sandbox claimed with token after the provider
// deleted it. Returns ECONFLICT if the claim was lost, EUNAVAILABLE.
func (s *Store) CompleteDeletion(ctx context.Context, id, token string, now time.Time) error {
	n, err := s.deleteWhere(ctx, `id = $4::text AND status = 'deleting' AND claim_token = $5::text`, now, id, token)
	if err != nil {
		return err
	}
	if n == 0 {
		return lostClaim(id)
	}
	return nil
}

func lostClaim(id string) error {
	return broker.Errorf(broker.ECONFLICT, "sandbox %s is no longer claimed by this worker", id)
}

// failSQL records a failed deletion attempt on a claimed sandbox.
// Parameters: $1 max attempts, $2 next attempt at, $3 error, $4 now, $5 id,
// $6 token, $7 actor, $8 request id.
const failSQL = `WITH failed AS (
	UPDATE sandboxes SET deletion_attempts = deletion_attempts + 1,
		status = CASE WHEN deletion_attempts + 1 >= $1::int THEN 'deletion_failed' ELSE 'pending_deletion' END,
		next_attempt_at = $2::bigint, last_error = $3::text, claim_token = '', lease_until = 0, updated_at = $4::bigint
	WHERE id = $5::text AND status = 'deleting' AND claim_token = $6::text
	RETURNING id, status
), event AS (
	INSERT INTO events (sandbox_id, from_status, to_status, actor, request_id, at)
	SELECT id, 'deleting', status, $7::text, $8::text, $4::bigint FROM failed
)
SELECT status FROM failed`

// FailDeletion records a failed attempt on a claimed sandbox: back to
// pending_deletion until NextAttemptAt, or deletion_failed once MaxAttempts
// is reached. Returns the new status, ECONFLICT if the claim was lost,
// EUNAVAILABLE.
func (s *Store) FailDeletion(ctx context.Context, req broker.FailRequest) (broker.Status, error) {
	actor, requestID := eventArgs(ctx)
	var status string
	err := s.do(ctx, false, func(ctx context.Context) error {
		err := s.pool.QueryRow(ctx, failSQL, int32(req.MaxAttempts), sqlutil.Unix(req.NextAttemptAt), req.Error,
			sqlutil.Unix(req.Now), req.ID, req.Token, actor, requestID).Scan(&status)
		if isNoRows(err) {
			return lostClaim(req.ID)
		}
		return err
	})
	return broker.Status(status), err
}

// releaseSQL returns a claimed sandbox to pending_deletion without counting
// an attempt. Parameters: $1 now, $2 id, $3 token, $4 actor, $5 request id.
const releaseSQL = `WITH released AS (
	UPDATE sandboxes SET status = 'pending_deletion', claim_token = '', lease_until = 0, updated_at = $1::bigint
	WHERE id = $2::text AND status = 'deleting' AND claim_token = $3::text
	RETURNING id
), event AS (
	INSERT INTO events (sandbox_id, from_status, to_status, actor, request_id, at)
	SELECT id, 'deleting', 'pending_deletion', $4::text, $5::text, $1::bigint FROM released
)
SELECT count(*) FROM released`

// ReleaseDeletion returns a claimed sandbox to pending_deletion without
// counting an attempt (the provider was not tried). Returns ECONFLICT if
// the claim was lost, EUNAVAILABLE.
func (s *Store) ReleaseDeletion(ctx context.Context, id, token string, now time.Time) error {
	actor, requestID := eventArgs(ctx)
	var n int
	err := s.do(ctx, false, func(ctx context.Context) error {
		return s.pool.QueryRow(ctx, releaseSQL, sqlutil.Unix(now), id, token, actor, requestID).Scan(&n)
	})
	if err != nil {
		return err
	}
	if n == 0 {
		return lostClaim(id)
	}
	return nil
}

// PurgeStale removes stale sandboxes last updated at or before cutoff and
// returns how many. Returns EUNAVAILABLE.
func (s *Store) PurgeStale(ctx context.Context, cutoff, now time.Time) (int, error) {
	return s.deleteWhere(ctx, `status = 'stale' AND updated_at <= $4::bigint`, now, sqlutil.Unix(cutoff))
}
