package sqlite_test

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/sqlite"
	"github.com/sandbox-broker/broker/storetest"
)

// seededStore opens a store on a new file holding n available sandboxes.
func seededStore(b *testing.B, n int) *sqlite.Store {
	b.Helper()
	s, err := sqlite.Open(context.Background(), filepath.Join(b.TempDir(), "bench.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	if _, err := s.UpsertAccounts(context.Background(), storetest.Accounts("lab", 1_000_000, n), time.Now()); err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkAllocate allocates one sandbox per iteration for a new owner,
// from many goroutines at once (the group-commit path: every call durable).
// The pool holds b.N + 1000 sandboxes, seeded outside the timer.
//
//	go test ./sqlite -run '^$' -bench Allocate -benchtime 20000x -cpuprofile cpu.out
func BenchmarkAllocate(b *testing.B) {
	for _, goroutines := range []int{1, 16, 64} {
		for _, prefix := range []string{"", "lab"} {
			name := fmt.Sprintf("goroutines=%d", goroutines)
			if prefix != "" {
				name += "/prefix=" + prefix
			}
			b.Run(name, func(b *testing.B) {
				s := seededStore(b, b.N+1000)
				var next atomic.Int64
				ctx := context.Background()
				alloc := func() error {
					owner := "bench-" + strconv.FormatInt(next.Add(1), 10)
					_, err := s.Allocate(broker.WithActor(ctx, broker.Actor{Name: "owner:" + owner, RequestID: owner}),
						broker.AllocateRequest{Owner: owner, Key: owner, NamePrefix: prefix, LabDuration: 48 * time.Hour, Now: time.Now()})
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
			})
		}
	}
}

// BenchmarkAllocateReplay repeats the allocation of one owner and key: the
// idempotent replay path, which still goes through the writer.
func BenchmarkAllocateReplay(b *testing.B) {
	s := seededStore(b, 10)
	ctx := context.Background()
	req := broker.AllocateRequest{Owner: "replay", Key: "replay", LabDuration: time.Hour, Now: time.Now()}
	if _, err := s.Allocate(ctx, req); err != nil {
		b.Fatal(err)
	}
	b.SetParallelism(8)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if a, err := s.Allocate(ctx, req); err != nil || !a.Replayed {
				b.Errorf("replay: %v %v", a.Replayed, err)
				return
			}
		}
	})
}
