package metrics_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/httpapi"
	"github.com/sandbox-broker/broker/internal/fakeclock"
	"github.com/sandbox-broker/broker/jobs"
	"github.com/sandbox-broker/broker/metrics"
	"github.com/sandbox-broker/broker/service"
	"github.com/sandbox-broker/broker/sqlite"
	"github.com/sandbox-broker/broker/storetest"
)

// Metrics is what cmd/sandbox-broker passes to the API and the job runner.
var (
	_ httpapi.Observer = (*metrics.Metrics)(nil)
	_ jobs.Observer    = (*metrics.Metrics)(nil)
)

const (
	trackToken   = "track-secret"
	metricsToken = "metrics-secret"
)

// apiEnv is the broker's API on a real SQLite store, with metrics wired as
// in cmd/sandbox-broker: Observer and GET /metrics.
type apiEnv struct {
	t     *testing.T
	url   string
	store *sqlite.Store
	clock *fakeclock.Clock
}

func newAPI(t *testing.T, sandboxes int, token string) *apiEnv {
	t.Helper()
	store, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "b.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	clock := newClock()
	if _, err := store.UpsertAccounts(context.Background(), storetest.Accounts("lab", 5000, sandboxes), clock.Now()); err != nil {
		t.Fatal(err)
	}
	m := metrics.New(metrics.Options{Store: store, Clock: clock})
	srv := httptest.NewServer(httpapi.New(httpapi.Config{
		APITokens: []string{trackToken}, AdminTokens: []string{"admin-secret"},
		Service: service.New(store, clock, 48*time.Hour), Store: store, Clock: clock,
		Observer: m, Extra: map[string]http.Handler{"GET /metrics": m.Handler(token)},
	}))
	t.Cleanup(srv.Close)
	return &apiEnv{t: t, url: srv.URL, store: store, clock: clock}
}

func (e *apiEnv) do(method, path string, headers ...string) (*http.Response, string) {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.url+path, nil)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp, string(raw)
}

func (e *apiEnv) scrape(headers ...string) map[string]float64 {
	e.t.Helper()
	resp, body := e.do("GET", "/metrics", headers...)
	if resp.StatusCode != 200 {
		e.t.Fatalf("GET /metrics = %d %s", resp.StatusCode, body)
	}
	return parse(e.t, body)
}

func trackHeaders(owner string, more ...string) []string {
	return append([]string{"Authorization", "Bearer " + trackToken, "X-Instruqt-Sandbox-ID", owner}, more...)
}

