package dynamostore

import (
	"context"
	"errors"
	"sort"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	broker "github.com/sandbox-broker/broker"
)

// batchGetMax is BatchGetItem's limit of keys per call.
const batchGetMax = 100

// syncTouchInterval is how often sync rewrites an available sandbox whose
// metadata did not change, only to refresh last_synced. Every write to an
// available sandbox also rewrites its entry in the one "available"
// partition of StatusIndex, so rewriting 100,000 unchanged items on every
// run would throttle that partition, and allocations with it.
const syncTouchInterval = time.Hour

// UpsertAccounts inserts unknown accounts as available, refreshes the
// metadata of available ones and makes stale ones available again; it never
// touches a sandbox in any other status. Accounts are handled in chunks of
// 100: one consistent BatchGetItem reads their current items, then one
// write per account, conditional on the status read (attribute_not_exists
// for an insert), runs on up to WriteConcurrency goroutines; a failed
// condition re-reads and retries that account. An available sandbox whose
// metadata is unchanged counts as refreshed but is rewritten (for
// last_synced) only once per syncTouchInterval. Returns EUNAVAILABLE.
func (s *Store) UpsertAccounts(ctx context.Context, accounts []broker.Account, now time.Time) (broker.UpsertResult, error) {
	var total broker.UpsertResult
	var mu sync.Mutex
	for start := 0; start < len(accounts); start += batchGetMax {
		chunk := accounts[start:min(start+batchGetMax, len(accounts))]
		ids := make([]string, len(chunk))
		for i, a := range chunk {
			ids[i] = a.ID
		}
		current, err := s.batchGet(ctx, ids)
		if err != nil {
			return total, err
		}
		err = parallel(ctx, len(chunk), s.cfg.WriteConcurrency, func(ctx context.Context, i int) error {
			res, err := s.upsertOne(ctx, chunk[i], current[chunk[i].ID], now)
			mu.Lock()
			total.Inserted += res.Inserted
			total.Refreshed += res.Refreshed
			total.Revived += res.Revived
			mu.Unlock()
			return err
		})
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// batchGet returns the existing sandboxes among ids by id, with the
// attributes sync compares (strongly consistent reads).
func (s *Store) batchGet(ctx context.Context, ids []string) (map[string]item, error) {
	out := make(map[string]item, len(ids))
	seen := map[string]bool{}
	var keys []item
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			keys = append(keys, sbxKey(id))
		}
	}
	proj := aws.String("#PK, #status, #name, #external_id, #sfdc_account_id, #last_synced, #avail_shard")
	req := map[string]types.KeysAndAttributes{s.cfg.Table: {
		Keys:                     keys,
		ConsistentRead:           aws.Bool(true),
		ProjectionExpression:     proj,
		ExpressionAttributeNames: names(proj),
	}}
	for delay := 20 * time.Millisecond; len(req) > 0 && len(req[s.cfg.Table].Keys) > 0; delay = min(2*delay, time.Second) {
		res, err := s.db.BatchGetItem(ctx, &dynamodb.BatchGetItemInput{RequestItems: req})
		if err != nil {
			return nil, dbErr(err)
		}
		for _, it := range res.Responses[s.cfg.Table] {
			out[idFromItem(it)] = it
		}
		req = res.UnprocessedKeys
		if len(req) > 0 {
			if err := sleep(ctx, delay); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// upsertOne applies one account given its current item (nil when absent),
// retrying on a concurrent change.
func (s *Store) upsertOne(ctx context.Context, a broker.Account, cur item, now time.Time) (broker.UpsertResult, error) {
	for attempt := 0; attempt < 5; attempt++ {
		var ok bool
		var err error
		status := broker.Status(getS(cur, aStatus))
		switch {
		case cur == nil:
			it := newSandboxItem(a, now, newGeneration())
			ok, err = s.putItem(ctx, it, "attribute_not_exists(#PK)", nil)
			if ok {
				s.event(ctx, a.ID, it, "", broker.StatusAvailable, now)
				return broker.UpsertResult{Inserted: 1}, nil
			}
		case status == broker.StatusAvailable:
			if syncCurrent(a, cur, now) {
				return broker.UpsertResult{Refreshed: 1}, nil
			}
			u := syncUpdate(a, now).
				setExpr(aAvailShard, "if_not_exists(#avail_shard, :avail_shard)", item{":avail_shard": avS(randomShard())})
			ok, err = s.condUpdate(ctx, a.ID, u, "#status = :available", item{":available": avS(string(broker.StatusAvailable))}, nil)
			if ok {
				return broker.UpsertResult{Refreshed: 1}, nil
			}
		case status == broker.StatusStale:
			u := syncUpdate(a, now).
				set(aStatus, avS(string(broker.StatusAvailable))).
				set(aAvailShard, avS(randomShard())).
				transition()
			var img item
			ok, err = s.condUpdate(ctx, a.ID, u, "#status = :stale", item{":stale": avS(string(broker.StatusStale))}, &img)
			if ok {
				s.event(ctx, a.ID, img, broker.StatusStale, broker.StatusAvailable, now)
				return broker.UpsertResult{Revived: 1}, nil
			}
		default:
			return broker.UpsertResult{}, nil // allocated, deleting, ...: never touched by sync
		}
		if err != nil {
			return broker.UpsertResult{}, err
		}
		// The item changed since it was read: read it again.
		if cur, err = s.getItem(ctx, sbxKey(a.ID)); err != nil {
			return broker.UpsertResult{}, err
		}
	}
	s.log.Warn("sync gave up on a sandbox that kept changing", "sandbox_id", a.ID)
	return broker.UpsertResult{}, nil
}

// syncCurrent reports whether an available sandbox already has the
// account's metadata and its shard, and was synced recently enough.
func syncCurrent(a broker.Account, cur item, now time.Time) bool {
	return getS(cur, aName) == sandboxName(a) &&
		getS(cur, aExternalID) == a.ExternalID &&
		getS(cur, aSFDC) == a.SFDCAccountID &&
		has(cur, aAvailShard) &&
		now.Sub(fromUnix(getN(cur, aLastSynced))) < syncTouchInterval
}

// syncUpdate sets the provider-owned metadata of a sandbox.
func syncUpdate(a broker.Account, now time.Time) *update {
	return newUpdate().
		set(aName, avS(sandboxName(a))).
		setStr(aExternalID, a.ExternalID).
		setStr(aSFDC, a.SFDCAccountID).
		set(aUpdatedAt, avN(unix(now))).
		set(aLastSynced, avN(unix(now)))
}

// MarkStale moves the given sandboxes from available to stale, each with
// an update conditional on status = available; the others are skipped.
// Returns how many moved, EUNAVAILABLE.
func (s *Store) MarkStale(ctx context.Context, ids []string, now time.Time) (int, error) {
	var mu sync.Mutex
	n := 0
	err := parallel(ctx, len(ids), s.cfg.WriteConcurrency, func(ctx context.Context, i int) error {
		u := newUpdate().
			set(aStatus, avS(string(broker.StatusStale))).
			set(aUpdatedAt, avN(unix(now))).
			remove(aAvailShard).
			transition()
		var img item
		ok, err := s.condUpdate(ctx, ids[i], u, "#status = :available", item{":available": avS(string(broker.StatusAvailable))}, &img)
		if err != nil || !ok {
			return err
		}
		s.event(ctx, ids[i], img, broker.StatusAvailable, broker.StatusStale, now)
		mu.Lock()
		n++
		mu.Unlock()
		return nil
	})
	return n, err
}

// ExpireAllocations moves allocated sandboxes whose ExpiresAt+grace <= now
// to pending_deletion, earliest expiry first, at most limit of them, and
// returns their ids. It reads every allocated sandbox (one paginated
// StatusIndex query: expiry of items written by the Python service is
// computed, not stored) and moves each with an update conditional on the
// same allocation. Returns EUNAVAILABLE.
func (s *Store) ExpireAllocations(ctx context.Context, now time.Time, grace time.Duration, limit int) ([]string, error) {
	type due struct {
		id, owner string
		at        int64
		expires   time.Time
	}
	var cands []due
	err := s.queryAll(ctx, s.statusQuery(broker.StatusAllocated, "", "#PK, #allocated_to_track, #allocated_at, #expires_at, #lab_duration_sec, #lab_duration_hours", nil), func(it item) error {
		if exp := s.expiresAt(it); !exp.Add(grace).After(now) {
			cands = append(cands, due{idFromItem(it), getS(it, aOwner), getN(it, aAllocatedAt), exp})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].expires.Before(cands[j].expires) })
	ids := []string{}
	for _, c := range cands {
		if len(ids) >= limit {
			break
		}
		u := newUpdate().
			set(aStatus, avS(string(broker.StatusPendingDeletion))).
			set(aDeletionRequestedAt, avN(unix(now))).
			set(aUpdatedAt, avN(unix(now))).
			remove(aNextAttemptAt).
			transition()
		var img item
		ok, err := s.condUpdate(ctx, c.id, u, "#status = :allocated AND #allocated_at = :at AND #allocated_to_track = :owner",
			item{":allocated": avS(string(broker.StatusAllocated)), ":at": avN(c.at), ":owner": avS(c.owner)}, &img)
		if err != nil {
			return ids, err
		}
		if ok {
			s.event(ctx, c.id, img, broker.StatusAllocated, broker.StatusPendingDeletion, now)
			ids = append(ids, c.id)
		}
	}
	return ids, nil
}

// errEnough stops a paginated read early.
var errEnough = errors.New("enough")

// ClaimDeletions moves up to req.Limit sandboxes that are pending_deletion
// and due, or deleting with an expired lease, to deleting under req.Token.
// Candidates come from StatusIndex; each claim is an update conditional on
// the candidate still being claimable, so two concurrent claims never
// return the same sandbox. Returns EUNAVAILABLE.
func (s *Store) ClaimDeletions(ctx context.Context, req broker.ClaimRequest) ([]broker.Sandbox, error) {
	out := []broker.Sandbox{}
	if req.Limit <= 0 {
		return out, nil
	}
	nowV := item{":now": avN(unix(req.Now))}
	sources := []struct {
		from broker.Status
		due  string
	}{
		{broker.StatusPendingDeletion, "attribute_not_exists(#next_attempt_at) OR #next_attempt_at <= :now"},
		{broker.StatusDeleting, "attribute_not_exists(#lease_until) OR #lease_until < :now"},
	}
	for _, src := range sources {
		err := s.queryAll(ctx, s.statusQuery(src.from, src.due, "#PK", nowV), func(it item) error {
			id := idFromItem(it)
			u := newUpdate().
				set(aStatus, avS(string(broker.StatusDeleting))).
				set(aClaimToken, avS(req.Token)).
				set(aLeaseUntil, avN(unix(req.Now.Add(req.Lease)))).
				set(aUpdatedAt, avN(unix(req.Now))).
				transition()
			var img item
			ok, err := s.condUpdate(ctx, id, u, "#status = :from AND ("+src.due+")",
				item{":from": avS(string(src.from)), ":now": avN(unix(req.Now))}, &img)
			if err != nil || !ok {
				return err
			}
			if src.from != broker.StatusDeleting {
				s.event(ctx, id, img, src.from, broker.StatusDeleting, req.Now)
			}
			out = append(out, s.decodeSandbox(img))
			if len(out) >= req.Limit {
				return errEnough
			}
			return nil
		})
		if errors.Is(err, errEnough) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

func lostClaim(id string) error {
	return broker.Errorf(broker.ECONFLICT, "sandbox %s is no longer claimed by this worker", id)
}

const claimedCond = "#status = :deleting AND #claim_token = :token"

func claimedVals(token string) item {
	return item{":deleting": avS(string(broker.StatusDeleting)), ":token": avS(token)}
}

// CompleteDeletion removes a sandbox claimed with token after the provider
// deleted it (a delete conditional on the claim). Returns ECONFLICT if the
// claim was lost, EUNAVAILABLE.
func (s *Store) CompleteDeletion(ctx context.Context, id, token string, now time.Time) error {
	old, ok, err := s.deleteItem(ctx, sbxKey(id), "attribute_exists(#PK) AND "+claimedCond, claimedVals(token))
	if err != nil {
		return err
	}
	if !ok {
		return lostClaim(id)
	}
	s.deletedEvent(ctx, id, old, now)
	return nil
}

// FailDeletion records a failed attempt on a claimed sandbox: back to
// pending_deletion until NextAttemptAt, or deletion_failed once MaxAttempts
// is reached. The attempt count is read, then written conditionally on the
// claim and on the count read. Returns the new status; ECONFLICT if the
// claim was lost, EUNAVAILABLE.
func (s *Store) FailDeletion(ctx context.Context, req broker.FailRequest) (broker.Status, error) {
	for attempt := 0; attempt < 5; attempt++ {
		cur, err := s.getItem(ctx, sbxKey(req.ID))
		if err != nil {
			return "", err
		}
		if cur == nil || getS(cur, aStatus) != string(broker.StatusDeleting) || getS(cur, aClaimToken) != req.Token {
			return "", lostClaim(req.ID)
		}
		seen := getN(cur, aDeletionRetryCount)
		attempts := seen + 1
		to := broker.StatusPendingDeletion
		if attempts >= int64(req.MaxAttempts) {
			to = broker.StatusDeletionFailed
		}
		u := newUpdate().
			set(aStatus, avS(string(to))).
			set(aDeletionRetryCount, avN(attempts)).
			setTime(aNextAttemptAt, req.NextAttemptAt).
			setStr(aLastError, req.Error).
			set(aUpdatedAt, avN(unix(req.Now))).
			remove(aClaimToken, aLeaseUntil).
			transition()
		cond := claimedCond + " AND #deletion_retry_count = :seen"
		if !has(cur, aDeletionRetryCount) {
			cond = claimedCond + " AND attribute_not_exists(#deletion_retry_count)"
		}
		vals := claimedVals(req.Token)
		vals[":seen"] = avN(seen)
		if !has(cur, aDeletionRetryCount) {
			delete(vals, ":seen")
		}
		var img item
		ok, err := s.condUpdate(ctx, req.ID, u, cond, vals, &img)
		if err != nil {
			return "", err
		}
		if ok {
			s.event(ctx, req.ID, img, broker.StatusDeleting, to, req.Now)
			return to, nil
		}
	}
	return "", lostClaim(req.ID)
}

// ReleaseDeletion returns a claimed sandbox to pending_deletion without
// counting an attempt. Returns ECONFLICT if the claim was lost, EUNAVAILABLE.
func (s *Store) ReleaseDeletion(ctx context.Context, id, token string, now time.Time) error {
	u := newUpdate().
		set(aStatus, avS(string(broker.StatusPendingDeletion))).
		set(aUpdatedAt, avN(unix(now))).
		remove(aClaimToken, aLeaseUntil).
		transition()
	var img item
	ok, err := s.condUpdate(ctx, id, u, claimedCond, claimedVals(token), &img)
	if err != nil {
		return err
	}
	if !ok {
		return lostClaim(id)
	}
	s.event(ctx, id, img, broker.StatusDeleting, broker.StatusPendingDeletion, now)
	return nil
}

// PurgeStale removes stale sandboxes last updated at or before cutoff (a
// missing updated_at counts as 0, as in the Python service), each with a
// delete conditional on exactly that, and returns how many. Returns
// EUNAVAILABLE.
func (s *Store) PurgeStale(ctx context.Context, cutoff, now time.Time) (int, error) {
	old := "attribute_not_exists(#updated_at) OR #updated_at <= :cutoff"
	return s.deleteMatching(ctx,
		s.statusQuery(broker.StatusStale, old, "#PK", item{":cutoff": avN(unix(cutoff))}),
		"#status = :stale AND ("+old+")",
		item{":stale": avS(string(broker.StatusStale)), ":cutoff": avN(unix(cutoff))}, now)
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
