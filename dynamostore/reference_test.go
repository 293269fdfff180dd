package dynamostore

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	broker "github.com/sandbox-broker/broker"
)

// refItem is a sandbox exactly as the Python service writes it (SPEC 1.1,
// 1.2): every number a number, allocated_at 0 when unallocated, optional
// strings omitted, no attribute of this store.
func refItem(id, name, status string, extra map[string]types.AttributeValue) item {
	it := item{
		"PK":                   avS("SBX#" + id),
		"SK":                   avS("META"),
		"sandbox_id":           avS(id),
		"name":                 avS(name),
		"external_id":          avS("identity/accounts/" + id + "-uuid"),
		"status":               avS(status),
		"allocated_at":         avN(0),
		"lab_duration_hours":   avN(4),
		"deletion_retry_count": avN(0),
		"last_synced":          avN(t0.Add(-time.Hour).Unix()),
		"created_at":           avN(t0.Add(-30 * 24 * time.Hour).Unix()),
		"updated_at":           avN(t0.Add(-time.Hour).Unix()),
		"sfdc_account_id":      avS("001SAND" + id),
	}
	for k, v := range extra {
		if v == nil {
			delete(it, k)
		} else {
			it[k] = v
		}
	}
	return it
}

func putRaw(t *testing.T, s *Store, items ...item) {
	t.Helper()
	for _, it := range items {
		if _, err := s.db.PutItem(context.Background(), &dynamodb.PutItemInput{TableName: s.table, Item: it}); err != nil {
			t.Fatalf("put %v: %v", getS(it, "PK"), err)
		}
	}
}

