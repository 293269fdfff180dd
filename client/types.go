package client

import (
	"encoding/json"
	"time"

	broker "github.com/sandbox-broker/broker"
)

// AllocateInput is what a lab sends to get a sandbox.
type AllocateInput struct {
	Owner          string // participant id (X-Instruqt-Sandbox-ID); required
	TrackName      string // lab slug (X-Instruqt-Track-ID); optional
	NamePrefix     string // only sandboxes whose name starts with it (X-Sandbox-Name-Prefix); optional
	IdempotencyKey string // Idempotency-Key; optional, defaults to Owner on the broker
}

// Allocation is the sandbox Allocate handed out.
type Allocation struct {
	SandboxID     string    `json:"sandbox_id"`
	Name          string    `json:"name"`
	ExternalID    string    `json:"external_id"` // identity/accounts/<uuid>
	SFDCAccountID string    `json:"sfdc_account_id,omitempty"`
	AllocatedAt   time.Time `json:"allocated_at"`
	ExpiresAt     time.Time `json:"expires_at"`
	// Replayed is true when (owner, key) already held this sandbox: the
	// broker answered 200 instead of 201.
	Replayed bool `json:"replayed"`
}

// AccountUUID returns the provider account UUID: the part of ExternalID
// after the last '/'.
func (a Allocation) AccountUUID() string { return lastSegment(a.ExternalID) }

// Sandbox is a sandbox as the API shows it.
type Sandbox struct {
	SandboxID     string        `json:"sandbox_id"`
	Name          string        `json:"name"`
	ExternalID    string        `json:"external_id"`
	Status        broker.Status `json:"status"` // track endpoints show "deleting" as pending_deletion
	Owner         string        `json:"allocated_to_track,omitempty"`
	AllocatedAt   time.Time     `json:"allocated_at,omitzero"`
	ExpiresAt     time.Time     `json:"expires_at,omitzero"`
	TrackName     string        `json:"track_name,omitempty"`
	SFDCAccountID string        `json:"sfdc_account_id,omitempty"`
}

// MarkResult is the answer to MarkForDeletion.
type MarkResult struct {
	SandboxID           string        `json:"sandbox_id"`
	Status              broker.Status `json:"status"`
	DeletionRequestedAt time.Time     `json:"deletion_requested_at"`
}

// ListFilter selects sandboxes for List. Zero fields do not filter.
type ListFilter struct {
	Status     broker.Status
	NamePrefix string
	TrackName  string
	Owner      string
	Limit      int    // page size 1..100; 0 means the broker's default (50)
	Cursor     string // from a previous ListPage
}

// ListPage is one page of sandboxes; Cursor is empty on the last page.
type ListPage struct {
	Sandboxes []Sandbox `json:"sandboxes"`
	Cursor    string    `json:"cursor,omitempty"`
}

// Stats counts sandboxes by status and by track name.
type Stats struct {
	Total    int                   `json:"total"`
	ByStatus map[broker.Status]int `json:"by_status"`
	ByTrack  map[string]int        `json:"by_track"`
}

// Event is one state change in a sandbox's audit trail. From is empty when
// the record was created; To is "deleted" when it was removed.
type Event struct {
	From      broker.Status `json:"from"`
	To        broker.Status `json:"to"`
	Actor     string        `json:"actor"`
	RequestID string        `json:"request_id,omitempty"`
	At        time.Time     `json:"at"`
}

// BulkDeleteResult is the answer to BulkDelete.
type BulkDeleteResult struct {
	Deleted     int           `json:"deleted"`
	WouldDelete int           `json:"would_delete"` // dry run only
	DryRun      bool          `json:"dry_run"`
	Duration    time.Duration `json:"duration_ns"`
}

// AutoDeleteStaleResult is the answer to AutoDeleteStale.
type AutoDeleteStaleResult struct {
	Deleted    int           `json:"deleted"`
	GraceHours int           `json:"grace_period_hours"`
	Duration   time.Duration `json:"duration_ns"`
}

