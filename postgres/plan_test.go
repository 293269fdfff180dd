package postgres

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/storetest"
)

// TestLargePool checks the store at 100,000 sandboxes: a sync of 10,000
// accounts is quick, the allocation statements use the indexes (no
// sequential scan of sandboxes, in custom and generic plans alike) and
// Stats stays fast.
func TestLargePool(t *testing.T) {
	if testing.Short() {
		t.Skip("100,000 rows")
	}
	ctx := context.Background()
	_, u := mustSchema(t)
	s := mustOpen(t, u, Options{})

	began := time.Now()
	res, err := s.UpsertAccounts(ctx, storetest.Accounts("lab", 1, 10_000), t0)
	if err != nil || res.Inserted != 10_000 {
		t.Fatalf("sync = %+v, %v", res, err)
	}
	took := time.Since(began)
	began = time.Now()
	res, err = s.UpsertAccounts(ctx, storetest.Accounts("lab", 1, 10_000), t0.Add(time.Minute))
	if err != nil || res.Refreshed != 10_000 {
		t.Fatalf("second sync = %+v, %v", res, err)
	}
	t.Logf("sync of 10,000 new accounts: %v; of 10,000 known ones: %v (measured, not asserted: see BENCHMARKS.md)", took, time.Since(began))

	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// Statistics taken while nothing is allocated (right after a big sync):
	// the idempotency lookup must still use sandboxes_active_key, not scan
	// the allocated rows through another partial index.
	if _, err := conn.Exec(ctx, `ANALYZE sandboxes`); err != nil {
		t.Fatal(err)
	}
	fresh := explain(t, conn, fmt.Sprintf(allocateSQL, ""), "owner", "key", "track", int64(1), int64(2), int64(3), "actor", "req")
	wantIndexes(t, fresh, "sandboxes_available_name", "sandboxes_active_key")
	if strings.Contains(fresh, "sandboxes_expiry") {
		t.Fatalf("idempotency lookup uses sandboxes_expiry:\n%s", fresh)
	}
	// 90,000 more (a fifth of them allocated, over 20 tracks) and a few
	// "zed" sandboxes at the end of the name order.
	for _, q := range []string{
		`INSERT INTO sandboxes (id, name, status) SELECT 'p' || g, 'pool-' || lpad(g::text, 6, '0'), 'available'
			FROM generate_series(1, 89990) g`,
		`INSERT INTO sandboxes (id, name, status) SELECT 'z' || g, 'zed-' || g, 'available' FROM generate_series(1, 10) g`,
		`UPDATE sandboxes SET status = 'allocated', owner = id, idem_key = id, track_name = 'track-' || (substr(id, 2)::int % 20)
			WHERE id LIKE 'p%' AND right(id, 1) IN ('1', '2')`,
		`VACUUM ANALYZE sandboxes`, // as autovacuum would
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}

	cases := []struct{ name, prefix string }{
		{"NoPrefix", ""},
		{"PrefixAtEnd", "zed"},
		{"PrefixInMiddle", "lab-05"},
		{"PrefixWithoutUpperBound", "\U0010FFFF"},
	}
	for _, mode := range []string{"auto", "force_generic_plan"} {
		if _, err := conn.Exec(ctx, "SET plan_cache_mode = "+mode); err != nil {
			t.Fatal(err)
		}
		for _, c := range cases {
			t.Run(c.name+"/"+mode, func(t *testing.T) {
				p := prefixRange(c.prefix)
				filter, args := allocationFilter(p, 9)
				plan := explain(t, conn, fmt.Sprintf(allocateSQL, filter),
					append([]any{"owner", "key", "track", int64(1), int64(2), int64(3), "actor", "req"}, args...)...)
				wantIndexes(t, plan, "sandboxes_available_name", "sandboxes_active_key")
				filter, args = allocationFilter(p, 3)
				plan = explain(t, conn, fmt.Sprintf(anyLeftSQL, filter), append([]any{"owner", "key"}, args...)...)
				wantIndexes(t, plan, "sandboxes_available_name", "sandboxes_active_key")
			})
		}
	}

	t.Run("Timings", func(t *testing.T) {
		r := allocReq("zed-student")
		r.NamePrefix = "zed"
		began := time.Now()
		a, err := s.Allocate(ctx, r)
		if err != nil || !strings.HasPrefix(a.Sandbox.Name, "zed-") {
			t.Fatalf("Allocate(zed) = %+v, %v", a, err)
		}
		t.Logf("Allocate with a prefix: %v", time.Since(began))

		var runs []time.Duration
		for range 5 {
			began := time.Now()
			st, err := s.Stats(ctx)
			runs = append(runs, time.Since(began))
			if err != nil || st.Total != 100_000 || len(st.ByTrack) == 0 {
				t.Fatalf("Stats = %+v, %v", st, err)
			}
		}
		slices.Sort(runs)
		t.Logf("Stats at 100,000 sandboxes: %v", runs)
		// Measured, not asserted: timings belong in BENCHMARKS.md.

		page, err := s.List(ctx, broker.ListFilter{Status: broker.StatusAvailable, NamePrefix: "zed", Limit: 100})
		if err != nil || len(page.Sandboxes) != 9 {
			t.Fatalf("List(zed) = %d sandboxes, %v", len(page.Sandboxes), err)
		}
	})
}

// explain returns the plan of q.
func explain(t *testing.T, conn *pgx.Conn, q string, args ...any) string {
	t.Helper()
	rows, err := conn.Query(context.Background(), "EXPLAIN "+q, args...)
	if err != nil {
		t.Fatalf("EXPLAIN: %v", err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("EXPLAIN: %v", err)
	}
	return strings.Join(lines, "\n")
}

func wantIndexes(t *testing.T, plan string, indexes ...string) {
	t.Helper()
	if strings.Contains(plan, "Seq Scan on sandboxes") {
		t.Fatalf("sequential scan of sandboxes:\n%s", plan)
	}
	for _, ix := range indexes {
		if !strings.Contains(plan, ix) {
			t.Fatalf("plan does not use %s:\n%s", ix, plan)
		}
	}
}
