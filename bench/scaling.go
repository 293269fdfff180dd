package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// scaleResult is one store at one pool size.
type scaleResult struct {
	Kind           string
	Pool           int // lab-* accounts; mid-* and zzz-* come on top
	Extra          int // accounts of each of mid-* and zzz-*
	Listed         int
	InitialSync    time.Duration // the scheduled sync at start, inserting everything (server-side duration_ms)
	RefreshSync    time.Duration // POST /admin/sync on the full pool (server-side)
	RefreshWall    time.Duration // ... as the client saw it, trigger to finished run
	SyncRSSKB      int64         // after the syncs
	SyncHWMKB      int64         // peak during the syncs
	ServeRSSKB     int64         // plain serve on the same pool, after the requests below
	ServeHWMKB     int64
	Stats          latency
	List           latency
	Alloc          []variantResult
	Verify         verifyResult
	Err            string
	ProviderListMS int64
}

type variantResult struct {
	Label  string // "none", "lab (start)", ...
	Prefix string
	Lat    latency
	Errors int
}

// The name-prefix variants of the scaling runs: the pool holds lab-*
// sandboxes (first in name order), plus mid-* and zzz-* ones that sort in
// the middle and at the end of the name order.
var variants = []struct{ label, prefix string }{
	{"none", ""},
	{"lab (start)", "lab"},
	{"mid (middle)", "mid"},
	{"zzz (end)", "zzz"},
}

// runScaling seeds pool sandboxes through a fake-csp process and a sync,
// then measures sync, admin endpoints, allocation latency with and without
// a name prefix, and memory, on kind.
func (b *bench) runScaling(ctx context.Context, kind string, pool int) {
	progress("scaling: %s, pool %d", kind, pool)
	res := b.scale(ctx, kind, pool)
	b.rep.scaling = append(b.rep.scaling, res)
	if res.Err != "" {
		progress("  ERROR: %s", res.Err)
		return
	}
	progress("  initial sync %s, refresh sync %s, stats p50 %s, list p50 %s, RSS %d MiB; verify: %s",
		res.InitialSync, res.RefreshSync, ms(res.Stats.P50), ms(res.List.P50), res.ServeRSSKB/1024, res.Verify)
	for _, v := range res.Alloc {
		progress("  allocate prefix %-14s p50 %s p99 %s", v.Label, ms(v.Lat.P50), ms(v.Lat.P99))
	}
}

