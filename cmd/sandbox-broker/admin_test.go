package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/httpapi"
	"github.com/sandbox-broker/broker/jobs"
	"github.com/sandbox-broker/broker/service"
	"github.com/sandbox-broker/broker/sqlite"
	"github.com/sandbox-broker/broker/storetest"
)

const (
	adminTestToken = "admin-cli-token"
	trackTestToken = "track-cli-token"
)

// adminBroker starts a broker on a real SQLite store with 6 sandboxes
// (ids 5000-5005): two allocated for lab-adventure, one stale, one
// deletion_failed (returned), two available. Its jobs are sync and cleanup
// (enabled) and expiry (disabled); the runner is not started.
func adminBroker(t *testing.T) (url, failedID string) {
	t.Helper()
	ctx := context.Background()
	store, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "broker.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	now := time.Now().Truncate(time.Second)
	if _, err := store.UpsertAccounts(ctx, storetest.Accounts("lab", 5000, 6), now); err != nil {
		t.Fatal(err)
	}
	if n, err := store.MarkStale(ctx, []string{"5005"}, now); err != nil || n != 1 {
		t.Fatalf("MarkStale = %d, %v", n, err)
	}
	alloc := func(owner string) string {
		a, err := store.Allocate(ctx, broker.AllocateRequest{Owner: owner, Key: owner, TrackName: "lab-adventure", LabDuration: time.Hour, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		return a.Sandbox.ID
	}
	failedID = alloc("owner-failed")
	if _, err := store.MarkForDeletion(ctx, broker.MarkRequest{ID: failedID, Owner: "owner-failed", Now: now}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.ClaimDeletions(ctx, broker.ClaimRequest{Now: now, Lease: time.Minute, Limit: 1, Token: "tok"}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.FailDeletion(ctx, broker.FailRequest{ID: failedID, Token: "tok", Now: now, NextAttemptAt: now, MaxAttempts: 1, Error: "no"}); err != nil {
		t.Fatal(err)
	}
	alloc("owner-a")
	alloc("owner-b")
	noop := func(context.Context) (any, error) { return map[string]int{"listed": 6}, nil }
	runner := jobs.New(jobs.Config{Store: store, Jobs: []jobs.Job{
		{Name: "sync", Enabled: true, Interval: 10 * time.Minute, Run: noop},
		{Name: "cleanup", Enabled: true, Interval: 5 * time.Minute, Run: noop},
		{Name: "expiry", Enabled: false, Disabled: "AUTO_EXPIRY_ENABLED=false", Interval: 5 * time.Minute, Run: noop},
	}})
	srv := httptest.NewServer(httpapi.New(httpapi.Config{
		APITokens: []string{trackTestToken}, AdminTokens: []string{adminTestToken},
		Service: service.New(store, nil, 48*time.Hour), Store: store, Jobs: runner,
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/v1", failedID
}

// adminCLI runs `sandbox-broker admin args...` with env and returns the
// exit code, stdout and stderr.
func adminCLI(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), append([]string{"admin"}, args...), func(k string) string { return env[k] }, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestAdminCLI(t *testing.T) {
	url, failedID := adminBroker(t)
	env := map[string]string{"BROKER_URL": url, "BROKER_ADMIN_TOKEN": adminTestToken + ",old-token"}
	ok := func(t *testing.T, args ...string) string {
		t.Helper()
		code, out, errOut := adminCLI(t, env, args...)
		if code != 0 {
			t.Fatalf("admin %v: exit %d\nstdout: %s\nstderr: %s", args, code, out, errOut)
		}
		return out
	}
	fails := func(t *testing.T, wantCode int, want []string, args ...string) string {
		t.Helper()
		code, out, errOut := adminCLI(t, env, args...)
		if code != wantCode {
			t.Fatalf("admin %v: exit %d, want %d\nstdout: %s\nstderr: %s", args, code, wantCode, out, errOut)
		}
		for _, w := range want {
			if !strings.Contains(errOut, w) {
				t.Fatalf("admin %v: stderr %q lacks %q", args, errOut, w)
			}
		}
		return errOut
	}
	jsonOf := func(t *testing.T, out string, v any) {
		t.Helper()
		if err := json.Unmarshal([]byte(out), v); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, out)
		}
	}

	t.Run("Help", func(t *testing.T) {
		if out := ok(t, "help"); !strings.Contains(out, "bulk-delete --status S") || !strings.Contains(out, "BROKER_ADMIN_TOKEN") {
			t.Fatalf("help = %s", out)
		}
		fails(t, 2, []string{"a command is required"})
		fails(t, 2, []string{`unknown command "frobnicate"`}, "frobnicate")
	})
	t.Run("Stats", func(t *testing.T) {
		out := ok(t, "stats")
		for _, w := range []string{"STATUS", "available", "allocated", "deletion_failed", "total", "TRACK", "lab-adventure"} {
			if !strings.Contains(out, w) {
				t.Fatalf("stats table lacks %q:\n%s", w, out)
			}
		}
		var st struct {
			Total    int            `json:"total"`
			ByStatus map[string]int `json:"by_status"`
			ByTrack  map[string]int `json:"by_track"`
		}
		jsonOf(t, ok(t, "--json", "stats"), &st)
		if st.Total != 6 || st.ByStatus["allocated"] != 2 || st.ByStatus["stale"] != 1 || st.ByStatus["deletion_failed"] != 1 || st.ByTrack["lab-adventure"] != 3 {
			t.Fatalf("stats = %+v", st)
		}
	})
	t.Run("List", func(t *testing.T) {
		out := ok(t, "list", "--status", "allocated", "--track", "lab-adventure")
		if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 3 || !strings.HasPrefix(lines[0], "ID") || !strings.Contains(out, "owner-a") {
			t.Fatalf("list = %s", out)
		}
		code, out, errOut := adminCLI(t, env, "list", "--limit", "2")
		if code != 0 || strings.Count(out, "\n") != 3 || !strings.Contains(errOut, "--cursor ") {
			t.Fatalf("first page: exit %d\n%s\n%s", code, out, errOut)
		}
		var page struct {
			Sandboxes []struct {
				ID    string `json:"sandbox_id"`
				Owner string `json:"allocated_to_track"`
			} `json:"sandboxes"`
			Cursor string `json:"cursor"`
		}
		jsonOf(t, ok(t, "list", "--all", "--limit", "2", "--json"), &page)
		if len(page.Sandboxes) != 6 || page.Cursor != "" {
			t.Fatalf("list --all = %+v", page)
		}
		jsonOf(t, ok(t, "list", "--owner", "owner-b", "--prefix", "lab", "--json"), &page)
		if len(page.Sandboxes) != 1 || page.Sandboxes[0].Owner != "owner-b" {
			t.Fatalf("list --owner = %+v", page)
		}
		fails(t, 2, []string{"--status must be one of"}, "list", "--status", "gone")
		fails(t, 2, []string{"--limit must be from 1 to 100"}, "list", "--limit", "500")
		fails(t, 2, []string{"invalid value"}, "list", "--limit", "many")
		fails(t, 1, []string{"HTTP 400 VALIDATION_ERROR", "request id"}, "list", "--cursor", "!!bad")
	})
	t.Run("Jobs", func(t *testing.T) {
		if out := ok(t, "sync"); !strings.Contains(out, "queued sync run run-") {
			t.Fatalf("sync = %s", out)
		}
		var run struct {
			ID     string `json:"run_id"`
			Job    string `json:"job"`
			Status string `json:"status"`
		}
		jsonOf(t, ok(t, "cleanup", "--json"), &run)
		if run.Job != "cleanup" || run.Status != "queued" || run.ID == "" {
			t.Fatalf("cleanup = %+v", run)
		}
		fails(t, 1, []string{"expire: HTTP 409 INVALID_STATE", "job expiry is disabled", "[request id "}, "expire")
		if out := ok(t, "pause", "cleanup"); !strings.Contains(out, "job cleanup paused") {
			t.Fatalf("pause = %s", out)
		}
		out := ok(t, "jobs")
		for _, w := range []string{"JOB", "sync", "10m0s", "queued", "expiry", "false"} {
			if !strings.Contains(out, w) {
				t.Fatalf("jobs table lacks %q:\n%s", w, out)
			}
		}
		var js []struct {
			Name   string `json:"name"`
			Paused bool   `json:"paused"`
			Runs   []struct {
				ID string `json:"run_id"`
			} `json:"runs"`
		}
		jsonOf(t, ok(t, "jobs", "--json"), &js)
		if len(js) != 3 || !js[1].Paused || len(js[1].Runs) != 1 || js[1].Runs[0].ID != run.ID {
			t.Fatalf("jobs = %+v", js)
		}
		ok(t, "resume", "cleanup", "--json")
		jsonOf(t, ok(t, "jobs", "--json"), &js)
		if js[1].Paused {
			t.Fatalf("cleanup still paused: %+v", js)
		}
		fails(t, 1, []string{"HTTP 404 NOT_FOUND", `no job named "nightly"`}, "pause", "nightly")
		fails(t, 2, []string{"usage: sandbox-broker admin pause JOB"}, "pause")
		fails(t, 2, []string{"takes no arguments"}, "sync", "now")
	})
	t.Run("HistoryAndRetry", func(t *testing.T) {
		out := ok(t, "history", failedID)
		for _, w := range []string{"AT", "FROM", "available", "deletion_failed"} {
			if !strings.Contains(out, w) {
				t.Fatalf("history lacks %q:\n%s", w, out)
			}
		}
		var h struct {
			Events []struct{ From, To string } `json:"events"`
		}
		jsonOf(t, ok(t, "history", failedID, "--json"), &h) // flags after the argument
		if len(h.Events) < 4 || h.Events[len(h.Events)-1].To != "deletion_failed" {
			t.Fatalf("history = %+v", h)
		}
		if out := ok(t, "history", "424242"); !strings.Contains(out, "no events") {
			t.Fatalf("unknown history = %s", out)
		}
		if out := ok(t, "retry-deletion", failedID); !strings.Contains(out, "is pending_deletion again") {
			t.Fatalf("retry-deletion = %s", out)
		}
		fails(t, 1, []string{"HTTP 409 INVALID_STATE"}, "retry-deletion", failedID)
		fails(t, 1, []string{"HTTP 404 SANDBOX_NOT_FOUND"}, "retry-deletion", "424242")
	})
	t.Run("BulkDelete", func(t *testing.T) {
		if out := ok(t, "bulk-delete", "--status", "stale", "--dry-run"); !strings.Contains(out, "would remove 1 stale") {
			t.Fatalf("dry run = %s", out)
		}
		fails(t, 2, []string{"bulk-delete needs --status"}, "bulk-delete")
		fails(t, 1, []string{"HTTP 409 INVALID_STATE", "force=true"}, "bulk-delete", "--status", "allocated")
		var res struct {
			Deleted int  `json:"deleted"`
			DryRun  bool `json:"dry_run"`
		}
		jsonOf(t, ok(t, "bulk-delete", "--status", "stale", "--json"), &res)
		if res.Deleted != 1 || res.DryRun {
			t.Fatalf("bulk-delete = %+v", res)
		}
	})
	t.Run("AutoDeleteStale", func(t *testing.T) {
		if out := ok(t, "auto-delete-stale"); !strings.Contains(out, "purged 0 sandbox record(s) stale for at least 24h") {
			t.Fatalf("auto-delete-stale = %s", out)
		}
		if out := ok(t, "auto-delete-stale", "--grace-hours", "48"); !strings.Contains(out, "48h") {
			t.Fatalf("auto-delete-stale 48 = %s", out)
		}
		fails(t, 2, []string{"--grace-hours must be from 1 to 8760"}, "auto-delete-stale", "--grace-hours", "0")
	})
	t.Run("Configuration", func(t *testing.T) {
		code, _, errOut := adminCLI(t, map[string]string{"BROKER_URL": url}, "stats")
		if code != 2 || !strings.Contains(errOut, "BROKER_ADMIN_TOKEN is not set") {
			t.Fatalf("no token: exit %d %s", code, errOut)
		}
		// Flags override the environment.
		code, out, errOut := adminCLI(t, map[string]string{"BROKER_URL": "http://127.0.0.1:1/v1", "BROKER_ADMIN_TOKEN": "wrong"}, "--url", url, "--token", adminTestToken, "stats")
		if code != 0 || !strings.Contains(out, "total") {
			t.Fatalf("--url --token: exit %d %s %s", code, out, errOut)
		}
		code, _, errOut = adminCLI(t, map[string]string{"BROKER_URL": url, "BROKER_ADMIN_TOKEN": "wrong"}, "stats")
		if code != 1 || !strings.Contains(errOut, "HTTP 401 UNAUTHORIZED") || !strings.Contains(errOut, "check BROKER_ADMIN_TOKEN") {
			t.Fatalf("bad token: exit %d %s", code, errOut)
		}
		code, _, errOut = adminCLI(t, map[string]string{"BROKER_URL": url, "BROKER_ADMIN_TOKEN": trackTestToken}, "stats")
		if code != 1 || !strings.Contains(errOut, "HTTP 403 FORBIDDEN") || !strings.Contains(errOut, "track token") {
			t.Fatalf("track token: exit %d %s", code, errOut)
		}
		code, _, errOut = adminCLI(t, map[string]string{"BROKER_URL": strings.TrimSuffix(url, "/v1"), "BROKER_ADMIN_TOKEN": adminTestToken}, "stats")
		if code != 1 || !strings.Contains(errOut, "HTTP 404 NOT_FOUND") || !strings.Contains(errOut, "API base URL") {
			t.Fatalf("URL without /v1: exit %d %s", code, errOut)
		}
		code, _, errOut = adminCLI(t, map[string]string{"BROKER_URL": "http://127.0.0.1:1/v1", "BROKER_ADMIN_TOKEN": adminTestToken}, "stats")
		if code != 1 || !strings.Contains(errOut, "cannot reach the broker") || !strings.Contains(errOut, "is the broker running") {
			t.Fatalf("unreachable: exit %d %s", code, errOut)
		}
		code, _, errOut = adminCLI(t, map[string]string{"BROKER_URL": "localhost:8080", "BROKER_ADMIN_TOKEN": adminTestToken}, "stats")
		if code != 2 || !strings.Contains(errOut, "must start with http://") {
			t.Fatalf("bad URL: exit %d %s", code, errOut)
		}
	})
}
