package broker

import (
	"context"
	"time"
)

// AllocateRequest asks for one sandbox for one owner.
type AllocateRequest struct {
	Owner       string        // participant id; required
	Key         string        // idempotency key; required (callers default it to Owner)
	TrackName   string        // optional lab slug
	NamePrefix  string        // optional: only sandboxes whose name starts with it
	LabDuration time.Duration // stored with the allocation; ExpiresAt = Now + LabDuration
	Now         time.Time
}

// Allocation is the answer to an AllocateRequest.
type Allocation struct {
	Sandbox  Sandbox
	Replayed bool // true when (Owner, Key) already held this sandbox
}

// MarkRequest asks to release a sandbox for deletion.
type MarkRequest struct {
	ID    string
	Owner string
	Now   time.Time
}

// ListFilter selects sandboxes for the admin list. Zero fields do not filter.
type ListFilter struct {
	Status     Status
	NamePrefix string
	TrackName  string
	Owner      string
	Limit      int    // 1..100
	Cursor     string // opaque, from a previous ListPage
}

// ListPage is one page of sandboxes ordered by ID. Cursor is empty on the last page.
type ListPage struct {
	Sandboxes []Sandbox
	Cursor    string
}

// Stats counts sandboxes per status and per track name.
type Stats struct {
	Total    int
	ByStatus map[Status]int
	ByTrack  map[string]int
	// OldestDeletionRequest is the earliest DeletionRequestedAt among
	// pending_deletion and deleting sandboxes (the deletion backlog's age);
	// zero when there is none.
	OldestDeletionRequest time.Time
}

// UpsertResult counts what UpsertAccounts changed.
type UpsertResult struct {
	Inserted  int // new records created as available
	Refreshed int // available records whose metadata was refreshed
	Revived   int // stale records made available again
}

// ClaimRequest asks for up to Limit sandboxes to delete.
type ClaimRequest struct {
	Now   time.Time
	Lease time.Duration // how long the claim holds before another worker may take it
	Limit int
	Token string // unique per claim; written to the claimed records
}

// FailRequest records a failed provider deletion of a claimed sandbox.
type FailRequest struct {
	ID            string
	Token         string
	Now           time.Time
	NextAttemptAt time.Time
	MaxAttempts   int    // reaching it moves the sandbox to deletion_failed
	Error         string // short, operator-facing reason
}

// SandboxStore is the track- and admin-facing half of a store.
//
// Every state change is one conditional write on the current status.
type SandboxStore interface {
	// Allocate gives req.Owner one available sandbox, or returns the
	// allocated sandbox (owner, key) already holds with Replayed set. At most
	// one allocated sandbox exists per (owner, key), however many concurrent
	// calls race. Returns ENOSANDBOX when no available sandbox matches,
	// EUNAVAILABLE when the store cannot be reached.
	Allocate(ctx context.Context, req AllocateRequest) (Allocation, error)

	// Get returns one sandbox. Returns ENOTFOUND.
	Get(ctx context.Context, id string) (Sandbox, error)

	// MarkForDeletion moves the owner's allocated sandbox to
	// pending_deletion. It is idempotent: if the owner's sandbox is already
	// pending_deletion, deleting or deletion_failed it returns the sandbox
	// unchanged with its original DeletionRequestedAt. Returns ENOTFOUND,
	// ENOTOWNER (never revealing the owner), ECONFLICT for other states.
	MarkForDeletion(ctx context.Context, req MarkRequest) (Sandbox, error)

	// List returns one page of sandboxes matching f, ordered by ID.
	// Returns EINVALID for a malformed cursor.
	List(ctx context.Context, f ListFilter) (ListPage, error)

	// Stats counts every sandbox by status and by track name.
	Stats(ctx context.Context) (Stats, error)

	// History returns a sandbox's audit trail, oldest first; it survives
	// the record's deletion. An unknown id gives an empty list.
	History(ctx context.Context, id string) ([]Event, error)

	// BulkDelete removes every sandbox in status from the store only (never
	// at the provider) and returns how many; with dryRun it only counts.
	BulkDelete(ctx context.Context, status Status, dryRun bool, now time.Time) (int, error)

	// RetryDeletion moves a deletion_failed sandbox back to
	// pending_deletion with its attempts reset. Returns ENOTFOUND, ECONFLICT.
	RetryDeletion(ctx context.Context, id string, now time.Time) (Sandbox, error)
}

