package lifecycle_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/csp"
	"github.com/sandbox-broker/broker/fakecsp"
	"github.com/sandbox-broker/broker/httpapi"
	"github.com/sandbox-broker/broker/internal/fakeclock"
	"github.com/sandbox-broker/broker/jobs"
	"github.com/sandbox-broker/broker/lifecycle"
	"github.com/sandbox-broker/broker/service"
	"github.com/sandbox-broker/broker/sqlite"
	"golang.org/x/time/rate"
)

const (
	trackToken = "track"
	adminToken = "admin"
)

// world is a broker with real parts: SQLite file, CSP client over real
// HTTP to the fake provider, job runner, HTTP API.
type world struct {
	t       *testing.T
	fake    *fakecsp.Server
	store   broker.Store
	api     *httptest.Server
	syncer  *lifecycle.Syncer
	cleaner *lifecycle.Cleaner
	runner  *jobs.Runner
}

func newWorld(t *testing.T, sandboxes int) *world {
	t.Helper()
	return newWorldTimeout(t, sandboxes, 10*time.Second)
}

// newWorldTimeout is newWorld with a given provider read timeout: short
// only where a test wants provider timeouts.
func newWorldTimeout(t *testing.T, sandboxes int, readTimeout time.Duration) *world {
	t.Helper()
	fake := fakecsp.New(fakecsp.Options{Sandboxes: sandboxes})
	provSrv := httptest.NewServer(fake)
	t.Cleanup(provSrv.Close)
	store, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "b.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	log := slog.New(slog.DiscardHandler)
	client := csp.New(csp.Config{BaseURL: provSrv.URL + "/v2", Token: "t", ReadTimeout: readTimeout,
		RequestTimeout: readTimeout + time.Second, BreakerThreshold: 3, BreakerTimeout: 200 * time.Millisecond, Logger: log})
	clock := broker.SystemClock{}
	w := &world{t: t, fake: fake, store: store}
	w.syncer = &lifecycle.Syncer{Store: store, Provider: client, Clock: clock, Logger: log, MaxStaleFraction: 0.5}
	w.cleaner = &lifecycle.Cleaner{Store: store, Provider: client, Clock: clock, Logger: log,
		Limiter: rate.NewLimiter(rate.Inf, 1), BatchSize: 10, Lease: time.Minute, MaxAttempts: 1000,
		RetryBase: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond}
	// Scheduled runs are paused; the tests trigger every run explicitly.
	for _, job := range []string{"sync", "cleanup"} {
		if err := store.SetJobPaused(context.Background(), job, true); err != nil {
			t.Fatal(err)
		}
	}
	w.runner = newRunner(store, w.syncer, w.cleaner, "r1")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.runner.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	w.api = httptest.NewServer(httpapi.New(httpapi.Config{APITokens: []string{trackToken}, AdminTokens: []string{adminToken},
		Service: service.New(store, clock, time.Hour), Store: store, Jobs: w.runner, Logger: log}))
	t.Cleanup(w.api.Close)
	return w
}

func newRunner(store broker.Store, s *lifecycle.Syncer, c *lifecycle.Cleaner, holder string) *jobs.Runner {
	return jobs.New(jobs.Config{Store: store, Holder: holder, Tick: 20 * time.Millisecond, LeaseTTL: 2 * time.Second,
		Jobs: []jobs.Job{
			{Name: "sync", Enabled: true, Interval: time.Hour, Run: func(ctx context.Context) (any, error) { return s.Run(ctx) }},
			{Name: "cleanup", Enabled: true, Interval: time.Hour, Run: func(ctx context.Context) (any, error) { return c.Run(ctx) }},
		}})
}

