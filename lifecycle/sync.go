// Package lifecycle holds the background use cases that keep the pool in
// step with the provider: sync, cleanup (deletion at the provider), expiry of
// forgotten allocations, and purging of stale records. Each is one run of a
// job; scheduling lives in package jobs.
package lifecycle

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	broker "github.com/sandbox-broker/broker"
)

// Syncer copies the provider's account list into the store.
type Syncer struct {
	Store    broker.Store
	Provider broker.Provider
	Clock    broker.Clock
	Logger   *slog.Logger
	// MaxStaleFraction caps the share of available sandboxes one run may
	// mark stale (SYNC_MAX_STALE_FRACTION); an empty or partial provider
	// answer must not empty the pool.
	MaxStaleFraction float64
}

// SyncResult counts what one sync run did.
type SyncResult struct {
	Listed       int  `json:"listed"`
	Inserted     int  `json:"inserted"`
	Refreshed    int  `json:"refreshed"`
	Revived      int  `json:"revived"`
	MarkedStale  int  `json:"marked_stale"`
	StaleRefused int  `json:"stale_refused"` // would-be stale sandboxes left alone by the threshold
	Refused      bool `json:"refused"`
}

// Run lists the provider's accounts, upserts them, and marks available
// sandboxes that are no longer listed as stale (within MaxStaleFraction).
// Every write is conditional on the status it expects, so a sandbox allocated
// during the run stays allocated.
func (s *Syncer) Run(ctx context.Context) (SyncResult, error) {
	var res SyncResult
	accounts, err := s.Provider.ListAccounts(ctx)
	if err != nil {
		return res, fmt.Errorf("sync: list provider accounts: %w", err)
	}
	seen := make(map[string]bool, len(accounts))
	unique := accounts[:0:0]
	for _, a := range accounts {
		if a.ID == "" || seen[a.ID] {
			continue // a duplicate or id-less record must not collapse onto another
		}
		seen[a.ID] = true
		unique = append(unique, a)
	}
	res.Listed = len(unique)
	now := s.Clock.Now()
	up, err := s.Store.UpsertAccounts(ctx, unique, now)
	if err != nil {
		return res, fmt.Errorf("sync: upsert accounts: %w", err)
	}
	res.Inserted, res.Refreshed, res.Revived = up.Inserted, up.Refreshed, up.Revived

	available, err := s.Store.IDsWithStatus(ctx, broker.StatusAvailable)
	if err != nil {
		return res, fmt.Errorf("sync: list available sandboxes: %w", err)
	}
	var missing []string
	for _, id := range available {
		if !seen[id] {
			missing = append(missing, id)
		}
	}
	if len(missing) == 0 {
		return res, nil
	}
	if float64(len(missing)) > s.MaxStaleFraction*float64(len(available)) {
		res.Refused, res.StaleRefused = true, len(missing)
		s.Logger.Warn("sync refused to mark sandboxes stale: the provider listed too few accounts; check the provider, or raise SYNC_MAX_STALE_FRACTION if this is intended",
			"action", "sync", "outcome", "stale_refused", "missing", len(missing), "available", len(available), "max_fraction", s.MaxStaleFraction)
		return res, nil
	}
	n, err := s.Store.MarkStale(ctx, missing, now)
	res.MarkedStale = n
	if err != nil {
		return res, fmt.Errorf("sync: mark stale: %w", err)
	}
	return res, nil
}

// Expirer moves allocations whose lab never ended to pending_deletion.
type Expirer struct {
	Store broker.Store
	Clock broker.Clock
	Grace time.Duration // GRACE_PERIOD_MINUTES, added to each allocation's expires_at
}

// ExpiryResult counts what one expiry run did.
type ExpiryResult struct {
	Expired int `json:"expired"`
}

// Run expires every allocation past expires_at + grace, in chunks.
func (e *Expirer) Run(ctx context.Context) (ExpiryResult, error) {
	const chunk = 500
	var res ExpiryResult
	for {
		ids, err := e.Store.ExpireAllocations(ctx, e.Clock.Now(), e.Grace, chunk)
		res.Expired += len(ids)
		if err != nil {
			return res, fmt.Errorf("expiry: %w", err)
		}
		if len(ids) < chunk {
			return res, nil
		}
	}
}

// Purger deletes records that have been stale for longer than Grace.
type Purger struct {
	Store broker.Store
	Clock broker.Clock
	Grace time.Duration // STALE_GRACE_HOURS
}

// PurgeResult counts what one stale purge did.
type PurgeResult struct {
	Deleted int `json:"deleted"`
}

// Run removes stale records last changed at least Grace ago.
func (p *Purger) Run(ctx context.Context) (PurgeResult, error) {
	now := p.Clock.Now()
	n, err := p.Store.PurgeStale(ctx, now.Add(-p.Grace), now)
	if err != nil {
		return PurgeResult{Deleted: n}, fmt.Errorf("stale purge: %w", err)
	}
	return PurgeResult{Deleted: n}, nil
}
