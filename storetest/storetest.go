// Package storetest is the conformance suite every broker.Store must pass.
// A store package calls Run from its own tests with a function that returns
// a fresh, empty store.
package storetest

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	broker "github.com/sandbox-broker/broker"
)

// Factory returns a new, empty store. The test closes it.
type Factory func(t *testing.T) broker.Store

// T0 is the fixed start time of every scenario (whole seconds, as stored).
var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

const labDuration = 48 * time.Hour

// Run runs the whole suite against stores made by newStore.
func Run(t *testing.T, newStore Factory) {
	t.Run("Allocate", func(t *testing.T) { testAllocate(t, newStore) })
	t.Run("NamePrefix", func(t *testing.T) { testNamePrefix(t, newStore) })
	t.Run("GetAndMark", func(t *testing.T) { testGetAndMark(t, newStore) })
	t.Run("Sync", func(t *testing.T) { testSync(t, newStore) })
	t.Run("Expiry", func(t *testing.T) { testExpiry(t, newStore) })
	t.Run("Deletion", func(t *testing.T) { testDeletion(t, newStore) })
	t.Run("AdminOps", func(t *testing.T) { testAdminOps(t, newStore) })
	t.Run("ListAndStats", func(t *testing.T) { testListAndStats(t, newStore) })
	t.Run("Jobs", func(t *testing.T) { testJobs(t, newStore) })
	t.Run("Concurrency", func(t *testing.T) { testConcurrency(t, newStore) })
}

func open(t *testing.T, newStore Factory) broker.Store {
	t.Helper()
	s := newStore(t)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// Accounts returns n provider accounts named prefix-0001 ... with ids
// starting at firstID.
func Accounts(prefix string, firstID, n int) []broker.Account {
	out := make([]broker.Account, n)
	for i := range out {
		id := firstID + i
		out[i] = broker.Account{
			ID:            fmt.Sprint(id),
			Name:          fmt.Sprintf("%s-%04d", prefix, i+1),
			ExternalID:    fmt.Sprintf("identity/accounts/%08d-0000-4000-8000-%012d", id, id),
			SFDCAccountID: fmt.Sprintf("001SAND%d", id),
			CreatedAt:     t0.Add(-time.Hour),
		}
	}
	return out
}

func seed(t *testing.T, s broker.Store, accts []broker.Account) {
	t.Helper()
	if _, err := s.UpsertAccounts(context.Background(), accts, t0); err != nil {
		t.Fatalf("seed: %v", err)
	}
}

func req(owner string) broker.AllocateRequest {
	return broker.AllocateRequest{Owner: owner, Key: owner, LabDuration: labDuration, Now: t0}
}

func mustAllocate(t *testing.T, s broker.Store, r broker.AllocateRequest) broker.Allocation {
	t.Helper()
	a, err := s.Allocate(context.Background(), r)
	if err != nil {
		t.Fatalf("Allocate(%q, %q): %v", r.Owner, r.Key, err)
	}
	return a
}

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	if got := broker.ErrorCode(err); got != code {
		t.Fatalf("error code = %q (%v), want %q", got, err, code)
	}
}

func mustGet(t *testing.T, s broker.Store, id string) broker.Sandbox {
	t.Helper()
	sb, err := s.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	return sb
}

func wantStatus(t *testing.T, s broker.Store, id string, want broker.Status) broker.Sandbox {
	t.Helper()
	sb := mustGet(t, s, id)
	if sb.Status != want {
		t.Fatalf("sandbox %s status = %s, want %s", id, sb.Status, want)
	}
	return sb
}

