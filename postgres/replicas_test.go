package postgres

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/storetest"
)

var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

func allocReq(owner string) broker.AllocateRequest {
	return broker.AllocateRequest{Owner: owner, Key: owner, TrackName: "lab", LabDuration: 2 * time.Hour, Now: t0}
}

type answer struct {
	a   broker.Allocation
	err error
}

// TestReplicas runs three stores (three pools, as three broker replicas
// would) on one schema: 1,000 students race for 600 sandboxes, a fifth of
// them sending the same request to two replicas at the same moment.
func TestReplicas(t *testing.T) {
	const sandboxes, students = 600, 1000
	ctx := context.Background()
	_, u := mustSchema(t)
	stores := []*Store{mustOpen(t, u, Options{}), mustOpen(t, u, Options{}), mustOpen(t, u, Options{})}
	if _, err := stores[0].UpsertAccounts(ctx, storetest.Accounts("lab", 1, sandboxes), t0); err != nil {
		t.Fatal(err)
	}

	answers := make([][]answer, students)
	for i := range answers {
		answers[i] = make([]answer, 1+boolInt(i%5 == 0))
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range students {
		first := rand.IntN(len(stores))
		for j := range answers[i] {
			wg.Add(1)
			go func(s *Store) {
				defer wg.Done()
				<-start
				a, err := s.Allocate(ctx, allocReq(fmt.Sprintf("student-%04d", i)))
				answers[i][j] = answer{a, err}
			}(stores[(first+j)%len(stores)])
		}
	}
	began := time.Now()
	close(start)
	wg.Wait()
	t.Logf("%d students, %d calls on 3 replicas: %v", students, students+students/5, time.Since(began))

	holder := map[string]string{} // sandbox id -> owner
	noSandbox := 0
	for i, as := range answers {
		owner := fmt.Sprintf("student-%04d", i)
		var got string
		fresh := 0
		for _, an := range as {
			switch code := broker.ErrorCode(an.err); code {
			case "":
				if an.a.Sandbox.Owner != owner || an.a.Sandbox.Status != broker.StatusAllocated {
					t.Fatalf("%s got %+v", owner, an.a.Sandbox)
				}
				if got != "" && got != an.a.Sandbox.ID {
					t.Fatalf("%s got two sandboxes: %s and %s", owner, got, an.a.Sandbox.ID)
				}
				got = an.a.Sandbox.ID
				if !an.a.Replayed {
					fresh++
				}
			case broker.ENOSANDBOX:
			default:
				t.Fatalf("%s: %v", owner, an.err)
			}
		}
		if got == "" {
			noSandbox++
			continue
		}
		for _, an := range as {
			if an.err != nil {
				t.Fatalf("%s: one call got sandbox %s, its duplicate %v", owner, got, an.err)
			}
		}
		if fresh != 1 {
			t.Fatalf("%s: %d answers claim a new allocation, want 1", owner, fresh)
		}
		if prev, dup := holder[got]; dup {
			t.Fatalf("sandbox %s given to %s and %s", got, prev, owner)
		}
		holder[got] = owner
	}
	if len(holder) != sandboxes || noSandbox != students-sandboxes {
		t.Fatalf("%d allocated, %d students without; want %d and %d", len(holder), noSandbox, sandboxes, students-sandboxes)
	}
	verifyAllocated(t, stores[1], holder)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// verifyAllocated checks through the store API that exactly the sandboxes
// in holder are allocated, each to its owner with one allocation event.
func verifyAllocated(t *testing.T, s *Store, holder map[string]string) {
	t.Helper()
	ctx := context.Background()
	listed := map[string]string{}
	f := broker.ListFilter{Status: broker.StatusAllocated, Limit: 100}
	for {
		page, err := s.List(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		for _, sb := range page.Sandboxes {
			listed[sb.ID] = sb.Owner
		}
		if page.Cursor == "" {
			break
		}
		f.Cursor = page.Cursor
	}
	if len(listed) != len(holder) {
		t.Fatalf("store lists %d allocated, callers were told %d", len(listed), len(holder))
	}
	for id, owner := range holder {
		if listed[id] != owner {
			t.Fatalf("store says %s is held by %q, caller %q was told it is theirs", id, listed[id], owner)
		}
		ev, err := s.History(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		allocations := 0
		for _, e := range ev {
			if e.To == broker.StatusAllocated {
				allocations++
			}
		}
		if allocations != 1 {
			t.Fatalf("sandbox %s has %d allocation events: %+v", id, allocations, ev)
		}
	}
	st, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.ByStatus[broker.StatusAllocated] != len(holder) {
		t.Fatalf("stats count %d allocated, want %d", st.ByStatus[broker.StatusAllocated], len(holder))
	}
}
