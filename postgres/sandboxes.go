package postgres

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/internal/sqlutil"
)

const columns = sqlutil.Columns

func collectSandboxes(rows pgx.Rows, pre ...any) ([]broker.Sandbox, error) {
	defer rows.Close()
	var out []broker.Sandbox
	for rows.Next() {
		sb, err := sqlutil.ScanSandbox(rows, pre...)
		if err != nil {
			return nil, err
		}
		out = append(out, sb)
	}
	return out, rows.Err()
}

// eventArgs returns the actor and request id of ctx for an events insert.
func eventArgs(ctx context.Context) (actor, requestID string) {
	a := broker.ActorFrom(ctx)
	return a.Name, a.RequestID
}

// namePrefix is a name-prefix filter as a byte-order range, usable by the
// name indexes (id and name use the "C" collation).
type namePrefix struct {
	lo, hi string
	hasHi  bool // false when every string >= lo starts with the prefix
	empty  bool // no name can start with the prefix: it is not valid UTF-8 or holds NUL
}

// prefixRange returns the range [p, hi) of the names starting with p. Unlike
// sqlutil.PrefixUpperBound it increments whole code points, so hi is valid
// UTF-8 (PostgreSQL rejects anything else); in UTF-8 byte order is code
// point order, so the range is the same.
func prefixRange(p string) namePrefix {
	if !utf8.ValidString(p) || strings.IndexByte(p, 0) >= 0 {
		return namePrefix{empty: true}
	}
	runes := []rune(p)
	for i := len(runes) - 1; i >= 0; i-- {
		r := runes[i] + 1
		if r > utf8.MaxRune {
			continue // the last code point cannot grow: drop it, grow the one before
		}
		if r >= 0xD800 && r <= 0xDFFF {
			r = 0xE000 // skip the surrogates, which UTF-8 cannot encode
		}
		return namePrefix{lo: p, hi: string(runes[:i]) + string(r), hasHi: true}
	}
	return namePrefix{lo: p}
}

// The allocation statement. In one snapshot it looks up the sandbox
// (owner, key) already holds; if there is none it locks the first
// available sandbox by name that no concurrent allocation has locked
// (SKIP LOCKED), allocates it and records the event. The partial unique index
// sandboxes_active_key rejects a second allocation for (owner, key) that a
// concurrent call committed after this snapshot was taken.
//
// Parameters: $1 owner, $2 key, $3 track, $4 now, $5 lab duration (s),
// $6 expires at, $7 actor, $8 request id, [$9 prefix, [$10 upper bound]].
const allocateSQL = `WITH existing AS (
	SELECT ` + columns + ` FROM sandboxes
	WHERE owner = $1::text AND idem_key = $2::text AND status = 'allocated'
), pick AS (
	SELECT id FROM sandboxes
	WHERE status = 'available'%s AND NOT EXISTS (SELECT 1 FROM existing)
	ORDER BY name LIMIT 1
	FOR UPDATE SKIP LOCKED
), allocated AS (
	UPDATE sandboxes SET status = 'allocated', owner = $1::text, idem_key = $2::text, track_name = $3::text,
		allocated_at = $4::bigint, lab_duration_sec = $5::bigint, expires_at = $6::bigint, updated_at = $4::bigint,
		deletion_requested_at = 0, deletion_attempts = 0, next_attempt_at = 0, last_error = ''
	WHERE id = (SELECT id FROM pick) AND status = 'available'
	RETURNING ` + columns + `
), event AS (
	INSERT INTO events (sandbox_id, from_status, to_status, actor, request_id, at)
	SELECT id, 'available', 'allocated', $7::text, $8::text, $4::bigint FROM allocated
)
SELECT true, ` + columns + ` FROM existing
UNION ALL
SELECT false, ` + columns + ` FROM allocated`

// anyLeftSQL tells Allocate whether it may answer ENOSANDBOX: it may not
// while an available sandbox matches (maybe locked by a concurrent call that
// will roll back) or (owner, key) holds one (committed by a concurrent
// duplicate since the allocation's snapshot). Parameters: $1 owner, $2 key,
// [$3 prefix, [$4 upper bound]].
//
// The first available name (NULL if none) rather than EXISTS: PostgreSQL
// strips ORDER BY from an EXISTS subquery and may then choose a sequential
// scan, slow when the statistics are stale and the pool is in fact empty.
const anyLeftSQL = `SELECT (SELECT name FROM sandboxes WHERE status = 'available'%s ORDER BY name LIMIT 1) IS NOT NULL
	OR EXISTS (SELECT 1 FROM sandboxes WHERE owner = $1::text AND idem_key = $2::text AND status = 'allocated')`

