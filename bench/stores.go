package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

type storeSpec struct {
	name     string // shown in the report: "sqlite", "postgres x3", ...
	kind     string // sqlite, postgres, dynamodb
	replicas int
}

// levelResult is one store at one concurrency.
type levelResult struct {
	Store       string
	Kind        string
	Replicas    int
	Pool        int
	Seed        time.Duration
	Load        loadResult
	Verify      verifyResult
	RSSKB       int64 // first replica after the load
	HWMKB       int64
	Err         string
	FloorRatio  float64 // allocs/s ÷ floor req/s at the same concurrency
	RawRatio    float64 // allocs/s ÷ raw store allocs/s at the same concurrency
	RawAllocsPS float64
}

func (b *bench) loadConfig(targets []string, conc, pool int, runID string) loadConfig {
	return loadConfig{
		Targets: targets, BasePath: b.basePath, Token: b.token, Concurrency: conc, Duration: b.o.duration,
		MaxStudents: pool * 9 / 10, DupShare: b.o.dup, RaceShare: b.o.raceDup,
		Prefix: b.o.prefix, PrefixShare: b.o.prefixShare, RunID: runID, Seed: uint64(conc),
	}
}

// runStore runs every concurrency level on spec, each on a fresh database.
func (b *bench) runStore(ctx context.Context, spec storeSpec) {
	for _, conc := range b.o.concurrency {
		if ctx.Err() != nil {
			return
		}
		progress("load: %s, %d clients", spec.name, conc)
		res := b.runLevel(ctx, spec, conc, b.o.pool)
		b.rep.levels = append(b.rep.levels, res)
		progress("  %s", res.summary())
	}
}

func (r levelResult) summary() string {
	if r.Err != "" {
		return "ERROR: " + r.Err
	}
	l := r.Load
	return fmt.Sprintf("%.0f allocs/s, p50 %s p99 %s, statuses %v, seed %s; verify: %s",
		l.AllocsPerS, ms(l.Lat.P50), ms(l.Lat.P99), l.Status, r.Seed.Round(time.Millisecond), r.Verify)
}

func (b *bench) runLevel(ctx context.Context, spec storeSpec, conc, pool int) (res levelResult) {
	res = levelResult{Store: spec.name, Kind: spec.kind, Replicas: spec.replicas, Pool: pool}
	res.Load.Concurrency = conc
	// Table and database names allow [A-Za-z0-9_.-] only.
	slug := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return -1
	}, spec.name)
	runID := fmt.Sprintf("%s-c%d", slug, conc)
	var dbURL, cleanupDB string
	var extraEnv []string
	switch spec.kind {
	case "sqlite":
		path := filepath.Join(b.dir, runID+".db")
		dbURL = "sqlite:" + path
		cleanupDB = path
	case "postgres":
		name := fmt.Sprintf("bench_%d_%s", os.Getpid(), strings.NewReplacer("-", "_", " ", "_").Replace(runID))
		u, err := createDB(ctx, b.o.postgres, name)
		if err != nil {
			res.Err = err.Error()
			return res
		}
		dbURL = u
		defer dropDB(context.WithoutCancel(ctx), b.o.postgres, name)
	case "dynamodb":
		dbURL = "dynamodb://bench-" + runID
		extraEnv = b.dynamoEnv()
	}
	procs, urls, seed, err := b.startBrokers(runID, dbURL, spec.replicas, pool, extraEnv...)
	res.Seed = seed
	if err == nil && spec.kind == "postgres" && !b.o.coldStats {
		// A long-lived pool has planner statistics; a freshly seeded one
		// gets them from autovacuum only up to a minute later.
		err = analyze(ctx, dbURL)
	}
	if err != nil {
		_ = stopAll(procs)
		res.Err = err.Error()
		return res
	}
	res.Load = runLoad(ctx, b.loadConfig(urls, conc, pool, runID))
	res.Load.Concurrency = conc
	res.RSSKB, res.HWMKB = rssKB(procs[0].pid())
	var view storeView
	if spec.kind == "dynamodb" {
		view, err = apiView(ctx, urls[0], b.basePath, b.admin)
		if serr := stopAll(procs); err == nil {
			err = serr
		}
	} else {
		if err = stopAll(procs); err == nil {
			if spec.kind == "sqlite" {
				view, err = sqliteView(ctx, cleanupDB)
			} else {
				view, err = postgresView(ctx, dbURL)
			}
		}
	}
	if cleanupDB != "" && !b.o.keep {
		defer removeSQLite(cleanupDB)
	}
	if err != nil {
		res.Err = "verification: " + err.Error()
		return res
	}
	res.Verify = verify(res.Load.records, view, runID+"-")
	res.Load.records = nil
	return res
}

// runFloor measures the HTTP floor: the same load generator against a
// trivial handler in a separate process.
func (b *bench) runFloor(ctx context.Context) {
	self, err := os.Executable()
	if err != nil {
		b.rep.notes = append(b.rep.notes, "HTTP floor skipped: "+err.Error())
		return
	}
	addr, err := freeAddr()
	if err != nil {
		b.rep.notes = append(b.rep.notes, "HTTP floor skipped: "+err.Error())
		return
	}
	p, err := startProc("floor", self, []string{"-floor-server", addr}, nil, filepath.Join(b.dir, "floor.log"))
	if err == nil {
		err = p.waitHTTP("http://"+addr+"/readyz", 30*time.Second)
	}
	if err != nil {
		_ = p.stop(5 * time.Second)
		b.rep.notes = append(b.rep.notes, "HTTP floor failed: "+err.Error())
		b.rep.errors = append(b.rep.errors, "HTTP floor: "+err.Error())
		return
	}
	defer p.stop(10 * time.Second)
	for _, conc := range b.o.concurrency {
		if ctx.Err() != nil {
			return
		}
		progress("floor: %d clients", conc)
		cfg := b.loadConfig([]string{"http://" + addr}, conc, 3_000_000, "floor")
		cfg.DupShare, cfg.PrefixShare = 0, 0
		res := runLoad(ctx, cfg)
		res.records = nil
		b.rep.floor = append(b.rep.floor, res)
		progress("  %.0f req/s, p50 %s p99 %s", res.ReqPerS, ms(res.Lat.P50), ms(res.Lat.P99))
	}
}