func (b *bench) scale(ctx context.Context, kind string, pool int) (res scaleResult) {
	k := b.o.scaleAllocs
	res = scaleResult{Kind: kind, Pool: pool, Extra: k + k/2 + 10}
	if 2*k+10 > pool*9/10 {
		res.Err = fmt.Sprintf("pool %d too small for 2 x %d allocations", pool, k)
		return res
	}
	runID := fmt.Sprintf("scale-%s-%d", kind, pool)
	// The provider, in its own process.
	fakeAddr, err := freeAddr()
	if err != nil {
		res.Err = err.Error()
		return res
	}
	fake, err := startProc("fake-csp", b.bin, []string{"fake-csp", "--listen", fakeAddr, "--sandboxes", strconv.Itoa(pool), "--prefix", "lab"},
		nil, filepath.Join(b.dir, runID+"-fakecsp.log"))
	if err == nil {
		err = fake.waitTCP(fakeAddr, time.Minute)
	}
	defer fake.stop(10 * time.Second)
	if err != nil {
		res.Err = err.Error()
		return res
	}
	for _, p := range []string{"mid", "zzz"} {
		body := fmt.Sprintf(`{"count":%d,"prefix":%q}`, res.Extra, p)
		resp, err := http.Post("http://"+fakeAddr+"/_fake/accounts", "application/json", strings.NewReader(body))
		if err != nil {
			res.Err = err.Error()
			return res
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			res.Err = fmt.Sprintf("fake-csp add %s accounts: status %d", p, resp.StatusCode)
			return res
		}
	}
	t := time.Now()
	if resp, err := http.Get("http://" + fakeAddr + "/v2/current_user/accounts"); err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		res.ProviderListMS = time.Since(t).Milliseconds()
	}

	var dbURL, sqlitePath string
	switch kind {
	case "sqlite":
		sqlitePath = filepath.Join(b.dir, runID+".db")
		dbURL = "sqlite:" + sqlitePath
		if !b.o.keep {
			defer removeSQLite(sqlitePath)
		}
	case "postgres":
		name := fmt.Sprintf("bench_%d_scale_%d", os.Getpid(), pool)
		if dbURL, err = createDB(ctx, b.o.postgres, name); err != nil {
			res.Err = err.Error()
			return res
		}
		defer dropDB(context.WithoutCancel(ctx), b.o.postgres, name)
	}

	// Phase 1: a broker with the provider; its scheduled sync at start
	// inserts every account, then an admin-triggered sync refreshes them.
	addr, err := freeAddr()
	if err != nil {
		res.Err = err.Error()
		return res
	}
	logPath := filepath.Join(b.dir, runID+"-sync.log")
	syncEnv := b.brokerEnv(dbURL, "CSP_BASE_URL=http://"+fakeAddr+"/v2", "CSP_API_TOKEN=bench", "LOG_LEVEL=info",
		"RUN_JOBS=true", "SYNC_INTERVAL_SEC=86400", "JOB_JITTER_FRACTION=0", "CLEANUP_ENABLED=false",
		"AUTO_EXPIRY_ENABLED=false", "STALE_PURGE_ENABLED=false", "CSP_TIMEOUT_READ_SEC=300")
	broker, err := startProc("broker (sync)", b.bin, []string{"serve", "--listen", addr}, syncEnv, logPath)
	if err == nil {
		err = broker.waitHTTP("http://"+addr+"/readyz", b.o.startupLimit)
	}
	if err != nil {
		_ = broker.stop(10 * time.Second)
		res.Err = err.Error()
		return res
	}
	base := "http://" + addr
	first, err := b.waitRun(ctx, base, "", b.o.startupLimit)
	if err == nil {
		res.Listed = first.Listed
		var runID string
		runID, err = b.triggerSync(ctx, base)
		if err == nil {
			t := time.Now()
			_, err = b.waitRun(ctx, base, runID, b.o.startupLimit)
			res.RefreshWall = time.Since(t)
		}
	}
	res.SyncRSSKB, res.SyncHWMKB = rssKB(broker.pid())
	if serr := broker.stop(30 * time.Second); err == nil {
		err = serr
	}
	if err != nil {
		res.Err = err.Error()
		return res
	}
	durs := syncDurations(logPath)
	if len(durs) >= 2 {
		res.InitialSync, res.RefreshSync = durs[0], durs[1]
	}

	// Phase 2: plain serve on the same pool, no provider, no jobs.
	procs, err := b.startPlain(dbURL, runID)
	if err != nil {
		for _, p := range procs {
			_ = p.p.stop(10 * time.Second)
		}
		res.Err = err.Error()
		return res
	}
	base = procs[0].url
	c := newClient(1)
	var records []studentRecord
	// Warm-up: connections, prepared statements, caches.
	for i := 0; i < 10 && ctx.Err() == nil; i++ {
		rec := studentRecord{owner: fmt.Sprintf("%s-warmup-%04d", runID, i)}
		rec.key = "key-" + rec.owner
		a, _ := allocate(ctx, c, base+b.basePath+"/allocate", b.token, rec.owner, rec.key, "")
		rec.answers = append(rec.answers, a)
		records = append(records, rec)
	}
	res.Stats = timeGets(ctx, c, base+b.basePath+"/admin/stats", b.admin, 40)
	res.List = timeGets(ctx, c, base+b.basePath+"/admin/sandboxes?limit=100", b.admin, 40)
	for _, v := range variants {
		vr := variantResult{Label: v.label, Prefix: v.prefix}
		var lats []time.Duration
		for i := 0; i < k && ctx.Err() == nil; i++ {
			rec := studentRecord{owner: fmt.Sprintf("%s-%s-%04d", runID, strings.Fields(v.label)[0], i), prefix: v.prefix}
			rec.key = "key-" + rec.owner
			a, d := allocate(ctx, c, base+b.basePath+"/allocate", b.token, rec.owner, rec.key, v.prefix)
			rec.answers = append(rec.answers, a)
			records = append(records, rec)
			if a.status == http.StatusCreated {
				lats = append(lats, d)
			} else {
				vr.Errors++
			}
		}
		vr.Lat = summarize(lats)
		res.Alloc = append(res.Alloc, vr)
	}
	res.ServeRSSKB, res.ServeHWMKB = rssKB(procs[0].p.pid())
	err = procs[0].p.stop(30 * time.Second)
	var view storeView
	if err == nil {
		if kind == "sqlite" {
			view, err = sqliteView(ctx, sqlitePath)
		} else {
			view, err = postgresView(ctx, dbURL)
		}
	}
	if err != nil {
		res.Err = "verification: " + err.Error()
		return res
	}
	res.Verify = verify(records, view, runID+"-")
	return res
}

