package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/httpapi"
	"github.com/sandbox-broker/broker/internal/fakeclock"
	"github.com/sandbox-broker/broker/service"
	"github.com/sandbox-broker/broker/sqlite"
	"github.com/sandbox-broker/broker/storetest"
)

const (
	trackToken = "track-secret"
	adminToken = "admin-secret"
)

type env struct {
	t     *testing.T
	srv   *httptest.Server
	store *sqlite.Store
	clock *fakeclock.Clock
}

// newEnv starts a broker on a real SQLite file with n sandboxes lab-0001...
func newEnv(t *testing.T, n int, mutate ...func(*httpapi.Config)) *env {
	t.Helper()
	store, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "b.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	clock := fakeclock.New(time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC))
	if n > 0 {
		if _, err := store.UpsertAccounts(context.Background(), storetest.Accounts("lab", 5000, n), clock.Now()); err != nil {
			t.Fatal(err)
		}
	}
	cfg := httpapi.Config{
		APITokens: []string{"old-track-token", trackToken}, AdminTokens: []string{adminToken},
		Service: service.New(store, clock, 48*time.Hour), Store: store, Clock: clock,
	}
	for _, m := range mutate {
		m(&cfg)
	}
	srv := httptest.NewServer(httpapi.New(cfg))
	t.Cleanup(srv.Close)
	return &env{t: t, srv: srv, store: store, clock: clock}
}

type response struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

// do sends a request; headers is a flat list of name, value pairs.
func (e *env) do(method, path string, headers ...string) response {
	e.t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	r := response{status: resp.StatusCode, header: resp.Header, raw: string(raw)}
	_ = json.Unmarshal(raw, &r.body)
	return r
}

func track(owner string, more ...string) []string {
	return append([]string{"Authorization", "Bearer " + trackToken, "X-Instruqt-Sandbox-ID", owner}, more...)
}

func admin(more ...string) []string {
	return append([]string{"Authorization", "Bearer " + adminToken}, more...)
}

// errCode checks the error envelope and returns its code.
func errCode(t *testing.T, r response) string {
	t.Helper()
	e, ok := r.body["error"].(map[string]any)
	if !ok {
		t.Fatalf("status %d: body is not the error envelope: %s", r.status, r.raw)
	}
	if e["request_id"] != r.header.Get("X-Request-ID") || e["request_id"] == "" {
		t.Fatalf("envelope request_id %v != X-Request-ID %q", e["request_id"], r.header.Get("X-Request-ID"))
	}
	if r.header.Get("X-Frame-Options") != "DENY" || r.header.Get("Content-Security-Policy") == "" {
		t.Fatalf("security headers missing on error response: %v", r.header)
	}
	return e["code"].(string)
}