func TestAPIMetrics(t *testing.T) {
	e := newAPI(t, 2, "")
	steps := []struct {
		method, path string
		headers      []string
		status       int
	}{
		{"POST", "/v1/allocate", trackHeaders("s1", "X-Instruqt-Track-ID", "lab-a"), 201},
		{"POST", "/v1/allocate", trackHeaders("s1"), 200}, // replay
		{"POST", "/v1/allocate", trackHeaders("s2", "X-Instruqt-Track-ID", "lab-b"), 201},
		{"POST", "/v1/allocate", trackHeaders("s3"), 409}, // pool empty
		{"POST", "/v1/allocate", []string{"Authorization", "Bearer wrong", "X-Instruqt-Sandbox-ID", "s4"}, 401},
		{"GET", "/v1/sandboxes/5000", trackHeaders("s1"), 200},
		{"GET", "/v1/sandboxes/5001", trackHeaders("s1"), 403},
		{"POST", "/v1/sandboxes/5000/mark-for-deletion", trackHeaders("s1"), 200},
		{"POST", "/v1/sandboxes/5001/mark-for-deletion", trackHeaders("s1"), 403},
		{"GET", "/no/such/path", nil, 404},
		{"DELETE", "/v1/allocate", nil, 405},
	}
	for _, s := range steps {
		if resp, body := e.do(s.method, s.path, s.headers...); resp.StatusCode != s.status {
			t.Fatalf("%s %s = %d %s, want %d", s.method, s.path, resp.StatusCode, body, s.status)
		}
	}
	e.clock.Add(30 * time.Second) // the deletion request is 30 s old
	got := e.scrape()
	st, err := e.store.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want(t, got, map[string]float64{
		`broker_allocate_total{outcome="success"}`:                   2,
		`broker_allocate_total{outcome="idempotent"}`:                1,
		`broker_allocate_total{outcome="no_sandboxes"}`:              1,
		`broker_allocate_total{outcome="error"}`:                     0,
		`broker_allocate_idempotent_hits_total`:                      1,
		`broker_allocation_latency_seconds_count{outcome="success"}`: 2,
		`broker_deletion_marked_total{outcome="success"}`:            1,
		`broker_deletion_marked_total{outcome="not_owner"}`:          1,

		`broker_http_requests_total{code="201",method="POST",route="/v1/allocate"}`:                         2,
		`broker_http_requests_total{code="200",method="POST",route="/v1/allocate"}`:                         1,
		`broker_http_requests_total{code="409",method="POST",route="/v1/allocate"}`:                         1,
		`broker_http_requests_total{code="401",method="POST",route="/v1/allocate"}`:                         1,
		`broker_http_requests_total{code="200",method="GET",route="/v1/sandboxes/{id}"}`:                    1,
		`broker_http_requests_total{code="403",method="GET",route="/v1/sandboxes/{id}"}`:                    1,
		`broker_http_requests_total{code="200",method="POST",route="/v1/sandboxes/{id}/mark-for-deletion"}`: 1,
		`broker_http_requests_total{code="404",method="GET",route="/"}`:                                     1,
		`broker_http_requests_total{code="405",method="DELETE",route="/v1/allocate"}`:                       1,
		`broker_http_request_duration_seconds_count{method="GET",route="/v1/sandboxes/{id}"}`:               2,

		`broker_pool_total`:                        float64(st.Total),
		`broker_pool_available`:                    float64(st.ByStatus[broker.StatusAvailable]),
		`broker_pool_allocated`:                    float64(st.ByStatus[broker.StatusAllocated]),
		`broker_pool_pending_deletion`:             float64(st.ByStatus[broker.StatusPendingDeletion] + st.ByStatus[broker.StatusDeleting]),
		`broker_pool_stale`:                        float64(st.ByStatus[broker.StatusStale]),
		`broker_pool_deletion_failed`:              float64(st.ByStatus[broker.StatusDeletionFailed]),
		`broker_pool_by_track{track_name="lab-a"}`: float64(st.ByTrack["lab-a"]),
		`broker_pool_by_track{track_name="lab-b"}`: float64(st.ByTrack["lab-b"]),
		`broker_deletion_backlog_oldest_seconds`:   30,
		`broker_pool_scrape_errors_total`:          0,
	})
	for _, s := range broker.Statuses() {
		if v := got[`broker_pool_sandboxes{status="`+string(s)+`"}`]; v != float64(st.ByStatus[s]) {
			t.Errorf("broker_pool_sandboxes{status=%q} = %v, Stats says %d", s, v, st.ByStatus[s])
		}
	}
	if st.Total != 2 || st.ByStatus[broker.StatusAllocated] != 1 || st.ByStatus[broker.StatusPendingDeletion] != 1 {
		t.Fatalf("unexpected store state %+v", st)
	}
	// The scrape itself is counted (it is a route of the API).
	got = e.scrape()
	want(t, got, map[string]float64{`broker_http_requests_total{code="200",method="GET",route="/metrics"}`: 1})
}

func TestAPIMetricsToken(t *testing.T) {
	e := newAPI(t, 1, metricsToken)
	tests := []struct {
		name    string
		headers []string
		status  int
	}{
		{"NoToken", nil, 401},
		{"TrackToken", []string{"Authorization", "Bearer " + trackToken}, 401},
		{"MetricsToken", []string{"Authorization", "Bearer " + metricsToken}, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := e.do("GET", "/metrics", append(tt.headers, "X-Request-ID", "scrape-"+tt.name)...)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, body)
			}
			if resp.Header.Get("X-Frame-Options") != "DENY" || resp.Header.Get("X-Request-ID") != "scrape-"+tt.name {
				t.Fatalf("outer middleware headers missing: %v", resp.Header)
			}
			if tt.status == 200 {
				return
			}
			var env map[string]map[string]string
			if err := json.Unmarshal([]byte(body), &env); err != nil || env["error"]["code"] != "UNAUTHORIZED" || env["error"]["request_id"] != "scrape-"+tt.name {
				t.Fatalf("401 body = %s", body)
			}
		})
	}
}

func TestAPIMetricsClosedStore(t *testing.T) {
	e := newAPI(t, 1, "")
	if resp, _ := e.do("POST", "/v1/allocate", trackHeaders("s1")...); resp.StatusCode != 201 {
		t.Fatalf("allocate = %d", resp.StatusCode)
	}
	e.store.Close()
	got := e.scrape() // fails the test unless 200
	want(t, got, map[string]float64{
		`broker_pool_scrape_errors_total`:          1,
		`broker_pool_available`:                    absent,
		`broker_pool_total`:                        absent,
		`broker_allocate_total{outcome="success"}`: 1,
	})
}
