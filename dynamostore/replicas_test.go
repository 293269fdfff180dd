package dynamostore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/storetest"
)

var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

// openReplicas opens n stores on one fresh table, as n replicas would.
func openReplicas(t *testing.T, n int) []*Store {
	t.Helper()
	cfg := testConfig(t)
	stores := []*Store{mustOpenConfig(t, cfg)}
	cfg.CreateIfMissing = false
	for len(stores) < n {
		s, err := Open(context.Background(), cfg)
		if err != nil {
			t.Fatalf("open replica: %v", err)
		}
		stores = append(stores, s)
	}
	return stores
}

// TestReplicas: three replicas share a table of 600 sandboxes; 1,000
// students allocate at once on random replicas, and 20 % of them send the
// same request to a second replica at the same moment.
func TestReplicas(t *testing.T) {
	const sandboxes, students = 600, 1000
	stores := openReplicas(t, 3)
	ctx := context.Background()
	if _, err := stores[0].UpsertAccounts(ctx, storetest.Accounts("lab", 500000, sandboxes), t0); err != nil {
		t.Fatal(err)
	}

	type answer struct {
		student string
		id      string
		replay  bool
		err     error
	}
	var (
		mu      sync.Mutex
		answers []answer
		wg      sync.WaitGroup
		start   = make(chan struct{})
	)
	send := func(s *Store, student string) {
		defer wg.Done()
		<-start
		a, err := s.Allocate(ctx, broker.AllocateRequest{
			Owner: student, Key: student, TrackName: "track-" + student[len(student)-1:],
			LabDuration: 48 * time.Hour, Now: t0,
		})
		mu.Lock()
		answers = append(answers, answer{student, a.Sandbox.ID, a.Replayed, err})
		mu.Unlock()
	}
	for i := 0; i < students; i++ {
		student := fmt.Sprintf("student-%04d", i)
		first := rand.IntN(len(stores))
		wg.Add(1)
		go send(stores[first], student)
		if i%5 == 0 {
			wg.Add(1)
			go send(stores[(first+1+rand.IntN(2))%len(stores)], student)
		}
	}
	began := time.Now()
	close(start)
	wg.Wait()
	t.Logf("%d requests answered in %v", len(answers), time.Since(began))

	byStudent := map[string]string{} // student -> sandbox
	owner := map[string]string{}     // sandbox -> student
	fresh := map[string]int{}
	for _, a := range answers {
		switch broker.ErrorCode(a.err) {
		case "":
		case broker.ENOSANDBOX:
			continue
		default:
			t.Fatalf("%s: %v", a.student, a.err)
		}
		if !a.replay {
			fresh[a.student]++
		}
		if prev, ok := byStudent[a.student]; ok && prev != a.id {
			t.Fatalf("%s was given %s and %s", a.student, prev, a.id)
		}
		byStudent[a.student] = a.id
		if prev, ok := owner[a.id]; ok && prev != a.student {
			t.Fatalf("sandbox %s given to %s and %s", a.id, prev, a.student)
		}
		owner[a.id] = a.student
	}
	if len(owner) != sandboxes {
		t.Fatalf("%d sandboxes handed out, want all %d", len(owner), sandboxes)
	}
	for student, n := range fresh {
		if n > 1 {
			t.Fatalf("%s got %d answers claiming a new allocation", student, n)
		}
	}

	// The table agrees with every answer, whichever replica reads it.
	for id, student := range owner {
		sb, err := stores[rand.IntN(len(stores))].Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if sb.Status != broker.StatusAllocated || sb.Owner != student || sb.IdempotencyKey != student {
			t.Fatalf("table says %s is %s/%s, %s was told it is theirs", id, sb.Status, sb.Owner, student)
		}
	}
	ids, err := stores[1].IDsWithStatus(ctx, broker.StatusAllocated)
	if err != nil {
		t.Fatal(err)
	}
	perOwner := map[string]int{}
	for _, id := range ids {
		sb, err := stores[2].Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		perOwner[sb.Owner]++
		if perOwner[sb.Owner] > 1 {
			t.Fatalf("%s holds %d allocated sandboxes", sb.Owner, perOwner[sb.Owner])
		}
	}
	st, err := stores[0].Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != sandboxes || st.ByStatus[broker.StatusAllocated] != sandboxes || st.ByStatus[broker.StatusAvailable] != 0 || st.Total != sandboxes {
		t.Fatalf("table holds %d allocated (stats %+v), want %d", len(ids), st, sandboxes)
	}
	checkIndexHygiene(t, stores[0])
}

// checkIndexHygiene scans the whole table and fails if an item that is not
// a sandbox carries both keys of one of the indexes: the Python service's
// indexes must hold sandboxes only.
func checkIndexHygiene(t *testing.T, s *Store) {
	t.Helper()
	keys := [][2]string{{aStatus, aAllocatedAt}, {aOwner, aAllocatedAt}, {aIdemKey, aAllocatedAt}, {aAvailShard, aName}}
	p := dynamodb.NewScanPaginator(s.db, &dynamodb.ScanInput{TableName: s.table})
	kinds := map[string]int{}
	for p.HasMorePages() {
		out, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range out.Items {
			pk := getS(it, aPK)
			kinds[strings.SplitN(pk, "#", 2)[0]]++
			if strings.HasPrefix(pk, sbxPrefix) {
				continue
			}
			for _, k := range keys {
				if has(it, k[0]) && has(it, k[1]) {
					t.Fatalf("item %s/%s would appear in the index on (%s, %s)", pk, getS(it, aSK), k[0], k[1])
				}
			}
		}
	}
	t.Logf("item kinds in the table: %v", kinds)
}