func TestAllocate(t *testing.T) {
	e := newEnv(t, 3)
	first := e.do("POST", "/v1/allocate", track("student-1", "X-Instruqt-Track-ID", "lab-adventure")...)
	if first.status != http.StatusCreated {
		t.Fatalf("first allocate = %d %s", first.status, first.raw)
	}
	for _, f := range []string{"sandbox_id", "name", "external_id", "allocated_at", "expires_at", "sfdc_account_id"} {
		if _, ok := first.body[f]; !ok {
			t.Fatalf("field %s missing in %s", f, first.raw)
		}
	}
	if got, want := first.body["expires_at"].(float64)-first.body["allocated_at"].(float64), float64(48*3600); got != want {
		t.Fatalf("expires_at - allocated_at = %v, want %v", got, want)
	}
	replay := e.do("POST", "/v1/allocate", track("student-1")...)
	if replay.status != http.StatusOK || replay.body["sandbox_id"] != first.body["sandbox_id"] {
		t.Fatalf("replay = %d %s", replay.status, replay.raw)
	}
	legacy := e.do("POST", "/v1/allocate", "Authorization", "Bearer "+trackToken, "X-Track-ID", "student-1")
	if legacy.status != http.StatusOK || legacy.body["sandbox_id"] != first.body["sandbox_id"] {
		t.Fatalf("legacy header replay = %d %s", legacy.status, legacy.raw)
	}
	keyed := e.do("POST", "/v1/allocate", track("student-1", "Idempotency-Key", "second-lab")...)
	if keyed.status != http.StatusCreated || keyed.body["sandbox_id"] == first.body["sandbox_id"] {
		t.Fatalf("new key = %d %s", keyed.status, keyed.raw)
	}
	rotated := e.do("POST", "/v1/allocate", "Authorization", "Bearer old-track-token", "X-Instruqt-Sandbox-ID", "student-2")
	if rotated.status != http.StatusCreated {
		t.Fatalf("second token of the list rejected: %d %s", rotated.status, rotated.raw)
	}
	exhausted := e.do("POST", "/v1/allocate", track("student-3")...)
	if exhausted.status != http.StatusConflict || errCode(t, exhausted) != "NO_SANDBOXES_AVAILABLE" || exhausted.header.Get("Retry-After") != "30" {
		t.Fatalf("exhausted = %d %v %s", exhausted.status, exhausted.header, exhausted.raw)
	}
	if ra := exhausted.body["error"].(map[string]any)["retry_after"]; ra != float64(30) {
		t.Fatalf("retry_after in body = %v", ra)
	}
}

func TestNamePrefix(t *testing.T) {
	e := newEnv(t, 5)
	if _, err := e.store.UpsertAccounts(context.Background(), storetest.Accounts("other", 9000, 1), e.clock.Now()); err != nil {
		t.Fatal(err)
	}
	r := e.do("POST", "/v1/allocate", track("p1", "X-Sandbox-Name-Prefix", "other")...)
	if r.status != http.StatusCreated || r.body["name"] != "other-0001" {
		t.Fatalf("prefix allocate = %d %s", r.status, r.raw)
	}
	r = e.do("POST", "/v1/allocate", track("p2", "X-Sandbox-Name-Prefix", "other")...)
	if r.status != http.StatusConflict {
		t.Fatalf("exhausted prefix = %d %s", r.status, r.raw)
	}
}

