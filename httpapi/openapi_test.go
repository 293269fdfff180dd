package httpapi_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/httpapi"
	"github.com/sandbox-broker/broker/jobs"
	"github.com/sandbox-broker/broker/metrics"
	"github.com/sandbox-broker/broker/ratelimit"
	"github.com/sandbox-broker/broker/service"
	"github.com/sandbox-broker/broker/sqlite"
	"github.com/sandbox-broker/broker/storetest"
)

const (
	specTrackToken   = "spec-track-token"
	specAdminToken   = "spec-admin-token"
	specMetricsToken = "spec-metrics-token"
)

func init() {
	// The docs page and its assets are text; validate them as strings.
	for _, ct := range []string{"text/html", "text/css", "text/javascript"} {
		openapi3filter.RegisterBodyDecoder(ct, openapi3filter.PlainBodyDecoder)
	}
}

// loadSpec parses and validates an OpenAPI document.
func loadSpec(t *testing.T, raw []byte) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(raw)
	if err != nil {
		t.Fatalf("load openapi.json: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("openapi.json is not a valid OpenAPI 3 document: %v", err)
	}
	return doc
}

// metricsRoute is the Extra root route cmd wires in: the real metrics
// handler, guarded by METRICS_TOKEN.
func metricsRoute(store broker.SandboxStore) map[string]http.Handler {
	return map[string]http.Handler{"GET /metrics": metrics.New(metrics.Options{Store: store}).Handler(specMetricsToken)}
}

// documented returns every "METHOD /path" operation of doc.
func documented(doc *openapi3.T) []string {
	var out []string
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			out = append(out, method+" "+path)
		}
	}
	sort.Strings(out)
	return out
}

// routed returns the server's routes plus its Extra root routes.
func routed(s *httpapi.Server, extra map[string]http.Handler) []string {
	out := s.Routes()
	for pattern := range extra {
		out = append(out, pattern)
	}
	sort.Strings(out)
	return out
}

func TestOpenAPIRoutesMatch(t *testing.T) {
	for _, base := range []string{"/v1", "/api/broker", "/"} {
		t.Run(strings.Trim(base, "/"), func(t *testing.T) {
			extra := metricsRoute(nil)
			srv := httpapi.New(httpapi.Config{BasePath: base, Extra: extra, APITokens: []string{"x"}, AdminTokens: []string{"y"}})
			rec := httptest.NewRecorder()
			srv.ServeHTTP(rec, httptest.NewRequest("GET", strings.TrimRight(base, "/")+"/openapi.json", nil))
			if rec.Code != http.StatusOK {
				t.Fatalf("GET openapi.json = %d %s", rec.Code, rec.Body)
			}
			doc := loadSpec(t, rec.Body.Bytes())
			docOps, routes := documented(doc), routed(srv, extra)
			for _, r := range routes {
				if !slices.Contains(docOps, r) {
					t.Errorf("route %q is not documented in httpapi/openapi.json", r)
				}
			}
			for _, op := range docOps {
				if !slices.Contains(routes, op) {
					t.Errorf("documented operation %q is not routed", op)
				}
			}
		})
	}
}

func TestOpenAPIEmbeddedDocumentIsValid(t *testing.T) {
	raw, err := httpapi.OpenAPI("/v1")
	if err != nil {
		t.Fatal(err)
	}
	doc := loadSpec(t, raw)
	// Every operation says how it fails when it can fail, and every error
	// response lists its error codes.
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			if op.OperationID == "" || op.Summary == "" {
				t.Errorf("%s %s: operationId and summary are required", method, path)
			}
			for status, ref := range op.Responses.Map() {
				if usesEnvelope(ref.Value) != (ref.Value.Extensions["x-error-codes"] != nil) {
					t.Errorf("%s %s %s: an error envelope response needs x-error-codes, and only it", method, path, status)
				}
			}
		}
	}
}