// TestReferenceTable serves a table written by the Python service:
// allocations, replays, stats, list, expiry and sync all read its items
// correctly and ignore its NIOSXAAS history items.
func TestReferenceTable(t *testing.T) {
	s := MustOpen(t)
	ctx := context.Background()
	allocatedAt := t0.Add(-2 * time.Hour)
	putRaw(t, s,
		// Available, as sync writes them; one without sfdc_account_id, one
		// without lab_duration_hours.
		refItem("2012001", "lab-adventure-0001", "available", nil),
		refItem("2012002", "lab-adventure-0002", "available", map[string]types.AttributeValue{"sfdc_account_id": nil}),
		refItem("2012003", "lab-adventure-0003", "available", map[string]types.AttributeValue{"lab_duration_hours": nil}),
		refItem("2012004", "other-lab-0001", "available", nil),
		// Allocated by the Python service to a participant.
		refItem("2012010", "lab-adventure-0010", "allocated", map[string]types.AttributeValue{
			"allocated_to_track": avS("inst-student-1"),
			"allocated_at":       avN(allocatedAt.Unix()),
			"idempotency_key":    avS("inst-student-1"),
			"track_name":         avS("lab-adventure"),
		}),
		// Allocated, lab_duration_hours missing: 4 h default.
		refItem("2012011", "lab-adventure-0011", "allocated", map[string]types.AttributeValue{
			"allocated_to_track": avS("inst-student-2"),
			"allocated_at":       avN(allocatedAt.Unix()),
			"idempotency_key":    avS("inst-student-2"),
			"lab_duration_hours": nil,
		}),
		refItem("2012020", "lab-adventure-0020", "pending_deletion", map[string]types.AttributeValue{
			"allocated_to_track":    avS("inst-student-3"),
			"allocated_at":          avN(allocatedAt.Unix()),
			"idempotency_key":       avS("inst-student-3"),
			"track_name":            avS("lab-adventure"),
			"deletion_requested_at": avN(t0.Add(-time.Hour).Unix()),
		}),
		refItem("2012021", "lab-adventure-0021", "deletion_failed", map[string]types.AttributeValue{
			"allocated_to_track":    avS("inst-student-4"),
			"allocated_at":          avN(allocatedAt.Unix()),
			"idempotency_key":       avS("inst-student-4"),
			"deletion_requested_at": avN(t0.Add(-time.Hour).Unix()),
			"deletion_retry_count":  avN(1),
		}),
		refItem("2012030", "lab-adventure-0030", "stale", nil),
		// NIOSXaaS cleanup history: no status, no allocated_at.
		item{
			"PK":                             avS("NIOSXAAS#2011999"),
			"SK":                             avS("CLEANUP"),
			"sandbox_id":                     avS("2011999"),
			"sandbox_name":                   avS("lab-adventure-0999"),
			"external_id":                    avS("identity/accounts/2011999-uuid"),
			"track_name":                     avS("lab-adventure"),
			"allocated_to_track":             avS("N/A"),
			"niosxaas_cleaned_at":            avN(t0.Add(-48 * time.Hour).Unix()),
			"niosxaas_cleanup_skipped":       avBool(true),
			"niosxaas_cleanup_failed_reason": avS(""),
			"deleted_at":                     avN(t0.Add(-48 * time.Hour).Unix()),
			"ttl":                            avN(t0.Add(30 * 24 * time.Hour).Unix()),
		},
	)

	t.Run("Read", func(t *testing.T) {
		sb, err := s.Get(ctx, "2012010")
		if err != nil {
			t.Fatal(err)
		}
		if sb.Status != broker.StatusAllocated || sb.Owner != "inst-student-1" || sb.TrackName != "lab-adventure" ||
			!sb.AllocatedAt.Equal(allocatedAt) || sb.LabDuration != 4*time.Hour || !sb.ExpiresAt.Equal(allocatedAt.Add(4*time.Hour)) ||
			sb.SFDCAccountID != "001SAND2012010" || sb.ExternalID != "identity/accounts/2012010-uuid" {
			t.Fatalf("legacy allocated sandbox read as %+v", sb)
		}
		sb, _ = s.Get(ctx, "2012011")
		if sb.LabDuration != 4*time.Hour || !sb.ExpiresAt.Equal(allocatedAt.Add(4*time.Hour)) {
			t.Fatalf("missing lab_duration_hours: %+v", sb)
		}
		sb, _ = s.Get(ctx, "2012002")
		if sb.Status != broker.StatusAvailable || !sb.AllocatedAt.IsZero() || !sb.ExpiresAt.IsZero() || sb.SFDCAccountID != "" {
			t.Fatalf("legacy available sandbox read as %+v", sb)
		}
		sb, _ = s.Get(ctx, "2012021")
		if sb.DeletionAttempts != 1 || sb.DeletionRequestedAt.IsZero() {
			t.Fatalf("legacy deletion_failed read as %+v", sb)
		}
		if _, err := s.Get(ctx, "2011999"); broker.ErrorCode(err) != broker.ENOTFOUND {
			t.Fatalf("history item read as a sandbox: %v", err)
		}
	})
	t.Run("Stats", func(t *testing.T) {
		st, err := s.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := map[broker.Status]int{"available": 4, "allocated": 2, "pending_deletion": 1, "deletion_failed": 1, "stale": 1}
		for status, n := range want {
			if st.ByStatus[status] != n {
				t.Fatalf("stats %+v, want %v", st, want)
			}
		}
		if st.Total != 9 || st.ByTrack["lab-adventure"] != 2 || len(st.ByTrack) != 1 {
			t.Fatalf("stats %+v", st)
		}
	})
	t.Run("List", func(t *testing.T) {
		for _, tt := range []struct {
			f    broker.ListFilter
			want int
		}{
			{broker.ListFilter{Limit: 2}, 9},
			{broker.ListFilter{Status: broker.StatusAvailable, Limit: 3}, 4},
			{broker.ListFilter{Owner: "inst-student-1", Limit: 3}, 1},
			{broker.ListFilter{Owner: "N/A", Limit: 3}, 0},
			{broker.ListFilter{TrackName: "lab-adventure", Limit: 1}, 2},
			{broker.ListFilter{NamePrefix: "other", Limit: 5}, 1},
		} {
			seen := map[string]bool{}
			f := tt.f
			for pages := 0; ; pages++ {
				p, err := s.List(ctx, f)
				if err != nil || pages > 20 {
					t.Fatalf("List(%+v): %v", f, err)
				}
				for _, sb := range p.Sandboxes {
					if seen[sb.ID] || sb.Name == "" || !strings.HasPrefix(sb.ID, "2012") {
						t.Fatalf("List(%+v) gave %+v", tt.f, sb)
					}
					seen[sb.ID] = true
				}
				if p.Cursor == "" {
					break
				}
				f.Cursor = p.Cursor
			}
			if len(seen) != tt.want {
				t.Fatalf("List(%+v) = %d sandboxes, want %d", tt.f, len(seen), tt.want)
			}
		}
	})
	t.Run("AllocateBeforeMigrate", func(t *testing.T) {
		// Without a prefix, StatusIndex finds available sandboxes that have
		// no allocation shard yet.
		a, err := s.Allocate(ctx, broker.AllocateRequest{Owner: "early", Key: "early", LabDuration: 48 * time.Hour, Now: t0})
		if err != nil || a.Replayed || !strings.HasPrefix(a.Sandbox.Name, "") || a.Sandbox.Status != broker.StatusAllocated {
			t.Fatalf("allocate = %+v, %v", a, err)
		}
	})
	t.Run("Migrate", func(t *testing.T) {
		res, err := s.Migrate(ctx)
		if err != nil || res.CreatedTable || len(res.CreatedIndexes) != 0 || res.Backfilled != 3 {
			t.Fatalf("migrate = %+v, %v; want 3 available sandboxes backfilled", res, err)
		}
		if res, err := s.Migrate(ctx); err != nil || res.Backfilled != 0 {
			t.Fatalf("second migrate = %+v, %v", res, err)
		}
	})
	t.Run("ReplayLegacyAllocation", func(t *testing.T) {
		a, err := s.Allocate(ctx, broker.AllocateRequest{Owner: "inst-student-1", Key: "inst-student-1", LabDuration: 48 * time.Hour, Now: t0})
		if err != nil || !a.Replayed || a.Sandbox.ID != "2012010" || !a.Sandbox.AllocatedAt.Equal(allocatedAt) {
			t.Fatalf("replay of a Python allocation = %+v, %v", a, err)
		}
		again, err := s.Allocate(ctx, broker.AllocateRequest{Owner: "inst-student-1", Key: "inst-student-1", LabDuration: 48 * time.Hour, Now: t0})
		if err != nil || !again.Replayed || again.Sandbox.ID != "2012010" {
			t.Fatalf("second replay = %+v, %v", again, err)
		}
		// Another owner with the same key gets nothing of it.
		b, err := s.Allocate(ctx, broker.AllocateRequest{Owner: "intruder", Key: "inst-student-1", LabDuration: 48 * time.Hour, Now: t0})
		if err != nil || b.Replayed || b.Sandbox.ID == "2012010" {
			t.Fatalf("key not bound to its owner: %+v, %v", b, err)
		}
	})
	t.Run("AllocatePrefix", func(t *testing.T) {
		// The allocations without a prefix so far took random sandboxes:
		// count what each prefix has left, then drain it.
		for _, prefix := range []string{"other", "lab-adventure"} {
			left := 0
			for f := (broker.ListFilter{Status: broker.StatusAvailable, NamePrefix: prefix, Limit: 100}); ; {
				p, err := s.List(ctx, f)
				if err != nil {
					t.Fatal(err)
				}
				left += len(p.Sandboxes)
				if f.Cursor = p.Cursor; f.Cursor == "" {
					break
				}
			}
			for i := 0; ; i++ {
				a, err := s.Allocate(ctx, broker.AllocateRequest{Owner: fmt.Sprint(prefix, i), Key: "k", NamePrefix: prefix, LabDuration: 48 * time.Hour, Now: t0})
				if broker.ErrorCode(err) == broker.ENOSANDBOX {
					if i != left {
						t.Fatalf("prefix %s: %d allocations, want %d", prefix, i, left)
					}
					break
				}
				if err != nil || !strings.HasPrefix(a.Sandbox.Name, prefix) || (a.Sandbox.SFDCAccountID != "001SAND"+a.Sandbox.ID && a.Sandbox.ID != "2012002") || i > 5 {
					t.Fatalf("prefix %s allocation %d = %+v, %v", prefix, i, a, err)
				}
			}
		}
	})
	t.Run("ExpireAndMark", func(t *testing.T) {
		grace := 30 * time.Minute
		ids, err := s.ExpireAllocations(ctx, allocatedAt.Add(4*time.Hour+grace-time.Second), grace, 10)
		if err != nil || len(ids) != 0 {
			t.Fatalf("early expiry = %v, %v", ids, err)
		}
		ids, err = s.ExpireAllocations(ctx, allocatedAt.Add(4*time.Hour+grace), grace, 1)
		if err != nil || len(ids) != 1 {
			t.Fatalf("expiry = %v, %v", ids, err)
		}
		other := map[string]string{"2012010": "2012011", "2012011": "2012010"}[ids[0]]
		sb, _ := s.Get(ctx, other)
		marked, err := s.MarkForDeletion(ctx, broker.MarkRequest{ID: other, Owner: sb.Owner, Now: t0})
		if err != nil || marked.Status != broker.StatusPendingDeletion || !marked.DeletionRequestedAt.Equal(t0) {
			t.Fatalf("mark legacy allocation = %+v, %v", marked, err)
		}
		ev, err := s.History(ctx, other)
		if err != nil || len(ev) != 1 || ev[0].From != broker.StatusAllocated || ev[0].To != broker.StatusPendingDeletion {
			t.Fatalf("history of a legacy sandbox = %+v, %v", ev, err)
		}
	})
	t.Run("SyncAndRetry", func(t *testing.T) {
		res, err := s.UpsertAccounts(ctx, []broker.Account{
			{ID: "2012030", Name: "lab-adventure-0030", ExternalID: "identity/accounts/2012030-uuid"}, // stale: revived
			{ID: "2012020", Name: "renamed", ExternalID: "x"},                                         // pending_deletion: untouched
			{ID: "2012040", Name: "lab-adventure-0040", ExternalID: "identity/accounts/2012040-uuid"}, // new
		}, t0)
		if err != nil || res.Revived != 1 || res.Inserted != 1 || res.Refreshed != 0 {
			t.Fatalf("upsert = %+v, %v", res, err)
		}
		if sb, _ := s.Get(ctx, "2012020"); sb.Name != "lab-adventure-0020" || sb.Status != broker.StatusPendingDeletion {
			t.Fatalf("sync touched a pending_deletion sandbox: %+v", sb)
		}
		sb, err := s.RetryDeletion(ctx, "2012021", t0)
		if err != nil || sb.Status != broker.StatusPendingDeletion || sb.DeletionAttempts != 0 {
			t.Fatalf("retry legacy deletion_failed = %+v, %v", sb, err)
		}
		got, err := s.ClaimDeletions(ctx, broker.ClaimRequest{Now: t0, Lease: time.Minute, Limit: 10, Token: "w"})
		if err != nil || len(got) != 4 {
			t.Fatalf("claim = %d sandboxes, %v; want the 4 pending ones", len(got), err)
		}
		for _, sb := range got {
			if err := s.CompleteDeletion(ctx, sb.ID, "w", t0); err != nil {
				t.Fatal(err)
			}
		}
	})
	t.Run("HistoryItemUntouched", func(t *testing.T) {
		out, err := s.db.GetItem(ctx, &dynamodb.GetItemInput{TableName: s.table, Key: itemKey("NIOSXAAS#2011999", "CLEANUP")})
		if err != nil || len(out.Item) != 12 {
			t.Fatalf("history item = %v, %v", out.Item, err)
		}
		st, _ := s.Stats(ctx)
		if st.Total != 6 || st.ByStatus[broker.StatusAvailable] != 2 {
			t.Fatalf("stats after the run = %+v", st)
		}
		checkIndexHygiene(t, s)
	})
}