func TestStatusCodes(t *testing.T) {
	e := newEnv(t, 5)
	alloc := e.do("POST", "/v1/allocate", track("owner-1")...)
	id := alloc.body["sandbox_id"].(string)
	long := strings.Repeat("x", 257)
	tests := []struct {
		name    string
		method  string
		path    string
		headers []string
		status  int
		code    string
	}{
		{"NoToken", "POST", "/v1/allocate", []string{"X-Instruqt-Sandbox-ID", "s"}, 401, "UNAUTHORIZED"},
		{"NoTokenNoOwner", "POST", "/v1/allocate", nil, 401, "UNAUTHORIZED"},
		{"WrongToken", "POST", "/v1/allocate", []string{"Authorization", "Bearer nope", "X-Instruqt-Sandbox-ID", "s"}, 401, "UNAUTHORIZED"},
		{"BasicScheme", "POST", "/v1/allocate", []string{"Authorization", "Basic " + trackToken, "X-Instruqt-Sandbox-ID", "s"}, 401, "UNAUTHORIZED"},
		{"AdminRouteNoToken", "GET", "/v1/admin/stats", nil, 401, "UNAUTHORIZED"},
		{"AdminRouteTrackToken", "GET", "/v1/admin/stats", []string{"Authorization", "Bearer " + trackToken}, 403, "FORBIDDEN"},
		{"MissingOwner", "POST", "/v1/allocate", []string{"Authorization", "Bearer " + trackToken}, 400, "MISSING_SANDBOX_ID"},
		{"BlankOwner", "POST", "/v1/allocate", []string{"Authorization", "Bearer " + trackToken, "X-Instruqt-Sandbox-ID", "   "}, 400, "MISSING_SANDBOX_ID"},
		{"LongOwner", "POST", "/v1/allocate", track(long), 400, "VALIDATION_ERROR"},
		{"ControlCharOwner", "POST", "/v1/allocate", track("a\tb"), 400, "VALIDATION_ERROR"},
		{"LongPrefix", "POST", "/v1/allocate", track("s", "X-Sandbox-Name-Prefix", long), 400, "VALIDATION_ERROR"},
		{"LongKey", "POST", "/v1/allocate", track("s", "Idempotency-Key", long), 400, "VALIDATION_ERROR"},
		{"ControlTrack", "POST", "/v1/allocate", track("s", "X-Instruqt-Track-ID", "t\u0085x"), 400, "VALIDATION_ERROR"},
		{"GetUnknown", "GET", "/v1/sandboxes/424242", track("owner-1"), 404, "SANDBOX_NOT_FOUND"},
		{"MarkUnknown", "POST", "/v1/sandboxes/424242/mark-for-deletion", track("owner-1"), 404, "SANDBOX_NOT_FOUND"},
		{"GetNotOwner", "GET", "/v1/sandboxes/" + id, track("owner-2"), 403, "NOT_SANDBOX_OWNER"},
		{"MarkNotOwner", "POST", "/v1/sandboxes/" + id + "/mark-for-deletion", track("owner-2"), 403, "NOT_SANDBOX_OWNER"},
		{"MarkLongID", "POST", "/v1/sandboxes/" + long + "/mark-for-deletion", track("owner-1"), 400, "VALIDATION_ERROR"},
		{"UnknownRoute", "GET", "/v1/nothing", nil, 404, "NOT_FOUND"},
		{"UnknownRouteAuthed", "GET", "/v2/allocate", track("s"), 404, "NOT_FOUND"},
		{"WrongMethod", "GET", "/v1/allocate", track("s"), 405, "METHOD_NOT_ALLOWED"},
		{"WrongMethodAdmin", "DELETE", "/v1/admin/stats", admin(), 405, "METHOD_NOT_ALLOWED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do(tt.method, tt.path, tt.headers...)
			if r.status != tt.status || errCode(t, r) != tt.code {
				t.Fatalf("%s %s = %d %s, want %d %s", tt.method, tt.path, r.status, r.raw, tt.status, tt.code)
			}
			if strings.Contains(r.raw, "owner-1") || strings.Contains(r.raw, trackToken) {
				t.Fatalf("response leaks the owner or a token: %s", r.raw)
			}
		})
	}
	// Nothing above changed the store.
	st, _ := e.store.Stats(context.Background())
	if st.ByStatus[broker.StatusAllocated] != 1 || st.Total != 5 {
		t.Fatalf("bad requests changed the store: %+v", st)
	}
	if r := e.do("GET", "/v1/allocate", track("s")...); r.header.Get("Allow") != "POST" {
		t.Fatalf("405 without Allow: %v", r.header)
	}
}

func TestGetAndMark(t *testing.T) {
	e := newEnv(t, 2)
	id := e.do("POST", "/v1/allocate", track("owner-1", "X-Instruqt-Track-ID", "lab-x")...).body["sandbox_id"].(string)
	got := e.do("GET", "/v1/sandboxes/"+id, track("owner-1")...)
	if got.status != 200 || got.body["status"] != "allocated" || got.body["allocated_to_track"] != "owner-1" || got.body["track_name"] != "lab-x" {
		t.Fatalf("get = %d %s", got.status, got.raw)
	}
	byAdmin := e.do("POST", "/v1/allocate", "Authorization", "Bearer "+adminToken, "X-Instruqt-Sandbox-ID", "owner-9")
	if byAdmin.status != http.StatusCreated {
		t.Fatalf("admin token on a track route = %d %s", byAdmin.status, byAdmin.raw)
	}
	first := e.do("POST", "/v1/sandboxes/"+id+"/mark-for-deletion", track("owner-1")...)
	if first.status != 200 || first.body["status"] != "pending_deletion" || first.body["deletion_requested_at"] != float64(e.clock.Now().Unix()) {
		t.Fatalf("mark = %d %s", first.status, first.raw)
	}
	e.clock.Add(time.Hour)
	again := e.do("POST", "/v1/sandboxes/"+id+"/mark-for-deletion", track("owner-1")...)
	if again.status != 200 || again.body["deletion_requested_at"] != first.body["deletion_requested_at"] {
		t.Fatalf("repeat mark = %d %s, want 200 with the original time", again.status, again.raw)
	}
	after := e.do("GET", "/v1/sandboxes/"+id, track("owner-1")...)
	if after.status != 200 || after.body["status"] != "pending_deletion" {
		t.Fatalf("get after mark = %d %s", after.status, after.raw)
	}
}