// usesEnvelope reports whether a response's body is the error envelope.
func usesEnvelope(r *openapi3.Response) bool {
	mt := r.Content.Get("application/json")
	return mt != nil && mt.Schema != nil && mt.Schema.Ref == "#/components/schemas/Error"
}

// specClock is a settable test clock.
type specClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *specClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

// faultStore fails every sandbox and job operation with err: an unexpected
// (non-domain) error, which the API must answer with 500 INTERNAL_ERROR, or
// EUNAVAILABLE, as a store that cannot be reached returns (then Ping fails
// too), which the API must answer with 503.
type faultStore struct {
	broker.Store
	err error
}

var (
	errFault       = errors.New("disk on fire")
	errUnreachable = broker.Unavailable(errors.New("connection refused"))
)

func (f faultStore) Ping(ctx context.Context) error {
	if broker.ErrorCode(f.err) == broker.EUNAVAILABLE {
		return f.err
	}
	return f.Store.Ping(ctx)
}

func (f faultStore) Allocate(context.Context, broker.AllocateRequest) (broker.Allocation, error) {
	return broker.Allocation{}, f.err
}
func (f faultStore) Get(context.Context, string) (broker.Sandbox, error) {
	return broker.Sandbox{}, f.err
}
func (f faultStore) MarkForDeletion(context.Context, broker.MarkRequest) (broker.Sandbox, error) {
	return broker.Sandbox{}, f.err
}
func (f faultStore) List(context.Context, broker.ListFilter) (broker.ListPage, error) {
	return broker.ListPage{}, f.err
}
func (f faultStore) Stats(context.Context) (broker.Stats, error)             { return broker.Stats{}, f.err }
func (f faultStore) History(context.Context, string) ([]broker.Event, error) { return nil, f.err }
func (f faultStore) BulkDelete(context.Context, broker.Status, bool, time.Time) (int, error) {
	return 0, f.err
}
func (f faultStore) RetryDeletion(context.Context, string, time.Time) (broker.Sandbox, error) {
	return broker.Sandbox{}, f.err
}
func (f faultStore) PurgeStale(context.Context, time.Time, time.Time) (int, error) { return 0, f.err }
func (f faultStore) SetJobPaused(context.Context, string, bool) error              { return f.err }
func (f faultStore) PausedJobs(context.Context) (map[string]bool, error)           { return nil, f.err }
func (f faultStore) SaveJobRun(context.Context, broker.JobRun) error               { return f.err }

// specRunner returns a job runner (not started) with the broker's jobs;
// enabled says whether sync, cleanup and expiry may run.
func specRunner(store broker.Store, clock broker.Clock, enabled bool) *jobs.Runner {
	noop := func(context.Context) (any, error) { return map[string]int{"n": 0}, nil }
	var js []jobs.Job
	for _, name := range []string{"sync", "cleanup", "expiry", "stale_purge"} {
		on := enabled && name != "stale_purge"
		js = append(js, jobs.Job{Name: name, Enabled: on, Disabled: "disabled in this test", Interval: time.Minute, Run: noop})
	}
	return jobs.New(jobs.Config{Store: store, Clock: clock, Jobs: js})
}

// specServers are brokers in the states the responses need.
type specServers struct {
	ok, disabled, noJobs, unreachable, faulty, limited *httptest.Server
	dbPath                                             string
	store                                              *sqlite.Store
	clock                                              *specClock
}

