package client_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/client"
	"github.com/sandbox-broker/broker/httpapi"
	"github.com/sandbox-broker/broker/internal/fakeclock"
	"github.com/sandbox-broker/broker/jobs"
	"github.com/sandbox-broker/broker/service"
	"github.com/sandbox-broker/broker/sqlite"
	"github.com/sandbox-broker/broker/storetest"
)

const (
	trackToken = "client-track-token"
	adminToken = "client-admin-token"
)

// broker is a real broker on a real SQLite store with n sandboxes
// lab-0001... (ids 5000...), its job runner not started.
type testBroker struct {
	url   string // API base URL
	srv   *httptest.Server
	store *sqlite.Store
	clock *fakeclock.Clock
}

func newBroker(t *testing.T, n int, basePath string) *testBroker {
	t.Helper()
	ctx := context.Background()
	store, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "broker.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	clock := fakeclock.New(time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC))
	if _, err := store.UpsertAccounts(ctx, storetest.Accounts("lab", 5000, n), clock.Now()); err != nil {
		t.Fatal(err)
	}
	noop := func(context.Context) (any, error) { return nil, nil }
	runner := jobs.New(jobs.Config{Store: store, Clock: clock, Jobs: []jobs.Job{
		{Name: "sync", Enabled: true, Interval: time.Minute, Run: noop},
		{Name: "cleanup", Enabled: true, Interval: time.Minute, Run: noop},
		{Name: "expiry", Enabled: false, Disabled: "AUTO_EXPIRY_ENABLED=false", Interval: time.Minute, Run: noop},
	}})
	srv := httptest.NewServer(httpapi.New(httpapi.Config{
		BasePath: basePath, APITokens: []string{trackToken}, AdminTokens: []string{adminToken},
		Service: service.New(store, clock, 48*time.Hour), Store: store, Clock: clock, Jobs: runner,
	}))
	t.Cleanup(srv.Close)
	return &testBroker{url: srv.URL + basePath, srv: srv, store: store, clock: clock}
}

// wantCode checks err's broker code and, for HTTP errors, status and wire code.
func wantCode(t *testing.T, err error, code string, status int, wire string) *client.Error {
	t.Helper()
	if got := broker.ErrorCode(err); got != code {
		t.Fatalf("ErrorCode(%v) = %q, want %q", err, got, code)
	}
	var e *client.Error
	if !errors.As(err, &e) {
		t.Fatalf("%v is not a *client.Error", err)
	}
	if e.Status != status || e.Code != wire || e.RequestID == "" || e.Message == "" {
		t.Fatalf("error = %+v, want status %d code %s with a message and request id", e, status, wire)
	}
	return e
}