// runRaw measures the stores' allocation throughput without HTTP.
func (b *bench) runRaw(ctx context.Context) {
	for _, s := range b.o.stores {
		for _, conc := range b.o.concurrency {
			if ctx.Err() != nil {
				return
			}
			switch s {
			case "sqlite":
				progress("raw: sqlite store.Allocate, %d goroutines", conc)
				r, err := rawSQLite(ctx, b.dir, b.o.pool, conc, b.o.rawDuration)
				b.addRaw(r, err, "sqlite")
			case "postgres":
				conns := []int{min(conc, 24)}
				if conc > 24 {
					conns = append(conns, min(conc, 64))
				}
				for _, c := range conns {
					progress("raw: postgres SKIP LOCKED, %d goroutines, %d connections", conc, c)
					r, err := rawPostgres(ctx, b.o.postgres, b.o.pool, conc, c, b.o.rawDuration)
					b.addRaw(r, err, "postgres")
				}
			}
		}
	}
}

func (b *bench) addRaw(r rawResult, err error, kind string) {
	if err != nil {
		b.rep.errors = append(b.rep.errors, "raw "+kind+": "+err.Error())
		progress("  ERROR: %v", err)
		return
	}
	b.rep.raw = append(b.rep.raw, r)
	progress("  %.0f allocs/s, p50 %s p99 %s", r.AllocsPerS, ms(r.Lat.P50), ms(r.Lat.P99))
}

// findDynalite looks for the dynalite executable.
func (b *bench) findDynalite() string {
	cands := []string{b.o.dynalite, os.Getenv("DYNALITE_BIN")}
	if p, err := exec.LookPath("dynalite"); err == nil {
		cands = append(cands, p)
	}
	home, _ := os.UserHomeDir()
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		cache = filepath.Join(home, ".cache")
	}
	cands = append(cands, filepath.Join(cache, "sandbox-broker-ci/dynalite/node_modules/.bin/dynalite"), "/tmp/dynalite/node_modules/.bin/dynalite")
	for _, c := range cands {
		if c == "" {
			continue
		}
		if st, err := os.Stat(c); err == nil && !st.IsDir() {
			return c
		}
	}
	return ""
}

func (b *bench) dynamoEnv() []string {
	return []string{"DDB_ENDPOINT_URL=" + b.rep.dynamoEndpoint, "DDB_CREATE_TABLE=true", "AWS_REGION=us-east-1",
		"AWS_ACCESS_KEY_ID=local", "AWS_SECRET_ACCESS_KEY=local"}
}

// runDynamo runs the levels on dynalite, or notes why it cannot.
func (b *bench) runDynamo(ctx context.Context) {
	// Is the DynamoDB store built into the binary? `migrate` says so at once.
	cmd := exec.CommandContext(ctx, b.bin, "migrate")
	cmd.Env = append(os.Environ(), b.brokerEnv("dynamodb://bench-probe", "DDB_ENDPOINT_URL=http://127.0.0.1:9", "AWS_REGION=us-east-1",
		"AWS_ACCESS_KEY_ID=local", "AWS_SECRET_ACCESS_KEY=local", "AWS_MAX_ATTEMPTS=1")...)
	out, _ := cmd.CombinedOutput()
	if strings.Contains(string(out), "not built into this binary") {
		b.rep.notes = append(b.rep.notes, "DynamoDB skipped: the broker answered "+strconv.Quote(strings.TrimSpace(string(out))))
		progress("dynamodb: skipped, store not built into the binary")
		return
	}
	bin := b.findDynalite()
	if bin == "" {
		b.rep.notes = append(b.rep.notes, "DynamoDB skipped: dynalite not found (set -dynalite or DYNALITE_BIN; `npm install dynalite@4.0.0`)")
		return
	}
	addr, err := freeAddr()
	if err != nil {
		b.rep.errors = append(b.rep.errors, "dynalite: "+err.Error())
		return
	}
	host, port, _ := strings.Cut(addr, ":")
	p, err := startProc("dynalite", bin, []string{"--host", host, "--port", port, "--createTableMs", "0", "--deleteTableMs", "0", "--updateTableMs", "0"}, nil, filepath.Join(b.dir, "dynalite.log"))
	if err == nil {
		err = p.waitTCP(addr, 30*time.Second)
	}
	if err != nil {
		b.rep.errors = append(b.rep.errors, "dynalite: "+err.Error())
		return
	}
	b.dynalite = p
	b.rep.dynamoEndpoint = "http://" + addr
	spec := storeSpec{name: "dynamodb (dynalite)", kind: "dynamodb", replicas: 1}
	for _, conc := range b.o.concurrency {
		if ctx.Err() != nil {
			return
		}
		progress("load: %s, %d clients", spec.name, conc)
		res := b.runLevel(ctx, spec, conc, b.o.dynamoPool)
		b.rep.levels = append(b.rep.levels, res)
		progress("  %s", res.summary())
	}
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64) + "ms"
}
