package dynamostore

import (
	"bytes"
	"context"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/storetest"
)

// pendingReservation writes the reservation a request leaves behind when
// it crashes after step 1 of the protocol: pending, with a candidate, at
// reservedAt.
func pendingReservation(t *testing.T, s *Store, owner, key, nonce, cand string, reservedAt time.Time) {
	t.Helper()
	a := &allocation{s: s, key: itemKey(idemPrefix+owner, reservationSK+key)}
	it := a.reservationItem(nonce, cand, broker.AllocateRequest{Owner: owner, Key: key, TrackName: "crashed-track", LabDuration: 48 * time.Hour, Now: t0})
	it[attrResReserved] = avN(reservedAt.UnixMilli())
	putRaw(t, s, it)
}

// claimAs performs step 2 for a crashed request: the candidate is
// allocated under the reservation's nonce, but the reservation not linked.
func claimAs(t *testing.T, s *Store, owner, key, nonce, id string) {
	t.Helper()
	a := &allocation{s: s, req: broker.AllocateRequest{Owner: owner, Key: key}}
	_, ok, _, err := a.claim(context.Background(), reservation{nonce: nonce, candidate: id, now: t0, duration: 48 * time.Hour, track: "crashed-track"})
	if err != nil || !ok {
		t.Fatalf("claim %s: %v, %v", id, ok, err)
	}
}

func reservationOf(t *testing.T, s *Store, owner, key string) reservation {
	t.Helper()
	it, err := s.getItem(context.Background(), itemKey(idemPrefix+owner, reservationSK+key))
	if err != nil || it == nil {
		t.Fatalf("reservation of %s/%s: %v, %v", owner, key, it, err)
	}
	return decodeReservation(it)
}