type plainProc struct {
	p   *proc
	url string
}

// startPlain starts `serve` without a provider and without jobs on dbURL.
func (b *bench) startPlain(dbURL, label string) ([]plainProc, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	p, err := startProc("broker (serve)", b.bin, []string{"serve", "--listen", addr}, b.brokerEnv(dbURL), filepath.Join(b.dir, label+"-serve.log"))
	if err != nil {
		return nil, err
	}
	procs := []plainProc{{p, "http://" + addr}}
	return procs, p.waitHTTP("http://"+addr+"/readyz", b.o.startupLimit)
}

// timeGets sends n sequential GETs (after 3 warm-up ones) and returns
// their latencies.
func timeGets(ctx context.Context, c *http.Client, url, token string, n int) latency {
	var lats []time.Duration
	for i := 0; i < n+3 && ctx.Err() == nil; i++ {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		t := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			continue
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK && i >= 3 {
			lats = append(lats, time.Since(t))
		}
	}
	return summarize(lats)
}

type syncRun struct {
	Status string
	Listed int
}

// waitRun polls GET /admin/jobs until the sync run runID (or, with runID
// empty, any sync run) has finished.
func (b *bench) waitRun(ctx context.Context, base, runID string, timeout time.Duration) (syncRun, error) {
	deadline := time.Now().Add(timeout)
	c := &http.Client{Timeout: 30 * time.Second}
	for ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+b.basePath+"/admin/jobs", nil)
		req.Header.Set("Authorization", "Bearer "+b.admin)
		resp, err := c.Do(req)
		if err == nil {
			var out struct {
				Jobs []struct {
					Name string `json:"name"`
					Runs []struct {
						RunID  string          `json:"run_id"`
						Status string          `json:"status"`
						Result json.RawMessage `json:"result"`
					} `json:"runs"`
				} `json:"jobs"`
			}
			_ = json.NewDecoder(resp.Body).Decode(&out)
			resp.Body.Close()
			for _, j := range out.Jobs {
				if j.Name != "sync" {
					continue
				}
				for _, r := range j.Runs {
					if runID != "" && r.RunID != runID {
						continue
					}
					switch r.Status {
					case "succeeded":
						var counts struct {
							Listed int `json:"listed"`
						}
						_ = json.Unmarshal(r.Result, &counts)
						return syncRun{Status: r.Status, Listed: counts.Listed}, nil
					case "failed":
						return syncRun{}, fmt.Errorf("sync run %s failed: %s", r.RunID, r.Result)
					}
				}
			}
		}
		if time.Now().After(deadline) {
			return syncRun{}, fmt.Errorf("sync did not finish within %s", timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return syncRun{}, ctx.Err()
}

func (b *bench) triggerSync(ctx context.Context, base string) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+b.basePath+"/admin/sync", nil)
	req.Header.Set("Authorization", "Bearer "+b.admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out struct {
		RunID string `json:"run_id"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusAccepted {
		return "", fmt.Errorf("POST /admin/sync: status %d %v", resp.StatusCode, err)
	}
	return out.RunID, nil
}

// syncDurations reads the duration_ms of every finished sync run from a
// broker's JSON log, in order.
func syncDurations(logPath string) []time.Duration {
	b, err := os.ReadFile(logPath)
	if err != nil {
		return nil
	}
	var out []time.Duration
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line struct {
			Msg        string `json:"msg"`
			Action     string `json:"action"`
			Job        string `json:"job"`
			DurationMS int64  `json:"duration_ms"`
		}
		if json.Unmarshal(sc.Bytes(), &line) != nil || line.Msg != "job run finished" {
			continue
		}
		if line.Action == "sync" || line.Job == "sync" {
			out = append(out, time.Duration(line.DurationMS)*time.Millisecond)
		}
	}
	return out
}
