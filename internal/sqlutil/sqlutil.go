// Package sqlutil holds helpers shared by the SQL stores: time columns,
// prefix ranges and the opaque list cursor.
package sqlutil

import (
	"encoding/base64"
	"strings"
	"time"

	broker "github.com/sandbox-broker/broker"
)

// Unix converts t to Unix seconds, 0 for the zero time.
func Unix(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

// Time converts Unix seconds to a UTC time, the zero time for 0.
func Time(sec int64) time.Time {
	if sec == 0 {
		return time.Time{}
	}
	return time.Unix(sec, 0).UTC()
}

// PrefixUpperBound returns the smallest string greater than every string
// starting with p in byte order, and false when there is none (p empty or
// all 0xFF bytes). Names in [p, bound) are exactly those starting with p.
func PrefixUpperBound(p string) (string, bool) {
	b := []byte(p)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xFF {
			b[i]++
			return string(b[:i+1]), true
		}
	}
	return "", false
}

const cursorPrefix = "v1:"

// EncodeCursor turns the last listed id into an opaque cursor.
func EncodeCursor(lastID string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(cursorPrefix + lastID))
}

// DecodeCursor returns the id a cursor continues after. Returns EINVALID
// for anything EncodeCursor did not produce.
func DecodeCursor(c string) (string, error) {
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || !strings.HasPrefix(string(raw), cursorPrefix) {
		return "", broker.Errorf(broker.EINVALID, "cursor is not valid; pass the cursor of the previous page unchanged")
	}
	return strings.TrimPrefix(string(raw), cursorPrefix), nil
}

// Columns is the sandboxes column list both SQL stores select, in the order
// ScanSandbox reads.
const Columns = `id, name, external_id, sfdc_account_id, status, owner, track_name, idem_key,
	allocated_at, lab_duration_sec, expires_at, deletion_requested_at, deletion_attempts,
	next_attempt_at, lease_until, claim_token, last_error, created_at, updated_at, last_synced`

// Scanner is a row of database/sql or pgx.
type Scanner interface{ Scan(dest ...any) error }

// ScanSandbox reads one row of Columns, after the extra leading
// destinations in pre. It returns the driver's error unchanged (e.g.
// sql.ErrNoRows or pgx.ErrNoRows).
func ScanSandbox(row Scanner, pre ...any) (broker.Sandbox, error) {
	var sb broker.Sandbox
	var status string
	var allocatedAt, durSec, expiresAt, delReq, next, lease, created, updated, synced int64
	dest := append(pre, &sb.ID, &sb.Name, &sb.ExternalID, &sb.SFDCAccountID, &status, &sb.Owner, &sb.TrackName,
		&sb.IdempotencyKey, &allocatedAt, &durSec, &expiresAt, &delReq, &sb.DeletionAttempts, &next, &lease,
		&sb.ClaimToken, &sb.LastError, &created, &updated, &synced)
	if err := row.Scan(dest...); err != nil {
		return sb, err
	}
	sb.Status = broker.Status(status)
	sb.AllocatedAt = Time(allocatedAt)
	sb.LabDuration = time.Duration(durSec) * time.Second
	sb.ExpiresAt = Time(expiresAt)
	sb.DeletionRequestedAt = Time(delReq)
	sb.NextAttemptAt = Time(next)
	sb.LeaseUntil = Time(lease)
	sb.CreatedAt = Time(created)
	sb.UpdatedAt = Time(updated)
	sb.LastSynced = Time(synced)
	return sb, nil
}
