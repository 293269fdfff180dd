package main

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

type report struct {
	machine        map[string]string
	args           string
	floor          []loadResult
	raw            []rawResult
	levels         []levelResult
	scaling        []scaleResult
	notes          []string
	errors         []string
	dynamoEndpoint string
	total          time.Duration
}

// failures lists what makes the run fail: correctness problems and
// sections that could not run at all. Speed never does.
func (r *report) failures() []string {
	out := append([]string(nil), r.errors...)
	for _, l := range r.levels {
		switch {
		case l.Err != "":
			out = append(out, fmt.Sprintf("%s at %d clients: %s", l.Store, l.Load.Concurrency, firstLine(l.Err)))
		case !l.Verify.OK():
			out = append(out, fmt.Sprintf("%s at %d clients: %s %v", l.Store, l.Load.Concurrency, l.Verify, l.Verify.Notes))
		case l.Load.Created == 0:
			out = append(out, fmt.Sprintf("%s at %d clients: no allocation succeeded %v", l.Store, l.Load.Concurrency, l.Load.FirstErrors))
		}
	}
	for _, s := range r.scaling {
		switch {
		case s.Err != "":
			out = append(out, fmt.Sprintf("scaling %s pool %d: %s", s.Kind, s.Pool, firstLine(s.Err)))
		case !s.Verify.OK():
			out = append(out, fmt.Sprintf("scaling %s pool %d: %s %v", s.Kind, s.Pool, s.Verify, s.Verify.Notes))
		}
		for _, v := range s.Alloc {
			if v.Errors > 0 {
				out = append(out, fmt.Sprintf("scaling %s pool %d prefix %q: %d allocations failed", s.Kind, s.Pool, v.Prefix, v.Errors))
			}
		}
	}
	return out
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func (r *report) floorAt(conc int) float64 {
	for _, f := range r.floor {
		if f.Concurrency == conc {
			return f.ReqPerS
		}
	}
	return 0
}

// rawAt is the best raw throughput of a store kind at conc.
func (r *report) rawAt(kind string, conc int) float64 {
	best := 0.0
	for _, x := range r.raw {
		if strings.HasPrefix(x.Store, kind) && x.Concurrency == conc && x.AllocsPerS > best {
			best = x.AllocsPerS
		}
	}
	return best
}

func (r *report) level(store string, conc int) (levelResult, bool) {
	for _, l := range r.levels {
		if l.Store == store && l.Load.Concurrency == conc && l.Err == "" {
			return l, true
		}
	}
	return levelResult{}, false
}

func ratio(a, b float64) string {
	if a == 0 || b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f%%", 100*a/b)
}

func statusCounts(m map[int]int) string {
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	var parts []string
	for _, k := range keys {
		name := fmt.Sprint(k)
		if k == 0 {
			name = "err"
		}
		parts = append(parts, fmt.Sprintf("%s:%d", name, m[k]))
	}
	return strings.Join(parts, " ")
}

func (r *report) markdown(o options) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	mode := "full"
	if o.quick {
		mode = "quick (CI smoke: correctness only)"
	}
	w("# sandbox-broker benchmark results\n\n")
	w("Run: `go run ./bench %s` (%s mode), %s, took %s.\n\n", r.args, mode, r.machine["date"], r.total.Round(time.Second))
	w("Machine: %s, nproc %s, GOMAXPROCS %s, RAM %s, %s, load average at start %s.\n\n",
		r.machine["cpu"], r.machine["nproc"], r.machine["gomaxprocs"], r.machine["ram"], r.machine["go"], r.machine["loadavg_at_start"])
	w("Load: %s per level, pool %d per level (fresh database each; a level also stops at 90%% of the pool), %.0f%% immediate duplicate retries (%.0f%% of them racing the first request, to another replica when there are several), %.0f%% of students sending X-Sandbox-Name-Prefix: %s. Latencies are of 201 answers, client-side, keep-alive connections.\n\n",
		o.duration, o.pool, 100*o.dup, 100*o.raceDup, 100*o.prefixShare, o.prefix)

	if len(r.levels) > 0 {
		w("## Allocation over HTTP (broker as a real process)\n\n")
		w("| store | clients | allocs/s (201) | p50 | p95 | p99 | max | replay p50 | statuses | vs HTTP floor | vs raw store | seed | RSS | verified |\n")
		w("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|\n")
		for _, l := range r.levels {
			if l.Err != "" {
				w("| %s | %d | ERROR: %s |||||||||||||\n", l.Store, l.Load.Concurrency, firstLine(l.Err))
				continue
			}
			ld := l.Load
			raw := r.rawAt(l.Kind, ld.Concurrency)
			verdict := "OK"
			if !l.Verify.OK() {
				verdict = "**FAIL** " + l.Verify.String()
			}
			w("| %s | %d | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d MiB | %s (%d students, %d in store) |\n",
				l.Store, ld.Concurrency, ld.AllocsPerS, ms(ld.Lat.P50), ms(ld.Lat.P95), ms(ld.Lat.P99), ms(ld.Lat.Max), ms(ld.ReplayLat.P50),
				statusCounts(ld.Status), ratio(ld.AllocsPerS, r.floorAt(ld.Concurrency)), ratio(ld.AllocsPerS, raw),
				l.Seed.Round(100*time.Millisecond), l.RSSKB/1024, verdict, l.Verify.Acked, l.Verify.StoreAllocated)
		}
		w("\nseed = start of `serve --demo --demo-sandboxes %d` until /readyz answers (migrations + demo sync of the pool). Verified = read back from the store after the run (%s): no sandbox twice (answers and audit trail), one sandbox per student and key, every 201/200 body matches the store's owner.\n\n", o.pool, r.verifySources())
	}
	if len(r.floor) > 0 {
		w("## HTTP floor (same load generator, trivial handler in a separate process)\n\n")
		w("| clients | requests/s | p50 | p99 | max |\n|---:|---:|---:|---:|---:|\n")
		for _, f := range r.floor {
			w("| %d | %.0f | %s | %s | %s |\n", f.Concurrency, f.ReqPerS, ms(f.Lat.P50), ms(f.Lat.P99), ms(f.Lat.Max))
		}
		w("\n")
	}
	if len(r.raw) > 0 {
		w("## Raw store allocation throughput (no HTTP, same run)\n\n")
		w("| store | goroutines | connections | allocs/s | p50 | p99 | misses |\n|---|---:|---:|---:|---:|---:|---:|\n")
		for _, x := range r.raw {
			conns := "–"
			if x.PoolConns > 0 {
				conns = fmt.Sprint(x.PoolConns)
			}
			w("| %s | %d | %s | %.0f | %s | %s | %d |\n", x.Store, x.Concurrency, conns, x.AllocsPerS, ms(x.Lat.P50), ms(x.Lat.P99), x.Misses)
		}
		w("\nSQLite: `store.Allocate` called in-process (group commit, every call durable). PostgreSQL: `%s` with pgx on a fresh database with the broker's schema; the best connection count is used for ratios.\n\n", strings.Join(strings.Fields(rawSkipLockedSQL), " "))
	}
	if len(r.scaling) > 0 {
		r.scalingTables(w, o)
	}
	r.targets(w)
	if len(r.notes) > 0 || len(r.errors) > 0 {
		w("## Notes\n\n")
		for _, n := range r.notes {
			w("- %s\n", n)
		}
		for _, e := range r.errors {
			w("- ERROR: %s\n", firstLine(e))
		}
		w("\n")
	}
	return b.String()
}