func newSpecServers(t *testing.T) *specServers {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	s := &specServers{dbPath: filepath.Join(dir, "broker.db"), clock: &specClock{t: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)}}
	store, err := sqlite.Open(ctx, s.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	s.store = store
	if _, err := store.UpsertAccounts(ctx, storetest.Accounts("lab", 5000, 9), s.clock.Now()); err != nil {
		t.Fatal(err)
	}
	// Every broker has the production rate limiter: generous, except on
	// the limited one, which allows one request and then answers 429.
	start := func(st broker.Store, jc httpapi.JobControl, rps float64) *httptest.Server {
		cfg := httpapi.Config{
			APITokens: []string{specTrackToken}, AdminTokens: []string{specAdminToken},
			Service: service.New(st, s.clock, 48*time.Hour), Store: st, Clock: s.clock,
			Extra:      metricsRoute(st),
			Middleware: httpapi.RateLimit(ratelimit.New(ratelimit.Config{RPS: rps, Burst: 1000}), nil),
		}
		if rps < 1 {
			cfg.Middleware = httpapi.RateLimit(ratelimit.New(ratelimit.Config{RPS: rps, Burst: 1}), nil)
		}
		if jc != nil {
			cfg.Jobs = jc
		}
		srv := httptest.NewServer(httpapi.New(cfg))
		t.Cleanup(srv.Close)
		return srv
	}
	s.ok = start(store, specRunner(store, s.clock, true), 1000)
	s.disabled = start(store, specRunner(store, s.clock, false), 1000)
	s.noJobs = start(store, nil, 1000)
	unreachable := faultStore{store, errUnreachable}
	s.unreachable = start(unreachable, specRunner(unreachable, s.clock, true), 1000)
	faulty := faultStore{store, errFault}
	s.faulty = start(faulty, specRunner(faulty, s.clock, true), 1000)
	s.limited = start(store, specRunner(store, s.clock, true), 0.001)
	return s
}

// specCase is one real request and the status it must get.
type specCase struct {
	srv     *httptest.Server
	op      string // documented "METHOD /path template"
	path    string // real path and query
	headers []string
	status  int
	valid   bool // the request itself must match the document
}

