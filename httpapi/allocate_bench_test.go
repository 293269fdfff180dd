package httpapi_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/httpapi"
	"github.com/sandbox-broker/broker/service"
	"github.com/sandbox-broker/broker/sqlite"
	"github.com/sandbox-broker/broker/storetest"
)

// stubStore answers Allocate at once with a fixed sandbox, so that the
// benchmark measures request handling only (routing, auth, headers,
// validation, the service call, JSON). Other methods are not used.
type stubStore struct {
	broker.Store
	sb broker.Sandbox
}

func (s *stubStore) Allocate(_ context.Context, req broker.AllocateRequest) (broker.Allocation, error) {
	sb := s.sb
	sb.Owner, sb.IdempotencyKey, sb.AllocatedAt = req.Owner, req.Key, req.Now
	sb.ExpiresAt = broker.ExpiresAt(req.Now, req.LabDuration)
	return broker.Allocation{Sandbox: sb}, nil
}

func (s *stubStore) Ping(context.Context) error { return nil }

// BenchmarkAllocateHandler sends POST /v1/allocate through the full
// handler stack with httptest (no network), for a new owner each time.
//
//	go test ./httpapi -run '^$' -bench AllocateHandler -cpuprofile cpu.out
func BenchmarkAllocateHandler(b *testing.B) {
	stub := &stubStore{sb: broker.Sandbox{ID: "2000001", Name: "lab-0001", ExternalID: "identity/accounts/x", SFDCAccountID: "001SAND2000001", Status: broker.StatusAllocated}}
	b.Run("store=stub", func(b *testing.B) { benchAllocate(b, stub) })
	b.Run("store=sqlite", func(b *testing.B) {
		s, err := sqlite.Open(context.Background(), filepath.Join(b.TempDir(), "bench.db"))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close() })
		if _, err := s.UpsertAccounts(context.Background(), storetest.Accounts("lab", 1_000_000, b.N+1000), time.Now()); err != nil {
			b.Fatal(err)
		}
		benchAllocate(b, s)
	})
}

func benchAllocate(b *testing.B, store broker.Store) {
	srv := httpapi.New(httpapi.Config{
		APITokens: []string{"track-token"}, AdminTokens: []string{"admin-token"},
		Service: service.New(store, nil, 48*time.Hour), Store: store,
	})
	var next atomic.Int64
	b.SetParallelism(32) // 64 goroutines on 2 CPUs, like 64 clients
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			owner := "student-" + strconv.FormatInt(next.Add(1), 10)
			req := httptest.NewRequest(http.MethodPost, "/v1/allocate", nil)
			req.Header.Set("Authorization", "Bearer track-token")
			req.Header.Set("X-Instruqt-Sandbox-ID", owner)
			req.Header.Set("Idempotency-Key", "k-"+owner)
			rec := httptest.NewRecorder()
			srv.ServeHTTP(rec, req)
			if rec.Code != http.StatusCreated {
				b.Errorf("status %d: %s", rec.Code, rec.Body)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}