func TestTrack(t *testing.T) {
	ctx := context.Background()
	b := newBroker(t, 3, "/v1")
	c := client.New(b.url, trackToken)

	t.Run("Allocate", func(t *testing.T) {
		a, err := c.Allocate(ctx, client.AllocateInput{Owner: "student-1", TrackName: "lab-adventure", NamePrefix: "lab"})
		if err != nil {
			t.Fatal(err)
		}
		if a.Replayed || a.SandboxID == "" || !strings.HasPrefix(a.Name, "lab-") || a.SFDCAccountID == "" {
			t.Fatalf("allocation = %+v", a)
		}
		if a.AllocatedAt != b.clock.Now() || a.ExpiresAt != b.clock.Now().Add(48*time.Hour) {
			t.Fatalf("times = %v %v", a.AllocatedAt, a.ExpiresAt)
		}
		if a.AccountUUID() == "" || strings.Contains(a.AccountUUID(), "/") || !strings.HasSuffix(a.ExternalID, "/"+a.AccountUUID()) {
			t.Fatalf("AccountUUID = %q of %q", a.AccountUUID(), a.ExternalID)
		}
		again, err := c.Allocate(ctx, client.AllocateInput{Owner: "student-1"})
		if err != nil || !again.Replayed || again.SandboxID != a.SandboxID {
			t.Fatalf("replay = %+v, %v", again, err)
		}
		keyed, err := c.Allocate(ctx, client.AllocateInput{Owner: "student-1", IdempotencyKey: "second-lab"})
		if err != nil || keyed.Replayed || keyed.SandboxID == a.SandboxID {
			t.Fatalf("new key = %+v, %v", keyed, err)
		}
	})
	t.Run("ErrNoSandbox", func(t *testing.T) {
		_, err := c.Allocate(ctx, client.AllocateInput{Owner: "student-2", NamePrefix: "other"})
		e := wantCode(t, err, broker.ENOSANDBOX, http.StatusConflict, "NO_SANDBOXES_AVAILABLE")
		if e.RetryAfter != 30*time.Second || !e.Temporary() {
			t.Fatalf("retry after = %v, temporary = %v", e.RetryAfter, e.Temporary())
		}
	})
	t.Run("ErrInvalid", func(t *testing.T) {
		_, err := c.Allocate(ctx, client.AllocateInput{})
		wantCode(t, err, broker.EINVALID, http.StatusBadRequest, "MISSING_SANDBOX_ID")
		_, err = c.Allocate(ctx, client.AllocateInput{Owner: strings.Repeat("x", 300)})
		wantCode(t, err, broker.EINVALID, http.StatusBadRequest, "VALIDATION_ERROR")
	})
	t.Run("GetAndMark", func(t *testing.T) {
		a, err := c.Allocate(ctx, client.AllocateInput{Owner: "student-3", TrackName: "lab-x"})
		if err != nil {
			t.Fatal(err)
		}
		sb, err := c.Get(ctx, a.SandboxID, "student-3")
		if err != nil || sb.Status != broker.StatusAllocated || sb.Owner != "student-3" || sb.TrackName != "lab-x" || sb.ExpiresAt != a.ExpiresAt {
			t.Fatalf("get = %+v, %v", sb, err)
		}
		_, err = c.Get(ctx, a.SandboxID, "student-1")
		wantCode(t, err, broker.ENOTOWNER, http.StatusForbidden, "NOT_SANDBOX_OWNER")
		_, err = c.Get(ctx, "424242", "student-3")
		wantCode(t, err, broker.ENOTFOUND, http.StatusNotFound, "SANDBOX_NOT_FOUND")

		m, err := c.MarkForDeletion(ctx, a.SandboxID, "student-3")
		if err != nil || m.Status != broker.StatusPendingDeletion || m.DeletionRequestedAt != b.clock.Now() {
			t.Fatalf("mark = %+v, %v", m, err)
		}
		again, err := c.MarkForDeletion(ctx, a.SandboxID, "student-3")
		if err != nil || again != m {
			t.Fatalf("repeat mark = %+v, %v", again, err)
		}
		_, err = c.MarkForDeletion(ctx, "424242", "student-3")
		wantCode(t, err, broker.ENOTFOUND, http.StatusNotFound, "SANDBOX_NOT_FOUND")
		_, err = c.MarkForDeletion(ctx, "a/b?c%d", "student-3") // one escaped path segment
		if e := wantCode(t, err, broker.ENOTFOUND, http.StatusNotFound, "SANDBOX_NOT_FOUND"); !strings.Contains(e.Message, "a/b?c%d") {
			t.Fatalf("the id did not reach the broker intact: %q", e.Message)
		}
	})
	t.Run("Auth", func(t *testing.T) {
		_, err := client.New(b.url, "wrong").Allocate(ctx, client.AllocateInput{Owner: "s"})
		wantCode(t, err, broker.EINTERNAL, http.StatusUnauthorized, "UNAUTHORIZED")
		_, err = c.Stats(ctx)
		wantCode(t, err, broker.EINTERNAL, http.StatusForbidden, "FORBIDDEN")
	})
	t.Run("RequestID", func(t *testing.T) {
		_, err := c.Get(client.WithRequestID(ctx, "lab-trace-7"), "424242", "s")
		if e := wantCode(t, err, broker.ENOTFOUND, 404, "SANDBOX_NOT_FOUND"); e.RequestID != "lab-trace-7" {
			t.Fatalf("request id = %q", e.RequestID)
		}
		if !strings.Contains(err.Error(), "lab-trace-7") || !strings.Contains(err.Error(), "HTTP 404 SANDBOX_NOT_FOUND") {
			t.Fatalf("message = %q", err)
		}
	})
}

