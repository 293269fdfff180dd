package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// startProcess runs `sandbox-broker <args>` in-process on a free port and
// returns its base URL; the process stops when the test ends.
func startProcess(t *testing.T, env map[string]string, args ...string) string {
	t.Helper()
	env["BROKER_DATABASE_URL"] = "sqlite:" + filepath.Join(t.TempDir(), "b.db")
	env["LOG_FORMAT"] = "json"
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, append(args, "--listen", "127.0.0.1:0"), envOf(env), &out, &errOut) }()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("exit %d: %s", code, errOut.String())
			}
		case <-time.After(30 * time.Second):
			t.Error("process did not stop after cancellation")
		}
	})
	re := regexp.MustCompile(`"msg":"sandbox-broker listening","addr":"([^"]+)"`)
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if m := re.FindStringSubmatch(errOut.String()); m != nil {
			return "http://" + m[1]
		}
	}
	t.Fatalf("process did not start; stderr %q", errOut.String())
	return ""
}

type reply struct {
	status int
	header http.Header
	body   string
}

func get(t *testing.T, method, url string, headers ...string) reply {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, resp.Header, string(raw)}
}

func envelopeCode(t *testing.T, r reply) string {
	t.Helper()
	var env map[string]map[string]any
	if err := json.Unmarshal([]byte(r.body), &env); err != nil || env["error"]["request_id"] != r.header.Get("X-Request-ID") {
		t.Fatalf("not the error envelope with the request id: %d %v %s", r.status, r.header, r.body)
	}
	return env["error"]["code"].(string)
}

// TestWorkerServesOnlyProbesAndMetrics: the worker answers /healthz,
// /readyz and /metrics (with its job metrics, B-39), nothing of the API, and
// needs no API token.
func TestWorkerServesOnlyProbesAndMetrics(t *testing.T) {
	base := startProcess(t, map[string]string{"METRICS_TOKEN": "scrape-me"}, "worker")
	for _, p := range []string{"/healthz", "/readyz"} {
		if r := get(t, "GET", base+p); r.status != 200 {
			t.Fatalf("GET %s = %d %s", p, r.status, r.body)
		}
	}
	for _, tt := range []struct{ method, path, code string }{
		{"POST", "/v1/allocate", "NOT_FOUND"},
		{"GET", "/v1/admin/stats", "NOT_FOUND"},
		{"GET", "/metrics", "UNAUTHORIZED"}, // no token
		{"POST", "/metrics", "METHOD_NOT_ALLOWED"},
	} {
		r := get(t, tt.method, base+tt.path, "Authorization", "Bearer whatever")
		if code := envelopeCode(t, r); code != tt.code || r.header.Get("X-Frame-Options") != "DENY" {
			t.Fatalf("%s %s = %d %s, want %s", tt.method, tt.path, r.status, r.body, tt.code)
		}
	}
	// The expiry job runs at start; its metrics reach the worker's /metrics.
	want := []string{`broker_expiry_total{outcome="success"} 1`, `broker_job_runs_total{job_name="expiry",outcome="success"} 1`, "broker_pool_total 0", "go_goroutines"}
	missing := func(body string) string {
		for _, s := range want {
			if !strings.Contains(body, s) {
				return s
			}
		}
		return ""
	}
	var r reply
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		r = get(t, "GET", base+"/metrics", "Authorization", "Bearer scrape-me")
		if missing(r.body) == "" {
			break
		}
	}
	if m := missing(r.body); m != "" {
		t.Fatalf("worker metrics lack %q:\n%s", m, r.body)
	}
}

// TestServeMetricsAndRateLimit: serve exposes /metrics behind METRICS_TOKEN
// and limits the API per client (RATE_LIMIT_RPS, RATE_LIMIT_BURST), not the
// probes or the scrape.
func TestServeMetricsAndRateLimit(t *testing.T) {
	base := startProcess(t, map[string]string{
		"BROKER_API_TOKEN": "track-t", "BROKER_ADMIN_TOKEN": "admin-t", "METRICS_TOKEN": "scrape-me",
		"RATE_LIMIT_RPS": "0.001", "RATE_LIMIT_BURST": "2", "RUN_JOBS": "false",
	}, "serve")
	admin := []string{"Authorization", "Bearer admin-t"}
	for i, want := range []int{200, 200, 429} {
		r := get(t, "GET", base+"/v1/admin/stats", admin...)
		if r.status != want || r.header.Get("X-RateLimit-Limit") != "0.001" {
			t.Fatalf("request %d = %d %v %s, want %d", i, r.status, r.header, r.body, want)
		}
		if want == 429 && (envelopeCode(t, r) != "RATE_LIMIT_EXCEEDED" || r.header.Get("Retry-After") == "") {
			t.Fatalf("429 = %v %s", r.header, r.body)
		}
	}
	for range 3 {
		if r := get(t, "GET", base+"/healthz"); r.status != 200 {
			t.Fatalf("healthz limited: %d", r.status)
		}
	}
	if r := get(t, "GET", base+"/metrics"); r.status != 401 {
		t.Fatalf("metrics without token = %d", r.status)
	}
	r := get(t, "GET", base+"/metrics", "Authorization", "Bearer scrape-me")
	for _, s := range []string{
		`broker_http_requests_total{code="429",method="GET",route="/v1/admin/stats"} 1`,
		`broker_http_requests_total{code="200",method="GET",route="/v1/admin/stats"} 2`,
		"broker_pool_available 0",
	} {
		if r.status != 200 || !strings.Contains(r.body, s) {
			t.Fatalf("metrics = %d, lack %q:\n%s", r.status, s, r.body)
		}
	}
}
