package postgres

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/storetest"
)

// BenchmarkAllocate allocates one sandbox per iteration for a new owner
// from many goroutines, on a fresh schema holding b.N + 1000 sandboxes
// (seeded outside the timer). It skips without BROKER_TEST_POSTGRES_URL.
//
// stats=analyzed runs ANALYZE after seeding, as autovacuum does on a
// long-lived pool: the planner then believes almost nothing is allocated.
// stats=none measures the freshly seeded table the planner knows nothing of.
//
//	BROKER_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/bench?sslmode=disable \
//	  go test ./postgres -run '^$' -bench Allocate -benchtime 5000x
func BenchmarkAllocate(b *testing.B) {
	if os.Getenv(urlEnv) == "" {
		b.Skip("set " + urlEnv + " to run the PostgreSQL benchmarks")
	}
	for _, goroutines := range []int{1, 16, 64} {
		for _, analyzed := range []bool{true, false} {
			name := fmt.Sprintf("goroutines=%d/stats=none", goroutines)
			if analyzed {
				name = fmt.Sprintf("goroutines=%d/stats=analyzed", goroutines)
			}
			b.Run(name, func(b *testing.B) { benchAllocate(b, goroutines, analyzed) })
		}
	}
}

func benchAllocate(b *testing.B, goroutines int, analyzed bool) {
	s := MustOpen(b)
	ctx := context.Background()
	if _, err := s.UpsertAccounts(ctx, storetest.Accounts("lab", 1_000_000, b.N+1000), time.Now()); err != nil {
		b.Fatal(err)
	}
	if analyzed {
		if _, err := s.pool.Exec(ctx, "ANALYZE sandboxes"); err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Int64
	alloc := func() error {
		owner := "bench-" + strconv.FormatInt(next.Add(1), 10)
		actx := broker.WithActor(ctx, broker.Actor{Name: "owner:" + owner, RequestID: owner})
		_, err := s.Allocate(actx, broker.AllocateRequest{Owner: owner, Key: owner, LabDuration: 48 * time.Hour, Now: time.Now()})
		return err
	}
	b.ReportAllocs()
	b.ResetTimer()
	if goroutines == 1 {
		for range b.N {
			if err := alloc(); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		// RunParallel starts parallelism x GOMAXPROCS goroutines.
		b.SetParallelism(max(1, goroutines/runtime.GOMAXPROCS(0)))
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := alloc(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "allocs/s")
}