// allocationFilter returns the SQL condition selecting names in p, with
// placeholders numbered from first, and its arguments.
func allocationFilter(p namePrefix, first int) (string, []any) {
	switch {
	case p.lo == "":
		return "", nil
	case p.hasHi:
		return fmt.Sprintf(" AND name >= $%d::text AND name < $%d::text", first, first+1), []any{p.lo, p.hi}
	default:
		return fmt.Sprintf(" AND name >= $%d::text", first), []any{p.lo}
	}
}

// Allocation retry policy while every matching available sandbox is locked
// by concurrent calls (other allocations, a sync refreshing them).
const (
	allocateMinBackoff = time.Millisecond
	allocateMaxBackoff = 50 * time.Millisecond
	// allocateMaxWait bounds the waiting even when ctx allows more: rows
	// locked that long mean a stuck transaction, not contention.
	allocateMaxWait = 10 * time.Second
	// allocateConnRetries is how many lost connections one call survives;
	// retrying is safe because (owner, key) makes allocation idempotent.
	allocateConnRetries = 2
)

// Allocate gives req.Owner the first available sandbox by name (matching
// req.NamePrefix), or returns the allocated sandbox (owner, key) already
// holds with Replayed set, in one statement. At most one allocated sandbox
// exists per (owner, key) across every replica: a concurrent duplicate that
// wins the race on the partial unique index is returned as a replay. While
// every matching sandbox is locked by concurrent calls it waits and retries
// rather than answer ENOSANDBOX. A call whose connection breaks is retried
// (at most allocateConnRetries times): if the lost attempt had committed,
// the retry returns that sandbox with Replayed set. Returns ENOSANDBOX when
// no available sandbox matches, EUNAVAILABLE when the database cannot be
// reached (or matching sandboxes stay locked for allocateMaxWait), EINVALID
// for values PostgreSQL cannot store; the context's error when ctx ends.
func (s *Store) Allocate(ctx context.Context, req broker.AllocateRequest) (broker.Allocation, error) {
	prefix := prefixRange(req.NamePrefix)
	if prefix.empty {
		return broker.Allocation{}, noSandbox()
	}
	filter, filterArgs := allocationFilter(prefix, 9)
	q := fmt.Sprintf(allocateSQL, filter)
	actor, requestID := eventArgs(ctx)
	now := sqlutil.Unix(req.Now)
	args := append([]any{req.Owner, req.Key, req.TrackName, now, int64(req.LabDuration / time.Second),
		sqlutil.Unix(broker.ExpiresAt(req.Now, req.LabDuration)), actor, requestID}, filterArgs...)
	leftFilter, leftArgs := allocationFilter(prefix, 3)
	left := fmt.Sprintf(anyLeftSQL, leftFilter)
	leftArgs = append([]any{req.Owner, req.Key}, leftArgs...)

	backoff := allocateMinBackoff
	deadline := time.Now().Add(allocateMaxWait)
	connRetries := 0
	for {
		var replayed bool
		sb, err := sqlutil.ScanSandbox(s.pool.QueryRow(ctx, q, args...), &replayed)
		if err == nil {
			return broker.Allocation{Sandbox: sb, Replayed: replayed}, nil
		}
		wait := true
		switch {
		case isActiveKeyViolation(err):
			// A concurrent duplicate committed first: the next round
			// returns its sandbox as a replay.
			wait = false
		case isNoRows(err):
			var more bool
			if err := s.pool.QueryRow(ctx, left, leftArgs...).Scan(&more); err != nil {
				if !retryable(ctx, err, true) || (connectionLost(err) && connRetries == allocateConnRetries) {
					return broker.Allocation{}, dbErr(ctx, fmt.Errorf("postgres: allocate: %w", err))
				}
				if connectionLost(err) {
					connRetries++
				}
				break
			}
			if !more {
				return broker.Allocation{}, noSandbox()
			}
			// Matching sandboxes exist but are locked by concurrent calls.
		case !retryable(ctx, err, true) || (connectionLost(err) && connRetries == allocateConnRetries):
			return broker.Allocation{}, dbErr(ctx, fmt.Errorf("postgres: allocate: %w", err))
		case connectionLost(err):
			connRetries++
		}
		if time.Now().After(deadline) {
			s.log.WarnContext(ctx, "postgres: allocate gave up: matching available sandboxes stayed locked", "wait", allocateMaxWait, "prefix", req.NamePrefix)
			return broker.Allocation{}, broker.Unavailable(fmt.Errorf("postgres: allocate: matching sandboxes stayed locked for %v", allocateMaxWait))
		}
		if !wait {
			continue
		}
		// Jitter spreads the retries of calls that collided.
		if !sleep(ctx, backoff/2+rand.N(backoff/2+1)) {
			return broker.Allocation{}, ctx.Err()
		}
		backoff = min(2*backoff, allocateMaxBackoff)
	}
}

