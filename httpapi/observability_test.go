package httpapi_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandbox-broker/broker/httpapi"
	"github.com/sandbox-broker/broker/internal/fakeclock"
	"github.com/sandbox-broker/broker/ratelimit"
)

// limited returns a mutator installing a rate limiter of rps and burst
// driven by clock.
func limited(rps float64, burst int, clock ratelimit.Clock, trusted ...*net.IPNet) func(*httpapi.Config) {
	return func(c *httpapi.Config) {
		c.Middleware = httpapi.RateLimit(ratelimit.New(ratelimit.Config{RPS: rps, Burst: burst, Clock: clock}), trusted)
		c.Extra = map[string]http.Handler{"GET /metrics": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte("# metrics\n"))
		})}
		c.CORSOrigins = []string{"https://labs.example.com"}
	}
}

func TestRateLimit(t *testing.T) {
	clock := fakeclock.New(time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC))
	e := newEnv(t, 5, limited(1, 3, clock))
	// The limiter runs before authentication: a wrong token spends tokens too.
	steps := []struct {
		headers   []string
		status    int
		remaining string
		reset     string
	}{
		{track("s1"), 201, "2", "1"},
		{[]string{"Authorization", "Bearer wrong", "X-Instruqt-Sandbox-ID", "s1"}, 401, "1", "2"},
		{track("s1"), 200, "0", "3"},
		{track("s2"), 429, "0", "3"}, // another owner, same IP: same bucket
	}
	for i, s := range steps {
		r := e.do("POST", "/v1/allocate", append(s.headers, "Origin", "https://labs.example.com")...)
		if r.status != s.status {
			t.Fatalf("step %d: status %d %s, want %d", i, r.status, r.raw, s.status)
		}
		h := r.header
		if h.Get("X-RateLimit-Limit") != "1" || h.Get("X-RateLimit-Remaining") != s.remaining || h.Get("X-RateLimit-Reset") != s.reset {
			t.Fatalf("step %d: rate-limit headers %q %q %q, want 1 %s %s", i,
				h.Get("X-RateLimit-Limit"), h.Get("X-RateLimit-Remaining"), h.Get("X-RateLimit-Reset"), s.remaining, s.reset)
		}
	}
	r := e.do("POST", "/v1/allocate", append(track("s2"), "Origin", "https://labs.example.com", "X-Request-ID", "limited-1")...)
	if r.status != 429 || errCode(t, r) != "RATE_LIMIT_EXCEEDED" { // errCode checks request_id and security headers
		t.Fatalf("over the limit = %d %s", r.status, r.raw)
	}
	if r.header.Get("Retry-After") != "1" || r.body["error"].(map[string]any)["retry_after"] != float64(1) {
		t.Fatalf("429 Retry-After %q, body %s", r.header.Get("Retry-After"), r.raw)
	}
	if r.header.Get("X-Request-ID") != "limited-1" || r.header.Get("Access-Control-Allow-Origin") != "https://labs.example.com" ||
		!strings.Contains(r.header.Get("Access-Control-Expose-Headers"), "X-RateLimit-Reset") {
		t.Fatalf("429 lacks the outer middleware's headers: %v", r.header)
	}

	// Probes and scrapes are exempt and carry no rate-limit headers.
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		r := e.do("GET", p)
		if r.status != 200 || r.header.Get("X-RateLimit-Limit") != "" {
			t.Fatalf("exempt %s = %d %v", p, r.status, r.header)
		}
	}
	// Other paths are limited, unknown ones and wrong methods included.
	for _, p := range []string{"/v1/admin/stats", "/nothing"} {
		if r := e.do("GET", p); r.status != 429 {
			t.Fatalf("%s = %d, want 429", p, r.status)
		}
	}

	// One second refills one token.
	clock.Add(time.Second)
	if r := e.do("POST", "/v1/allocate", track("s2")...); r.status != 201 || r.header.Get("X-RateLimit-Remaining") != "0" {
		t.Fatalf("after refill = %d %v", r.status, r.header)
	}
}

func TestRateLimitDisabled(t *testing.T) {
	e := newEnv(t, 1, limited(0, 1, nil))
	for range 20 {
		r := e.do("GET", "/v1/sandboxes/1", track("s1")...)
		if r.status == 429 || r.header.Get("X-RateLimit-Limit") != "" {
			t.Fatalf("RPS=0 limited: %d %v", r.status, r.header)
		}
	}
	// A nil limiter is off too.
	h := httpapi.RateLimit(nil, nil)(http.NotFoundHandler())
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/allocate", nil))
	if rec.Code != 404 || rec.Header().Get("X-RateLimit-Limit") != "" {
		t.Fatalf("nil limiter = %d %v", rec.Code, rec.Header())
	}
}

