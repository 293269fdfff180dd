package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/config"
	"github.com/sandbox-broker/broker/csp"
	"github.com/sandbox-broker/broker/fakecsp"
	"github.com/sandbox-broker/broker/httpapi"
	"github.com/sandbox-broker/broker/jobs"
	"github.com/sandbox-broker/broker/lifecycle"
	"github.com/sandbox-broker/broker/metrics"
	"github.com/sandbox-broker/broker/ratelimit"
	"github.com/sandbox-broker/broker/service"
	"golang.org/x/time/rate"
)

// runServe runs the API server (api=true) or the worker (api=false).
func runServe(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer, api bool) error {
	name := map[bool]string{true: "serve", false: "worker"}[api]
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "", "listen address (overrides BROKER_LISTEN_ADDR)")
	dbURL := fs.String("database-url", "", "store URL (overrides BROKER_DATABASE_URL)")
	demo := fs.Bool("demo", false, "run with a built-in demo provider and generated tokens")
	demoN := fs.Int("demo-sandboxes", 50, "number of sandboxes in the demo provider")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("%s: unexpected argument %q", name, fs.Arg(0))}
	}
	cfg, err := config.Load(getenv)
	if err != nil {
		return usageError{fmt.Errorf("invalid configuration:\n%w", err)}
	}
	if *listen != "" {
		cfg.ListenAddr = *listen
	}
	if *dbURL != "" {
		cfg.DatabaseURL = *dbURL
	}
	if *demoN < 1 || *demoN > 1_000_000 {
		return usageError{fmt.Errorf("--demo-sandboxes must be from 1 to 1000000")}
	}
	log := newLogger(cfg, stderr)

	if *demo {
		cfg.DDBCreateTable = true // a demo on an empty DynamoDB table creates it
		cfg.APITokens = orGenerated(cfg.APITokens)
		cfg.AdminTokens = orGenerated(cfg.AdminTokens)
	}
	if api && (len(cfg.APITokens) == 0 || len(cfg.AdminTokens) == 0) {
		return usageError{errors.New("BROKER_API_TOKEN and BROKER_ADMIN_TOKEN must be set (comma-separated lists allowed), or run `serve --demo` to try the broker with generated tokens")}
	}

	store, storeName, err := openStore(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer store.Close()
	log.Info("store opened", "store", redact(storeName))

	provider, stopProvider, err := setupProvider(&cfg, *demo, *demoN, log)
	if err != nil {
		return err
	}
	defer stopProvider()

	clock := broker.SystemClock{}
	m := metrics.New(metrics.Options{Store: store, Clock: clock, Logger: log})
	if c, ok := provider.(*csp.Client); ok {
		m.RegisterBreaker(csp.BreakerCSP, c.State)
	}
	svc := service.New(store, clock, cfg.LabDuration)
	runner := buildRunner(cfg, store, provider, clock, log, m)

	if *demo {
		// The first sync runs before the server answers; recorded as a job
		// run, it also starts the sync schedule (no second sync right away).
		start := time.Now()
		res, err := runner.RunNow(ctx, "sync")
		if err != nil {
			return fmt.Errorf("demo: initial sync: %w", err)
		}
		if r, ok := res.(lifecycle.SyncResult); ok {
			log.Info("demo pool synced", "listed", r.Listed, "inserted", r.Inserted, "duration_ms", time.Since(start).Milliseconds())
		}
	}

	jobCtx, stopJobs := context.WithCancel(context.WithoutCancel(ctx))
	jobsDone := make(chan struct{})
	if cfg.RunJobs || !api {
		go func() { defer close(jobsDone); runner.Run(jobCtx) }()
	} else {
		close(jobsDone)
		log.Info("RUN_JOBS=false: this process runs no background jobs; run `sandbox-broker worker` somewhere")
	}

	handler := newHandler(api, cfg, store, svc, runner, m, clock, log)
	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		stopJobs()
		<-jobsDone
		return fmt.Errorf("listen on %s (BROKER_LISTEN_ADDR): %w", cfg.ListenAddr, err)
	}
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	addr := ln.Addr().String()
	log.Info("sandbox-broker listening", "addr", addr, "api", api, "base_path", cfg.BasePath)
	if *demo {
		printDemoBanner(stdout, addr, cfg)
	}

	select {
	case err = <-serveErr:
	case <-ctx.Done():
		log.Info("shutting down: finishing in-flight requests and the job item in hand", "grace", cfg.ShutdownGrace.String())
		sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace)
		err = srv.Shutdown(sctx)
		cancel()
	}
	stopJobs()
	<-jobsDone
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// setupProvider returns the provider the configuration names: with demo, a
// fake CSP provider holding demoN sandboxes, started on a loopback port
// (cfg's CSP settings are pointed at it); else the CSP client when
// CSP_BASE_URL is set; else none. stop shuts the demo provider down.
func setupProvider(cfg *config.Config, demo bool, demoN int, log *slog.Logger) (provider broker.Provider, stop func(), err error) {
	stop = func() {}
	providerName := cfg.CSPBaseURL
	if demo {
		fake := fakecsp.New(fakecsp.Options{Sandboxes: demoN, Prefix: "lab", PageSize: 1000})
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, stop, fmt.Errorf("demo provider: %w", err)
		}
		fsrv := &http.Server{Handler: fake, ReadHeaderTimeout: 5 * time.Second}
		go fsrv.Serve(ln)
		stop = func() { fsrv.Close() }
		cfg.CSPBaseURL = "http://" + ln.Addr().String() + "/v2"
		cfg.CSPToken = "demo"
		providerName = fmt.Sprintf("built-in demo provider with %d sandboxes at %s", demoN, cfg.CSPBaseURL)
	}
	if cfg.CSPBaseURL == "" {
		log.Warn("CSP_BASE_URL is empty: no provider, so sync and cleanup are off; the broker serves the pool the store already holds")
		return nil, stop, nil
	}
	log.Info("provider configured", "provider", providerName)
	return csp.New(csp.Config{
		BaseURL: cfg.CSPBaseURL, Token: cfg.CSPToken,
		ConnectTimeout: cfg.CSPConnectTimeout, ReadTimeout: cfg.CSPReadTimeout,
		BreakerThreshold: cfg.BreakerThreshold, BreakerTimeout: cfg.BreakerTimeout,
		Logger: log,
	}), stop, nil
}

