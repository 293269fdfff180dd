// Command bench is sandbox-broker's benchmark suite, run with one command:
//
//	go run ./bench                                   # full run, SQLite (+ DynamoDB if built in)
//	go run ./bench -postgres postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable
//	go run ./bench -quick                            # CI smoke run: correctness only, < 2 min
//
// It builds the broker once, starts it as a real process per store (SQLite;
// PostgreSQL with 1 and 3 replicas on one database; DynamoDB on dynalite),
// seeds the pool through `serve --demo --demo-sandboxes N`, drives HTTP
// allocation load with its own load generator, and then verifies from the
// store that no sandbox was given twice, that every student holds one
// sandbox per key and that every 201/200 answer matches the store. In the
// same run it measures the machine's HTTP floor (the same load against a
// trivial handler in another process), the raw allocation throughput of
// the stores without HTTP, and scaling with the pool size, name prefixes,
// sync, admin endpoints and memory. It exits non-zero when any double
// allocation, lost allocation or mismatch is found; speed is reported,
// never asserted. See BENCHMARKS.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	_ "modernc.org/sqlite" // read-only audit-trail queries
)

type options struct {
	quick        bool
	postgres     string
	out          string
	concurrency  []int
	duration     time.Duration
	stores       []string
	pool         int
	dynamoPool   int
	dup          float64
	raceDup      float64
	prefix       string
	prefixShare  float64
	scaling      []int
	scaleAllocs  int
	skip         map[string]bool
	dynalite     string
	keep         bool
	rawDuration  time.Duration
	floorServer  string
	startupLimit time.Duration
	target       string
	token        string
	coldStats    bool
}

func parseFlags() (options, error) {
	var o options
	var conc, stores, scaling, skip string
	flag.BoolVar(&o.quick, "quick", false, "CI smoke run: small pools, short levels, correctness only (< 2 min)")
	flag.StringVar(&o.postgres, "postgres", "", "PostgreSQL URL (a database the bench may create databases next to); enables the postgres store")
	flag.StringVar(&o.out, "out", "", "also write the markdown report to this file")
	flag.StringVar(&conc, "concurrency", "", "comma-separated client counts (default 1,16,64,256; -quick 1,16,64)")
	flag.DurationVar(&o.duration, "duration", 0, "length of each load level (default 8s; -quick 1.5s)")
	flag.StringVar(&stores, "stores", "", "comma-separated stores: sqlite,postgres,dynamodb (default sqlite, postgres when -postgres is set, dynamodb)")
	flag.IntVar(&o.pool, "pool", 0, "sandboxes seeded per level; a level stops at 90% of it (default 50000; -quick 3000)")
	flag.IntVar(&o.dynamoPool, "dynamo-pool", 0, "sandboxes seeded per DynamoDB level (default 5000; -quick 1200)")
	flag.Float64Var(&o.dup, "dup", 0.10, "share of students retrying immediately with the same owner and key")
	flag.Float64Var(&o.raceDup, "race-dup", 0.30, "share of those retries sent concurrently with the first request (to another replica)")
	flag.StringVar(&o.prefix, "prefix", "lab", "X-Sandbox-Name-Prefix sent by -prefix-share of the students")
	flag.Float64Var(&o.prefixShare, "prefix-share", 0.05, "share of students sending -prefix")
	flag.StringVar(&scaling, "scaling", "", "pool sizes for the scaling runs (default 1000,10000,100000; -quick 1000)")
	flag.IntVar(&o.scaleAllocs, "scale-allocs", 0, "sequential allocations per scaling variant (default 200; -quick 20)")
	flag.StringVar(&skip, "skip", "", "comma-separated sections to skip: load,floor,raw,scaling")
	flag.StringVar(&o.dynalite, "dynalite", "", "dynalite executable (default $DYNALITE_BIN, PATH, known install places)")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory (databases, logs)")
	flag.DurationVar(&o.rawDuration, "raw-duration", 0, "length of each raw store level (default -duration)")
	flag.DurationVar(&o.startupLimit, "startup-timeout", 10*time.Minute, "longest wait for a broker to seed and become ready")
	flag.BoolVar(&o.coldStats, "pg-cold-stats", false, "do not ANALYZE a freshly seeded PostgreSQL pool before the load (planner statistics then come from autovacuum, up to a minute later)")
	flag.StringVar(&o.floorServer, "floor-server", "", "internal: serve the HTTP floor handler on this address")
	flag.StringVar(&o.target, "target", "", "only drive allocation load against this running broker (base URL, e.g. http://127.0.0.1:8080) at each -concurrency; no verification")
	flag.StringVar(&o.token, "token", os.Getenv("BROKER_API_TOKEN"), "track token for -target (default $BROKER_API_TOKEN)")
	flag.Parse()
	if flag.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", flag.Arg(0))
	}
	pick := func(s, full, quick string) string {
		if s != "" {
			return s
		}
		if o.quick {
			return quick
		}
		return full
	}
	var err error
	if o.concurrency, err = ints(pick(conc, "1,16,64,256", "1,16,64")); err != nil {
		return o, fmt.Errorf("-concurrency: %w", err)
	}
	if o.scaling, err = ints(pick(scaling, "1000,10000,100000", "1000")); err != nil {
		return o, fmt.Errorf("-scaling: %w", err)
	}
	if o.duration == 0 {
		o.duration = map[bool]time.Duration{false: 8 * time.Second, true: 1500 * time.Millisecond}[o.quick]
	}
	if o.rawDuration == 0 {
		o.rawDuration = o.duration
	}
	if o.pool == 0 {
		o.pool = map[bool]int{false: 50000, true: 3000}[o.quick]
	}
	if o.dynamoPool == 0 {
		o.dynamoPool = map[bool]int{false: 5000, true: 1200}[o.quick]
	}
	if o.scaleAllocs == 0 {
		o.scaleAllocs = map[bool]int{false: 200, true: 20}[o.quick]
	}
	def := "sqlite,dynamodb"
	if o.postgres != "" {
		def = "sqlite,postgres,dynamodb"
	}
	for _, s := range strings.Split(pick(stores, def, def), ",") {
		s = strings.TrimSpace(s)
		switch s {
		case "sqlite", "postgres", "dynamodb":
			o.stores = append(o.stores, s)
		case "":
		default:
			return o, fmt.Errorf("-stores: unknown store %q", s)
		}
	}
	o.skip = map[string]bool{}
	for _, s := range strings.Split(skip, ",") {
		if s = strings.TrimSpace(s); s != "" {
			o.skip[s] = true
		}
	}
	if o.pool < 100 || o.dup < 0 || o.dup > 1 || o.raceDup < 0 || o.raceDup > 1 || o.prefixShare < 0 || o.prefixShare > 1 {
		return o, errors.New("-pool must be >= 100 and -dup, -race-dup, -prefix-share within 0..1")
	}
	return o, nil
}