// failDeletion makes one allocated sandbox deletion_failed and returns its id.
func failDeletion(t *testing.T, b *testBroker, owner string) string {
	t.Helper()
	ctx, now := context.Background(), b.clock.Now()
	a, err := b.store.Allocate(ctx, broker.AllocateRequest{Owner: owner, Key: owner, LabDuration: time.Hour, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.MarkForDeletion(ctx, broker.MarkRequest{ID: a.Sandbox.ID, Owner: owner, Now: now}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.ClaimDeletions(ctx, broker.ClaimRequest{Now: now, Lease: time.Minute, Limit: 1, Token: "tok"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.FailDeletion(ctx, broker.FailRequest{ID: a.Sandbox.ID, Token: "tok", Now: now, NextAttemptAt: now, MaxAttempts: 1, Error: "no"}); err != nil {
		t.Fatal(err)
	}
	return a.Sandbox.ID
}

func TestAdmin(t *testing.T) {
	ctx := context.Background()
	b := newBroker(t, 7, "/v1")
	c := client.New(b.url, adminToken)
	if n, err := b.store.MarkStale(ctx, []string{"5006"}, b.clock.Now()); err != nil || n != 1 {
		t.Fatalf("MarkStale = %d, %v", n, err)
	}
	failedID := failDeletion(t, b, "owner-failed")
	for _, owner := range []string{"owner-a", "owner-b"} {
		if _, err := c.Allocate(ctx, client.AllocateInput{Owner: owner, TrackName: "lab-adventure"}); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("Stats", func(t *testing.T) {
		st, err := c.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Total != 7 || st.ByStatus[broker.StatusAllocated] != 2 || st.ByStatus[broker.StatusAvailable] != 3 ||
			st.ByStatus[broker.StatusStale] != 1 || st.ByStatus[broker.StatusDeletionFailed] != 1 || st.ByTrack["lab-adventure"] != 2 {
			t.Fatalf("stats = %+v", st)
		}
	})
	t.Run("List", func(t *testing.T) {
		page, err := c.List(ctx, client.ListFilter{Status: broker.StatusAllocated, TrackName: "lab-adventure"})
		if err != nil || len(page.Sandboxes) != 2 || page.Cursor != "" || page.Sandboxes[0].Owner == "" {
			t.Fatalf("list = %+v, %v", page, err)
		}
		page, err = c.List(ctx, client.ListFilter{Limit: 3})
		if err != nil || len(page.Sandboxes) != 3 || page.Cursor == "" {
			t.Fatalf("first page = %+v, %v", page, err)
		}
		seen := map[string]bool{}
		err = c.ListAll(ctx, client.ListFilter{Limit: 2}, func(sb client.Sandbox) bool { seen[sb.SandboxID] = true; return true })
		if err != nil || len(seen) != 7 {
			t.Fatalf("ListAll saw %d, %v", len(seen), err)
		}
		n := 0
		_ = c.ListAll(ctx, client.ListFilter{Limit: 2}, func(client.Sandbox) bool { n++; return n < 3 })
		if n != 3 {
			t.Fatalf("ListAll did not stop: %d", n)
		}
		_, err = c.List(ctx, client.ListFilter{Status: "gone"})
		wantCode(t, err, broker.EINVALID, 400, "VALIDATION_ERROR")
	})
	t.Run("HistoryAndRetry", func(t *testing.T) {
		events, err := c.History(ctx, failedID)
		if err != nil || len(events) < 4 || events[0].From != "" || events[0].To != broker.StatusAvailable || events[len(events)-1].To != broker.StatusDeletionFailed {
			t.Fatalf("history = %+v, %v", events, err)
		}
		sb, err := c.RetryDeletion(ctx, failedID)
		if err != nil || sb.Status != broker.StatusPendingDeletion {
			t.Fatalf("retry = %+v, %v", sb, err)
		}
		_, err = c.RetryDeletion(ctx, failedID)
		wantCode(t, err, broker.ECONFLICT, 409, "INVALID_STATE")
		_, err = c.RetryDeletion(ctx, "424242")
		wantCode(t, err, broker.ENOTFOUND, 404, "SANDBOX_NOT_FOUND")
		if events, err := c.History(ctx, "424242"); err != nil || len(events) != 0 {
			t.Fatalf("unknown history = %v, %v", events, err)
		}
	})
	t.Run("BulkDelete", func(t *testing.T) {
		res, err := c.BulkDelete(ctx, broker.StatusStale, false, true)
		if err != nil || !res.DryRun || res.WouldDelete != 1 || res.Deleted != 0 {
			t.Fatalf("dry run = %+v, %v", res, err)
		}
		res, err = c.BulkDelete(ctx, broker.StatusStale, false, false)
		if err != nil || res.DryRun || res.Deleted != 1 {
			t.Fatalf("bulk delete = %+v, %v", res, err)
		}
		_, err = c.BulkDelete(ctx, broker.StatusAllocated, false, false)
		wantCode(t, err, broker.ECONFLICT, 409, "INVALID_STATE")
		_, err = c.BulkDelete(ctx, "", false, false)
		wantCode(t, err, broker.EINVALID, 400, "VALIDATION_ERROR")
	})
	t.Run("AutoDeleteStale", func(t *testing.T) {
		res, err := c.AutoDeleteStale(ctx, 0)
		if err != nil || res.GraceHours != 24 || res.Deleted != 0 {
			t.Fatalf("auto-delete-stale = %+v, %v", res, err)
		}
		if res, err := c.AutoDeleteStale(ctx, 2); err != nil || res.GraceHours != 2 {
			t.Fatalf("auto-delete-stale 2h = %+v, %v", res, err)
		}
		_, err = c.AutoDeleteStale(ctx, -1)
		wantCode(t, err, broker.EINVALID, 400, "VALIDATION_ERROR")
	})
	t.Run("Jobs", func(t *testing.T) {
		run, err := c.Sync(ctx)
		if err != nil || run.ID == "" || run.Job != "sync" || run.Status != "queued" {
			t.Fatalf("sync = %+v, %v", run, err)
		}
		if run, err := c.Cleanup(ctx); err != nil || run.Job != "cleanup" {
			t.Fatalf("cleanup = %+v, %v", run, err)
		}
		_, err = c.Expire(ctx)
		wantCode(t, err, broker.ECONFLICT, 409, "INVALID_STATE")
		if err := c.PauseJob(ctx, "cleanup"); err != nil {
			t.Fatal(err)
		}
		err = c.PauseJob(ctx, "nightly")
		wantCode(t, err, broker.ENOTFOUND, 404, "NOT_FOUND")
		js, err := c.Jobs(ctx)
		if err != nil || len(js) != 3 {
			t.Fatalf("jobs = %+v, %v", js, err)
		}
		byName := map[string]client.Job{}
		for _, j := range js {
			byName[j.Name] = j
		}
		if !byName["cleanup"].Paused || byName["sync"].Paused || byName["expiry"].Enabled || byName["sync"].Interval != time.Minute {
			t.Fatalf("jobs = %+v", js)
		}
		if runs := byName["sync"].Runs; len(runs) != 1 || runs[0].ID != run.ID || runs[0].Trigger != "admin" || runs[0].QueuedAt.IsZero() || !runs[0].StartedAt.IsZero() || runs[0].Result != nil {
			t.Fatalf("sync runs = %+v", runs)
		}
		if err := c.ResumeJob(ctx, "cleanup"); err != nil {
			t.Fatal(err)
		}
		if js, _ := c.Jobs(ctx); js[1].Paused {
			t.Fatalf("cleanup still paused: %+v", js[1])
		}
	})
}

func TestHealth(t *testing.T) {
	ctx := context.Background()
	b := newBroker(t, 1, "/api/broker")
	c := client.New(b.url, "") // probes need no token
	h, err := c.Healthz(ctx)
	if err != nil || h.Status != "healthy" || h.Time != b.clock.Now() {
		t.Fatalf("healthz = %+v, %v", h, err)
	}
	r, err := c.Readyz(ctx)
	if err != nil || !r.Ready || r.Checks["store"] != "ok" {
		t.Fatalf("readyz = %+v, %v", r, err)
	}
	// A non-default base path works for the API too.
	if _, err := client.New(b.url, trackToken).Allocate(ctx, client.AllocateInput{Owner: "s"}); err != nil {
		t.Fatal(err)
	}
	b.store.Close()
	r, err = c.Readyz(ctx)
	e := wantCode(t, err, broker.EUNAVAILABLE, 503, "NOT_READY")
	if r.Ready || r.Status != "not_ready" || r.Checks["store"] != "unavailable" || !strings.Contains(e.Message, "store=unavailable") {
		t.Fatalf("readyz on a closed store = %+v, %v", r, err)
	}
	_, err = client.New(b.url, trackToken).Get(ctx, "5000", "s")
	if e := wantCode(t, err, broker.EUNAVAILABLE, 503, "SERVICE_UNAVAILABLE"); e.RetryAfter != 5*time.Second {
		t.Fatalf("retry after = %v", e.RetryAfter)
	}
}

func TestTransportErrors(t *testing.T) {
	ctx := context.Background()
	t.Run("Unreachable", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		url := srv.URL
		srv.Close()
		_, err := client.New(url+"/v1", trackToken).Allocate(ctx, client.AllocateInput{Owner: "s"})
		if broker.ErrorCode(err) != broker.EUNAVAILABLE {
			t.Fatalf("unreachable broker: %v (%s)", err, broker.ErrorCode(err))
		}
		var e *client.Error
		if errors.As(err, &e) {
			t.Fatalf("a network failure is not an HTTP error: %v", err)
		}
	})
	t.Run("Cancelled", func(t *testing.T) {
		b := newBroker(t, 1, "/v1")
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_, err := client.New(b.url, trackToken).Allocate(cctx, client.AllocateInput{Owner: "s"})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled call: %v", err)
		}
	})
	t.Run("ProxyErrorPage", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusBadGateway)
			_, _ = w.Write([]byte("<html><body>\n<h1>502 Bad Gateway</h1>\n</body></html>"))
		}))
		defer srv.Close()
		_, err := client.New(srv.URL+"/v1", trackToken).Allocate(ctx, client.AllocateInput{Owner: "s"})
		var e *client.Error
		if !errors.As(err, &e) || e.Status != 502 || e.Code != "" || !strings.Contains(e.Message, "502 Bad Gateway") || broker.ErrorCode(err) != broker.EUNAVAILABLE {
			t.Fatalf("proxy error page: %#v", err)
		}
	})
	t.Run("BadURL", func(t *testing.T) {
		for _, u := range []string{"", "localhost:8080/v1", "ftp://host/v1"} {
			_, err := client.New(u, trackToken).Stats(ctx)
			if broker.ErrorCode(err) != broker.EINVALID {
				t.Fatalf("New(%q): %v", u, err)
			}
		}
	})
}