func testAllocate(t *testing.T, newStore Factory) {
	ctx := context.Background()
	t.Run("OK", func(t *testing.T) {
		s := open(t, newStore)
		seed(t, s, Accounts("lab", 1000, 3))
		r := req("student-1")
		r.TrackName = "lab-adventure"
		actx := broker.WithActor(ctx, broker.Actor{Name: "owner:student-1", RequestID: "req-42"})
		a, err := s.Allocate(actx, r)
		if err != nil {
			t.Fatal(err)
		}
		ev, err := s.History(ctx, a.Sandbox.ID)
		if err != nil || len(ev) == 0 {
			t.Fatalf("history = %v, %v", ev, err)
		}
		if last := ev[len(ev)-1]; last.From != broker.StatusAvailable || last.To != broker.StatusAllocated ||
			last.Actor != "owner:student-1" || last.RequestID != "req-42" || !last.At.Equal(t0) {
			t.Fatalf("allocation event = %+v, want the caller as actor with its request id at %v", last, t0)
		}
		if a.Replayed {
			t.Fatal("first allocation reported as replayed")
		}
		sb := a.Sandbox
		if sb.Status != broker.StatusAllocated || sb.Owner != "student-1" || sb.IdempotencyKey != "student-1" || sb.TrackName != "lab-adventure" {
			t.Fatalf("unexpected sandbox %+v", sb)
		}
		if !sb.AllocatedAt.Equal(t0) || !sb.ExpiresAt.Equal(t0.Add(labDuration)) || sb.LabDuration != labDuration {
			t.Fatalf("times: allocated %v expires %v duration %v", sb.AllocatedAt, sb.ExpiresAt, sb.LabDuration)
		}
		if sb.Name == "" || sb.ExternalID == "" || sb.SFDCAccountID == "" {
			t.Fatalf("metadata missing: %+v", sb)
		}
		got := wantStatus(t, s, sb.ID, broker.StatusAllocated)
		if got.Owner != "student-1" || !got.ExpiresAt.Equal(sb.ExpiresAt) {
			t.Fatalf("stored record differs: %+v", got)
		}
	})
	t.Run("Replay", func(t *testing.T) {
		s := open(t, newStore)
		seed(t, s, Accounts("lab", 1000, 5))
		first := mustAllocate(t, s, req("student-1"))
		later := req("student-1")
		later.Now = t0.Add(time.Hour)
		again := mustAllocate(t, s, later)
		if !again.Replayed || again.Sandbox.ID != first.Sandbox.ID || !again.Sandbox.AllocatedAt.Equal(t0) {
			t.Fatalf("replay = %+v, want sandbox %s replayed with original time", again, first.Sandbox.ID)
		}
	})
	t.Run("KeyBoundToOwner", func(t *testing.T) {
		s := open(t, newStore)
		seed(t, s, Accounts("lab", 1000, 5))
		a := mustAllocate(t, s, broker.AllocateRequest{Owner: "alice", Key: "k1", LabDuration: labDuration, Now: t0})
		b := mustAllocate(t, s, broker.AllocateRequest{Owner: "mallory", Key: "k1", LabDuration: labDuration, Now: t0})
		if b.Replayed || b.Sandbox.ID == a.Sandbox.ID {
			t.Fatalf("another owner with the same key got alice's sandbox: %+v", b)
		}
		c := mustAllocate(t, s, broker.AllocateRequest{Owner: "alice", Key: "k2", LabDuration: labDuration, Now: t0})
		if c.Replayed || c.Sandbox.ID == a.Sandbox.ID {
			t.Fatalf("a new key for the same owner should allocate a new sandbox: %+v", c)
		}
	})
	t.Run("NewAllocationAfterRelease", func(t *testing.T) {
		s := open(t, newStore)
		seed(t, s, Accounts("lab", 1000, 5))
		a := mustAllocate(t, s, req("student-1"))
		if _, err := s.MarkForDeletion(ctx, broker.MarkRequest{ID: a.Sandbox.ID, Owner: "student-1", Now: t0}); err != nil {
			t.Fatal(err)
		}
		b := mustAllocate(t, s, req("student-1"))
		if b.Replayed || b.Sandbox.ID == a.Sandbox.ID {
			t.Fatalf("allocation after release = %+v", b)
		}
	})
	t.Run("ErrNoSandbox", func(t *testing.T) {
		s := open(t, newStore)
		_, err := s.Allocate(ctx, req("student-1"))
		wantCode(t, err, broker.ENOSANDBOX)
		seed(t, s, Accounts("lab", 1000, 1))
		mustAllocate(t, s, req("student-1"))
		_, err = s.Allocate(ctx, req("student-2"))
		wantCode(t, err, broker.ENOSANDBOX)
	})
}

func testNamePrefix(t *testing.T, newStore Factory) {
	ctx := context.Background()
	s := open(t, newStore)
	seed(t, s, Accounts("lab", 1000, 20))
	seed(t, s, Accounts("other", 2000, 3))
	seed(t, s, []broker.Account{
		{ID: "3001", Name: "a%b-1", ExternalID: "identity/accounts/x1"},
		{ID: "3002", Name: "a_b-1", ExternalID: "identity/accounts/x2"},
		{ID: "3003", Name: "axb-1", ExternalID: "identity/accounts/x3"},
	})
	tests := []struct {
		prefix, want string
	}{
		{"other", "other-"},
		{"other-0003", "other-0003"},
		{"a%", "a%b-1"},
		{"a_", "a_b-1"},
	}
	for i, tt := range tests {
		r := req(fmt.Sprintf("p-%d", i))
		r.NamePrefix = tt.prefix
		a := mustAllocate(t, s, r)
		if len(a.Sandbox.Name) < len(tt.want) || a.Sandbox.Name[:len(tt.want)] != tt.want {
			t.Fatalf("prefix %q gave %q", tt.prefix, a.Sandbox.Name)
		}
	}
	for _, prefix := range []string{"a%", "a_", "zzz", "LAB"} {
		r := req("none-" + prefix)
		r.NamePrefix = prefix
		_, err := s.Allocate(ctx, r)
		wantCode(t, err, broker.ENOSANDBOX)
	}
	// One other-* remains (other-0002); it must be found, then none.
	for i := 0; i < 1; i++ {
		r := req(fmt.Sprintf("o-%d", i))
		r.NamePrefix = "other"
		mustAllocate(t, s, r)
	}
	r := req("o-x")
	r.NamePrefix = "other"
	_, err := s.Allocate(ctx, r)
	wantCode(t, err, broker.ENOSANDBOX)
}

