package lifecycle

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"time"

	broker "github.com/sandbox-broker/broker"
	"golang.org/x/time/rate"
)

// Cleaner deletes pending_deletion sandboxes at the provider. It claims work
// with a lease, so several cleaners (in one or many replicas) never delete
// the same sandbox, and a crashed cleaner's claims are taken over once their
// lease expires.
type Cleaner struct {
	Store       broker.Store
	Provider    broker.Provider
	Hook        broker.PreDeleteHook // optional, e.g. NIOSXaaS
	Clock       broker.Clock
	Logger      *slog.Logger
	Limiter     *rate.Limiter // provider DELETE rate (CSP_DELETE_RATE); nil = unlimited
	BatchSize   int           // claims per round (CLEANUP_BATCH_SIZE)
	Lease       time.Duration // claim lease (CLEANUP_LEASE_SEC)
	MaxAttempts int           // DELETION_RETRY_MAX_ATTEMPTS
	RetryBase   time.Duration // first retry delay; doubles per attempt
	RetryMax    time.Duration // cap on the retry delay
	// ItemTimeout bounds the work on one sandbox (provider calls and store
	// writes); it keeps running after shutdown is requested.
	ItemTimeout time.Duration
}

// CleanupResult counts what one cleanup run did.
type CleanupResult struct {
	Deleted     int  `json:"deleted"`      // deleted at the provider
	AlreadyGone int  `json:"already_gone"` // provider answered 404
	Retrying    int  `json:"retrying"`     // failed, will be retried later
	Failed      int  `json:"failed"`       // failed for the last time: deletion_failed
	Released    int  `json:"released"`     // returned unattempted (breaker open or shutdown)
	BreakerOpen bool `json:"breaker_open"`
}

// Run claims and deletes due sandboxes until none is left, the provider's
// breaker opens, or ctx is cancelled. Cancelling ctx lets the sandbox in
// hand finish and releases the rest of the claim.
func (c *Cleaner) Run(ctx context.Context) (CleanupResult, error) {
	var res CleanupResult
	for ctx.Err() == nil {
		token := "claim-" + rand.Text()
		claimed, err := c.Store.ClaimDeletions(ctx, broker.ClaimRequest{Now: c.Clock.Now(), Lease: c.Lease, Limit: c.BatchSize, Token: token})
		if err != nil {
			return res, fmt.Errorf("cleanup: claim: %w", err)
		}
		if len(claimed) == 0 {
			return res, nil
		}
		for i, sb := range claimed {
			if ctx.Err() != nil || res.BreakerOpen {
				c.release(ctx, claimed[i:], token, &res)
				break
			}
			if err := c.deleteOne(ctx, sb, token, &res); err != nil {
				c.release(ctx, claimed[i+1:], token, &res)
				return res, err
			}
		}
		if res.BreakerOpen {
			return res, nil
		}
	}
	return res, nil
}

// release hands unattempted claims back without counting an attempt.
func (c *Cleaner) release(ctx context.Context, rest []broker.Sandbox, token string, res *CleanupResult) {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.itemTimeout())
	defer cancel()
	for _, sb := range rest {
		if err := c.Store.ReleaseDeletion(wctx, sb.ID, token, c.Clock.Now()); err != nil {
			// The lease expires on its own; another run will take it.
			c.Logger.Warn("cleanup could not release a claim; it will be retaken when the lease expires", "sandbox_id", sb.ID, "error", err.Error())
			continue
		}
		res.Released++
	}
}

func (c *Cleaner) itemTimeout() time.Duration {
	if c.ItemTimeout > 0 {
		return c.ItemTimeout
	}
	return time.Minute
}

// deleteOne deletes one claimed sandbox. Its own context survives the
// caller's cancellation so the item in hand always finishes. It returns an
// error only when the store failed.
func (c *Cleaner) deleteOne(ctx context.Context, sb broker.Sandbox, token string, res *CleanupResult) error {
	if c.Limiter != nil {
		if err := c.Limiter.Wait(ctx); err != nil {
			c.release(ctx, []broker.Sandbox{sb}, token, res)
			return nil
		}
	}
	ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.itemTimeout())
	defer cancel()
	log := c.Logger.With("action", "cleanup", "sandbox_id", sb.ID, "sandbox_name", sb.Name)

	var err error
	if c.Hook != nil {
		if err = c.Hook.BeforeDelete(ictx, sb); err != nil {
			err = fmt.Errorf("pre-delete cleanup: %w", err)
		}
	}
	if err == nil {
		err = c.Provider.DeleteAccount(ictx, sb.ExternalID)
	}
	now := c.Clock.Now()
	switch {
	case err == nil || errors.Is(err, broker.ErrAccountGone):
		if cerr := c.Store.CompleteDeletion(ictx, sb.ID, token, now); cerr != nil {
			if broker.ErrorCode(cerr) == broker.ECONFLICT {
				log.Warn("cleanup lost its claim while deleting; the other worker finishes it", "error", cerr.Error())
				return nil
			}
			return fmt.Errorf("cleanup: record deletion of %s: %w", sb.ID, cerr)
		}
		if err == nil {
			res.Deleted++
			log.Info("sandbox deleted at the provider", "outcome", "deleted")
		} else {
			res.AlreadyGone++
			log.Info("sandbox was already gone at the provider (404)", "outcome", "already_gone")
		}
		return nil
	case errors.Is(err, broker.ErrCircuitOpen):
		res.BreakerOpen = true
		c.release(ctx, []broker.Sandbox{sb}, token, res)
		log.Warn("provider circuit breaker is open; pending deletions wait for the next run", "outcome", "breaker_open")
		return nil
	}
	next := now.Add(c.backoff(sb.DeletionAttempts+1, err))
	status, ferr := c.Store.FailDeletion(ictx, broker.FailRequest{ID: sb.ID, Token: token, Now: now, NextAttemptAt: next, MaxAttempts: c.MaxAttempts, Error: truncate(err.Error(), 500)})
	if ferr != nil {
		if broker.ErrorCode(ferr) == broker.ECONFLICT {
			return nil
		}
		return fmt.Errorf("cleanup: record failure of %s: %w", sb.ID, ferr)
	}
	if status == broker.StatusDeletionFailed {
		res.Failed++
		log.Error("sandbox deletion failed for the last time; fix it at the provider, then POST /v1/admin/sandboxes/{id}/retry-deletion",
			"outcome", "deletion_failed", "attempts", sb.DeletionAttempts+1, "error", err.Error())
		return nil
	}
	res.Retrying++
	log.Warn("sandbox deletion failed; will retry", "outcome", "retrying", "attempts", sb.DeletionAttempts+1, "next_attempt_at", next.Unix(), "error", err.Error())
	return nil
}

// backoff is the delay before attempt n+1: RetryBase * 2^(n-1), capped at
// RetryMax, with jitter in [50%, 100%], and never less than the provider's
// Retry-After.
func (c *Cleaner) backoff(attempt int, err error) time.Duration {
	d := c.RetryBase
	for i := 1; i < attempt && d < c.RetryMax; i++ {
		d *= 2
	}
	d = min(d, c.RetryMax)
	d = d/2 + time.Duration(mrand.Int64N(int64(d/2)+1))
	var ra broker.RetryAfterer
	if errors.As(err, &ra) && ra.RetryAfter() > d {
		d = ra.RetryAfter()
	}
	return d
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