// TestOpenRequiresMigrate: Open refuses a table without the store's
// indexes instead of failing later, and names the fix.
func TestOpenRequiresMigrate(t *testing.T) {
	endpoint := needDynamo(t)
	ctx := context.Background()
	table := newTableName()
	cfg := Config{Table: table, Endpoint: endpoint}
	if _, err := Open(ctx, cfg); err == nil || !strings.Contains(err.Error(), "migrate") {
		t.Fatalf("open of a missing table = %v", err)
	}
	// The Python service's table: three indexes, no AvailableIndex.
	s, err := newStore(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var gsis []types.GlobalSecondaryIndex
	attrs := []types.AttributeDefinition{
		{AttributeName: aws.String("PK"), AttributeType: types.ScalarAttributeTypeS},
		{AttributeName: aws.String("SK"), AttributeType: types.ScalarAttributeTypeS},
		{AttributeName: aws.String("allocated_at"), AttributeType: types.ScalarAttributeTypeN},
	}
	for _, ix := range s.indexSpecs()[:3] {
		attrs = append(attrs, types.AttributeDefinition{AttributeName: aws.String(ix.hash), AttributeType: ix.hashType})
		gsis = append(gsis, types.GlobalSecondaryIndex{IndexName: aws.String(ix.name), KeySchema: ix.keySchema(),
			Projection: &types.Projection{ProjectionType: types.ProjectionTypeAll}})
	}
	_, err = s.db.CreateTable(ctx, &dynamodb.CreateTableInput{
		TableName: s.table, BillingMode: types.BillingModePayPerRequest, AttributeDefinitions: attrs,
		KeySchema: []types.KeySchemaElement{
			{AttributeName: aws.String("PK"), KeyType: types.KeyTypeHash},
			{AttributeName: aws.String("SK"), KeyType: types.KeyTypeRange},
		},
		GlobalSecondaryIndexes: gsis,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.db.DeleteTable(ctx, &dynamodb.DeleteTableInput{TableName: s.table})
	if err := s.waitActive(ctx, ""); err != nil {
		t.Fatal(err)
	}
	_, err = Open(ctx, cfg)
	if err == nil || !strings.Contains(err.Error(), "AvailableIndex") || !strings.Contains(err.Error(), "migrate") {
		t.Fatalf("open of a Python-era table = %v", err)
	}
	// (Migrate would add the index with UpdateTable; dynalite accepts the
	// call but never builds the index, so that path runs only against
	// DynamoDB itself.)
}