// TestRateLimitClientKey calls the middleware directly: the key is the peer
// address, or the nearest untrusted X-Forwarded-For entry behind a trusted
// proxy, never a header an untrusted client chooses.
func TestRateLimitClientKey(t *testing.T) {
	_, proxies, _ := net.ParseCIDR("10.0.0.0/8")
	tests := []struct {
		name     string
		requests [][2]string // RemoteAddr, X-Forwarded-For
		want     []int       // statuses
	}{
		{"UntrustedPeerCannotRotateHeader",
			[][2]string{{"203.0.113.7:1000", "1.1.1.1"}, {"203.0.113.7:1001", "2.2.2.2"}, {"203.0.113.7:1002", "3.3.3.3"}},
			[]int{200, 200, 429}},
		{"TrustedProxySeparatesClients",
			[][2]string{{"10.0.0.2:443", "198.51.100.1"}, {"10.0.0.2:443", "198.51.100.1"}, {"10.0.0.2:443", "198.51.100.2"}, {"10.0.0.3:443", "198.51.100.2"}},
			[]int{200, 200, 200, 200}},
		{"SpoofedLeftEntryBehindProxy",
			[][2]string{{"10.0.0.2:443", "9.9.9.1, 198.51.100.1"}, {"10.0.0.2:443", "9.9.9.2, 198.51.100.1"}, {"10.0.0.2:443", "9.9.9.3, 198.51.100.1"}},
			[]int{200, 200, 429}},
		{"SamePeerDifferentPorts",
			[][2]string{{"198.51.100.9:1", ""}, {"198.51.100.9:2", ""}, {"198.51.100.9:3", ""}},
			[]int{200, 200, 429}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := ratelimit.New(ratelimit.Config{RPS: 1e-6, Burst: 2})
			h := httpapi.RateLimit(l, []*net.IPNet{proxies})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
			for i, rq := range tt.requests {
				req := httptest.NewRequest("POST", "/v1/allocate", nil)
				req.RemoteAddr = rq[0]
				if rq[1] != "" {
					req.Header.Set("X-Forwarded-For", rq[1])
				}
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != tt.want[i] {
					t.Fatalf("request %d from %v = %d, want %d", i, rq, rec.Code, tt.want[i])
				}
			}
		})
	}
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRequestLog checks the request log's fields and that no token (track,
// admin, wrong, metrics) is ever logged, whatever the outcome.
func TestRequestLog(t *testing.T) {
	var logs syncBuffer
	clock := fakeclock.New(time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC))
	const wrongToken = "wrong-token-do-not-log"
	e := newEnv(t, 2, limited(1000, 8, clock), func(c *httpapi.Config) {
		c.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	alloc := e.do("POST", "/v1/allocate", track("owner-1", "X-Instruqt-Track-ID", "lab-x", "X-Request-ID", "log-alloc")...)
	id, _ := alloc.body["sandbox_id"].(string)
	e.do("POST", "/v1/allocate", "Authorization", "Bearer "+wrongToken, "X-Instruqt-Sandbox-ID", "owner-2", "X-Request-ID", "log-wrong")
	e.do("POST", "/v1/sandboxes/"+id+"/mark-for-deletion", track("owner-2", "X-Request-ID", "log-notowner")...)
	e.do("GET", "/v1/admin/stats", admin("X-Request-ID", "log-admin")...)
	e.do("GET", "/v1/admin/stats", "Authorization", "Bearer "+trackToken, "X-Request-ID", "log-forbidden")
	e.do("POST", "/v1/allocate", "Authorization", "bearer "+trackToken+" extra", "X-Request-ID", "log-malformed")
	for range 10 { // exhaust the bucket: the 429 is logged too
		e.do("GET", "/v1/sandboxes/"+id, track("owner-1", "X-Request-ID", "log-limited")...)
	}
	e.srv.Close() // waits for every handler, hence every log line

	out := logs.String()
	for _, secret := range []string{trackToken, adminToken, wrongToken, "old-track-token"} {
		if strings.Contains(out, secret) {
			t.Fatalf("a token appears in the logs:\n%s", out)
		}
	}
	lines := map[string]map[string]any{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var l map[string]any
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("log line is not JSON: %s", sc.Text())
		}
		if id, ok := l["request_id"].(string); ok {
			lines[id] = l
		}
	}
	tests := []struct {
		requestID string
		fields    map[string]any
	}{
		{"log-alloc", map[string]any{"route": "/v1/allocate", "status": 201.0, "owner": "owner-1", "track_name": "lab-x", "sandbox_id": id, "action": "allocate", "outcome": "success", "msg": "POST /v1/allocate 201"}},
		{"log-wrong", map[string]any{"status": 401.0, "error_code": "UNAUTHORIZED", "outcome": "failure"}},
		{"log-notowner", map[string]any{"route": "/v1/sandboxes/{id}/mark-for-deletion", "status": 403.0, "owner": "owner-2", "sandbox_id": id, "action": "mark_for_deletion", "error_code": "NOT_SANDBOX_OWNER", "outcome": "failure"}},
		{"log-admin", map[string]any{"route": "/v1/admin/stats", "status": 200.0, "outcome": "success"}},
		{"log-forbidden", map[string]any{"status": 403.0, "error_code": "FORBIDDEN"}},
		{"log-malformed", map[string]any{"status": 401.0, "error_code": "UNAUTHORIZED"}},
		{"log-limited", map[string]any{"route": "/v1/sandboxes/{id}", "status": 429.0, "error_code": "RATE_LIMIT_EXCEEDED", "outcome": "failure"}},
	}
	for _, tt := range tests {
		l, ok := lines[tt.requestID]
		if !ok {
			t.Fatalf("no log line with request_id %s in:\n%s", tt.requestID, out)
		}
		if _, ok := l["latency_ms"].(float64); !ok {
			t.Errorf("%s: latency_ms missing: %v", tt.requestID, l)
		}
		for k, v := range tt.fields {
			if l[k] != v {
				t.Errorf("%s: %s = %v, want %v (line %v)", tt.requestID, k, l[k], v, l)
			}
		}
	}
}