func testGetAndMark(t *testing.T, newStore Factory) {
	ctx := context.Background()
	s := open(t, newStore)
	seed(t, s, Accounts("lab", 1000, 5))
	a := mustAllocate(t, s, req("owner-1"))
	id := a.Sandbox.ID

	_, err := s.Get(ctx, "nope")
	wantCode(t, err, broker.ENOTFOUND)

	tests := []struct {
		name  string
		id    string
		owner string
		code  string
	}{
		{"ErrNotFound", "999999", "owner-1", broker.ENOTFOUND},
		{"ErrNotOwner", id, "owner-2", broker.ENOTOWNER},
		{"ErrNotOwnerAvailable", "1004", "owner-1", broker.ENOTOWNER},
	}
	if id == "1004" {
		tests[2].id = "1003"
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.MarkForDeletion(ctx, broker.MarkRequest{ID: tt.id, Owner: tt.owner, Now: t0})
			wantCode(t, err, tt.code)
			if e := broker.ErrorMessage(err); tt.code == broker.ENOTOWNER && containsStr(e, "owner-1") {
				t.Fatalf("message reveals the owner: %q", e)
			}
		})
	}
	wantStatus(t, s, id, broker.StatusAllocated)

	t.Run("OK", func(t *testing.T) {
		sb, err := s.MarkForDeletion(ctx, broker.MarkRequest{ID: id, Owner: "owner-1", Now: t0.Add(time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		if sb.Status != broker.StatusPendingDeletion || !sb.DeletionRequestedAt.Equal(t0.Add(time.Minute)) {
			t.Fatalf("after mark: %+v", sb)
		}
	})
	t.Run("Idempotent", func(t *testing.T) {
		sb, err := s.MarkForDeletion(ctx, broker.MarkRequest{ID: id, Owner: "owner-1", Now: t0.Add(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		if sb.Status != broker.StatusPendingDeletion || !sb.DeletionRequestedAt.Equal(t0.Add(time.Minute)) {
			t.Fatalf("repeat mark changed the record: %+v", sb)
		}
		_, err = s.MarkForDeletion(ctx, broker.MarkRequest{ID: id, Owner: "owner-2", Now: t0})
		wantCode(t, err, broker.ENOTOWNER)
	})
	t.Run("AfterExpiryClaim", func(t *testing.T) {
		b := mustAllocate(t, s, req("owner-3"))
		late := t0.Add(labDuration + time.Hour)
		ids, err := s.ExpireAllocations(ctx, late, 30*time.Minute, 100)
		if err != nil || len(ids) != 1 || ids[0] != b.Sandbox.ID {
			t.Fatalf("expire = %v, %v", ids, err)
		}
		sb, err := s.MarkForDeletion(ctx, broker.MarkRequest{ID: b.Sandbox.ID, Owner: "owner-3", Now: late.Add(time.Minute)})
		if err != nil || !sb.DeletionRequestedAt.Equal(late) {
			t.Fatalf("mark after expiry = %+v, %v", sb, err)
		}
	})
	t.Run("History", func(t *testing.T) {
		ev, err := s.History(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		var path []string
		for _, e := range ev {
			path = append(path, string(e.From)+">"+string(e.To))
		}
		want := []string{">available", "available>allocated", "allocated>pending_deletion"}
		if fmt.Sprint(path) != fmt.Sprint(want) {
			t.Fatalf("history = %v, want %v", path, want)
		}
		ev, err = s.History(ctx, "unknown")
		if err != nil || len(ev) != 0 {
			t.Fatalf("history of unknown = %v, %v", ev, err)
		}
	})
}

func containsStr(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

func testSync(t *testing.T, newStore Factory) {
	ctx := context.Background()
	s := open(t, newStore)
	accts := Accounts("lab", 1000, 4)
	res, err := s.UpsertAccounts(ctx, accts, t0)
	if err != nil || res.Inserted != 4 {
		t.Fatalf("first upsert = %+v, %v", res, err)
	}
	a := mustAllocate(t, s, req("student-1"))

	// Rename every account at the provider: only available ones change.
	renamed := make([]broker.Account, len(accts))
	for i, acc := range accts {
		acc.Name = "renamed-" + acc.Name
		renamed[i] = acc
	}
	res, err = s.UpsertAccounts(ctx, renamed, t0.Add(time.Minute))
	if err != nil || res.Inserted != 0 || res.Refreshed != 3 || res.Revived != 0 {
		t.Fatalf("refresh upsert = %+v, %v", res, err)
	}
	got := wantStatus(t, s, a.Sandbox.ID, broker.StatusAllocated)
	if got.Owner != "student-1" || got.Name != a.Sandbox.Name {
		t.Fatalf("sync touched an allocated sandbox: %+v", got)
	}
	for _, acc := range accts {
		if acc.ID == a.Sandbox.ID {
			continue
		}
		sb := wantStatus(t, s, acc.ID, broker.StatusAvailable)
		if sb.Name != "renamed-"+acc.Name || !sb.LastSynced.Equal(t0.Add(time.Minute)) {
			t.Fatalf("not refreshed: %+v", sb)
		}
	}

	// Stale marking skips what is not available.
	ids, err := s.IDsWithStatus(ctx, broker.StatusAvailable)
	if err != nil || len(ids) != 3 {
		t.Fatalf("IDsWithStatus = %v, %v", ids, err)
	}
	n, err := s.MarkStale(ctx, []string{ids[0], a.Sandbox.ID, "404"}, t0.Add(2*time.Minute))
	if err != nil || n != 1 {
		t.Fatalf("MarkStale = %d, %v", n, err)
	}
	wantStatus(t, s, ids[0], broker.StatusStale)
	wantStatus(t, s, a.Sandbox.ID, broker.StatusAllocated)

	// Reappearing revives it.
	res, err = s.UpsertAccounts(ctx, renamed, t0.Add(3*time.Minute))
	if err != nil || res.Revived != 1 || res.Refreshed != 2 {
		t.Fatalf("revive upsert = %+v, %v", res, err)
	}
	wantStatus(t, s, ids[0], broker.StatusAvailable)

	// Upserting an empty list changes nothing.
	if res, err := s.UpsertAccounts(ctx, nil, t0); err != nil || res != (broker.UpsertResult{}) {
		t.Fatalf("empty upsert = %+v, %v", res, err)
	}
}

func testExpiry(t *testing.T, newStore Factory) {
	ctx := context.Background()
	s := open(t, newStore)
	seed(t, s, Accounts("lab", 1000, 5))
	grace := 30 * time.Minute
	short := req("short")
	short.LabDuration = time.Hour
	a := mustAllocate(t, s, short)
	b := mustAllocate(t, s, req("long"))

	tests := []struct {
		at   time.Time
		want int
	}{
		{t0.Add(time.Hour), 0},
		{t0.Add(time.Hour + grace - time.Second), 0},
		{t0.Add(time.Hour + grace), 1},
		{t0.Add(2 * time.Hour), 0},
	}
	for _, tt := range tests {
		ids, err := s.ExpireAllocations(ctx, tt.at, grace, 100)
		if err != nil || len(ids) != tt.want {
			t.Fatalf("ExpireAllocations at %v = %v, %v; want %d", tt.at, ids, err, tt.want)
		}
	}
	sb := wantStatus(t, s, a.Sandbox.ID, broker.StatusPendingDeletion)
	if !sb.DeletionRequestedAt.Equal(t0.Add(time.Hour + grace)) {
		t.Fatalf("deletion_requested_at = %v", sb.DeletionRequestedAt)
	}
	wantStatus(t, s, b.Sandbox.ID, broker.StatusAllocated)
	// The owner's own mark is not overwritten by expiry.
	if _, err := s.MarkForDeletion(ctx, broker.MarkRequest{ID: b.Sandbox.ID, Owner: "long", Now: t0.Add(labDuration)}); err != nil {
		t.Fatal(err)
	}
	if ids, err := s.ExpireAllocations(ctx, t0.Add(100*time.Hour), grace, 100); err != nil || len(ids) != 0 {
		t.Fatalf("expire after mark = %v, %v", ids, err)
	}
	sb = mustGet(t, s, b.Sandbox.ID)
	if !sb.DeletionRequestedAt.Equal(t0.Add(labDuration)) {
		t.Fatalf("expiry overwrote the owner's mark: %v", sb.DeletionRequestedAt)
	}
}

func pending(t *testing.T, s broker.Store, n int) []string {
	t.Helper()
	ctx := context.Background()
	ids := make([]string, n)
	for i := range ids {
		a := mustAllocate(t, s, req(fmt.Sprintf("del-%d", i)))
		if _, err := s.MarkForDeletion(ctx, broker.MarkRequest{ID: a.Sandbox.ID, Owner: a.Sandbox.Owner, Now: t0}); err != nil {
			t.Fatal(err)
		}
		ids[i] = a.Sandbox.ID
	}
	sort.Strings(ids)
	return ids
}

func claimIDs(t *testing.T, s broker.Store, r broker.ClaimRequest) []string {
	t.Helper()
	got, err := s.ClaimDeletions(context.Background(), r)
	if err != nil {
		t.Fatalf("ClaimDeletions: %v", err)
	}
	ids := make([]string, len(got))
	for i, sb := range got {
		if sb.Status != broker.StatusDeleting || sb.ClaimToken != r.Token {
			t.Fatalf("claimed sandbox not marked deleting with the token: %+v", sb)
		}
		ids[i] = sb.ID
	}
	sort.Strings(ids)
	return ids
}

func testDeletion(t *testing.T, newStore Factory) {
	ctx := context.Background()
	lease := 5 * time.Minute
	t.Run("ClaimComplete", func(t *testing.T) {
		s := open(t, newStore)
		seed(t, s, Accounts("lab", 1000, 5))
		ids := pending(t, s, 3)
		if st, err := s.Stats(ctx); err != nil || !st.OldestDeletionRequest.Equal(t0) {
			t.Fatalf("oldest deletion request = %v, %v; want %v", st.OldestDeletionRequest, err, t0)
		}
		got := claimIDs(t, s, broker.ClaimRequest{Now: t0, Lease: lease, Limit: 2, Token: "w1"})
		if len(got) != 2 {
			t.Fatalf("claimed %v, want 2", got)
		}
		rest := claimIDs(t, s, broker.ClaimRequest{Now: t0, Lease: lease, Limit: 10, Token: "w2"})
		if len(rest) != 1 {
			t.Fatalf("second claim = %v, want the 1 left", rest)
		}
		if none := claimIDs(t, s, broker.ClaimRequest{Now: t0.Add(time.Minute), Lease: lease, Limit: 10, Token: "w3"}); len(none) != 0 {
			t.Fatalf("claimed leased items: %v", none)
		}
		wantCode(t, s.CompleteDeletion(ctx, got[0], "w2", t0), broker.ECONFLICT)
		if err := s.CompleteDeletion(ctx, got[0], "w1", t0); err != nil {
			t.Fatal(err)
		}
		_, err := s.Get(ctx, got[0])
		wantCode(t, err, broker.ENOTFOUND)
		wantCode(t, s.CompleteDeletion(ctx, got[0], "w1", t0), broker.ECONFLICT)
		ev, err := s.History(ctx, got[0])
		if err != nil || len(ev) == 0 || ev[len(ev)-1].To != broker.StatusDeleted || ev[len(ev)-1].From != broker.StatusDeleting {
			t.Fatalf("history after delete = %+v, %v", ev, err)
		}
		_ = ids
	})
	t.Run("LeaseExpiryReclaim", func(t *testing.T) {
		s := open(t, newStore)
		seed(t, s, Accounts("lab", 1000, 2))
		ids := pending(t, s, 1)
		claimIDs(t, s, broker.ClaimRequest{Now: t0, Lease: lease, Limit: 1, Token: "dead"})
		got := claimIDs(t, s, broker.ClaimRequest{Now: t0.Add(lease + time.Second), Lease: lease, Limit: 1, Token: "alive"})
		if fmt.Sprint(got) != fmt.Sprint(ids) {
			t.Fatalf("reclaim = %v, want %v", got, ids)
		}
		wantCode(t, s.CompleteDeletion(ctx, ids[0], "dead", t0), broker.ECONFLICT)
		wantCode(t, s.ReleaseDeletion(ctx, ids[0], "dead", t0), broker.ECONFLICT)
		if err := s.CompleteDeletion(ctx, ids[0], "alive", t0); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("FailRetryGiveUp", func(t *testing.T) {
		s := open(t, newStore)
		seed(t, s, Accounts("lab", 1000, 2))
		id := pending(t, s, 1)[0]
		now := t0
		for attempt := 1; attempt <= 3; attempt++ {
			claimIDs(t, s, broker.ClaimRequest{Now: now, Lease: lease, Limit: 1, Token: "w"})
			st, err := s.FailDeletion(ctx, broker.FailRequest{ID: id, Token: "w", Now: now, NextAttemptAt: now.Add(time.Minute), MaxAttempts: 3, Error: "HTTP 500"})
			if err != nil {
				t.Fatal(err)
			}
			want := broker.StatusPendingDeletion
			if attempt == 3 {
				want = broker.StatusDeletionFailed
			}
			sb := wantStatus(t, s, id, want)
			if st != want || sb.DeletionAttempts != attempt || sb.LastError != "HTTP 500" {
				t.Fatalf("attempt %d: status %s, record %+v", attempt, st, sb)
			}
			if attempt < 3 {
				if early := claimIDs(t, s, broker.ClaimRequest{Now: now.Add(30 * time.Second), Lease: lease, Limit: 1, Token: "x"}); len(early) != 0 {
					t.Fatalf("claimed before next_attempt_at: %v", early)
				}
			}
			now = now.Add(time.Minute)
		}
		if got := claimIDs(t, s, broker.ClaimRequest{Now: now.Add(time.Hour), Lease: lease, Limit: 1, Token: "w"}); len(got) != 0 {
			t.Fatalf("claimed a deletion_failed sandbox: %v", got)
		}
		sb, err := s.RetryDeletion(ctx, id, now)
		if err != nil || sb.Status != broker.StatusPendingDeletion || sb.DeletionAttempts != 0 {
			t.Fatalf("RetryDeletion = %+v, %v", sb, err)
		}
		_, err = s.RetryDeletion(ctx, id, now)
		wantCode(t, err, broker.ECONFLICT)
		_, err = s.RetryDeletion(ctx, "nope", now)
		wantCode(t, err, broker.ENOTFOUND)
		if got := claimIDs(t, s, broker.ClaimRequest{Now: now, Lease: lease, Limit: 1, Token: "w"}); len(got) != 1 {
			t.Fatalf("retried sandbox not claimable: %v", got)
		}
		if err := s.ReleaseDeletion(ctx, id, "w", now); err != nil {
			t.Fatal(err)
		}
		sb = wantStatus(t, s, id, broker.StatusPendingDeletion)
		if sb.DeletionAttempts != 0 {
			t.Fatalf("release counted an attempt: %+v", sb)
		}
		_, err = s.FailDeletion(ctx, broker.FailRequest{ID: id, Token: "w", Now: now, MaxAttempts: 3})
		wantCode(t, err, broker.ECONFLICT)
	})
}

func testAdminOps(t *testing.T, newStore Factory) {
	ctx := context.Background()
	s := open(t, newStore)
	seed(t, s, Accounts("lab", 1000, 10))
	mustAllocate(t, s, req("a"))
	ids, _ := s.IDsWithStatus(ctx, broker.StatusAvailable)
	sort.Strings(ids)
	if n, err := s.MarkStale(ctx, ids[:4], t0); err != nil || n != 4 {
		t.Fatalf("MarkStale = %d, %v", n, err)
	}
	if _, err := s.MarkStale(ctx, nil, t0); err != nil {
		t.Fatal(err)
	}
	// Two go stale later; only the first four are past the cutoff.
	if n, err := s.MarkStale(ctx, ids[4:6], t0.Add(time.Hour)); err != nil || n != 2 {
		t.Fatalf("MarkStale = %d, %v", n, err)
	}
	n, err := s.PurgeStale(ctx, t0.Add(time.Minute), t0.Add(2*time.Hour))
	if err != nil || n != 4 {
		t.Fatalf("PurgeStale = %d, %v", n, err)
	}
	_, err = s.Get(ctx, ids[0])
	wantCode(t, err, broker.ENOTFOUND)
	wantStatus(t, s, ids[4], broker.StatusStale)

	if n, err := s.BulkDelete(ctx, broker.StatusStale, true, t0); err != nil || n != 2 {
		t.Fatalf("dry-run BulkDelete = %d, %v", n, err)
	}
	wantStatus(t, s, ids[4], broker.StatusStale)
	if n, err := s.BulkDelete(ctx, broker.StatusStale, false, t0); err != nil || n != 2 {
		t.Fatalf("BulkDelete = %d, %v", n, err)
	}
	st, err := s.Stats(ctx)
	if err != nil || st.ByStatus[broker.StatusStale] != 0 || st.Total != 4 || st.ByStatus[broker.StatusAvailable] != 3 {
		t.Fatalf("stats after deletes = %+v, %v", st, err)
	}
	ev, err := s.History(ctx, ids[4])
	if err != nil || len(ev) == 0 || ev[len(ev)-1].To != broker.StatusDeleted {
		t.Fatalf("history kept after bulk delete = %+v, %v", ev, err)
	}
}

func testListAndStats(t *testing.T, newStore Factory) {
	ctx := context.Background()
	s := open(t, newStore)
	seed(t, s, Accounts("lab", 10000, 230))
	seed(t, s, Accounts("zed", 20000, 20))
	for i := 0; i < 7; i++ {
		r := req(fmt.Sprintf("owner-%d", i))
		r.TrackName = []string{"track-a", "track-b"}[i%2]
		r.NamePrefix = "zed"
		mustAllocate(t, s, r)
	}

	collect := func(f broker.ListFilter) []string {
		t.Helper()
		var all []string
		for pages := 0; ; pages++ {
			if pages > 100 {
				t.Fatal("pagination does not end")
			}
			p, err := s.List(ctx, f)
			if err != nil {
				t.Fatalf("List(%+v): %v", f, err)
			}
			if len(p.Sandboxes) > f.Limit {
				t.Fatalf("page of %d > limit %d", len(p.Sandboxes), f.Limit)
			}
			for _, sb := range p.Sandboxes {
				all = append(all, sb.ID)
			}
			if p.Cursor == "" {
				return all
			}
			f.Cursor = p.Cursor
		}
	}
	tests := []struct {
		name string
		f    broker.ListFilter
		want int
	}{
		{"All", broker.ListFilter{Limit: 100}, 250},
		{"AllSmallPages", broker.ListFilter{Limit: 7}, 250},
		{"Status", broker.ListFilter{Status: broker.StatusAllocated, Limit: 3}, 7},
		{"Available", broker.ListFilter{Status: broker.StatusAvailable, Limit: 50}, 243},
		{"Prefix", broker.ListFilter{NamePrefix: "zed", Limit: 6}, 20},
		{"Track", broker.ListFilter{TrackName: "track-a", Limit: 2}, 4},
		{"Owner", broker.ListFilter{Owner: "owner-3", Limit: 10}, 1},
		{"Combined", broker.ListFilter{Status: broker.StatusAvailable, NamePrefix: "zed", Limit: 5}, 13},
		{"None", broker.ListFilter{Owner: "nobody", Limit: 10}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ids := collect(tt.f)
			seen := map[string]bool{}
			for _, id := range ids {
				if seen[id] {
					t.Fatalf("id %s listed twice", id)
				}
				seen[id] = true
			}
			if len(ids) != tt.want {
				t.Fatalf("listed %d, want %d", len(ids), tt.want)
			}
		})
	}
	t.Run("ErrBadCursor", func(t *testing.T) {
		_, err := s.List(ctx, broker.ListFilter{Limit: 10, Cursor: "!!not-a-cursor!!"})
		wantCode(t, err, broker.EINVALID)
	})
	t.Run("Stats", func(t *testing.T) {
		st, err := s.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Total != 250 || st.ByStatus[broker.StatusAvailable] != 243 || st.ByStatus[broker.StatusAllocated] != 7 {
			t.Fatalf("stats = %+v", st)
		}
		if st.ByTrack["track-a"] != 4 || st.ByTrack["track-b"] != 3 || len(st.ByTrack) != 2 {
			t.Fatalf("by track = %v", st.ByTrack)
		}
	})
}

func testJobs(t *testing.T, newStore Factory) {
	ctx := context.Background()
	s := open(t, newStore)
	t.Run("Lease", func(t *testing.T) {
		ttl := time.Minute
		steps := []struct {
			holder string
			at     time.Time
			want   bool
		}{
			{"a", t0, true},
			{"b", t0.Add(time.Second), false},
			{"a", t0.Add(30 * time.Second), true}, // renew
			{"b", t0.Add(89 * time.Second), false},
			{"b", t0.Add(91 * time.Second), true}, // expired
			{"a", t0.Add(92 * time.Second), false},
		}
		for i, st := range steps {
			got, err := s.AcquireLease(ctx, "sync", st.holder, ttl, st.at)
			if err != nil || got != st.want {
				t.Fatalf("step %d: AcquireLease(%s) = %v, %v; want %v", i, st.holder, got, err, st.want)
			}
		}
		if ok, _ := s.AcquireLease(ctx, "cleanup", "a", ttl, t0); !ok {
			t.Fatal("leases of different names interfere")
		}
		if err := s.ReleaseLease(ctx, "sync", "a"); err != nil { // not the holder: no effect
			t.Fatal(err)
		}
		if ok, _ := s.AcquireLease(ctx, "sync", "a", ttl, t0.Add(93*time.Second)); ok {
			t.Fatal("release by a non-holder freed the lease")
		}
		if err := s.ReleaseLease(ctx, "sync", "b"); err != nil {
			t.Fatal(err)
		}
		if ok, _ := s.AcquireLease(ctx, "sync", "a", ttl, t0.Add(94*time.Second)); !ok {
			t.Fatal("released lease not free")
		}
	})
	t.Run("Pause", func(t *testing.T) {
		if err := s.SetJobPaused(ctx, "cleanup", true); err != nil {
			t.Fatal(err)
		}
		p, err := s.PausedJobs(ctx)
		if err != nil || !p["cleanup"] || p["sync"] {
			t.Fatalf("paused = %v, %v", p, err)
		}
		if err := s.SetJobPaused(ctx, "cleanup", false); err != nil {
			t.Fatal(err)
		}
		if p, _ := s.PausedJobs(ctx); p["cleanup"] {
			t.Fatal("resume did not take")
		}
	})
	t.Run("Runs", func(t *testing.T) {
		for i := 0; i < 5; i++ {
			run := broker.JobRun{ID: fmt.Sprintf("run-%d", i), Job: "sync", Status: "queued", Trigger: "admin", QueuedAt: t0.Add(time.Duration(i) * time.Second)}
			if err := s.SaveJobRun(ctx, run); err != nil {
				t.Fatal(err)
			}
		}
		done := broker.JobRun{ID: "run-0", Job: "sync", Status: "succeeded", Trigger: "admin", QueuedAt: t0, StartedAt: t0.Add(time.Second), FinishedAt: t0.Add(2 * time.Second), Result: `{"synced":3}`}
		if err := s.SaveJobRun(ctx, done); err != nil {
			t.Fatal(err)
		}
		q, err := s.QueuedJobRuns(ctx, "sync")
		if err != nil || len(q) != 4 || q[0].ID != "run-1" {
			t.Fatalf("queued = %+v, %v", q, err)
		}
		recent, err := s.RecentJobRuns(ctx, "sync", 3)
		if err != nil || len(recent) != 3 || recent[0].ID != "run-4" {
			t.Fatalf("recent = %+v, %v", recent, err)
		}
		all, _ := s.RecentJobRuns(ctx, "sync", 10)
		last := all[len(all)-1]
		if last.ID != "run-0" || last.Status != "succeeded" || last.Result != `{"synced":3}` || !last.FinishedAt.Equal(t0.Add(2*time.Second)) {
			t.Fatalf("saved run = %+v", last)
		}
		if other, _ := s.RecentJobRuns(ctx, "cleanup", 10); len(other) != 0 {
			t.Fatalf("runs leak across jobs: %v", other)
		}
	})
}

func testConcurrency(t *testing.T, newStore Factory) {
	ctx := context.Background()
	t.Run("ManyStudentsFewSandboxes", func(t *testing.T) {
		s := open(t, newStore)
		const sandboxes, students = 200, 500
		seed(t, s, Accounts("lab", 100000, sandboxes))
		results := make([]broker.Allocation, students)
		errs := make([]error, students)
		var wg sync.WaitGroup
		for i := 0; i < students; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				results[i], errs[i] = s.Allocate(ctx, req(fmt.Sprintf("student-%03d", i)))
			}(i)
		}
		wg.Wait()
		owners := map[string]string{}
		var noSandbox int
		for i, err := range errs {
			switch broker.ErrorCode(err) {
			case "":
				id := results[i].Sandbox.ID
				if prev, dup := owners[id]; dup {
					t.Fatalf("sandbox %s given to %s and %s", id, prev, results[i].Sandbox.Owner)
				}
				owners[id] = results[i].Sandbox.Owner
			case broker.ENOSANDBOX:
				noSandbox++
			default:
				t.Fatalf("student %d: %v", i, err)
			}
		}
		if len(owners) != sandboxes || noSandbox != students-sandboxes {
			t.Fatalf("%d allocated, %d ENOSANDBOX; want %d and %d", len(owners), noSandbox, sandboxes, students-sandboxes)
		}
		verifyStore(t, s, owners)
	})
	t.Run("ConcurrentDuplicates", func(t *testing.T) {
		s := open(t, newStore)
		seed(t, s, Accounts("lab", 100000, 100))
		const n = 50
		ids := make([]string, n)
		replays := make([]bool, n)
		var wg sync.WaitGroup
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				a, err := s.Allocate(ctx, req("same-student"))
				if err != nil {
					t.Errorf("duplicate %d: %v", i, err)
					return
				}
				ids[i], replays[i] = a.Sandbox.ID, a.Replayed
			}(i)
		}
		wg.Wait()
		fresh := 0
		for i := range ids {
			if ids[i] != ids[0] {
				t.Fatalf("duplicates got different sandboxes: %s and %s", ids[0], ids[i])
			}
			if !replays[i] {
				fresh++
			}
		}
		if fresh != 1 {
			t.Fatalf("%d answers claim a new allocation, want 1", fresh)
		}
		st, _ := s.Stats(ctx)
		if st.ByStatus[broker.StatusAllocated] != 1 {
			t.Fatalf("%d allocated, want 1", st.ByStatus[broker.StatusAllocated])
		}
	})
	t.Run("MixedRetries", func(t *testing.T) {
		s := open(t, newStore)
		seed(t, s, Accounts("lab", 100000, 150))
		const students = 200
		var mu sync.Mutex
		got := map[string]map[string]bool{} // owner -> sandbox ids
		var wg sync.WaitGroup
		for i := 0; i < students; i++ {
			for r := 0; r < 1+i%3; r++ {
				wg.Add(1)
				go func(owner string) {
					defer wg.Done()
					a, err := s.Allocate(ctx, req(owner))
					if broker.ErrorCode(err) == broker.ENOSANDBOX {
						return
					}
					if err != nil {
						t.Errorf("%s: %v", owner, err)
						return
					}
					mu.Lock()
					defer mu.Unlock()
					if got[owner] == nil {
						got[owner] = map[string]bool{}
					}
					got[owner][a.Sandbox.ID] = true
				}(fmt.Sprintf("s-%d", i))
			}
		}
		wg.Wait()
		owners := map[string]string{}
		for owner, ids := range got {
			if len(ids) != 1 {
				t.Fatalf("owner %s got %d sandboxes", owner, len(ids))
			}
			for id := range ids {
				if prev, dup := owners[id]; dup {
					t.Fatalf("sandbox %s given to %s and %s", id, prev, owner)
				}
				owners[id] = owner
			}
		}
		if len(owners) != 150 {
			t.Fatalf("%d allocated, want all 150", len(owners))
		}
		verifyStore(t, s, owners)
	})
	t.Run("SyncRacesAllocation", func(t *testing.T) {
		s := open(t, newStore)
		accts := Accounts("lab", 100000, 100)
		seed(t, s, accts)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 1; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := s.UpsertAccounts(ctx, accts, t0.Add(time.Duration(i)*time.Second)); err != nil {
					t.Errorf("sync: %v", err)
					return
				}
			}
		}()
		owners := map[string]string{}
		var mu sync.Mutex
		var aw sync.WaitGroup
		for i := 0; i < 100; i++ {
			aw.Add(1)
			go func(owner string) {
				defer aw.Done()
				a, err := s.Allocate(ctx, req(owner))
				if err != nil {
					t.Errorf("%s: %v", owner, err)
					return
				}
				mu.Lock()
				owners[a.Sandbox.ID] = owner
				mu.Unlock()
			}(fmt.Sprintf("r-%d", i))
		}
		aw.Wait()
		close(stop)
		wg.Wait()
		if len(owners) != 100 {
			t.Fatalf("%d distinct sandboxes for 100 students", len(owners))
		}
		verifyStore(t, s, owners)
	})
	t.Run("ConcurrentClaims", func(t *testing.T) {
		s := open(t, newStore)
		seed(t, s, Accounts("lab", 100000, 60))
		ids := pending(t, s, 60)
		var mu sync.Mutex
		claimed := map[string]string{}
		var wg sync.WaitGroup
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func(token string) {
				defer wg.Done()
				for {
					got, err := s.ClaimDeletions(ctx, broker.ClaimRequest{Now: t0, Lease: time.Minute, Limit: 5, Token: token})
					if err != nil {
						t.Errorf("claim: %v", err)
						return
					}
					if len(got) == 0 {
						return
					}
					mu.Lock()
					for _, sb := range got {
						if prev, dup := claimed[sb.ID]; dup {
							t.Errorf("%s claimed by %s and %s", sb.ID, prev, token)
						}
						claimed[sb.ID] = token
					}
					mu.Unlock()
				}
			}(fmt.Sprintf("w%d", w))
		}
		wg.Wait()
		if len(claimed) != len(ids) {
			t.Fatalf("claimed %d of %d", len(claimed), len(ids))
		}
	})
}

// verifyStore checks that the store agrees with what the callers were told:
// every sandbox in owners is allocated to that owner, and nothing else is
// allocated.
func verifyStore(t *testing.T, s broker.Store, owners map[string]string) {
	t.Helper()
	ctx := context.Background()
	for id, owner := range owners {
		sb := mustGet(t, s, id)
		if sb.Status != broker.StatusAllocated || sb.Owner != owner {
			t.Fatalf("store says %s is %s/%s, caller was told %s", id, sb.Status, sb.Owner, owner)
		}
	}
	st, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.ByStatus[broker.StatusAllocated] != len(owners) {
		t.Fatalf("store holds %d allocated, callers got %d", st.ByStatus[broker.StatusAllocated], len(owners))
	}
}