func noSandbox() error {
	return broker.Errorf(broker.ENOSANDBOX, "no sandbox available in the pool")
}

// Get returns one sandbox. Returns ENOTFOUND, EUNAVAILABLE.
func (s *Store) Get(ctx context.Context, id string) (broker.Sandbox, error) {
	var sb broker.Sandbox
	err := s.do(ctx, true, func(ctx context.Context) error {
		var err error
		sb, err = sqlutil.ScanSandbox(s.pool.QueryRow(ctx, `SELECT `+columns+` FROM sandboxes WHERE id = $1`, id))
		if isNoRows(err) {
			return notFound(id)
		}
		return err
	})
	return sb, err
}

func notFound(id string) error {
	return broker.Errorf(broker.ENOTFOUND, "sandbox %s not found", id)
}

// markSQL moves the owner's allocated sandbox to pending_deletion and
// records the event. Parameters: $1 id, $2 owner, $3 now, $4 actor,
// $5 request id.
const markSQL = `WITH marked AS (
	UPDATE sandboxes SET status = 'pending_deletion', deletion_requested_at = $3::bigint,
		updated_at = $3::bigint, next_attempt_at = 0
	WHERE id = $1::text AND status = 'allocated' AND owner = $2::text
	RETURNING ` + columns + `
), event AS (
	INSERT INTO events (sandbox_id, from_status, to_status, actor, request_id, at)
	SELECT id, 'allocated', 'pending_deletion', $4::text, $5::text, $3::bigint FROM marked
)
SELECT ` + columns + ` FROM marked`

// MarkForDeletion moves the owner's allocated sandbox to pending_deletion
// with one conditional update. When it does not apply, a fresh read says
// why: an owner's sandbox already pending_deletion, deleting or
// deletion_failed is returned unchanged (idempotent). Returns ENOTFOUND,
// ENOTOWNER (never revealing the owner), ECONFLICT for other states,
// EUNAVAILABLE.
func (s *Store) MarkForDeletion(ctx context.Context, req broker.MarkRequest) (broker.Sandbox, error) {
	actor, requestID := eventArgs(ctx)
	var out broker.Sandbox
	err := s.do(ctx, true, func(ctx context.Context) error {
		sb, err := sqlutil.ScanSandbox(s.pool.QueryRow(ctx, markSQL, req.ID, req.Owner, sqlutil.Unix(req.Now), actor, requestID))
		if err == nil {
			out = sb
			return nil
		}
		if !isNoRows(err) {
			return err
		}
		// Read in a new snapshot: the update may have waited for a
		// concurrent change (the expiry job) that this read must see.
		cur, err := sqlutil.ScanSandbox(s.pool.QueryRow(ctx, `SELECT `+columns+` FROM sandboxes WHERE id = $1`, req.ID))
		if isNoRows(err) {
			return notFound(req.ID)
		}
		if err != nil {
			return err
		}
		out = cur
		return broker.MarkRejection(cur, req.Owner)
	})
	if err != nil {
		return broker.Sandbox{}, err
	}
	return out, nil
}

// List page size bounds; the contract asks for 1..100.
const (
	defaultListLimit = 100
	maxListLimit     = 100
)