func (w *world) call(method, path, token string, headers ...string) (int, map[string]any) {
	w.t.Helper()
	req, _ := http.NewRequest(method, w.api.URL+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		w.t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body
}

// runJob triggers job through the admin API and waits for the run to end.
func (w *world) runJob(job string) map[string]any {
	w.t.Helper()
	path := map[string]string{"sync": "sync", "cleanup": "cleanup"}[job]
	status, body := w.call("POST", "/v1/admin/"+path, adminToken)
	if status != http.StatusAccepted || body["status"] != "queued" {
		w.t.Fatalf("trigger %s = %d %v", job, status, body)
	}
	runID := body["run_id"].(string)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		_, jobsBody := w.call("GET", "/v1/admin/jobs", adminToken)
		for _, j := range jobsBody["jobs"].([]any) {
			for _, r := range j.(map[string]any)["runs"].([]any) {
				run := r.(map[string]any)
				if run["run_id"] == runID && (run["status"] == "succeeded" || run["status"] == "failed") {
					if run["status"] != "succeeded" {
						w.t.Fatalf("%s run failed: %v", job, run)
					}
					return run["result"].(map[string]any)
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	w.t.Fatalf("%s run %s did not finish", job, runID)
	return nil
}

func (w *world) allocate(owner string) (int, string) {
	status, body := w.call("POST", "/v1/allocate", trackToken, "X-Instruqt-Sandbox-ID", owner)
	id, _ := body["sandbox_id"].(string)
	return status, id
}

// drain runs cleanup until nothing is pending or being deleted.
func (w *world) drain(timeout time.Duration) {
	w.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		st, err := w.store.Stats(context.Background())
		if err != nil {
			w.t.Fatal(err)
		}
		if st.ByStatus[broker.StatusPendingDeletion]+st.ByStatus[broker.StatusDeleting] == 0 {
			return
		}
		w.runJob("cleanup")
		time.Sleep(20 * time.Millisecond)
	}
	w.t.Fatal("deletions did not drain")
}

func TestFullLifecycle(t *testing.T) {
	w := newWorld(t, 5)
	res := w.runJob("sync")
	if res["inserted"] != float64(5) {
		t.Fatalf("sync result %v", res)
	}
	status, id := w.allocate("student-1")
	if status != http.StatusCreated {
		t.Fatalf("allocate = %d", status)
	}
	if s, _ := w.call("POST", "/v1/sandboxes/"+id+"/mark-for-deletion", trackToken, "X-Instruqt-Sandbox-ID", "student-1"); s != 200 {
		t.Fatalf("mark = %d", s)
	}
	res = w.runJob("cleanup")
	if res["deleted"] != float64(1) {
		t.Fatalf("cleanup result %v", res)
	}
	if s, _ := w.call("GET", "/v1/sandboxes/"+id, trackToken, "X-Instruqt-Sandbox-ID", "student-1"); s != 404 {
		t.Fatalf("get after cleanup = %d, want 404", s)
	}
	if s, _ := w.call("POST", "/v1/sandboxes/"+id+"/mark-for-deletion", trackToken, "X-Instruqt-Sandbox-ID", "student-1"); s != 404 {
		t.Fatalf("mark after cleanup = %d, want 404 (already cleaned)", s)
	}
	d := w.fake.Deletes()
	if d.Succeeded != 1 || len(w.fake.Accounts()) != 4 {
		t.Fatalf("provider deletes %+v, %d accounts left", d, len(w.fake.Accounts()))
	}
	_, hist := w.call("GET", "/v1/admin/sandboxes/"+id+"/history", adminToken)
	var path []string
	for _, e := range hist["events"].([]any) {
		ev := e.(map[string]any)
		path = append(path, fmt.Sprint(ev["to"]))
	}
	if strings.Join(path, ",") != "available,allocated,pending_deletion,deleting,deleted" {
		t.Fatalf("history = %v", path)
	}
	// The account is gone at the provider: the next sync adds nothing back.
	res = w.runJob("sync")
	if res["inserted"] != float64(0) || res["listed"] != float64(4) {
		t.Fatalf("sync after delete %v", res)
	}
}

func TestSyncStaleAndRevive(t *testing.T) {
	w := newWorld(t, 10)
	w.runJob("sync")
	acc := w.fake.Accounts()
	id := fmt.Sprint(acc[0].CSPID)
	w.fake.RemoveAccount(acc[0].UUID)
	if res := w.runJob("sync"); res["marked_stale"] != float64(1) {
		t.Fatalf("sync after removal %v", res)
	}
	if sb, _ := w.store.Get(context.Background(), id); sb.Status != broker.StatusStale {
		t.Fatalf("removed account is %s", sb.Status)
	}
	if _, err := w.fake.AddAccounts(acc[0]); err != nil {
		t.Fatal(err)
	}
	if res := w.runJob("sync"); res["revived"] != float64(1) {
		t.Fatalf("sync after reappearance %v", res)
	}
	// An (almost) empty provider answer must not empty the pool.
	for _, a := range w.fake.Accounts()[1:] {
		w.fake.RemoveAccount(a.UUID)
	}
	res := w.runJob("sync")
	if res["refused"] != true || res["marked_stale"] != float64(0) {
		t.Fatalf("sync of a near-empty provider %v", res)
	}
	st, _ := w.store.Stats(context.Background())
	if st.ByStatus[broker.StatusAvailable] != 10 {
		t.Fatalf("pool after refused sync %+v", st)
	}
}

func TestSyncRacesAllocation(t *testing.T) {
	w := newWorld(t, 300)
	w.runJob("sync")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := w.syncer.Run(context.Background()); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	owners := map[string]string{}
	var mu sync.Mutex
	var aw sync.WaitGroup
	for i := 0; i < 250; i++ {
		aw.Add(1)
		go func(owner string) {
			defer aw.Done()
			status, id := w.allocate(owner)
			if status != http.StatusCreated {
				t.Errorf("%s: %d", owner, status)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if prev, dup := owners[id]; dup {
				t.Errorf("sandbox %s given to %s and %s", id, prev, owner)
			}
			owners[id] = owner
		}(fmt.Sprintf("s-%d", i))
	}
	aw.Wait()
	close(stop)
	wg.Wait()
	for id, owner := range owners {
		sb, err := w.store.Get(context.Background(), id)
		if err != nil || sb.Status != broker.StatusAllocated || sb.Owner != owner {
			t.Fatalf("sync reverted allocation %s of %s: %+v %v", id, owner, sb, err)
		}
	}
	if len(owners) != 250 {
		t.Fatalf("%d allocations", len(owners))
	}
}

// markAll allocates and marks every sandbox for deletion.
func (w *world) markAll(n int) map[string]bool {
	w.t.Helper()
	uuids := map[string]bool{}
	for i := 0; i < n; i++ {
		owner := fmt.Sprintf("m-%d", i)
		status, id := w.allocate(owner)
		if status != http.StatusCreated {
			w.t.Fatalf("allocate %d", status)
		}
		if s, _ := w.call("POST", "/v1/sandboxes/"+id+"/mark-for-deletion", trackToken, "X-Instruqt-Sandbox-ID", owner); s != 200 {
			w.t.Fatalf("mark %d", s)
		}
		sb, _ := w.store.Get(context.Background(), id)
		uuids[sb.ExternalID[strings.LastIndex(sb.ExternalID, "/")+1:]] = true
	}
	return uuids
}

func TestProviderFaultsEndWithEverythingDeletedOnce(t *testing.T) {
	tests := []struct {
		name   string
		faults fakecsp.Faults
	}{
		{"Errors500", fakecsp.Faults{ErrorRate: 0.5}},
		{"RateLimited429", fakecsp.Faults{ErrorRate: 0.5, Status: 429, RetryAfter: 1}},
		{"Timeouts", fakecsp.Faults{Latency: 500 * time.Millisecond}},
		{"Outage", fakecsp.Faults{Outage: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorldTimeout(t, 20, 300*time.Millisecond)
			w.runJob("sync")
			uuids := w.markAll(20)
			w.fake.SetFaults(tt.faults)
			for i := 0; i < 3; i++ {
				w.runJob("cleanup")
			}
			w.fake.SetFaults(fakecsp.Faults{})
			w.drain(30 * time.Second)
			d := w.fake.Deletes()
			for u := range uuids {
				if d.SucceededByAccount[u] != 1 {
					t.Fatalf("account %s deleted %d times", u, d.SucceededByAccount[u])
				}
			}
			st, _ := w.store.Stats(context.Background())
			if st.Total != 0 || d.Succeeded != 20 || len(w.fake.Accounts()) != 0 {
				t.Fatalf("after recovery: store %+v, provider %+v, %d accounts left", st, d, len(w.fake.Accounts()))
			}
		})
	}
}

// TestThreeRunnersDeleteOnce runs three job runners (three "replicas") on
// one store: each deletion happens exactly once.
func TestThreeRunnersDeleteOnce(t *testing.T) {
	w := newWorld(t, 60)
	w.runJob("sync")
	uuids := w.markAll(60)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := 2; i <= 3; i++ {
		c := *w.cleaner
		r := newRunner(w.store, w.syncer, &c, fmt.Sprintf("r%d", i))
		wg.Add(1)
		go func() { defer wg.Done(); r.Run(ctx) }()
		// Each runner also cleans directly, outside the lease, to prove
		// the claims alone prevent double deletion.
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Run(ctx); err != nil {
				t.Error(err)
			}
		}()
	}
	w.drain(30 * time.Second)
	cancel()
	wg.Wait()
	d := w.fake.Deletes()
	if d.Total != 60 || d.Succeeded != 60 {
		t.Fatalf("provider saw %d DELETEs (%d succeeded), want exactly 60", d.Total, d.Succeeded)
	}
	for u := range uuids {
		if d.ByAccount[u] != 1 {
			t.Fatalf("account %s got %d DELETEs", u, d.ByAccount[u])
		}
	}
}

func TestPauseAndTrigger(t *testing.T) {
	w := newWorld(t, 3)
	if s, _ := w.call("POST", "/v1/admin/jobs/cleanup/resume", adminToken); s != 200 {
		t.Fatalf("resume = %d", s)
	}
	if s, _ := w.call("POST", "/v1/admin/jobs/cleanup/pause", adminToken); s != 200 {
		t.Fatalf("pause = %d", s)
	}
	if s, _ := w.call("POST", "/v1/admin/jobs/nope/pause", adminToken); s != 404 {
		t.Fatalf("pause unknown = %d", s)
	}
	_, body := w.call("GET", "/v1/admin/jobs", adminToken)
	for _, j := range body["jobs"].([]any) {
		job := j.(map[string]any)
		if job["name"] == "cleanup" && job["paused"] != true {
			t.Fatalf("cleanup not shown paused: %v", job)
		}
	}
	// An explicit trigger still runs while paused: the operator asked.
	w.runJob("cleanup")
	if s, _ := w.call("POST", "/v1/admin/jobs/cleanup/resume", adminToken); s != 200 {
		t.Fatalf("resume = %d", s)
	}
	if p, _ := w.store.PausedJobs(context.Background()); p["cleanup"] {
		t.Fatal("still paused")
	}
}

func TestExpiryAndPurge(t *testing.T) {
	store, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "b.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	clock := fakeclock.New(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC))
	accts := []broker.Account{{ID: "1", Name: "a"}, {ID: "2", Name: "b"}, {ID: "3", Name: "c"}}
	if _, err := store.UpsertAccounts(context.Background(), accts, clock.Now()); err != nil {
		t.Fatal(err)
	}
	svc := service.New(store, clock, 4*time.Hour)
	a, err := svc.Allocate(context.Background(), service.AllocateInput{Owner: "x"})
	if err != nil {
		t.Fatal(err)
	}
	exp := &lifecycle.Expirer{Store: store, Clock: clock, Grace: 30 * time.Minute}
	clock.Add(4*time.Hour + 29*time.Minute)
	if r, _ := exp.Run(context.Background()); r.Expired != 0 {
		t.Fatalf("expired before grace: %+v", r)
	}
	clock.Add(time.Minute)
	if r, _ := exp.Run(context.Background()); r.Expired != 1 {
		t.Fatalf("not expired after grace: %+v", r)
	}
	if sb, _ := store.Get(context.Background(), a.Sandbox.ID); sb.Status != broker.StatusPendingDeletion {
		t.Fatalf("expired sandbox is %s", sb.Status)
	}
	if _, err := store.MarkStale(context.Background(), []string{"2", "3"}, clock.Now()); err != nil {
		t.Fatal(err)
	}
	p := &lifecycle.Purger{Store: store, Clock: clock, Grace: 24 * time.Hour}
	clock.Add(23 * time.Hour)
	if r, _ := p.Run(context.Background()); r.Deleted != 0 {
		t.Fatalf("purged too early: %+v", r)
	}
	clock.Add(time.Hour)
	if r, _ := p.Run(context.Background()); r.Deleted != 2 {
		t.Fatalf("purge: %+v", r)
	}
}

// TestCleanupShutdownFinishesItemInHand cancels a cleanup run (SIGTERM)
// while the provider is answering a DELETE: that deletion completes, the
// rest of the claim goes back to pending without counting an attempt.
func TestCleanupShutdownFinishesItemInHand(t *testing.T) {
	w := newWorld(t, 5)
	w.runJob("sync")
	w.markAll(5)
	w.fake.SetFaults(fakecsp.Faults{Latency: 150 * time.Millisecond})
	c := *w.cleaner
	c.ItemTimeout = 5 * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	c.Provider = cancelOnDelete{Provider: c.Provider, cancel: cancel}
	res, err := c.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Deleted != 1 || res.Released != 4 {
		t.Fatalf("result %+v, want the item in hand deleted and 4 released", res)
	}
	st, _ := w.store.Stats(context.Background())
	if st.ByStatus[broker.StatusPendingDeletion] != 4 || st.ByStatus[broker.StatusDeleting] != 0 || st.Total != 4 {
		t.Fatalf("store after shutdown %+v", st)
	}
	ids, _ := w.store.IDsWithStatus(context.Background(), broker.StatusPendingDeletion)
	for _, id := range ids {
		if sb, _ := w.store.Get(context.Background(), id); sb.DeletionAttempts != 0 {
			t.Fatalf("released sandbox counted an attempt: %+v", sb)
		}
	}
	if d := w.fake.Deletes(); d.Succeeded != 1 {
		t.Fatalf("provider deletes %+v", d)
	}
}

// cancelOnDelete cancels the run (like SIGTERM) as the first DELETE starts.
type cancelOnDelete struct {
	broker.Provider
	cancel context.CancelFunc
}

func (p cancelOnDelete) DeleteAccount(ctx context.Context, externalID string) error {
	p.cancel()
	return p.Provider.DeleteAccount(ctx, externalID)
}