// JobRun is one run of a background job.
type JobRun struct {
	ID         string    `json:"run_id"`
	Job        string    `json:"job"`
	Status     string    `json:"status"`            // queued, running, succeeded, failed
	Trigger    string    `json:"trigger,omitempty"` // schedule or admin
	QueuedAt   time.Time `json:"queued_at,omitzero"`
	StartedAt  time.Time `json:"started_at,omitzero"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
	// Result is the job's counters as JSON, or {"error":...,"partial":...}
	// for a failed run; nil until the run ends.
	Result json.RawMessage `json:"result,omitempty"`
}

// Job describes one background job.
type Job struct {
	Name     string        `json:"name"`
	Enabled  bool          `json:"enabled"`
	Paused   bool          `json:"paused"`
	Interval time.Duration `json:"interval_ns"`
	NextRun  time.Time     `json:"next_run,omitzero"` // zero unless the answering replica leads the job
	Runs     []JobRun      `json:"runs"`              // newest first
}

// Health is the answer of /healthz.
type Health struct {
	Status string    `json:"status"`
	Time   time.Time `json:"timestamp"`
}

// Readiness is the answer of /readyz.
type Readiness struct {
	Ready  bool              `json:"ready"`
	Status string            `json:"status"`
	Time   time.Time         `json:"timestamp"`
	Checks map[string]string `json:"checks"`
}

// wireAllocation is the allocate response body.
type wireAllocation struct {
	SandboxID     string  `json:"sandbox_id"`
	Name          string  `json:"name"`
	ExternalID    string  `json:"external_id"`
	AllocatedAt   int64   `json:"allocated_at"`
	ExpiresAt     int64   `json:"expires_at"`
	SFDCAccountID *string `json:"sfdc_account_id"`
}

// wireSandbox is the Sandbox schema of the API.
type wireSandbox struct {
	SandboxID        string  `json:"sandbox_id"`
	Name             string  `json:"name"`
	ExternalID       string  `json:"external_id"`
	Status           string  `json:"status"`
	AllocatedToTrack *string `json:"allocated_to_track"`
	AllocatedAt      *int64  `json:"allocated_at"`
	ExpiresAt        *int64  `json:"expires_at"`
	TrackName        *string `json:"track_name"`
	SFDCAccountID    *string `json:"sfdc_account_id"`
}

func (w wireSandbox) sandbox() Sandbox {
	return Sandbox{
		SandboxID: w.SandboxID, Name: w.Name, ExternalID: w.ExternalID, Status: broker.Status(w.Status),
		Owner: str(w.AllocatedToTrack), AllocatedAt: unixPtr(w.AllocatedAt), ExpiresAt: unixPtr(w.ExpiresAt),
		TrackName: str(w.TrackName), SFDCAccountID: str(w.SFDCAccountID),
	}
}

// wireRun is the JobRun (and JobTriggered) schema of the API.
type wireRun struct {
	RunID      string          `json:"run_id"`
	Job        string          `json:"job"`
	Status     string          `json:"status"`
	Trigger    string          `json:"trigger"`
	QueuedAt   *int64          `json:"queued_at"`
	StartedAt  *int64          `json:"started_at"`
	FinishedAt *int64          `json:"finished_at"`
	Result     json.RawMessage `json:"result"`
}

func (w wireRun) run() JobRun {
	r := JobRun{ID: w.RunID, Job: w.Job, Status: w.Status, Trigger: w.Trigger,
		QueuedAt: unixPtr(w.QueuedAt), StartedAt: unixPtr(w.StartedAt), FinishedAt: unixPtr(w.FinishedAt)}
	if len(w.Result) > 0 && string(w.Result) != "null" {
		r.Result = w.Result
	}
	return r
}

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// unixTime converts Unix seconds; 0 (the broker's "unset") is the zero time.
func unixTime(sec int64) time.Time {
	if sec == 0 {
		return time.Time{}
	}
	return time.Unix(sec, 0).UTC()
}

func unixPtr(p *int64) time.Time {
	if p == nil {
		return time.Time{}
	}
	return unixTime(*p)
}

func lastSegment(s string) string {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '/' {
			return s[i+1:]
		}
	}
	return s
}