// List returns one page of sandboxes matching f, ordered by ID (byte order),
// using keyset pagination: the cursor holds the last ID listed. A Limit
// outside 1..100 is taken as 100. Returns EINVALID for a malformed cursor,
// EUNAVAILABLE.
func (s *Store) List(ctx context.Context, f broker.ListFilter) (broker.ListPage, error) {
	after := ""
	if f.Cursor != "" {
		var err error
		if after, err = sqlutil.DecodeCursor(f.Cursor); err != nil {
			return broker.ListPage{}, err
		}
	}
	limit := f.Limit
	if limit < 1 || limit > maxListLimit {
		limit = defaultListLimit
	}
	q, args, ok := listQuery(f, after, limit+1)
	if !ok {
		return broker.ListPage{}, nil
	}
	var page broker.ListPage
	err := s.do(ctx, true, func(ctx context.Context) error {
		rows, err := s.pool.Query(ctx, q, args...)
		if err != nil {
			return err
		}
		page.Sandboxes, err = collectSandboxes(rows)
		return err
	})
	if err != nil {
		return broker.ListPage{}, err
	}
	if len(page.Sandboxes) > limit {
		page.Sandboxes = page.Sandboxes[:limit]
		page.Cursor = sqlutil.EncodeCursor(page.Sandboxes[limit-1].ID)
	}
	return page, nil
}

// listQuery returns the statement listing up to limit sandboxes matching f
// with an id after after, and its arguments; ok is false when nothing can
// match.
func listQuery(f broker.ListFilter, after string, limit int) (q string, args []any, ok bool) {
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	where := []string{"id > " + arg(after)}
	if f.Status != "" {
		where = append(where, "status = "+arg(string(f.Status)))
	}
	if f.NamePrefix != "" {
		p := prefixRange(f.NamePrefix)
		if p.empty {
			return "", nil, false
		}
		// The pattern operators compare bytes, like the "C" collation, and
		// use sandboxes_name_pattern.
		where = append(where, "name ~>=~ "+arg(p.lo))
		if p.hasHi {
			where = append(where, "name ~<~ "+arg(p.hi))
		}
	}
	if f.TrackName != "" {
		where = append(where, "track_name = "+arg(f.TrackName))
	}
	if f.Owner != "" {
		where = append(where, "owner = "+arg(f.Owner))
	}
	q = `SELECT ` + columns + ` FROM sandboxes WHERE ` + strings.Join(where, " AND ") + ` ORDER BY id LIMIT ` + arg(limit)
	return q, args, true
}

// Stats counts every sandbox by status and by track name in one statement
// (one snapshot). The track counts read only the small partial index
// sandboxes_track. Returns EUNAVAILABLE.
func (s *Store) Stats(ctx context.Context) (broker.Stats, error) {
	var st broker.Stats
	err := s.do(ctx, true, func(ctx context.Context) error {
		st = broker.Stats{ByStatus: map[broker.Status]int{}, ByTrack: map[string]int{}}
		rows, err := s.pool.Query(ctx, `SELECT false, status, count(*) FROM sandboxes GROUP BY status
			UNION ALL
			SELECT true, track_name, count(*) FROM sandboxes WHERE track_name <> '' GROUP BY track_name
			UNION ALL
			SELECT NULL, 'oldest', COALESCE(min(deletion_requested_at), 0) FROM sandboxes WHERE status IN ('pending_deletion', 'deleting')`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var byTrack *bool
			var key string
			var n int64
			if err := rows.Scan(&byTrack, &key, &n); err != nil {
				return err
			}
			if byTrack == nil {
				st.OldestDeletionRequest = sqlutil.Time(n)
				continue
			}
			if *byTrack {
				st.ByTrack[key] = int(n)
				continue
			}
			st.ByStatus[broker.Status(key)] = int(n)
			st.Total += int(n)
		}
		return rows.Err()
	})
	return st, err
}