func ints(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive integer", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func main() {
	o, err := parseFlags()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if o.floorServer != "" {
		if err := serveFloor(o.floorServer); err != nil {
			fmt.Fprintln(os.Stderr, "floor:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.target != "" {
		os.Exit(runTarget(ctx, o))
	}
	os.Exit(run(ctx, o))
}

func run(ctx context.Context, o options) int {
	start := time.Now()
	dir, err := os.MkdirTemp("", "broker-bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	if o.keep {
		progress("keeping %s", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	b := &bench{o: o, dir: dir, token: "bench-track-" + strconv.Itoa(os.Getpid()), admin: "bench-admin-" + strconv.Itoa(os.Getpid()), basePath: "/v1"}
	b.rep.machine = machineInfo(ctx)
	b.rep.machine["gomaxprocs"] = strconv.Itoa(runtime.GOMAXPROCS(0))
	b.rep.args = strings.Join(os.Args[1:], " ")
	progress("building the broker")
	if b.bin, err = buildBroker(ctx, dir); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	b.runAll(ctx)
	b.rep.total = time.Since(start)
	text := b.rep.markdown(o)
	fmt.Println(text)
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(text), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
	}
	if failed := b.rep.failures(); len(failed) > 0 {
		fmt.Fprintln(os.Stderr, "bench: FAILED:")
		for _, f := range failed {
			fmt.Fprintln(os.Stderr, "  -", f)
		}
		return 1
	}
	fmt.Fprintf(os.Stderr, "bench: OK: no double, lost or mismatched allocation (%s)\n", time.Since(start).Round(time.Second))
	return 0
}

// runTarget drives load against a broker the bench did not start (for
// profiling it, or a deployed one). Students are unique per run.
func runTarget(ctx context.Context, o options) int {
	runID := "target-" + strconv.FormatInt(time.Now().Unix(), 36)
	for _, conc := range o.concurrency {
		cfg := loadConfig{Targets: []string{strings.TrimRight(o.target, "/")}, BasePath: "/v1", Token: o.token, Concurrency: conc,
			Duration: o.duration, MaxStudents: o.pool * 9 / 10, DupShare: o.dup, RaceShare: o.raceDup,
			Prefix: o.prefix, PrefixShare: o.prefixShare, RunID: fmt.Sprintf("%s-c%d", runID, conc), Seed: uint64(conc)}
		res := runLoad(ctx, cfg)
		fmt.Printf("%d clients: %.0f allocs/s, %.0f req/s, p50 %s p95 %s p99 %s max %s, statuses %s, first errors %v\n",
			conc, res.AllocsPerS, res.ReqPerS, ms(res.Lat.P50), ms(res.Lat.P95), ms(res.Lat.P99), ms(res.Lat.Max), statusCounts(res.Status), res.FirstErrors)
	}
	return 0
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// bench holds what every section shares.
type bench struct {
	o        options
	dir      string
	bin      string
	token    string
	admin    string
	basePath string
	dynalite *proc
	rep      report
}

func (b *bench) runAll(ctx context.Context) {
	if !b.o.skip["floor"] {
		b.runFloor(ctx)
	}
	if !b.o.skip["raw"] {
		b.runRaw(ctx)
	}
	if !b.o.skip["load"] {
		for _, s := range b.o.stores {
			if ctx.Err() != nil {
				return
			}
			switch s {
			case "sqlite":
				b.runStore(ctx, storeSpec{name: "sqlite", kind: "sqlite", replicas: 1})
			case "postgres":
				b.runStore(ctx, storeSpec{name: "postgres x1", kind: "postgres", replicas: 1})
				b.runStore(ctx, storeSpec{name: "postgres x3", kind: "postgres", replicas: 3})
			case "dynamodb":
				b.runDynamo(ctx)
			}
		}
	}
	if !b.o.skip["scaling"] {
		for _, s := range b.o.stores {
			if s == "sqlite" || s == "postgres" {
				for _, n := range b.o.scaling {
					if ctx.Err() != nil {
						return
					}
					b.runScaling(ctx, s, n)
				}
			}
		}
	}
	if b.dynalite != nil {
		_ = b.dynalite.stop(10 * time.Second)
	}
}

// brokerEnv is the environment of every broker process.
func (b *bench) brokerEnv(dbURL string, extra ...string) []string {
	env := []string{
		"BROKER_DATABASE_URL=" + dbURL,
		"BROKER_API_TOKEN=" + b.token,
		"BROKER_ADMIN_TOKEN=" + b.admin,
		"RATE_LIMIT_RPS=0",
		"LOG_LEVEL=error",
		"LOG_FORMAT=json",
		"RUN_JOBS=false",
		"CSP_BASE_URL=",
		"METRICS_TOKEN=",
	}
	return append(env, extra...)
}

// startBrokers starts replicas processes on dbURL: the first seeds pool
// sandboxes with `serve --demo`, the others run plain `serve`. It returns
// them with their base URLs and the seeding time.
func (b *bench) startBrokers(label, dbURL string, replicas, pool int, extraEnv ...string) ([]*proc, []string, time.Duration, error) {
	var procs []*proc
	var urls []string
	var seed time.Duration
	for i := 0; i < replicas; i++ {
		addr, err := freeAddr()
		if err != nil {
			return procs, urls, seed, err
		}
		args := []string{"serve", "--listen", addr}
		if i == 0 {
			args = append(args, "--demo", "--demo-sandboxes", strconv.Itoa(pool))
		}
		name := fmt.Sprintf("broker %s #%d", label, i+1)
		logPath := filepath.Join(b.dir, strings.NewReplacer(" ", "-", "#", "").Replace(fmt.Sprintf("%s-%d.log", label, i+1)))
		t := time.Now()
		p, err := startProc(name, b.bin, args, b.brokerEnv(dbURL, extraEnv...), logPath)
		if err != nil {
			return procs, urls, seed, err
		}
		procs = append(procs, p)
		if err := p.waitHTTP("http://"+addr+"/readyz", b.o.startupLimit); err != nil {
			return procs, urls, seed, err
		}
		if i == 0 {
			seed = time.Since(t)
		}
		urls = append(urls, "http://"+addr)
	}
	return procs, urls, seed, nil
}

func stopAll(procs []*proc) error {
	var errs []error
	for _, p := range procs {
		errs = append(errs, p.stop(30*time.Second))
	}
	return errors.Join(errs...)
}