func TestRequestID(t *testing.T) {
	e := newEnv(t, 1)
	tests := []struct {
		in   string
		keep bool
	}{
		{"abc-123_X.y", true},
		{strings.Repeat("a", 128), true},
		{strings.Repeat("a", 129), false},
		{"has space", false},
		{"semi;colon", false},
		{"", false},
	}
	for _, tt := range tests {
		r := e.do("GET", "/healthz", "X-Request-ID", tt.in)
		got := r.header.Get("X-Request-ID")
		if (got == tt.in) != tt.keep || got == "" {
			t.Fatalf("X-Request-ID %q -> %q, keep=%v", tt.in, got, tt.keep)
		}
	}
	r := e.do("GET", "/v1/nothing", "X-Request-ID", "trace-1")
	if r.header.Get("X-Request-ID") != "trace-1" || r.body["error"].(map[string]any)["request_id"] != "trace-1" {
		t.Fatalf("request id not propagated to the envelope: %v %s", r.header, r.raw)
	}
}

func TestHealthAndReadiness(t *testing.T) {
	e := newEnv(t, 1)
	h := e.do("GET", "/healthz")
	if h.status != 200 || h.body["status"] != "healthy" || h.body["timestamp"] != float64(e.clock.Now().Unix()) {
		t.Fatalf("healthz = %d %s", h.status, h.raw)
	}
	r := e.do("GET", "/readyz")
	if r.status != 200 || r.body["status"] != "ready" {
		t.Fatalf("readyz = %d %s", r.status, r.raw)
	}
	e.store.Close()
	r = e.do("GET", "/readyz")
	if r.status != 503 || r.body["status"] != "not_ready" || strings.Contains(r.raw, "sql") {
		t.Fatalf("readyz on a closed store = %d %s", r.status, r.raw)
	}
	a := e.do("POST", "/v1/allocate", track("s")...)
	if a.status != 503 || errCode(t, a) != "SERVICE_UNAVAILABLE" || a.header.Get("Retry-After") == "" || strings.Contains(a.raw, "closed") {
		t.Fatalf("allocate on a closed store = %d %v %s", a.status, a.header, a.raw)
	}
	g := e.do("GET", "/v1/sandboxes/1", track("s")...)
	if g.status != 503 || errCode(t, g) != "SERVICE_UNAVAILABLE" {
		t.Fatalf("get on a closed store = %d %s", g.status, g.raw)
	}
}

func TestCORS(t *testing.T) {
	e := newEnv(t, 1, func(c *httpapi.Config) { c.CORSOrigins = []string{"https://labs.example.com"} })
	pre := e.do("OPTIONS", "/v1/allocate", "Origin", "https://labs.example.com", "Access-Control-Request-Method", "POST")
	if pre.status != 204 || pre.header.Get("Access-Control-Allow-Origin") != "https://labs.example.com" || !strings.Contains(pre.header.Get("Access-Control-Allow-Headers"), "X-Instruqt-Sandbox-ID") {
		t.Fatalf("preflight = %d %v", pre.status, pre.header)
	}
	denied := e.do("OPTIONS", "/v1/allocate", "Origin", "https://evil.example.com", "Access-Control-Request-Method", "POST")
	if denied.header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("foreign origin allowed: %v", denied.header)
	}
	errResp := e.do("POST", "/v1/allocate", "Origin", "https://labs.example.com")
	if errResp.status != 401 || errResp.header.Get("Access-Control-Allow-Origin") != "https://labs.example.com" {
		t.Fatalf("CORS headers missing on an error: %d %v", errResp.status, errResp.header)
	}
}