// specCall sends c, validates the response against the operation's response
// for its status (and the request, when c.valid), and returns the body.
func specCall(t *testing.T, doc *openapi3.T, c specCase) map[string]any {
	t.Helper()
	method, tmpl, _ := strings.Cut(c.op, " ")
	item := doc.Paths.Value(tmpl)
	if item == nil || item.GetOperation(method) == nil {
		t.Fatalf("%s is not documented", c.op)
	}
	route := &routers.Route{Spec: doc, Path: tmpl, PathItem: item, Method: method, Operation: item.GetOperation(method)}
	req, err := http.NewRequest(method, c.srv.URL+c.path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(c.headers); i += 2 {
		req.Header.Set(c.headers[i], c.headers[i+1])
	}
	reqInput := &openapi3filter.RequestValidationInput{
		Request: req, PathParams: pathParams(tmpl, req.URL.Path), Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, MultiError: true},
	}
	if c.valid {
		if err := openapi3filter.ValidateRequest(context.Background(), reqInput); err != nil {
			t.Errorf("%s %s: request does not match the document: %v", method, c.path, err)
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != c.status {
		t.Fatalf("%s %s = %d %s, want %d", method, c.path, resp.StatusCode, raw, c.status)
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: reqInput, Status: resp.StatusCode, Header: resp.Header,
		Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	in.SetBodyBytes(raw)
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		t.Errorf("%s %s -> %d does not match the document: %v\nbody: %s", method, c.path, resp.StatusCode, err, raw)
	}
	var body map[string]any
	_ = json.Unmarshal(raw, &body)
	if resp := route.Operation.Responses.Status(c.status); resp != nil && usesEnvelope(resp.Value) {
		checkErrorCode(t, route.Operation.Responses.Status(c.status).Value, body, c.op)
	}
	return body
}

// checkErrorCode checks that the envelope's code is one the documented
// response lists in x-error-codes.
func checkErrorCode(t *testing.T, resp *openapi3.Response, body map[string]any, op string) {
	t.Helper()
	code, _ := body["error"].(map[string]any)["code"].(string)
	codes, _ := resp.Extensions["x-error-codes"].([]any)
	for _, c := range codes {
		if c == code {
			return
		}
	}
	t.Errorf("%s: error code %q is not among the documented %v", op, code, codes)
}

// pathParams matches a real path against a path template.
func pathParams(tmpl, path string) map[string]string {
	out := map[string]string{}
	ts, ps := strings.Split(tmpl, "/"), strings.Split(path, "/")
	for i := range ts {
		if i < len(ps) && strings.HasPrefix(ts[i], "{") {
			out[strings.Trim(ts[i], "{}")] = ps[i]
		}
	}
	return out
}

func specTrack(owner string, more ...string) []string {
	return append([]string{"Authorization", "Bearer " + specTrackToken, "X-Instruqt-Sandbox-ID", owner}, more...)
}

func specAdmin(more ...string) []string {
	return append([]string{"Authorization", "Bearer " + specAdminToken}, more...)
}

var specTrackOnly = []string{"Authorization", "Bearer " + specTrackToken}

// TestOpenAPIResponses makes real requests for every documented response of
// every operation against brokers on real SQLite stores and validates the
// answers against the document.
func TestOpenAPIResponses(t *testing.T) {
	ctx := context.Background()
	doc := loadSpec(t, mustOpenAPI(t))
	s := newSpecServers(t)

	// Two stale sandboxes (for bulk-delete), one of them with an owner (for
	// the mark-for-deletion conflict), and a deletion_failed one (for
	// retry-deletion), before any allocation can take them.
	if n, err := s.store.MarkStale(ctx, []string{"5007", "5008"}, s.clock.Now()); err != nil || n != 2 {
		t.Fatalf("MarkStale = %d, %v", n, err)
	}
	conflictID := prepareConflict(t, s)
	failedID := prepareFailedDeletion(t, s)

	var cases []specCase
	add := func(srv *httptest.Server, op, path string, headers []string, status int, valid bool) {
		cases = append(cases, specCase{srv, op, path, headers, status, valid})
	}
	// The owned sandbox the track calls use.
	first := specCall(t, doc, specCase{s.ok, "POST /v1/allocate", "/v1/allocate", specTrack("owner-1", "X-Instruqt-Track-ID", "lab-adventure", "X-Sandbox-Name-Prefix", "lab", "X-Request-ID", "trace-1"), 201, true})
	id := first["sandbox_id"].(string)
	long := strings.Repeat("x", 300)
	covered := map[string]bool{"POST /v1/allocate 201": true}

	// Track routes.
	add(s.ok, "POST /v1/allocate", "/v1/allocate", specTrack("owner-1", "Idempotency-Key", "owner-1"), 200, true)
	add(s.ok, "POST /v1/allocate", "/v1/allocate", []string{"Authorization", "Bearer " + specTrackToken, "X-Track-ID", "owner-1"}, 200, true)
	add(s.ok, "POST /v1/allocate", "/v1/allocate", specTrackOnly, 400, false)
	add(s.ok, "POST /v1/allocate", "/v1/allocate", []string{"X-Instruqt-Sandbox-ID", "s"}, 401, false)
	add(s.ok, "POST /v1/allocate", "/v1/allocate", specTrack("owner-2", "X-Sandbox-Name-Prefix", "nomatch"), 409, true)
	add(s.faulty, "POST /v1/allocate", "/v1/allocate", specTrack("owner-2"), 500, true)
	add(s.unreachable, "POST /v1/allocate", "/v1/allocate", specTrack("owner-2"), 503, true)
	for _, op := range []string{"GET /v1/sandboxes/{id}", "POST /v1/sandboxes/{id}/mark-for-deletion"} {
		p := func(id string) string { return strings.Replace(strings.Fields(op)[1], "{id}", id, 1) }
		add(s.ok, op, p(id), specTrack("owner-1"), 200, true)
		add(s.ok, op, p(id), specTrackOnly, 400, false)
		add(s.ok, op, p(long), specTrack("owner-1"), 400, false)
		add(s.ok, op, p(id), []string{"X-Instruqt-Sandbox-ID", "owner-1", "Authorization", "Bearer wrong"}, 401, true)
		add(s.ok, op, p(id), specTrack("owner-2"), 403, true)
		add(s.ok, op, p("424242"), specTrack("owner-1"), 404, true)
		add(s.faulty, op, p(id), specTrack("owner-1"), 500, true)
		add(s.unreachable, op, p(id), specTrack("owner-1"), 503, true)
	}
	add(s.ok, "POST /v1/sandboxes/{id}/mark-for-deletion", "/v1/sandboxes/"+conflictID+"/mark-for-deletion", specTrack("owner-stale"), 409, true)
	add(s.ok, "GET /v1/sandboxes/{id}", "/v1/sandboxes/"+id, specTrack("owner-1"), 200, true) // now pending_deletion

	// Admin routes: the auth failures and store failures every one shares.
	adminOps := map[string]string{
		"GET /v1/admin/sandboxes":                      "/v1/admin/sandboxes",
		"GET /v1/admin/stats":                          "/v1/admin/stats",
		"GET /v1/admin/sandboxes/{id}/history":         "/v1/admin/sandboxes/" + id + "/history",
		"POST /v1/admin/sandboxes/{id}/retry-deletion": "/v1/admin/sandboxes/" + failedID + "/retry-deletion",
		"POST /v1/admin/bulk-delete":                   "/v1/admin/bulk-delete?status=stale&dry_run=true",
		"POST /v1/admin/auto-delete-stale":             "/v1/admin/auto-delete-stale",
		"POST /v1/admin/sync":                          "/v1/admin/sync",
		"POST /v1/admin/cleanup":                       "/v1/admin/cleanup",
		"POST /v1/admin/expire":                        "/v1/admin/expire",
		"GET /v1/admin/jobs":                           "/v1/admin/jobs",
		"POST /v1/admin/jobs/{name}/pause":             "/v1/admin/jobs/cleanup/pause",
		"POST /v1/admin/jobs/{name}/resume":            "/v1/admin/jobs/cleanup/resume",
	}
	for _, op := range sortedKeys(adminOps) {
		path := adminOps[op]
		add(s.ok, op, path, nil, 401, false)
		add(s.ok, op, path, []string{"Authorization", "Basic " + specAdminToken}, 401, false)
		add(s.ok, op, path, specTrackOnly, 403, true)
		add(s.faulty, op, path, specAdmin(), 500, true)
		add(s.unreachable, op, path, specAdmin(), 503, true)
	}
	// Admin successes and validation errors.
	add(s.ok, "GET /v1/admin/sandboxes", "/v1/admin/sandboxes", specAdmin(), 200, true)
	add(s.ok, "GET /v1/admin/sandboxes", "/v1/admin/sandboxes?status=allocated&limit=1&name_prefix=lab&track_name=lab-adventure&owner=owner-1", specAdmin(), 200, true)
	add(s.ok, "GET /v1/admin/sandboxes", "/v1/admin/sandboxes?limit=2", specAdmin(), 200, true)
	add(s.ok, "GET /v1/admin/sandboxes", "/v1/admin/sandboxes?limit=0", specAdmin(), 400, false)
	add(s.ok, "GET /v1/admin/sandboxes", "/v1/admin/sandboxes?status=gone", specAdmin(), 400, false)
	add(s.ok, "GET /v1/admin/sandboxes", "/v1/admin/sandboxes?cursor=%21%21not-a-cursor", specAdmin(), 400, true)
	add(s.ok, "GET /v1/admin/stats", "/v1/admin/stats", specAdmin(), 200, true)
	add(s.ok, "GET /v1/admin/sandboxes/{id}/history", "/v1/admin/sandboxes/"+id+"/history", specAdmin(), 200, true)
	add(s.ok, "GET /v1/admin/sandboxes/{id}/history", "/v1/admin/sandboxes/424242/history", specAdmin(), 200, true)
	add(s.ok, "GET /v1/admin/sandboxes/{id}/history", "/v1/admin/sandboxes/"+long+"/history", specAdmin(), 400, false)
	add(s.ok, "POST /v1/admin/sandboxes/{id}/retry-deletion", "/v1/admin/sandboxes/"+failedID+"/retry-deletion", specAdmin(), 200, true)
	add(s.ok, "POST /v1/admin/sandboxes/{id}/retry-deletion", "/v1/admin/sandboxes/"+failedID+"/retry-deletion", specAdmin(), 409, true)
	add(s.ok, "POST /v1/admin/sandboxes/{id}/retry-deletion", "/v1/admin/sandboxes/424242/retry-deletion", specAdmin(), 404, true)
	add(s.ok, "POST /v1/admin/sandboxes/{id}/retry-deletion", "/v1/admin/sandboxes/"+long+"/retry-deletion", specAdmin(), 400, false)
	add(s.ok, "POST /v1/admin/bulk-delete", "/v1/admin/bulk-delete?status=stale&dry_run=true", specAdmin(), 200, true)
	add(s.ok, "POST /v1/admin/bulk-delete", "/v1/admin/bulk-delete?status=stale&force=false", specAdmin(), 200, true)
	add(s.ok, "POST /v1/admin/bulk-delete", "/v1/admin/bulk-delete", specAdmin(), 400, false)
	add(s.ok, "POST /v1/admin/bulk-delete", "/v1/admin/bulk-delete?status=stale&force=maybe", specAdmin(), 400, false)
	add(s.ok, "POST /v1/admin/bulk-delete", "/v1/admin/bulk-delete?status=allocated", specAdmin(), 409, true)
	add(s.ok, "POST /v1/admin/auto-delete-stale", "/v1/admin/auto-delete-stale", specAdmin(), 200, true)
	add(s.ok, "POST /v1/admin/auto-delete-stale", "/v1/admin/auto-delete-stale?grace_period_hours=48", specAdmin(), 200, true)
	add(s.ok, "POST /v1/admin/auto-delete-stale", "/v1/admin/auto-delete-stale?grace_period_hours=0", specAdmin(), 400, false)
	for _, op := range []string{"POST /v1/admin/sync", "POST /v1/admin/cleanup", "POST /v1/admin/expire"} {
		add(s.ok, op, adminOps[op], specAdmin(), 202, true)
		add(s.disabled, op, adminOps[op], specAdmin(), 409, true)
		add(s.noJobs, op, adminOps[op], specAdmin(), 503, true)
	}
	add(s.ok, "GET /v1/admin/jobs", "/v1/admin/jobs", specAdmin(), 200, true)
	add(s.noJobs, "GET /v1/admin/jobs", "/v1/admin/jobs", specAdmin(), 503, true)
	for _, verb := range []string{"pause", "resume"} {
		op := "POST /v1/admin/jobs/{name}/" + verb
		add(s.ok, op, "/v1/admin/jobs/cleanup/"+verb, specAdmin(), 200, true)
		add(s.ok, op, "/v1/admin/jobs/nightly/"+verb, specAdmin(), 404, true)
		add(s.ok, op, "/v1/admin/jobs/"+long+"/"+verb, specAdmin(), 400, false)
	}
	// Unauthenticated routes.
	for _, op := range []string{"GET /v1/openapi.json", "GET /v1/docs", "GET /v1/docs/assets/docs.js", "GET /v1/docs/assets/docs.css", "GET /healthz", "GET /readyz"} {
		add(s.ok, op, strings.Fields(op)[1], nil, 200, true)
	}
	add(s.ok, "GET /metrics", "/metrics", []string{"Authorization", "Bearer " + specMetricsToken}, 200, true)
	add(s.unreachable, "GET /readyz", "/readyz", nil, 503, true)
	add(s.ok, "GET /metrics", "/metrics", []string{"Authorization", "Bearer nope"}, 401, false)

	// Rate limiting: the limited broker lets one request through, then
	// answers 429 on every limited route (all but /healthz, /readyz and
	// /metrics), before authentication.
	add(s.limited, "GET /healthz", "/healthz", nil, 200, true)
	add(s.limited, "GET /v1/admin/stats", "/v1/admin/stats", specAdmin(), 200, true)
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			if op.Responses.Status(http.StatusTooManyRequests) != nil {
				real := strings.NewReplacer("{id}", "5001", "{name}", "sync").Replace(path)
				add(s.limited, method+" "+path, real, specAdmin("X-Instruqt-Sandbox-ID", "owner-9"), 429, false)
			}
		}
	}

	for _, c := range cases {
		body := specCall(t, doc, c)
		covered[fmt.Sprintf("%s %d", c.op, c.status)] = true
		if c.op == "GET /v1/admin/jobs" && c.status == 200 && len(body["jobs"].([]any)) != 4 {
			t.Errorf("jobs = %v", body)
		}
	}

	// Runs that have finished have every field set; validate one.
	finishRun(t, s)
	specCall(t, doc, specCase{s.ok, "GET /v1/admin/jobs", "/v1/admin/jobs", specAdmin(), 200, true})

	// Every documented response was produced by a real request.
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			for status := range op.Responses.Map() {
				key := method + " " + path + " " + status
				if !covered[key] {
					t.Errorf("documented response %s was never produced by a real request", key)
				}
			}
		}
	}
}

