// Package broker holds the domain of sandbox-broker: sandboxes, their state
// machine, the store interfaces every backend implements, and error codes.
// It knows nothing of HTTP, SQL or any provider.
package broker

import "time"

// Status is the lifecycle state of a sandbox.
type Status string

// The statuses a sandbox can be in. See Transitions() for the allowed moves.
const (
	// StatusAvailable: in the pool, ready to be allocated.
	StatusAvailable Status = "available"
	// StatusAllocated: handed to one owner (a lab participant).
	StatusAllocated Status = "allocated"
	// StatusPendingDeletion: the owner or the expiry job asked for deletion;
	// waiting for the cleanup job.
	StatusPendingDeletion Status = "pending_deletion"
	// StatusDeleting: claimed by one cleanup worker under a lease (internal).
	StatusDeleting Status = "deleting"
	// StatusStale: the provider no longer lists the account.
	StatusStale Status = "stale"
	// StatusDeletionFailed: deletion failed DELETION_RETRY_MAX_ATTEMPTS times.
	StatusDeletionFailed Status = "deletion_failed"
)

// Statuses returns every status in display order (a new slice each call).
func Statuses() []Status {
	return []Status{
		StatusAvailable, StatusAllocated, StatusPendingDeletion,
		StatusDeleting, StatusStale, StatusDeletionFailed,
	}
}

// Valid reports whether s is a known status.
func (s Status) Valid() bool {
	for _, v := range Statuses() {
		if s == v {
			return true
		}
	}
	return false
}

// Sandbox is one pre-created cloud account in the pool.
// Zero times mean "not set".
type Sandbox struct {
	ID             string // provider's numeric id as a string (CSP csp_id)
	Name           string // provider account name, used by name-prefix allocation
	ExternalID     string // provider identity path, identity/accounts/<uuid>
	SFDCAccountID  string
	Status         Status
	Owner          string // participant id; "allocated_to_track" on the wire
	TrackName      string // lab slug, analytics only
	IdempotencyKey string // defaults to Owner
	AllocatedAt    time.Time
	LabDuration    time.Duration // stored with the allocation
	ExpiresAt      time.Time     // AllocatedAt + LabDuration
	// DeletionRequestedAt is when the owner or the expiry job asked for deletion.
	DeletionRequestedAt time.Time
	DeletionAttempts    int       // failed provider deletions so far
	NextAttemptAt       time.Time // cleanup waits until then (retry backoff)
	LeaseUntil          time.Time // while StatusDeleting: the claim expires then
	ClaimToken          string    // while StatusDeleting: identifies the claim
	LastError           string    // last deletion error, for operators
	CreatedAt           time.Time
	UpdatedAt           time.Time
	LastSynced          time.Time
}

// ExpiresAt is the one expiry rule: an allocation made at allocatedAt for a
// lab of duration d expires at allocatedAt + d. Auto-expiry acts at
// ExpiresAt + grace.
func ExpiresAt(allocatedAt time.Time, d time.Duration) time.Time {
	return allocatedAt.Add(d)
}

// Account is a sandbox account as the provider lists it.
type Account struct {
	ID            string
	Name          string
	ExternalID    string
	SFDCAccountID string
	CreatedAt     time.Time
}

// Event is one state change in a sandbox's audit trail. To is "deleted"
// when the record was removed.
type Event struct {
	SandboxID string
	From      Status
	To        Status
	Actor     string
	RequestID string
	At        time.Time
}

// StatusDeleted is used only in audit events: the record was removed.
const StatusDeleted Status = "deleted"
