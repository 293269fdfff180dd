// Package service holds the broker's use cases on top of a broker.Store:
// allocation with its defaults, ownership checks, and admin operations with
// their safety rules. It knows nothing of HTTP.
package service

import (
	"context"
	"time"

	broker "github.com/sandbox-broker/broker"
)

// Service runs the track and admin use cases.
type Service struct {
	Store       broker.Store
	Clock       broker.Clock
	LabDuration time.Duration // LAB_DURATION_HOURS, written into each allocation
}

// New returns a Service; a nil clock means the system clock.
func New(store broker.Store, clock broker.Clock, labDuration time.Duration) *Service {
	if clock == nil {
		clock = broker.SystemClock{}
	}
	return &Service{Store: store, Clock: clock, LabDuration: labDuration}
}

// AllocateInput is what a lab script sends to get a sandbox.
type AllocateInput struct {
	Owner      string // participant id, required
	Key        string // idempotency key; defaults to Owner
	TrackName  string
	NamePrefix string
}

// Allocate gives the owner a sandbox, or the one (owner, key) already holds.
// Returns EINVALID without an owner, ENOSANDBOX when none matches,
// EUNAVAILABLE when the store is down.
func (s *Service) Allocate(ctx context.Context, in AllocateInput) (broker.Allocation, error) {
	if in.Owner == "" {
		return broker.Allocation{}, broker.Errorf(broker.EINVALID, "an owner (participant id) is required")
	}
	key := in.Key
	if key == "" {
		key = in.Owner
	}
	return s.Store.Allocate(ctx, broker.AllocateRequest{
		Owner: in.Owner, Key: key, TrackName: in.TrackName, NamePrefix: in.NamePrefix,
		LabDuration: s.LabDuration, Now: s.Clock.Now(),
	})
}

// Get returns the owner's sandbox. Returns ENOTFOUND, ENOTOWNER (without
// saying who owns it), EUNAVAILABLE.
func (s *Service) Get(ctx context.Context, id, owner string) (broker.Sandbox, error) {
	sb, err := s.Store.Get(ctx, id)
	if err != nil {
		return broker.Sandbox{}, err
	}
	if sb.Owner == "" || sb.Owner != owner {
		return broker.Sandbox{}, broker.Errorf(broker.ENOTOWNER, "sandbox %s is not allocated to you", id)
	}
	return sb, nil
}

// MarkForDeletion releases the owner's sandbox for deletion; repeating it
// returns the original request time. Returns ENOTFOUND, ENOTOWNER,
// ECONFLICT, EUNAVAILABLE.
func (s *Service) MarkForDeletion(ctx context.Context, id, owner string) (broker.Sandbox, error) {
	return s.Store.MarkForDeletion(ctx, broker.MarkRequest{ID: id, Owner: owner, Now: s.Clock.Now()})
}

// BulkDelete removes every sandbox in status from the store only. Allocated,
// pending_deletion and deleting sandboxes are refused unless force is set,
// because removing them orphans a student's account or a running deletion.
// Returns EINVALID for a missing or unknown status, ECONFLICT when force is
// required.
func (s *Service) BulkDelete(ctx context.Context, status broker.Status, force, dryRun bool) (int, error) {
	if status == "" || !status.Valid() {
		return 0, broker.Errorf(broker.EINVALID, "status is required and must be one of the sandbox statuses")
	}
	switch status {
	case broker.StatusAllocated, broker.StatusPendingDeletion, broker.StatusDeleting:
		if !force {
			return 0, broker.Errorf(broker.ECONFLICT, "refusing to bulk-delete %s sandboxes without force=true: it orphans accounts at the provider", status)
		}
	}
	return s.Store.BulkDelete(ctx, status, dryRun, s.Clock.Now())
}

// PurgeStale removes stale sandboxes that have been stale for at least
// grace. Returns EINVALID for a grace under one hour.
func (s *Service) PurgeStale(ctx context.Context, grace time.Duration) (int, error) {
	if grace < time.Hour {
		return 0, broker.Errorf(broker.EINVALID, "grace period must be at least 1 hour")
	}
	now := s.Clock.Now()
	return s.Store.PurgeStale(ctx, now.Add(-grace), now)
}

// RetryDeletion puts a deletion_failed sandbox back in the deletion queue.
// Returns ENOTFOUND, ECONFLICT.
func (s *Service) RetryDeletion(ctx context.Context, id string) (broker.Sandbox, error) {
	return s.Store.RetryDeletion(ctx, id, s.Clock.Now())
}