// newHandler builds the HTTP handler: the whole API for serve (api), or
// only /healthz, /readyz and /metrics for the worker.
func newHandler(api bool, cfg config.Config, store broker.Store, svc *service.Service, runner *jobs.Runner, m *metrics.Metrics, clock broker.Clock, log *slog.Logger) http.Handler {
	// GET /metrics is served on the listen port of both processes, so the
	// worker's job metrics are exported too (B-39).
	metricsRoute := map[string]http.Handler{"GET /metrics": m.Handler(cfg.MetricsToken)}
	if cfg.MetricsToken == "" {
		log.Info("METRICS_TOKEN is empty: GET /metrics is open to anyone who can reach the port")
	}
	limiter := ratelimit.New(ratelimit.Config{RPS: cfg.RateLimitRPS, Burst: cfg.RateLimitBurst})
	srvCfg := httpapi.Config{
		BasePath: cfg.BasePath, APITokens: cfg.APITokens, AdminTokens: cfg.AdminTokens, CORSOrigins: cfg.CORSOrigins,
		Service: svc, Store: store, Jobs: runner, Logger: log, Clock: clock,
		Observer: m, Extra: metricsRoute, Middleware: httpapi.RateLimit(limiter, cfg.TrustedProxies),
	}
	switch {
	case api && !limiter.Enabled():
		log.Warn("RATE_LIMIT_RPS=0: rate limiting is off")
	case api && len(cfg.TrustedProxies) == 0:
		log.Info("rate limiting per peer address; behind a load balancer set TRUSTED_PROXIES to its CIDRs, or every client shares the balancer's bucket",
			"rps", cfg.RateLimitRPS, "burst", cfg.RateLimitBurst)
	case api:
		log.Info("rate limiting per client address (X-Forwarded-For from TRUSTED_PROXIES)", "rps", cfg.RateLimitRPS, "burst", cfg.RateLimitBurst)
	}
	if !api {
		// The worker serves only /healthz, /readyz and /metrics: the API and
		// its tokens belong to `serve`, so a worker needs no token and
		// exposes no admin route. Anything else answers 404 in the error
		// envelope, with X-Request-ID and the security headers.
		srvCfg = httpapi.Config{HealthOnly: true, Store: store, Logger: log, Clock: clock, Observer: m, Extra: metricsRoute}
	}
	return httpapi.New(srvCfg)
}