// LifecycleStore is the half of a store used by background jobs.
type LifecycleStore interface {
	// UpsertAccounts inserts unknown accounts as available, refreshes the
	// metadata of available ones and makes stale ones available again. It
	// never touches a sandbox in any other status.
	UpsertAccounts(ctx context.Context, accounts []Account, now time.Time) (UpsertResult, error)

	// IDsWithStatus returns the ids of every sandbox in status.
	IDsWithStatus(ctx context.Context, status Status) ([]string, error)

	// MarkStale moves the given sandboxes from available to stale; the ones
	// no longer available are skipped. Returns how many moved.
	MarkStale(ctx context.Context, ids []string, now time.Time) (int, error)

	// ExpireAllocations moves allocated sandboxes whose ExpiresAt+grace <= now
	// to pending_deletion, at most limit of them, and returns their ids.
	ExpireAllocations(ctx context.Context, now time.Time, grace time.Duration, limit int) ([]string, error)

	// ClaimDeletions moves up to req.Limit sandboxes that are
	// pending_deletion (and due) or deleting with an expired lease to
	// deleting under req.Token, and returns them. Two concurrent claims never
	// return the same sandbox.
	ClaimDeletions(ctx context.Context, req ClaimRequest) ([]Sandbox, error)

	// CompleteDeletion removes a sandbox claimed with token after the
	// provider deleted it. Returns ECONFLICT if the claim was lost.
	CompleteDeletion(ctx context.Context, id, token string, now time.Time) error

	// FailDeletion records a failed attempt on a claimed sandbox: back to
	// pending_deletion until NextAttemptAt, or deletion_failed once
	// MaxAttempts is reached. Returns the new status, ECONFLICT if the claim
	// was lost.
	FailDeletion(ctx context.Context, req FailRequest) (Status, error)

	// ReleaseDeletion returns a claimed sandbox to pending_deletion without
	// counting an attempt (the provider was not tried). Returns ECONFLICT if
	// the claim was lost.
	ReleaseDeletion(ctx context.Context, id, token string, now time.Time) error

	// PurgeStale removes stale sandboxes last updated at or before cutoff and
	// returns how many.
	PurgeStale(ctx context.Context, cutoff, now time.Time) (int, error)
}

// JobRun is one run of a background job.
type JobRun struct {
	ID         string
	Job        string
	Status     string // queued, running, succeeded, failed
	Trigger    string // schedule or admin
	QueuedAt   time.Time
	StartedAt  time.Time
	FinishedAt time.Time
	Result     string // JSON object with the job's counters, or the error
}

// JobStore coordinates background jobs across replicas.
type JobStore interface {
	// AcquireLease takes or renews the named lease for holder until now+ttl.
	// It returns false when another holder's lease has not expired.
	AcquireLease(ctx context.Context, name, holder string, ttl time.Duration, now time.Time) (bool, error)

	// ReleaseLease gives the lease up if holder holds it.
	ReleaseLease(ctx context.Context, name, holder string) error

	// SetJobPaused pauses or resumes a job for every replica.
	SetJobPaused(ctx context.Context, job string, paused bool) error

	// PausedJobs returns the names of the paused jobs.
	PausedJobs(ctx context.Context) (map[string]bool, error)

	// SaveJobRun creates or replaces a run record by ID.
	SaveJobRun(ctx context.Context, run JobRun) error

	// QueuedJobRuns returns queued runs of job, oldest first.
	QueuedJobRuns(ctx context.Context, job string) ([]JobRun, error)

	// RecentJobRuns returns the latest runs of job, newest first.
	RecentJobRuns(ctx context.Context, job string, limit int) ([]JobRun, error)
}

// Store is everything a backend implements.
type Store interface {
	SandboxStore
	LifecycleStore
	JobStore
	// Ping checks that the store is reachable. Returns EUNAVAILABLE.
	Ping(ctx context.Context) error
	// Close releases the store's resources.
	Close() error
}

// JobStatus describes one background job for operators.
type JobStatus struct {
	Name     string
	Enabled  bool
	Paused   bool
	Interval time.Duration
	NextRun  time.Time // zero when not scheduled in this process
	Runs     []JobRun  // newest first
}
