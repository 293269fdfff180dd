package broker

import (
	"fmt"
	"strings"
)

// Transition is one allowed move of the state machine. Every transition is
// performed by a store as a single conditional write: "set To where status =
// From" (plus the guard), never read-then-overwrite.
type Transition struct {
	From, To Status
	By       string // who triggers it
	Guard    string // condition checked in the same write
}

// Transitions returns the state machine (a new slice each call), the single
// source for docs/state-machine.md.
func Transitions() []Transition {
	return []Transition{
		{"", StatusAvailable, "sync", "no record with that id exists"},
		{StatusAvailable, StatusAvailable, "sync", "status = available (metadata refresh)"},
		{StatusStale, StatusAvailable, "sync", "status = stale and the account is listed again"},
		{StatusAvailable, StatusStale, "sync", "status = available and the account is no longer listed (at most SYNC_MAX_STALE_FRACTION of the pool per run)"},
		{StatusAvailable, StatusAllocated, "allocate", "status = available and no allocated record holds (owner, idempotency key)"},
		{StatusAllocated, StatusPendingDeletion, "owner: mark-for-deletion", "status = allocated and owner = caller"},
		{StatusAllocated, StatusPendingDeletion, "expiry job", "status = allocated and expires_at + GRACE_PERIOD_MINUTES <= now"},
		{StatusPendingDeletion, StatusDeleting, "cleanup job (claim)", "status = pending_deletion and next_attempt_at <= now; sets a lease"},
		{StatusDeleting, StatusDeleting, "cleanup job (reclaim)", "status = deleting and lease expired (worker crashed)"},
		{StatusDeleting, StatusDeleted, "cleanup job", "status = deleting and claim token matches; provider deleted the account"},
		{StatusDeleting, StatusPendingDeletion, "cleanup job", "claim token matches; provider failed, attempts < max (retry with backoff) or breaker open (no attempt counted)"},
		{StatusDeleting, StatusDeletionFailed, "cleanup job", "claim token matches; provider failed and attempts reached DELETION_RETRY_MAX_ATTEMPTS"},
		{StatusDeletionFailed, StatusPendingDeletion, "admin: retry-deletion", "status = deletion_failed"},
		{StatusStale, StatusDeleted, "stale purge job", "status = stale and updated_at <= now - STALE_GRACE_HOURS"},
		{"any", StatusDeleted, "admin: bulk-delete", "status = the requested status (allocated and pending_deletion only with force)"},
	}
}

// CanTransition reports whether the state machine allows from → to.
func CanTransition(from, to Status) bool {
	for _, t := range Transitions() {
		if (t.From == from || t.From == "any") && t.To == to {
			return true
		}
	}
	return false
}

// TransitionTable renders Transitions as the Markdown table in
// docs/state-machine.md.
func TransitionTable() string {
	var b strings.Builder
	b.WriteString("| From | To | Triggered by | Guard (checked in the same conditional write) |\n|---|---|---|---|\n")
	for _, t := range Transitions() {
		from := string(t.From)
		if from == "" {
			from = "(none)"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", from, t.To, t.By, t.Guard)
	}
	return b.String()
}

// MarkRejection explains why a mark-for-deletion write by owner did not
// apply to the sandbox as it is now (cur): nil means the owner already
// released it (pending_deletion, deleting or deletion_failed: an idempotent
// repeat), ENOTOWNER that it is not the owner's (never naming the owner),
// ECONFLICT any other state. Stores call it after their conditional write
// matched nothing.
func MarkRejection(cur Sandbox, owner string) error {
	if cur.Owner == "" || cur.Owner != owner {
		return Errorf(ENOTOWNER, "sandbox %s is not allocated to you", cur.ID)
	}
	switch cur.Status {
	case StatusPendingDeletion, StatusDeleting, StatusDeletionFailed:
		return nil
	}
	return Errorf(ECONFLICT, "sandbox %s is %s and cannot be marked for deletion", cur.ID, cur.Status)
}