func (r *report) verifySources() string {
	seen := map[string]bool{}
	var out []string
	for _, l := range r.levels {
		if l.Verify.Source != "" && !seen[l.Verify.Source] {
			seen[l.Verify.Source] = true
			out = append(out, l.Verify.Source)
		}
	}
	return strings.Join(out, "; ")
}

func (r *report) scalingTables(w func(string, ...any), o options) {
	w("## Scaling with the pool size (seeded by a fake-csp process + sync)\n\n")
	w("Each pool holds N `lab-*` sandboxes plus a few `mid-*` and `zzz-*` ones (middle and end of the name order). Allocation latency: %d sequential allocations per variant (1 client) on plain `serve` over the synced store.\n\n", o.scaleAllocs)
	w("| store | pool (lab + mid + zzz) | initial sync | refresh sync (server / client) | stats p50 / p99 | list limit=100 p50 / p99 | RSS after sync (peak) | RSS serving | verified |\n")
	w("|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, s := range r.scaling {
		if s.Err != "" {
			w("| %s | %d | ERROR: %s |||||||\n", s.Kind, s.Pool, firstLine(s.Err))
			continue
		}
		verdict := "OK"
		if !s.Verify.OK() {
			verdict = "**FAIL** " + s.Verify.String()
		}
		w("| %s | %d (%d listed) | %s | %s / %s | %s / %s | %s / %s | %d MiB (%d MiB) | %d MiB | %s |\n",
			s.Kind, s.Pool, s.Listed, s.InitialSync, s.RefreshSync, s.RefreshWall.Round(time.Millisecond),
			ms(s.Stats.P50), ms(s.Stats.P99), ms(s.List.P50), ms(s.List.P99), s.SyncRSSKB/1024, s.SyncHWMKB/1024, s.ServeRSSKB/1024, verdict)
	}
	w("\n| store | pool | prefix | p50 | p95 | p99 | max | p50 vs unfiltered | p50 vs smallest pool |\n|---|---:|---|---:|---:|---:|---:|---:|---:|\n")
	for _, s := range r.scaling {
		if s.Err != "" || len(s.Alloc) == 0 {
			continue
		}
		base := s.Alloc[0].Lat.P50
		for i, v := range s.Alloc {
			small := r.smallestPoolP50(s.Kind, i)
			w("| %s | %d | %s | %s | %s | %s | %s | %s | %s |\n", s.Kind, s.Pool, v.Label, ms(v.Lat.P50), ms(v.Lat.P95), ms(v.Lat.P99), ms(v.Lat.Max),
				fmt.Sprintf("%.2fx", float64(v.Lat.P50)/float64(max(base, 1))), fmt.Sprintf("%.2fx", float64(v.Lat.P50)/float64(max(small, 1))))
		}
	}
	w("\n")
}