// History returns a sandbox's audit trail, oldest first; it survives the
// record's deletion. An unknown id gives an empty list. Returns
// EUNAVAILABLE.
func (s *Store) History(ctx context.Context, id string) ([]broker.Event, error) {
	var out []broker.Event
	err := s.do(ctx, true, func(ctx context.Context) error {
		out = []broker.Event{}
		rows, err := s.pool.Query(ctx, `SELECT sandbox_id, from_status, to_status, actor, request_id, at
			FROM events WHERE sandbox_id = $1 ORDER BY seq`, id)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var e broker.Event
			var from, to string
			var at int64
			if err := rows.Scan(&e.SandboxID, &from, &to, &e.Actor, &e.RequestID, &at); err != nil {
				return err
			}
			e.From, e.To, e.At = broker.Status(from), broker.Status(to), sqlutil.Time(at)
			out = append(out, e)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// deleteSQL removes the sandboxes matching a condition (%s, on the
// sandboxes table) and records a "deleted" event for each; it returns how
// many. Its first three parameters are $1 now, $2 actor, $3 request id.
const deleteSQL = `WITH gone AS (
	DELETE FROM sandboxes WHERE %s RETURNING id, status
), event AS (
	INSERT INTO events (sandbox_id, from_status, to_status, actor, request_id, at)
	SELECT id, status, 'deleted', $2::text, $3::text, $1::bigint FROM gone
)
SELECT count(*) FROM gone`

// deleteWhere runs deleteSQL with cond and its arguments (numbered from $4).
func (s *Store) deleteWhere(ctx context.Context, cond string, now time.Time, condArgs ...any) (int, error) {
	actor, requestID := eventArgs(ctx)
	args := append([]any{sqlutil.Unix(now), actor, requestID}, condArgs...)
	var n int
	err := s.do(ctx, false, func(ctx context.Context) error {
		return s.pool.QueryRow(ctx, fmt.Sprintf(deleteSQL, cond), args...).Scan(&n)
	})
	return n, err
}

// BulkDelete removes every sandbox in status from the store only (never at
// the provider) and returns how many; with dryRun it only counts. Returns
// EUNAVAILABLE.
func (s *Store) BulkDelete(ctx context.Context, status broker.Status, dryRun bool, now time.Time) (int, error) {
	if !dryRun {
		return s.deleteWhere(ctx, `status = $4::text`, now, string(status))
	}
	var n int
	err := s.do(ctx, true, func(ctx context.Context) error {
		return s.pool.QueryRow(ctx, `SELECT count(*) FROM sandboxes WHERE status = $1`, string(status)).Scan(&n)
	})
	return n, err
}

// retrySQL moves a deletion_failed sandbox back to pending_deletion and
// records the event. Parameters: $1 id, $2 now, $3 actor, $4 request id.
const retrySQL = `WITH retried AS (
	UPDATE sandboxes SET status = 'pending_deletion', deletion_attempts = 0, next_attempt_at = 0, updated_at = $2::bigint
	WHERE id = $1::text AND status = 'deletion_failed'
	RETURNING ` + columns + `
), event AS (
	INSERT INTO events (sandbox_id, from_status, to_status, actor, request_id, at)
	SELECT id, 'deletion_failed', 'pending_deletion', $3::text, $4::text, $2::bigint FROM retried
)
SELECT ` + columns + ` FROM retried`

// RetryDeletion moves a deletion_failed sandbox back to pending_deletion
// with its attempts reset. Returns ENOTFOUND, ECONFLICT, EUNAVAILABLE.
func (s *Store) RetryDeletion(ctx context.Context, id string, now time.Time) (broker.Sandbox, error) {
	actor, requestID := eventArgs(ctx)
	var out broker.Sandbox
	err := s.do(ctx, false, func(ctx context.Context) error {
		sb, err := sqlutil.ScanSandbox(s.pool.QueryRow(ctx, retrySQL, id, sqlutil.Unix(now), actor, requestID))
		if isNoRows(err) {
			return s.diagnose(ctx, id, "is %s, not deletion_failed")
		}
		out = sb
		return err
	})
	if err != nil {
		return broker.Sandbox{}, err
	}
	return out, nil
}

// diagnose returns ENOTFOUND or ECONFLICT (with format applied to the
// current status) for a conditional write that matched no row.
func (s *Store) diagnose(ctx context.Context, id, format string) error {
	var status string
	err := s.pool.QueryRow(ctx, `SELECT status FROM sandboxes WHERE id = $1`, id).Scan(&status)
	if isNoRows(err) {
		return notFound(id)
	}
	if err != nil {
		return err
	}
	return broker.Errorf(broker.ECONFLICT, "sandbox %s "+format, id, status)
}