// TestOpenAPIRouteErrors validates the answers to unknown routes and wrong
// methods against the document's shared responses.
func TestOpenAPIRouteErrors(t *testing.T) {
	doc := loadSpec(t, mustOpenAPI(t))
	s := newSpecServers(t)
	for _, tt := range []struct {
		method, path, response string
		status                 int
	}{
		{"GET", "/v1/nothing", "RouteNotFound", 404},
		{"GET", "/v1/allocate", "MethodNotAllowed", 405},
		{"DELETE", "/v1/admin/stats", "MethodNotAllowed", 405},
		{"POST", "/v1/docs", "MethodNotAllowed", 405},
	} {
		req, _ := http.NewRequest(tt.method, s.ok.URL+tt.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := doc.Components.Responses[tt.response].Value
		if resp.StatusCode != tt.status {
			t.Fatalf("%s %s = %d", tt.method, tt.path, resp.StatusCode)
		}
		var body any
		if err := json.Unmarshal(raw, &body); err != nil {
			t.Fatal(err)
		}
		if err := want.Content.Get("application/json").Schema.Value.VisitJSON(body); err != nil {
			t.Errorf("%s %s: %v", tt.method, tt.path, err)
		}
		for name, h := range want.Headers {
			if h.Value.Required && resp.Header.Get(name) == "" {
				t.Errorf("%s %s: header %s missing", tt.method, tt.path, name)
			}
		}
		checkErrorCode(t, want, body.(map[string]any), tt.method+" "+tt.path)
	}
}

// TestDocsPage checks that the documentation page works offline under its
// Content-Security-Policy: only same-origin assets, no inline code.
func TestDocsPage(t *testing.T) {
	srv := httptest.NewServer(httpapi.New(httpapi.Config{BasePath: "/api/broker", APITokens: []string{"t"}, AdminTokens: []string{"a"}}))
	defer srv.Close()
	get := func(path string) (*http.Response, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s = %d %s", path, resp.StatusCode, b)
		}
		return resp, string(b)
	}
	resp, page := get("/api/broker/docs")
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") {
		t.Fatalf("docs CSP = %q", csp)
	}
	for _, want := range []string{`src="/api/broker/docs/assets/docs.js"`, `href="/api/broker/docs/assets/docs.css"`, `data-spec="/api/broker/openapi.json"`} {
		if !strings.Contains(page, want) {
			t.Errorf("docs page lacks %s", want)
		}
	}
	if regexp.MustCompile(`<script>|<script [^>]*>[^<]|<style|\sstyle=|\son[a-z]+=|https?://`).MatchString(page) {
		t.Errorf("docs page has inline code or external references:\n%s", page)
	}
	for path, ct := range map[string]string{"/api/broker/docs/assets/docs.js": "text/javascript", "/api/broker/docs/assets/docs.css": "text/css"} {
		resp, body := get(path)
		if !strings.HasPrefix(resp.Header.Get("Content-Type"), ct) || resp.Header.Get("ETag") == "" {
			t.Errorf("%s: headers %v", path, resp.Header)
		}
		if regexp.MustCompile(`https?://|\.style\b|innerHTML|eval\(`).MatchString(body) {
			t.Errorf("%s uses external URLs, inline styles, innerHTML or eval", path)
		}
	}
	// A browser revalidating gets 304.
	req, _ := http.NewRequest("GET", srv.URL+"/api/broker/docs/assets/docs.js", nil)
	r1, _ := get("/api/broker/docs/assets/docs.js")
	req.Header.Set("If-None-Match", r1.Header.Get("ETag"))
	r2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r2.Body.Close()
	if r2.StatusCode != http.StatusNotModified {
		t.Errorf("revalidation = %d, want 304", r2.StatusCode)
	}
}

