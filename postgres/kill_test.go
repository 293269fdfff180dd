package postgres

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/storetest"
)

// TestConnectionsKilled terminates every connection of a store a few times
// while students allocate (as a PostgreSQL restart or failover would): calls
// may fail, but only with EUNAVAILABLE; the store recovers by itself; no
// sandbox goes to two students and every allocation answered is stored.
func TestConnectionsKilled(t *testing.T) {
	const workers, kills = 16, 4
	ctx := context.Background()
	schema, u := mustSchema(t)
	app := "broker-kill-" + schema // kill only this store's connections
	s := mustOpen(t, withParam(t, u, "application_name", app), Options{MaxConns: 8})
	if _, err := s.UpsertAccounts(ctx, storetest.Accounts("lab", 1, 5000), t0); err != nil {
		t.Fatal(err)
	}
	admin := mustAdmin(t)

	var (
		mu        sync.Mutex
		holder    = map[string]string{} // sandbox id -> owner, from successful answers
		failures  = map[string]int{}    // error code -> count
		calls     atomic.Int64
		stop      = make(chan struct{})
		wg        sync.WaitGroup
		firstFail error
	)
	// check records a failed call; only EUNAVAILABLE is allowed.
	check := func(what string, err error) bool {
		if err == nil {
			return true
		}
		mu.Lock()
		defer mu.Unlock()
		failures[broker.ErrorCode(err)]++
		if broker.ErrorCode(err) != broker.EUNAVAILABLE && firstFail == nil {
			firstFail = fmt.Errorf("%s: %w", what, err)
		}
		return false
	}
	// record checks an allocation answer and remembers a successful one.
	record := func(owner string, a broker.Allocation, err error) {
		if !check("allocate for "+owner, err) {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if prev, ok := holder[a.Sandbox.ID]; ok && prev != owner && firstFail == nil {
			firstFail = fmt.Errorf("sandbox %s given to %s and %s", a.Sandbox.ID, prev, owner)
		}
		holder[a.Sandbox.ID] = owner
	}
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				owner := fmt.Sprintf("k-%02d-%05d", w, n)
				a, err := s.Allocate(ctx, allocReq(owner))
				calls.Add(1)
				record(owner, a, err)
				if n%4 == 0 { // a retry of the same request
					a, err = s.Allocate(ctx, allocReq(owner))
					record(owner, a, err)
				}
				if err == nil {
					_, err := s.Get(ctx, a.Sandbox.ID)
					check("get", err)
				}
				// Statements that are not retried after a lost connection
				// (they are not idempotent) show the failures.
				_, err = s.ExpireAllocations(ctx, t0, 0, 10)
				check("expire", err)
				_, err = s.ClaimDeletions(ctx, broker.ClaimRequest{Now: t0, Lease: time.Minute, Limit: 10, Token: owner})
				check("claim", err)
			}
		}()
	}
	killed := 0
	for range kills {
		time.Sleep(150 * time.Millisecond)
		tag, err := admin.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = $1`, app)
		if err != nil {
			t.Fatal(err)
		}
		killed += int(tag.RowsAffected())
	}
	time.Sleep(200 * time.Millisecond) // load continues after the last kill
	close(stop)
	wg.Wait()
	t.Logf("%d calls, %d connections killed, failures by code: %v", calls.Load(), killed, failures)
	if firstFail != nil {
		t.Fatal(firstFail)
	}
	if killed == 0 {
		t.Fatal("no connection was killed")
	}

	// Recovered: the next calls succeed without any help.
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Ping after the kills: %v", err)
	}
	for i := range 20 {
		owner := fmt.Sprintf("after-%02d", i)
		a, err := s.Allocate(ctx, allocReq(owner))
		if err != nil {
			t.Fatalf("Allocate after the kills: %v", err)
		}
		record(owner, a, nil)
	}

	// Every answered allocation is stored; the store may hold more (the
	// answer of a committed allocation lost with its connection), but never
	// two sandboxes for one owner.
	owners := map[string]string{}
	f := broker.ListFilter{Status: broker.StatusAllocated, Limit: 100}
	for {
		page, err := s.List(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		for _, sb := range page.Sandboxes {
			if prev, dup := owners[sb.Owner]; dup {
				t.Fatalf("%s holds %s and %s", sb.Owner, prev, sb.ID)
			}
			owners[sb.Owner] = sb.ID
		}
		if page.Cursor == "" {
			break
		}
		f.Cursor = page.Cursor
	}
	for id, owner := range holder {
		if owners[owner] != id {
			t.Fatalf("%s was told it holds %s; the store says %q", owner, id, owners[owner])
		}
	}
}

// TestConnectionKilledBetweenCalls kills the only pooled connection between
// two calls: a statement that must not be repeated fails with EUNAVAILABLE
// (its message hides the driver's), an idempotent one is retried, and the
// pool replaces the connection by itself.
func TestConnectionKilledBetweenCalls(t *testing.T) {
	ctx := context.Background()
	schema, u := mustSchema(t)
	app := "broker-kill1-" + schema
	s := mustOpen(t, withParam(t, u, "application_name", app), Options{MaxConns: 1})
	if _, err := s.UpsertAccounts(ctx, storetest.Accounts("lab", 1, 10), t0); err != nil {
		t.Fatal(err)
	}
	admin := mustAdmin(t)
	kill := func() {
		t.Helper()
		tag, err := admin.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE datname = current_database() AND application_name = $1`, app)
		if err != nil || tag.RowsAffected() != 1 {
			t.Fatalf("kill = %v, %v; want 1 connection", tag, err)
		}
	}

	kill()
	_, err := s.ExpireAllocations(ctx, t0, 0, 10)
	if broker.ErrorCode(err) != broker.EUNAVAILABLE {
		t.Fatalf("ExpireAllocations on a killed connection = %v, want %s", err, broker.EUNAVAILABLE)
	}
	if msg := broker.ErrorMessage(err); msg != "the store is unavailable, retry later" {
		t.Fatalf("message = %q", msg)
	}
	t.Logf("cause: %v", err)
	if _, err := s.ExpireAllocations(ctx, t0, 0, 10); err != nil {
		t.Fatalf("the pool did not recover: %v", err)
	}

	kill()
	if _, err := s.Allocate(ctx, allocReq("student")); err != nil {
		t.Fatalf("Allocate is idempotent and should be retried: %v", err)
	}
	kill()
	if _, err := s.Stats(ctx); err != nil {
		t.Fatalf("Stats is a read and should be retried: %v", err)
	}
}