func (r *report) smallestPoolP50(kind string, variant int) time.Duration {
	best, pool := time.Duration(0), 0
	for _, s := range r.scaling {
		if s.Kind == kind && s.Err == "" && len(s.Alloc) > variant && (pool == 0 || s.Pool < pool) {
			best, pool = s.Alloc[variant].Lat.P50, s.Pool
		}
	}
	return best
}

// targets checks the targets against this run.
func (r *report) targets(w func(string, ...any)) {
	w("## Targets\n\n| target | measured | met |\n|---|---|---|\n")
	row := func(name, measured string, ok, known bool) {
		verdict := "no"
		switch {
		case !known:
			verdict = "not measured"
		case ok:
			verdict = "yes"
		}
		w("| %s | %s | %s |\n", name, measured, verdict)
	}
	if l, ok := r.level("sqlite", 64); ok {
		f := r.floorAt(64)
		row("SQLite >= 25,000 allocs/s at 64 clients (every 201 durable)", fmt.Sprintf("%.0f allocs/s", l.Load.AllocsPerS), l.Load.AllocsPerS >= 25000, true)
		row("SQLite p99 <= 10 ms at 64 clients", ms(l.Load.Lat.P99), l.Load.Lat.P99 <= 10*time.Millisecond, true)
		row("SQLite >= 35% of the HTTP floor at 64 clients", fmt.Sprintf("%s (%.0f / %.0f)", ratio(l.Load.AllocsPerS, f), l.Load.AllocsPerS, f), f > 0 && l.Load.AllocsPerS >= 0.35*f, f > 0)
	} else {
		row("SQLite targets at 64 clients", "–", false, false)
	}
	if l, ok := r.level("postgres x3", 64); ok {
		raw := r.rawAt("postgres", 64)
		row("PostgreSQL 3 replicas >= 3,000 allocs/s at 64 clients", fmt.Sprintf("%.0f allocs/s", l.Load.AllocsPerS), l.Load.AllocsPerS >= 3000, true)
		row("PostgreSQL 3 replicas p99 <= 50 ms at 64 clients", ms(l.Load.Lat.P99), l.Load.Lat.P99 <= 50*time.Millisecond, true)
		row("PostgreSQL 3 replicas >= 60% of raw SKIP LOCKED at 64", fmt.Sprintf("%s (%.0f / %.0f)", ratio(l.Load.AllocsPerS, raw), l.Load.AllocsPerS, raw), raw > 0 && l.Load.AllocsPerS >= 0.6*raw, raw > 0)
	} else {
		row("PostgreSQL 3 replicas targets at 64 clients", "–", false, false)
	}
	for _, kind := range []string{"sqlite", "postgres"} {
		var small, big *scaleResult
		for i := range r.scaling {
			s := &r.scaling[i]
			if s.Kind != kind || s.Err != "" || len(s.Alloc) == 0 {
				continue
			}
			if small == nil || s.Pool < small.Pool {
				small = s
			}
			if big == nil || s.Pool > big.Pool {
				big = s
			}
		}
		if small == nil || big == small {
			continue
		}
		g := float64(big.Alloc[0].Lat.P50) / float64(max(small.Alloc[0].Lat.P50, 1))
		row(fmt.Sprintf("%s: allocation p50 grows <= 1.5x from pool %d to %d", kind, small.Pool, big.Pool),
			fmt.Sprintf("%s -> %s (%.2fx)", ms(small.Alloc[0].Lat.P50), ms(big.Alloc[0].Lat.P50), g), g <= 1.5, true)
		worst, label := 0.0, ""
		for _, v := range big.Alloc[1:] {
			if x := float64(v.Lat.P50) / float64(max(big.Alloc[0].Lat.P50, 1)); x > worst {
				worst, label = x, v.Label
			}
		}
		row(fmt.Sprintf("%s: prefix allocation within 1.5x of unfiltered (pool %d)", kind, big.Pool),
			fmt.Sprintf("worst %.2fx (%s)", worst, label), worst <= 1.5, true)
		if big.Pool >= 100000 {
			row(fmt.Sprintf("%s: GET /admin/stats at %d < 50 ms", kind, big.Pool), fmt.Sprintf("p50 %s, p99 %s", ms(big.Stats.P50), ms(big.Stats.P99)), big.Stats.P50 < 50*time.Millisecond, true)
		}
	}
	for _, s := range r.scaling {
		if s.Pool == 10000 && s.Err == "" {
			row(fmt.Sprintf("%s: sync of 10,000 accounts < 5 s", s.Kind), fmt.Sprintf("initial %s, refresh %s (%d listed)", s.InitialSync, s.RefreshSync, s.Listed),
				s.InitialSync < 5*time.Second && s.RefreshSync < 5*time.Second, s.InitialSync > 0)
		}
	}
	doubles, lost, mism, runs := 0, 0, 0, 0
	for _, l := range r.levels {
		if l.Err == "" {
			runs++
			doubles += l.Verify.Doubles
			lost += l.Verify.Lost
			mism += l.Verify.Mismatches + l.Verify.PrefixViolated
		}
	}
	for _, s := range r.scaling {
		if s.Err == "" {
			runs++
			doubles += s.Verify.Doubles
			lost += s.Verify.Lost
			mism += s.Verify.Mismatches + s.Verify.PrefixViolated
		}
	}
	row("zero double / lost allocations", fmt.Sprintf("%d verified runs: %d doubles, %d lost, %d mismatches", runs, doubles, lost, mism), doubles+lost+mism == 0, runs > 0)
	w("\n")
}
