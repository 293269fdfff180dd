package dynamostore

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"

	broker "github.com/sandbox-broker/broker"
)

func notFound(id string) error {
	return broker.Errorf(broker.ENOTFOUND, "sandbox %s not found", id)
}

// Get returns one sandbox (a strongly consistent read). Returns ENOTFOUND,
// EUNAVAILABLE.
func (s *Store) Get(ctx context.Context, id string) (broker.Sandbox, error) {
	it, err := s.getItem(ctx, sbxKey(id))
	if err != nil {
		return broker.Sandbox{}, err
	}
	if it == nil {
		return broker.Sandbox{}, notFound(id)
	}
	return s.decodeSandbox(it), nil
}

// MarkForDeletion moves the owner's allocated sandbox to pending_deletion
// with one conditional update; a repeat on a sandbox already on its way to
// deletion returns it unchanged. Returns ENOTFOUND, ENOTOWNER (the message
// never names the owner), ECONFLICT, EUNAVAILABLE.
func (s *Store) MarkForDeletion(ctx context.Context, req broker.MarkRequest) (broker.Sandbox, error) {
	for attempt := 0; ; attempt++ {
		u := newUpdate().
			set(aStatus, avS(string(broker.StatusPendingDeletion))).
			set(aDeletionRequestedAt, avN(unix(req.Now))).
			set(aUpdatedAt, avN(unix(req.Now))).
			remove(aNextAttemptAt).
			transition()
		var img item
		ok, err := s.condUpdate(ctx, req.ID, u, "#status = :allocated AND #allocated_to_track = :owner",
			item{":allocated": avS(string(broker.StatusAllocated)), ":owner": avS(req.Owner)}, &img)
		if err != nil {
			return broker.Sandbox{}, err
		}
		if ok {
			s.event(ctx, req.ID, img, broker.StatusAllocated, broker.StatusPendingDeletion, req.Now)
			return s.decodeSandbox(img), nil
		}
		// The condition failed: say why, from a consistent read.
		cur, err := s.Get(ctx, req.ID)
		if err != nil {
			return broker.Sandbox{}, err
		}
		if cur.Status == broker.StatusAllocated && cur.Owner == req.Owner && attempt < 3 {
			// Allocated to the caller after all: the item changed between
			// the write and the read. Try the write again.
			continue
		}
		if err := broker.MarkRejection(cur, req.Owner); err != nil {
			return broker.Sandbox{}, err
		}
		return cur, nil
	}
}

// History returns a sandbox's audit trail, oldest first (one Query on
// EVT#<id>). Events outlive the sandbox item. Returns EUNAVAILABLE.
func (s *Store) History(ctx context.Context, id string) ([]broker.Event, error) {
	out := []broker.Event{}
	err := s.queryAll(ctx, &dynamodb.QueryInput{
		TableName:                 s.table,
		KeyConditionExpression:    aws.String("#PK = :pk"),
		ExpressionAttributeValues: item{":pk": avS(evtPrefix + id)},
		ConsistentRead:            aws.Bool(true),
	}, func(it item) error {
		out = append(out, broker.Event{
			SandboxID: id,
			From:      broker.Status(getS(it, "evt_from")),
			To:        broker.Status(getS(it, "evt_to")),
			Actor:     getS(it, "actor"),
			RequestID: getS(it, "request_id"),
			At:        fromUnix(getN(it, "at")),
		})
		return nil
	})
	return out, err
}

