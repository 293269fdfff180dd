package postgres

import (
	"context"
	"fmt"
	"os"
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
//	BROKER_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/bench?sslmode=disable \
//	  go test ./postgres -run '^$' -bench Allocate -benchtime 5000x
func BenchmarkAllocate(b *testing.B) {
	if os.Getenv(urlEnv) == "" {
		b.Skip("set " + urlEnv + " to run the PostgreSQL benchmarks")
	}
	for _, goroutines := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("goroutines=%d", goroutines), func(b *testing.B) {
			s := MustOpen(b)
			ctx := context.Background()
			if _, err := s.UpsertAccounts(ctx, storetest.Accounts("lab", 1_000_000, b.N+1000), time.Now()); err != nil {
				b.Fatal(err)
			}
			if _, err := s.pool.Exec(ctx, "ANALYZE sandboxes"); err != nil {
				b.Fatal(err)
			}
			var next atomic.Int64
			b.SetParallelism(max(1, goroutines/2))
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					owner := "bench-" + strconv.FormatInt(next.Add(1), 10)
					actx := broker.WithActor(ctx, broker.Actor{Name: "owner:" + owner, RequestID: owner})
					if _, err := s.Allocate(actx, broker.AllocateRequest{Owner: owner, Key: owner, LabDuration: 48 * time.Hour, Now: time.Now()}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "allocs/s")
		})
	}
}
