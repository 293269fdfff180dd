package dynamostore

import (
	"context"
	"testing"
	"time"

	"github.com/sandbox-broker/broker/storetest"
)

// TestSyncSkipsUnchanged: sync counts an unchanged available sandbox as
// refreshed without rewriting it, until last_synced is an hour old.
func TestSyncSkipsUnchanged(t *testing.T) {
	s := MustOpen(t)
	ctx := context.Background()
	accts := storetest.Accounts("lab", 1000, 3)
	if _, err := s.UpsertAccounts(ctx, accts, t0); err != nil {
		t.Fatal(err)
	}
	accts[0].Name = "renamed"
	res, err := s.UpsertAccounts(ctx, accts, t0.Add(10*time.Minute))
	if err != nil || res.Refreshed != 3 {
		t.Fatalf("upsert = %+v, %v", res, err)
	}
	for i, want := range []time.Time{t0.Add(10 * time.Minute), t0, t0} {
		if sb, _ := s.Get(ctx, accts[i].ID); !sb.LastSynced.Equal(want) {
			t.Fatalf("%s last synced %v, want %v", sb.Name, sb.LastSynced, want)
		}
	}
	if _, err := s.UpsertAccounts(ctx, accts, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	for i, want := range []time.Time{t0.Add(10 * time.Minute), t0.Add(time.Hour), t0.Add(time.Hour)} {
		if sb, _ := s.Get(ctx, accts[i].ID); !sb.LastSynced.Equal(want) {
			t.Fatalf("%s last synced %v, want %v", sb.Name, sb.LastSynced, want)
		}
	}
}