// Stats counts every sandbox by status and by track name, and finds the
// oldest deletion request among pending_deletion and deleting. Cost: one
// paginated StatusIndex query per status, run in parallel; available and
// stale are counted with Select=COUNT, the other statuses (the only ones
// that can carry a track name) are read with a projection of track_name
// and deletion_requested_at.
// DynamoDB bills the whole index entries either way: about
// total index size / 4 KB / 2 read units, i.e. ~6,000 RCU (and 1-2 s) for
// a pool of 100,000. The counts are exact but read from an eventually
// consistent index. Returns EUNAVAILABLE.
func (s *Store) Stats(ctx context.Context) (broker.Stats, error) {
	st := broker.Stats{ByStatus: map[broker.Status]int{}, ByTrack: map[string]int{}}
	var mu sync.Mutex
	err := parallel(ctx, len(broker.Statuses()), len(broker.Statuses()), func(ctx context.Context, i int) error {
		status := broker.Statuses()[i]
		if status == broker.StatusAvailable || status == broker.StatusStale {
			n, err := s.countAll(ctx, s.statusQuery(status, "", "", nil))
			mu.Lock()
			st.ByStatus[status] = n
			mu.Unlock()
			return err
		}
		n, tracks, oldest := 0, map[string]int{}, int64(0)
		err := s.queryAll(ctx, s.statusQuery(status, "", "#track_name, #deletion_requested_at", nil), func(it item) error {
			n++
			if t := getS(it, aTrackName); t != "" {
				tracks[t]++
			}
			if at := getN(it, aDeletionRequestedAt); at != 0 && (oldest == 0 || at < oldest) {
				oldest = at
			}
			return nil
		})
		mu.Lock()
		defer mu.Unlock()
		st.ByStatus[status] = n
		for t, k := range tracks {
			st.ByTrack[t] += k
		}
		if status == broker.StatusPendingDeletion || status == broker.StatusDeleting {
			if at := fromUnix(oldest); !at.IsZero() && (st.OldestDeletionRequest.IsZero() || at.Before(st.OldestDeletionRequest)) {
				st.OldestDeletionRequest = at
			}
		}
		return err
	})
	if err != nil {
		return broker.Stats{}, err
	}
	for _, n := range st.ByStatus {
		st.Total += n
	}
	return st, nil
}

// BulkDelete removes every sandbox in status from the table only (never
// at the provider), each with a delete conditional on the status, and
// returns how many; dryRun only counts (Select=COUNT). Returns EUNAVAILABLE.
func (s *Store) BulkDelete(ctx context.Context, status broker.Status, dryRun bool, now time.Time) (int, error) {
	if dryRun {
		return s.countAll(ctx, s.statusQuery(status, "", "", nil))
	}
	return s.deleteMatching(ctx, s.statusQuery(status, "", "#PK", nil),
		"#status = :want", item{":want": avS(string(status))}, now)
}

// deleteMatching deletes, each on its own condition, the sandboxes that q
// returns (q projects at least PK), records a "deleted" event for each, and
// returns how many were deleted.
func (s *Store) deleteMatching(ctx context.Context, q *dynamodb.QueryInput, cond string, vals item, now time.Time) (int, error) {
	var ids []string
	if err := s.queryAll(ctx, q, func(it item) error {
		ids = append(ids, idFromItem(it))
		return nil
	}); err != nil {
		return 0, err
	}
	var mu sync.Mutex
	n := 0
	err := parallel(ctx, len(ids), s.cfg.WriteConcurrency, func(ctx context.Context, i int) error {
		old, ok, err := s.deleteItem(ctx, sbxKey(ids[i]), "attribute_exists(#PK) AND ("+cond+")", vals)
		if err != nil || !ok {
			return err
		}
		s.deletedEvent(ctx, ids[i], old, now)
		mu.Lock()
		n++
		mu.Unlock()
		return nil
	})
	return n, err
}

// RetryDeletion moves a deletion_failed sandbox back to pending_deletion
// with its attempts reset. Returns ENOTFOUND, ECONFLICT, EUNAVAILABLE.
func (s *Store) RetryDeletion(ctx context.Context, id string, now time.Time) (broker.Sandbox, error) {
	u := newUpdate().
		set(aStatus, avS(string(broker.StatusPendingDeletion))).
		set(aDeletionRetryCount, avN(0)).
		set(aUpdatedAt, avN(unix(now))).
		remove(aNextAttemptAt).
		transition()
	var img item
	ok, err := s.condUpdate(ctx, id, u, "#status = :failed", item{":failed": avS(string(broker.StatusDeletionFailed))}, &img)
	if err != nil {
		return broker.Sandbox{}, err
	}
	if !ok {
		cur, err := s.Get(ctx, id)
		if err != nil {
			return broker.Sandbox{}, err
		}
		return broker.Sandbox{}, broker.Errorf(broker.ECONFLICT, "sandbox %s is %s, not deletion_failed", id, cur.Status)
	}
	s.event(ctx, id, img, broker.StatusDeletionFailed, broker.StatusPendingDeletion, now)
	return s.decodeSandbox(img), nil
}

// IDsWithStatus returns the ids of every sandbox in status, sorted (one
// paginated StatusIndex query). Returns EUNAVAILABLE.
func (s *Store) IDsWithStatus(ctx context.Context, status broker.Status) ([]string, error) {
	var ids []string
	err := s.queryAll(ctx, s.statusQuery(status, "", "#PK", nil), func(it item) error {
		ids = append(ids, idFromItem(it))
		return nil
	})
	sort.Strings(ids)
	return ids, err
}
