package metrics_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/csp"
	"github.com/sandbox-broker/broker/internal/fakeclock"
	"github.com/sandbox-broker/broker/lifecycle"
	"github.com/sandbox-broker/broker/metrics"
)

func newClock() *fakeclock.Clock { return fakeclock.New(time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)) }

// statsStore answers Stats from a function and counts the calls; the other
// methods are not used by the metrics.
type statsStore struct {
	broker.SandboxStore
	calls atomic.Int32
	stats func(ctx context.Context) (broker.Stats, error)
}

func (s *statsStore) Stats(ctx context.Context) (broker.Stats, error) {
	s.calls.Add(1)
	return s.stats(ctx)
}

// scrape GETs the metrics handler and parses the text exposition into
// series -> value, a series written as exposed, e.g.
// broker_allocate_total{outcome="success"}.
func scrape(t *testing.T, h http.Handler, headers ...string) (int, map[string]float64, string) {
	t.Helper()
	req := httptest.NewRequest("GET", "/metrics", nil)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	body := rec.Body.String()
	return rec.Code, parse(t, body), body
}

func parse(t *testing.T, body string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad sample line %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

// absent as a wanted value means the series must not be exposed.
const absent = -1e9

// want checks series values.
func want(t *testing.T, got map[string]float64, series map[string]float64) {
	t.Helper()
	for s, w := range series {
		v, ok := got[s]
		switch {
		case w == absent && ok:
			t.Errorf("%s = %v, want it absent", s, v)
		case w != absent && !ok:
			t.Errorf("%s absent, want %v", s, w)
		case w != absent && v != w:
			t.Errorf("%s = %v, want %v", s, v, w)
		}
	}
}

func TestObservers(t *testing.T) {
	clock := newClock()
	m := metrics.New(metrics.Options{Clock: clock})
	m.ObserveHTTP("GET", "GET /v1/sandboxes/{id}", 200, 10*time.Millisecond)
	m.ObserveHTTP("BREW", "/", 405, time.Millisecond)
	m.ObserveHTTP("GET", "/healthz", 0, time.Millisecond)
	m.ObserveAllocate("success", 20*time.Millisecond)
	m.ObserveAllocate("idempotent", 5*time.Millisecond)
	m.ObserveAllocate("idempotent", 5*time.Millisecond)
	m.ObserveMark("not_owner")

	m.JobFinished("sync", lifecycle.SyncResult{Listed: 10, Inserted: 3, Revived: 2, Refreshed: 5, MarkedStale: 1, StaleRefused: 4}, nil, 2*time.Second)
	m.JobFinished("sync", lifecycle.SyncResult{}, errors.New("provider down"), time.Second)
	m.JobFinished("cleanup", lifecycle.CleanupResult{Deleted: 4, AlreadyGone: 1, Retrying: 2, Failed: 1}, nil, time.Second)
	m.JobFinished("expiry", lifecycle.ExpiryResult{Expired: 7}, nil, time.Second)
	m.JobFinished("stale_purge", &lifecycle.PurgeResult{Deleted: 2}, nil, time.Second)
	m.JobFinished("custom", nil, nil, time.Second)

	m.NIOSXaaSResult(csp.OutcomeShadow)
	m.NIOSXaaSAuth(csp.AuthFailed)
	m.NIOSXaaSServiceDeleted()
	m.NIOSXaaSServiceDeleted()

	_, got, _ := scrape(t, m.Handler(""))
	want(t, got, map[string]float64{
		`broker_http_requests_total{code="200",method="GET",route="/v1/sandboxes/{id}"}`:      1,
		`broker_http_requests_total{code="405",method="other",route="/"}`:                     1,
		`broker_http_requests_total{code="200",method="GET",route="/healthz"}`:                1,
		`broker_http_request_duration_seconds_count{method="GET",route="/v1/sandboxes/{id}"}`: 1,
		`broker_allocate_total{outcome="success"}`:                                            1,
		`broker_allocate_total{outcome="idempotent"}`:                                         2,
		`broker_allocate_total{outcome="no_sandboxes"}`:                                       0, // pre-created
		`broker_allocate_idempotent_hits_total`:                                               2,
		`broker_allocation_latency_seconds_count{outcome="idempotent"}`:                       2,
		`broker_allocation_latency_seconds_bucket{outcome="idempotent",le="0.01"}`:            2,
		`broker_deletion_marked_total{outcome="not_owner"}`:                                   1,
		`broker_deletion_marked_total{outcome="success"}`:                                     0,

		`broker_job_runs_total{job_name="sync",outcome="success"}`:             1,
		`broker_job_runs_total{job_name="sync",outcome="error"}`:               1,
		`broker_job_runs_total{job_name="custom",outcome="success"}`:           1,
		`broker_job_duration_seconds_count{job_name="sync"}`:                   2,
		`broker_job_last_success_timestamp_seconds{job_name="sync"}`:           float64(clock.Now().Unix()),
		`broker_sync_total{outcome="success"}`:                                 1,
		`broker_sync_total{outcome="error"}`:                                   1,
		`broker_sync_sandboxes_synced_total`:                                   5,
		`broker_sync_sandboxes_stale_total`:                                    1,
		`broker_sync_stale_refused_total`:                                      4,
		`broker_sync_duration_seconds_count`:                                   2,
		`broker_sync_duration_seconds_bucket{le="1"}`:                          1,
		`broker_cleanup_total{outcome="success"}`:                              1,
		`broker_cleanup_deleted_total`:                                         4,
		`broker_cleanup_failed_total`:                                          1,
		`broker_cleanup_already_gone_total`:                                    1,
		`broker_cleanup_retrying_total`:                                        2,
		`broker_cleanup_duration_seconds_count`:                                1,
		`broker_expiry_total{outcome="success"}`:                               1,
		`broker_expiry_orphaned_total`:                                         7,
		`broker_stale_purge_deleted_total`:                                     2,
		`broker_niosxaas_cleanup_total{outcome="shadow"}`:                      1,
		`broker_niosxaas_cleanup_total{outcome="success"}`:                     0,
		`broker_niosxaas_auth_total{outcome="failed"}`:                         1,
		`broker_niosxaas_services_deleted_total`:                               2,
		`broker_job_last_success_timestamp_seconds{job_name="sync_never_ran"}`: absent,
		`broker_pool_available`:                                                absent, // no store: no pool gauges
		`broker_pool_scrape_errors_total`:                                      absent,
		`broker_http_requests_total{code="405",method="BREW",route="/"}`:       absent,
		`broker_circuit_breaker_state{breaker="eng_csp"}`:                      absent,
		`broker_job_last_success_timestamp_seconds{job_name="stale_purge"}`:    float64(clock.Now().Unix()),
		`broker_allocation_latency_seconds_bucket{outcome="success",le="1"}`:   1,
	})
	if _, ok := got["go_goroutines"]; !ok {
		t.Error("Go runtime collector missing")
	}
	if _, ok := got["process_start_time_seconds"]; !ok {
		t.Log("process collector gives no process_start_time_seconds on this platform")
	}
}

func TestBreakerState(t *testing.T) {
	m := metrics.New(metrics.Options{})
	var mu sync.Mutex
	state := csp.StateClosed
	m.RegisterBreaker(csp.BreakerCSP, func() string { mu.Lock(); defer mu.Unlock(); return state })
	m.RegisterBreaker(csp.BreakerNIOSXaaS, func() string { return csp.StateHalfOpen })
	tests := []struct {
		state string
		want  float64
	}{{csp.StateClosed, 0}, {csp.StateHalfOpen, 1}, {csp.StateOpen, 2}, {"confused", -1}}
	for _, tt := range tests {
		mu.Lock()
		state = tt.state
		mu.Unlock()
		_, got, _ := scrape(t, m.Handler(""))
		want(t, got, map[string]float64{
			`broker_circuit_breaker_state{breaker="eng_csp"}`:  tt.want,
			`broker_circuit_breaker_state{breaker="niosxaas"}`: 1,
		})
	}
	// Registering a name again replaces its function instead of panicking.
	m.RegisterBreaker(csp.BreakerNIOSXaaS, func() string { return csp.StateOpen })
	_, got, _ := scrape(t, m.Handler(""))
	want(t, got, map[string]float64{`broker_circuit_breaker_state{breaker="niosxaas"}`: 2})
}

func TestPoolGauges(t *testing.T) {
	clock := newClock()
	byTrack := map[string]int{"other": 1, "t-\xff": 1000}
	for i := range 60 {
		byTrack["track-"+strconv.Itoa(100+i)] = 100 + i // track-159 is the largest
	}
	stats := broker.Stats{
		Total: 20,
		ByStatus: map[broker.Status]int{broker.StatusAvailable: 5, broker.StatusAllocated: 4, broker.StatusPendingDeletion: 3,
			broker.StatusDeleting: 2, broker.StatusStale: 1, broker.StatusDeletionFailed: 5},
		ByTrack:               byTrack,
		OldestDeletionRequest: clock.Now().Add(-90 * time.Second),
	}
	store := &statsStore{stats: func(context.Context) (broker.Stats, error) { return stats, nil }}
	m := metrics.New(metrics.Options{Store: store, Clock: clock, MaxTracks: 50})
	h := m.Handler("")

	code, got, body := scrape(t, h)
	if code != 200 {
		t.Fatalf("scrape = %d", code)
	}
	// "t-\xff" (made valid UTF-8) and tracks 111..159 are the 50 largest;
	// 100..110 and the real track "other" sum to "other".
	other := 1
	for i := range 11 {
		other += 100 + i
	}
	want(t, got, map[string]float64{
		`broker_pool_available`:                            5,
		`broker_pool_allocated`:                            4,
		`broker_pool_pending_deletion`:                     5, // pending_deletion + deleting
		`broker_pool_stale`:                                1,
		`broker_pool_deletion_failed`:                      5,
		`broker_pool_total`:                                20,
		`broker_pool_sandboxes{status="deleting"}`:         2,
		`broker_pool_sandboxes{status="pending_deletion"}`: 3,
		`broker_pool_by_track{track_name="track-159"}`:     159,
		`broker_pool_by_track{track_name="track-111"}`:     111,
		"broker_pool_by_track{track_name=\"t-\uFFFD\"}":    1000,
		`broker_pool_by_track{track_name="track-110"}`:     absent,
		`broker_pool_by_track{track_name="other"}`:         float64(other),
		`broker_deletion_backlog_oldest_seconds`:           90,
		`broker_pool_scrape_errors_total`:                  0,
	})
	if n := strings.Count(body, "broker_pool_by_track{"); n != 51 {
		t.Errorf("%d track series, want 50 + other", n)
	}

	// Within the cache TTL the store is not asked again; the backlog age
	// still follows the clock.
	clock.Add(4 * time.Second)
	_, got, _ = scrape(t, h)
	if c := store.calls.Load(); c != 1 {
		t.Fatalf("store asked %d times within the cache TTL", c)
	}
	want(t, got, map[string]float64{`broker_deletion_backlog_oldest_seconds`: 94})
	clock.Add(time.Second)
	scrape(t, h)
	if c := store.calls.Load(); c != 2 {
		t.Fatalf("store asked %d times, want a refresh after the TTL", c)
	}

	// No deletion backlog: 0.
	stats.OldestDeletionRequest = time.Time{}
	clock.Add(10 * time.Second)
	_, got, _ = scrape(t, h)
	want(t, got, map[string]float64{`broker_deletion_backlog_oldest_seconds`: 0})
}

func TestPoolStoreFailure(t *testing.T) {
	tests := []struct {
		name  string
		stats func(ctx context.Context) (broker.Stats, error)
	}{
		{"Error", func(context.Context) (broker.Stats, error) {
			return broker.Stats{}, broker.Unavailable(errors.New("connection refused"))
		}},
		{"Timeout", func(ctx context.Context) (broker.Stats, error) {
			<-ctx.Done()
			return broker.Stats{}, ctx.Err()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := &statsStore{stats: tt.stats}
			m := metrics.New(metrics.Options{Store: store, PoolTimeout: 50 * time.Millisecond})
			m.ObserveAllocate("success", time.Millisecond)
			for i := 1; i <= 2; i++ {
				code, got, _ := scrape(t, m.Handler(""))
				if code != 200 {
					t.Fatalf("scrape with a failing store = %d, want 200", code)
				}
				want(t, got, map[string]float64{
					`broker_pool_scrape_errors_total`:          float64(i), // failures are not cached
					`broker_pool_available`:                    absent,
					`broker_pool_sandboxes{status="stale"}`:    absent,
					`broker_deletion_backlog_oldest_seconds`:   absent,
					`broker_allocate_total{outcome="success"}`: 1, // everything else is served
				})
			}
		})
	}
}

func TestHandlerToken(t *testing.T) {
	m := metrics.New(metrics.Options{})
	tests := []struct {
		name    string
		token   string
		headers []string
		status  int
	}{
		{"NoTokenConfigured", "", nil, 200},
		{"Missing", "scrape-secret", nil, 401},
		{"Wrong", "scrape-secret", []string{"Authorization", "Bearer nope"}, 401},
		{"Prefix", "scrape-secret", []string{"Authorization", "Bearer scrape-secre"}, 401},
		{"WrongScheme", "scrape-secret", []string{"Authorization", "Basic scrape-secret"}, 401},
		{"Right", "scrape-secret", []string{"Authorization", "Bearer scrape-secret"}, 200},
		{"SchemeCase", "scrape-secret", []string{"Authorization", "bearer scrape-secret"}, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := m.Handler(tt.token)
			req := httptest.NewRequest("GET", "/metrics", nil)
			for i := 0; i+1 < len(tt.headers); i += 2 {
				req.Header.Set(tt.headers[i], tt.headers[i+1])
			}
			rec := httptest.NewRecorder()
			rec.Header().Set("X-Request-ID", "req-42") // as the API's outer middleware does
			h.ServeHTTP(rec, req)
			if rec.Code != tt.status {
				t.Fatalf("status %d, want %d", rec.Code, tt.status)
			}
			if tt.status == 200 {
				if !strings.Contains(rec.Body.String(), "broker_allocate_total") {
					t.Fatalf("no metrics in %q", rec.Body.String())
				}
				return
			}
			var env struct {
				Error struct{ Code, Message, RequestID string } `json:"error"`
			}
			raw, _ := io.ReadAll(rec.Body)
			if err := json.Unmarshal(raw, &env); err != nil || env.Error.Code != "UNAUTHORIZED" {
				t.Fatalf("401 body is not the envelope: %s", raw)
			}
			var withID map[string]map[string]string
			_ = json.Unmarshal(raw, &withID)
			if withID["error"]["request_id"] != "req-42" {
				t.Fatalf("request_id = %q, want the X-Request-ID header", withID["error"]["request_id"])
			}
			if strings.Contains(string(raw), "scrape-secret") || strings.Contains(string(raw), "broker_") {
				t.Fatalf("401 leaks: %s", raw)
			}
		})
	}
}