func TestPanicIsEnvelope(t *testing.T) {
	e := newEnv(t, 1, func(c *httpapi.Config) {
		c.Extra = map[string]http.Handler{"GET /boom": http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("secret detail") })}
	})
	r := e.do("GET", "/boom")
	if r.status != 500 || errCode(t, r) != "INTERNAL_ERROR" || strings.Contains(r.raw, "secret") {
		t.Fatalf("panic = %d %s", r.status, r.raw)
	}
}

// TestConcurrentAllocation fires many concurrent HTTP requests at two
// servers sharing one store: 500 students for 200 sandboxes, some retrying
// at once, and 50 identical requests.
func TestConcurrentAllocation(t *testing.T) {
	e := newEnv(t, 200)
	second := httptest.NewServer(httpapi.New(httpapi.Config{APITokens: []string{trackToken}, AdminTokens: []string{adminToken},
		Service: service.New(e.store, e.clock, time.Hour), Store: e.store, Clock: e.clock}))
	defer second.Close()
	urls := []string{e.srv.URL, second.URL}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 100}}
	type answer struct {
		owner, id string
		status    int
	}
	answers := make(chan answer, 1000)
	var wg sync.WaitGroup
	call := func(owner string, n int) {
		defer wg.Done()
		req, _ := http.NewRequest("POST", urls[n%2]+"/v1/allocate", nil)
		req.Header.Set("Authorization", "Bearer "+trackToken)
		req.Header.Set("X-Instruqt-Sandbox-ID", owner)
		resp, err := client.Do(req)
		if err != nil {
			t.Error(err)
			return
		}
		defer resp.Body.Close()
		var body map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&body)
		id, _ := body["sandbox_id"].(string)
		answers <- answer{owner, id, resp.StatusCode}
	}
	for i := 0; i < 500; i++ {
		owner := fmt.Sprintf("student-%03d", i)
		wg.Add(1)
		go call(owner, i)
		if i%5 == 0 { // 20% retry at the same moment on the other server
			wg.Add(1)
			go call(owner, i+1)
		}
	}
	wg.Wait()
	close(answers)
	byOwner := map[string]string{}
	bySandbox := map[string]string{}
	counts := map[int]int{}
	for a := range answers {
		counts[a.status]++
		if a.status != 200 && a.status != 201 {
			if a.status != 409 {
				t.Fatalf("unexpected status %d", a.status)
			}
			continue
		}
		if prev, ok := byOwner[a.owner]; ok && prev != a.id {
			t.Fatalf("%s got %s and %s", a.owner, prev, a.id)
		}
		byOwner[a.owner] = a.id
		if prev, ok := bySandbox[a.id]; ok && prev != a.owner {
			t.Fatalf("sandbox %s given to %s and %s", a.id, prev, a.owner)
		}
		bySandbox[a.id] = a.owner
	}
	if len(bySandbox) != 200 || counts[201] != 200 {
		t.Fatalf("allocated %d sandboxes, %d answers 201 (%v); want 200", len(bySandbox), counts[201], counts)
	}
	for id, owner := range bySandbox {
		sb, err := e.store.Get(context.Background(), id)
		if err != nil || sb.Owner != owner || sb.Status != broker.StatusAllocated {
			t.Fatalf("store disagrees for %s: %+v %v", id, sb, err)
		}
	}
}