// allocatedTo returns the ids of the sandboxes allocated to owner.
func allocatedTo(t *testing.T, s *Store, owner string) []string {
	t.Helper()
	p, err := s.List(context.Background(), broker.ListFilter{Owner: owner, Status: broker.StatusAllocated, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, sb := range p.Sandboxes {
		ids = append(ids, sb.ID)
	}
	return ids
}

func TestRecovery(t *testing.T) {
	ctx := context.Background()
	long := time.Now().Add(-time.Hour)
	setup := func(t *testing.T) *Store {
		s := MustOpen(t)
		if _, err := s.UpsertAccounts(ctx, storetest.Accounts("lab", 1000, 10), t0); err != nil {
			t.Fatal(err)
		}
		return s
	}
	req := func(owner string) broker.AllocateRequest {
		return broker.AllocateRequest{Owner: owner, Key: owner, LabDuration: 48 * time.Hour, Now: t0.Add(time.Hour)}
	}

	t.Run("CrashAfterReserve", func(t *testing.T) {
		s := setup(t)
		pendingReservation(t, s, "alice", "alice", "n1", "1003", long)
		a, err := s.Allocate(ctx, req("alice"))
		if err != nil || a.Sandbox.ID != "1003" || !a.Replayed {
			t.Fatalf("allocate = %+v, %v; want the reserved candidate 1003, replayed", a, err)
		}
		// The crashed request's parameters are the allocation's.
		if a.Sandbox.TrackName != "crashed-track" || !a.Sandbox.AllocatedAt.Equal(t0) {
			t.Fatalf("allocation does not carry the original request: %+v", a.Sandbox)
		}
		if r := reservationOf(t, s, "alice", "alice"); r.state != stateLinked || r.sandbox != "1003" || r.nonce != "n1" {
			t.Fatalf("reservation = %+v", r)
		}
		if ids := allocatedTo(t, s, "alice"); len(ids) != 1 {
			t.Fatalf("alice holds %v", ids)
		}
	})
	t.Run("CrashAfterClaim", func(t *testing.T) {
		s := setup(t)
		pendingReservation(t, s, "bob", "bob", "n2", "1005", long)
		claimAs(t, s, "bob", "bob", "n2", "1005")
		a, err := s.Allocate(ctx, req("bob"))
		if err != nil || a.Sandbox.ID != "1005" || !a.Replayed {
			t.Fatalf("allocate = %+v, %v; want the claimed 1005", a, err)
		}
		if r := reservationOf(t, s, "bob", "bob"); r.state != stateLinked || r.sandbox != "1005" {
			t.Fatalf("reservation = %+v", r)
		}
		if ids := allocatedTo(t, s, "bob"); len(ids) != 1 {
			t.Fatalf("bob holds %v", ids)
		}
	})
	t.Run("CrashedCandidateTaken", func(t *testing.T) {
		s := setup(t)
		taken, err := s.Allocate(ctx, req("other"))
		if err != nil {
			t.Fatal(err)
		}
		pendingReservation(t, s, "carol", "carol", "n3", taken.Sandbox.ID, long)
		a, err := s.Allocate(ctx, req("carol"))
		if err != nil || a.Sandbox.ID == taken.Sandbox.ID || a.Sandbox.Owner != "carol" {
			t.Fatalf("allocate = %+v, %v", a, err)
		}
		if r := reservationOf(t, s, "carol", "carol"); r.state != stateLinked || r.sandbox != a.Sandbox.ID || r.nonce != "n3" {
			t.Fatalf("reservation = %+v", r)
		}
		if sb, _ := s.Get(ctx, taken.Sandbox.ID); sb.Owner != "other" {
			t.Fatalf("the other owner's sandbox changed: %+v", sb)
		}
	})
	t.Run("CrashedCandidateGone", func(t *testing.T) {
		s := setup(t)
		pendingReservation(t, s, "dan", "dan", "n4", "999999", long)
		a, err := s.Allocate(ctx, req("dan"))
		if err != nil || a.Sandbox.Owner != "dan" {
			t.Fatalf("allocate = %+v, %v", a, err)
		}
	})
	t.Run("WaitsForYoungReservation", func(t *testing.T) {
		cfg := testConfig(t)
		cfg.RecoverAfter = 300 * time.Millisecond
		s := mustOpenConfig(t, cfg)
		if _, err := s.UpsertAccounts(ctx, storetest.Accounts("lab", 1000, 5), t0); err != nil {
			t.Fatal(err)
		}
		pendingReservation(t, s, "erin", "erin", "n5", "1002", time.Now())
		began := time.Now()
		a, err := s.Allocate(ctx, req("erin"))
		if err != nil || a.Sandbox.ID != "1002" {
			t.Fatalf("allocate = %+v, %v", a, err)
		}
		if waited := time.Since(began); waited < 250*time.Millisecond {
			t.Fatalf("took over a young reservation after %v", waited)
		}
	})
	t.Run("StaleReservation", func(t *testing.T) {
		s := setup(t)
		first, err := s.Allocate(ctx, req("frank"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.MarkForDeletion(ctx, broker.MarkRequest{ID: first.Sandbox.ID, Owner: "frank", Now: t0}); err != nil {
			t.Fatal(err)
		}
		second, err := s.Allocate(ctx, req("frank"))
		if err != nil || second.Replayed || second.Sandbox.ID == first.Sandbox.ID {
			t.Fatalf("allocation after release = %+v, %v", second, err)
		}
		if r := reservationOf(t, s, "frank", "frank"); r.sandbox != second.Sandbox.ID {
			t.Fatalf("reservation not replaced: %+v", r)
		}
		// Deleted outright (bulk delete): stale too.
		if _, err := s.BulkDelete(ctx, broker.StatusAllocated, false, t0); err != nil {
			t.Fatal(err)
		}
		third, err := s.Allocate(ctx, req("frank"))
		if err != nil || third.Replayed || third.Sandbox.ID == second.Sandbox.ID {
			t.Fatalf("allocation after delete = %+v, %v", third, err)
		}
	})
	t.Run("ConcurrentRecovery", func(t *testing.T) {
		s := setup(t)
		pendingReservation(t, s, "gina", "gina", "n6", "1001", long)
		claimAs(t, s, "gina", "gina", "n6", "1001")
		taken, _ := s.Allocate(ctx, req("someone"))
		pendingReservation(t, s, "hugo", "hugo", "n7", taken.Sandbox.ID, long)
		var wg sync.WaitGroup
		got := make([]string, 40)
		for i := range got {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				owner := []string{"gina", "hugo"}[i%2]
				a, err := s.Allocate(ctx, req(owner))
				if err != nil {
					t.Errorf("%s: %v", owner, err)
					return
				}
				got[i] = owner + ":" + a.Sandbox.ID
			}(i)
		}
		wg.Wait()
		for i := range got {
			if got[i] != got[i%2] {
				t.Fatalf("answers differ: %s and %s", got[i%2], got[i])
			}
		}
		for _, owner := range []string{"gina", "hugo"} {
			if ids := allocatedTo(t, s, owner); len(ids) != 1 {
				t.Fatalf("%s holds %v", owner, ids)
			}
		}
	})
	t.Run("AbandonedWhenPoolEmpty", func(t *testing.T) {
		s := MustOpen(t)
		if _, err := s.UpsertAccounts(ctx, storetest.Accounts("lab", 1000, 1), t0); err != nil {
			t.Fatal(err)
		}
		taken, err := s.Allocate(ctx, req("first"))
		if err != nil {
			t.Fatal(err)
		}
		pendingReservation(t, s, "ivan", "ivan", "n8", taken.Sandbox.ID, long)
		_, err = s.Allocate(ctx, req("ivan"))
		if broker.ErrorCode(err) != broker.ENOSANDBOX {
			t.Fatalf("allocate from an empty pool = %v", err)
		}
		if it, _ := s.getItem(ctx, itemKey(idemPrefix+"ivan", reservationSK+"ivan")); it != nil {
			t.Fatalf("abandoned reservation left behind: %v", it)
		}
	})
}

// lossyTransport performs every request but, for one write operation in
// every three, answers 500 instead of DynamoDB's response: the write happened,
// the SDK retries it, and the retry finds its own earlier effect.
type lossyTransport struct {
	next   http.RoundTripper
	writes atomic.Int64
	lost   atomic.Int64
}

func (l *lossyTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	target := r.Header.Get("X-Amz-Target")
	resp, err := l.next.RoundTrip(r)
	if err != nil || !strings.Contains(target, "PutItem") && !strings.Contains(target, "UpdateItem") && !strings.Contains(target, "DeleteItem") {
		return resp, err
	}
	// Only the first attempt of an operation loses its response, so that
	// the SDK's retry always gets through.
	if !strings.HasPrefix(r.Header.Get("Amz-Sdk-Request"), "attempt=1;") || l.writes.Add(1)%3 != 0 {
		return resp, err
	}
	l.lost.Add(1)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	body := `{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"injected"}`
	return &http.Response{
		StatusCode: 500, Status: "500 Internal Server Error", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{
			"Content-Type": {"application/x-amz-json-1.0"},
			"X-Amz-Crc32":  {strconv.FormatUint(uint64(crc32.ChecksumIEEE([]byte(body))), 10)},
		},
		Body:    io.NopCloser(bytes.NewReader([]byte(body))),
		Request: r, ContentLength: int64(len(body)),
	}, nil
}

// TestLostResponses: every write's success may be reported as a failure
// and retried; allocations, replays and releases still behave.
func TestLostResponses(t *testing.T) {
	ctx := context.Background()
	lossy := &lossyTransport{next: http.DefaultTransport}
	cfg := testConfig(t)
	cfg.HTTPClient = &http.Client{Transport: lossy}
	cfg.MaxBackoff = 20 * time.Millisecond
	s := mustOpenConfig(t, cfg)
	if _, err := s.UpsertAccounts(ctx, storetest.Accounts("lab", 1000, 30), t0); err != nil {
		t.Fatal(err)
	}
	owners := map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 0; i < 40; i++ {
		for dup := 0; dup < 2; dup++ {
			wg.Add(1)
			go func(owner string) {
				defer wg.Done()
				a, err := s.Allocate(ctx, broker.AllocateRequest{Owner: owner, Key: owner, LabDuration: time.Hour, Now: t0})
				if broker.ErrorCode(err) == broker.ENOSANDBOX {
					return
				}
				if err != nil {
					t.Errorf("%s: %v", owner, err)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				if prev, ok := owners[owner]; ok && prev != a.Sandbox.ID {
					t.Errorf("%s got %s and %s", owner, prev, a.Sandbox.ID)
				}
				owners[owner] = a.Sandbox.ID
			}(fmt.Sprintf("u%02d", i))
		}
	}
	wg.Wait()
	if len(owners) != 30 {
		t.Fatalf("%d owners served, want 30", len(owners))
	}
	seen := map[string]bool{}
	for owner, id := range owners {
		if seen[id] {
			t.Fatalf("sandbox %s handed out twice", id)
		}
		seen[id] = true
		if ids := allocatedTo(t, s, owner); len(ids) != 1 || ids[0] != id {
			t.Fatalf("%s holds %v, was told %s", owner, ids, id)
		}
		// A retried mark still answers success.
		sb, err := s.MarkForDeletion(ctx, broker.MarkRequest{ID: id, Owner: owner, Now: t0})
		if err != nil || sb.Status != broker.StatusPendingDeletion {
			t.Fatalf("mark %s = %+v, %v", id, sb, err)
		}
	}
	if lossy.lost.Load() == 0 {
		t.Fatal("no response was lost")
	}
	t.Logf("%d of %d write responses lost", lossy.lost.Load(), lossy.writes.Load())
}