// buildRunner wires the four lifecycle jobs into a runner.
func buildRunner(cfg config.Config, store broker.Store, provider broker.Provider, clock broker.Clock, log *slog.Logger, m *metrics.Metrics) *jobs.Runner {
	noProvider := "CSP_BASE_URL is not set"
	syncer := &lifecycle.Syncer{Store: store, Provider: provider, Clock: clock, Logger: log, MaxStaleFraction: cfg.SyncMaxStaleFraction}
	cleaner := &lifecycle.Cleaner{
		Store: store, Provider: provider, Clock: clock, Logger: log,
		Limiter:   rate.NewLimiter(rate.Limit(cfg.CSPDeleteRate), 1),
		BatchSize: cfg.CleanupBatchSize, Lease: cfg.CleanupLease, MaxAttempts: cfg.DeletionMaxAttempts,
		RetryBase: cfg.DeletionRetryBase, RetryMax: cfg.DeletionRetryMax,
	}
	if cfg.NIOSXaaSEnabled && provider != nil {
		hook := csp.NewNIOSXaaS(csp.NIOSXaaSConfig{
			BaseURL: cfg.NIOSXaaSBaseURL, Email: cfg.NIOSXaaSEmail, Password: cfg.NIOSXaaSPassword,
			ServiceName: cfg.NIOSXaaSServiceName, Timeout: cfg.NIOSXaaSTimeout, ShadowMode: cfg.NIOSXaaSShadowMode, Logger: log,
			OnResult: m.NIOSXaaSResult, OnAuth: m.NIOSXaaSAuth, OnServiceDeleted: m.NIOSXaaSServiceDeleted,
		})
		m.RegisterBreaker(csp.BreakerNIOSXaaS, hook.State)
		cleaner.Hook = hook
	}
	expirer := &lifecycle.Expirer{Store: store, Clock: clock, Grace: cfg.GracePeriod}
	purger := &lifecycle.Purger{Store: store, Clock: clock, Grace: cfg.StaleGrace}
	hasProvider := provider != nil
	reason := func(enabled bool, envName string) string {
		if !hasProvider {
			return noProvider
		}
		if !enabled {
			return envName + "=false"
		}
		return ""
	}
	return jobs.New(jobs.Config{
		Store: store, Clock: clock, Logger: log, Jitter: cfg.JobJitter, Observer: m,
		Jobs: []jobs.Job{
			{Name: "sync", Enabled: hasProvider && cfg.SyncEnabled, Disabled: reason(cfg.SyncEnabled, "SYNC_ENABLED"), Interval: cfg.SyncInterval,
				Run: func(ctx context.Context) (any, error) { return syncer.Run(ctx) }},
			{Name: "cleanup", Enabled: hasProvider && cfg.CleanupEnabled, Disabled: reason(cfg.CleanupEnabled, "CLEANUP_ENABLED"), Interval: cfg.CleanupInterval,
				Run: func(ctx context.Context) (any, error) { return cleaner.Run(ctx) }},
			{Name: "expiry", Enabled: cfg.ExpiryEnabled, Disabled: "AUTO_EXPIRY_ENABLED=false", Interval: cfg.ExpiryInterval,
				Run: func(ctx context.Context) (any, error) { return expirer.Run(ctx) }},
			{Name: "stale_purge", Enabled: cfg.StalePurgeEnabled, Disabled: "STALE_PURGE_ENABLED=false", Interval: cfg.StalePurgeInterval,
				Run: func(ctx context.Context) (any, error) { return purger.Run(ctx) }},
		},
	})
}

func orGenerated(tokens []string) []string {
	if len(tokens) > 0 {
		return tokens
	}
	return []string{rand.Text()}
}

func newLogger(cfg config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(strings.Replace(cfg.LogLevel, "warning", "warn", 1)))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

func printDemoBanner(w io.Writer, addr string, cfg config.Config) {
	host := addr
	if h, p, err := net.SplitHostPort(addr); err == nil && (h == "::" || h == "0.0.0.0" || h == "") {
		host = "localhost:" + p
	}
	base := "http://" + host + cfg.BasePath
	fmt.Fprintf(w, `
sandbox-broker demo is running at %s
  track token: %s
  admin token: %s

Allocate a sandbox for student-1:
  curl -s -X POST %s/allocate -H 'Authorization: Bearer %s' -H 'X-Instruqt-Sandbox-ID: student-1'

Pool statistics:
  curl -s %s/admin/stats -H 'Authorization: Bearer %s'

Press Ctrl-C to stop.
`, base, cfg.APITokens[0], cfg.AdminTokens[0], base, cfg.APITokens[0], base, cfg.AdminTokens[0])
}
