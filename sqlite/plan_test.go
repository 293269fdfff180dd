package sqlite

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/storetest"
)

// TestQueryPlans checks that the hot queries use their partial indexes and
// never scan or sort the pool.
func TestQueryPlans(t *testing.T) {
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "plan.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	queries := map[string]string{
		"pickAny":   pickAny,
		"pickRange": pickRange,
		"pickFrom":  pickFrom,
		"expiry":    `SELECT id FROM sandboxes INDEXED BY sandboxes_expiry WHERE status = 'allocated' AND expires_at <= 1 ORDER BY expires_at LIMIT 5`,
		"claim":     `SELECT id, status FROM sandboxes INDEXED BY sandboxes_due WHERE status = 'pending_deletion' AND next_attempt_at <= 1`,
		"replay":    `SELECT id FROM sandboxes WHERE owner = 'a' AND idem_key = 'a' AND status = 'allocated'`,
	}
	for name, q := range queries {
		args := make([]any, strings.Count(q, "?"))
		for i := range args {
			args[i] = "lab"
		}
		rows, err := s.readers.Query("EXPLAIN QUERY PLAN "+q, args...)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, notused int
			var detail string
			if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		rows.Close()
		p := strings.Join(plan, "; ")
		if strings.Contains(p, "TEMP B-TREE") || strings.Contains(p, "sandboxes_status_id") || !strings.Contains(p, "INDEX") {
			t.Errorf("%s plan scans or sorts: %s", name, p)
		}
	}
}

// TestPrefixInLargePool finds matching sandboxes at the very end of a pool
// of 100,000.
func TestPrefixInLargePool(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("seeds 100,000 sandboxes: runs in the non-race pass of `make test`")
	}
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "big.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	now := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	if _, err := s.UpsertAccounts(context.Background(), storetest.Accounts("lab", 1, 100000), now); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpsertAccounts(context.Background(), storetest.Accounts("zzz", 200001, 2), now); err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"zzz-0001", "zzz-0002"} {
		a, err := s.Allocate(context.Background(), broker.AllocateRequest{Owner: want, Key: want, NamePrefix: "zzz", LabDuration: time.Hour, Now: now})
		if err != nil || a.Sandbox.Name != want {
			t.Fatalf("prefix allocation %d = %+v, %v", i, a.Sandbox, err)
		}
	}
	_, err = s.Allocate(context.Background(), broker.AllocateRequest{Owner: "x", Key: "x", NamePrefix: "zzz", LabDuration: time.Hour, Now: now})
	if broker.ErrorCode(err) != broker.ENOSANDBOX {
		t.Fatalf("third zzz allocation: %v", err)
	}
}