func mustOpenAPI(t *testing.T) []byte {
	t.Helper()
	raw, err := httpapi.OpenAPI("/v1")
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(raw)
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// prepareFailedDeletion allocates a sandbox and fails its deletion until it
// is deletion_failed; it returns its id.
func prepareFailedDeletion(t *testing.T, s *specServers) string {
	t.Helper()
	ctx := context.Background()
	now := s.clock.Now()
	a, err := s.store.Allocate(ctx, broker.AllocateRequest{Owner: "owner-failed", Key: "owner-failed", LabDuration: time.Hour, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	id := a.Sandbox.ID
	if _, err := s.store.MarkForDeletion(ctx, broker.MarkRequest{ID: id, Owner: "owner-failed", Now: now}); err != nil {
		t.Fatal(err)
	}
	claimed, err := s.store.ClaimDeletions(ctx, broker.ClaimRequest{Now: now, Lease: time.Minute, Limit: 10, Token: "claim-1"})
	if err != nil || len(claimed) != 1 {
		t.Fatalf("ClaimDeletions = %v, %v", claimed, err)
	}
	st, err := s.store.FailDeletion(ctx, broker.FailRequest{ID: id, Token: "claim-1", Now: now, NextAttemptAt: now, MaxAttempts: 1, Error: "provider said no"})
	if err != nil || st != broker.StatusDeletionFailed {
		t.Fatalf("FailDeletion = %v, %v", st, err)
	}
	return id
}

// prepareConflict gives the stale sandbox 5008 an owner, so that its owner
// may not mark it for deletion because of its status. No API call leads
// there today; the store still reports it as a conflict, which the API
// documents as 409.
func prepareConflict(t *testing.T, s *specServers) string {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+s.dbPath+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`UPDATE sandboxes SET status = 'stale', owner = 'owner-stale' WHERE id = '5008'`); err != nil {
		t.Fatal(err)
	}
	return "5008"
}

// finishRun records a finished run the way the runner does, so the jobs
// listing shows started_at, finished_at and a result.
func finishRun(t *testing.T, s *specServers) {
	t.Helper()
	now := s.clock.Now()
	for i, res := range []string{`{"listed":8,"inserted":0}`, `{"error":"provider unavailable","partial":null}`} {
		run := broker.JobRun{ID: fmt.Sprintf("run-%d", i), Job: "sync", Status: []string{"succeeded", "failed"}[i], Trigger: "schedule",
			QueuedAt: now, StartedAt: now, FinishedAt: now.Add(time.Second), Result: res}
		if err := s.store.SaveJobRun(context.Background(), run); err != nil {
			t.Fatal(err)
		}
	}
}
