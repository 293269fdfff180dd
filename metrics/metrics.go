// Package metrics exposes the broker's Prometheus metrics: HTTP requests,
// allocations, background jobs, circuit breakers, NIOSXaaS cleanups and the
// pool gauges. The names are the Python service's where one existed (SPEC
// §6.2), so dashboards and alerts keep working.
//
// A *Metrics owns its own registry (no global state). It implements
// httpapi.Observer and jobs.Observer; its Handler serves the registry.
package metrics

import (
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/csp"
	"github.com/sandbox-broker/broker/lifecycle"
)

// Histogram buckets. The allocation, sync and cleanup buckets are the
// reference's, so existing dashboards keep their quantiles.
var (
	allocationBuckets = []float64{.01, .025, .05, .075, .1, .15, .2, .3, .5, 1}
	syncBuckets       = []float64{1, 2.5, 5, 10, 15, 30, 60}
	cleanupBuckets    = []float64{.1, .5, 1, 2.5, 5, 10, 30}
	jobBuckets        = []float64{.1, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}
)

// Label values created at start so that rate() and alerts see a zero series
// before the first event.
var (
	allocateOutcomes = []string{"success", "idempotent", "no_sandboxes", "error"}
	markOutcomes     = []string{"success", "not_found", "not_owner", "not_allocated", "error"}
	jobOutcomes      = []string{"success", "error"}
	niosOutcomes     = []string{"success", "skipped", "shadow", "failed", "error"}
	niosAuthOutcomes = []string{"success", "failed"}
)

// Options configures New. Every field is optional.
type Options struct {
	// Store, when set, feeds the pool gauges, computed at scrape time from
	// Stats.
	Store broker.SandboxStore
	// Clock dates the pool cache, the deletion backlog's age and job
	// successes; default broker.SystemClock.
	Clock broker.Clock
	// PoolCacheTTL is how long one Stats answer serves scrapes; default 5s.
	PoolCacheTTL time.Duration
	// PoolTimeout bounds one Stats call made by a scrape; default 3s.
	PoolTimeout time.Duration
	// MaxTracks caps the track_name values of broker_pool_by_track; the
	// smaller tracks are summed under "other". Default 50.
	MaxTracks int
	// Logger receives scrape problems; default discards.
	Logger *slog.Logger
}

// Metrics holds every broker metric on its own registry. It is safe for
// concurrent use.
type Metrics struct {
	reg   *prometheus.Registry
	clock broker.Clock
	log   *slog.Logger

	httpRequests *prometheus.CounterVec
	httpDuration *prometheus.HistogramVec

	allocateTotal   *prometheus.CounterVec
	allocateIdem    prometheus.Counter
	allocateLatency *prometheus.HistogramVec
	markTotal       *prometheus.CounterVec

	jobRuns        *prometheus.CounterVec
	jobDuration    *prometheus.HistogramVec
	jobLastSuccess *prometheus.GaugeVec

	syncTotal        *prometheus.CounterVec
	syncSynced       prometheus.Counter
	syncStale        prometheus.Counter
	syncStaleRefused prometheus.Counter
	syncDuration     prometheus.Histogram

	cleanupTotal       *prometheus.CounterVec
	cleanupDeleted     prometheus.Counter
	cleanupFailed      prometheus.Counter
	cleanupAlreadyGone prometheus.Counter
	cleanupRetrying    prometheus.Counter
	cleanupDuration    prometheus.Histogram

	expiryTotal    *prometheus.CounterVec
	expiryOrphaned prometheus.Counter
	stalePurged    prometheus.Counter

	niosCleanup  *prometheus.CounterVec
	niosDeleted  prometheus.Counter
	niosAuth     *prometheus.CounterVec
	breakerMu    sync.Mutex
	breakerState map[string]func() string
}

// New creates the metrics and registers them, with the Go runtime and
// process collectors, on a new registry.
func New(opts Options) *Metrics {
	if opts.Clock == nil {
		opts.Clock = broker.SystemClock{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	m := &Metrics{reg: prometheus.NewRegistry(), clock: opts.Clock, log: opts.Logger, breakerState: map[string]func() string{}}
	f := factory{m.reg}

	m.httpRequests = f.counterVec("broker_http_requests_total", "HTTP requests by method, route pattern and status code.", "method", "route", "code")
	m.httpDuration = f.histogramVec("broker_http_request_duration_seconds", "HTTP request latency by method and route pattern.", prometheus.DefBuckets, "method", "route")

	m.allocateTotal = f.counterVec("broker_allocate_total", "Allocation requests by outcome: success, idempotent, no_sandboxes, error.", "outcome")
	m.allocateIdem = f.counter("broker_allocate_idempotent_hits_total", "Allocations answered by replaying the caller's existing sandbox.")
	m.allocateLatency = f.histogramVec("broker_allocation_latency_seconds", "Allocation latency by outcome.", allocationBuckets, "outcome")
	m.markTotal = f.counterVec("broker_deletion_marked_total", "Mark-for-deletion requests by outcome: success, not_found, not_owner, not_allocated, error.", "outcome")

	m.jobRuns = f.counterVec("broker_job_runs_total", "Background job runs by job and outcome (success, error).", "job_name", "outcome")
	m.jobDuration = f.histogramVec("broker_job_duration_seconds", "Background job run duration by job.", jobBuckets, "job_name")
	m.jobLastSuccess = f.gaugeVec("broker_job_last_success_timestamp_seconds", "Unix time of the last successful run of each job in this process.", "job_name")

	m.syncTotal = f.counterVec("broker_sync_total", "Sync runs by outcome: success, error.", "outcome")
	m.syncSynced = f.counter("broker_sync_sandboxes_synced_total", "Sandboxes made available by sync: inserted or revived from stale.")
	m.syncStale = f.counter("broker_sync_sandboxes_stale_total", "Available sandboxes marked stale by sync because the provider no longer lists them.")
	m.syncStaleRefused = f.counter("broker_sync_stale_refused_total", "Sandboxes sync left available because marking them stale would exceed SYNC_MAX_STALE_FRACTION.")
	m.syncDuration = f.histogram("broker_sync_duration_seconds", "Sync run duration.", syncBuckets)

	m.cleanupTotal = f.counterVec("broker_cleanup_total", "Cleanup runs by outcome: success, error.", "outcome")
	m.cleanupDeleted = f.counter("broker_cleanup_deleted_total", "Sandboxes deleted at the provider by cleanup.")
	m.cleanupFailed = f.counter("broker_cleanup_failed_total", "Sandboxes whose deletion failed for the last time (now deletion_failed).")
	m.cleanupAlreadyGone = f.counter("broker_cleanup_already_gone_total", "Sandboxes the provider had already deleted (404) when cleanup tried.")
	m.cleanupRetrying = f.counter("broker_cleanup_retrying_total", "Failed deletions that will be retried later.")
	m.cleanupDuration = f.histogram("broker_cleanup_duration_seconds", "Cleanup run duration.", cleanupBuckets)

	m.expiryTotal = f.counterVec("broker_expiry_total", "Auto-expiry runs by outcome: success, error.", "outcome")
	m.expiryOrphaned = f.counter("broker_expiry_orphaned_total", "Allocations past expires_at + grace moved to pending_deletion by auto-expiry.")
	m.stalePurged = f.counter("broker_stale_purge_deleted_total", "Stale sandbox records removed by the stale purge job.")

	m.niosCleanup = f.counterVec("broker_niosxaas_cleanup_total", "NIOSXaaS pre-delete cleanups by outcome: success, skipped, shadow, failed, error.", "outcome")
	m.niosDeleted = f.counter("broker_niosxaas_services_deleted_total", "NIOSXaaS services deleted before their sandbox (real mode only).")
	m.niosAuth = f.counterVec("broker_niosxaas_auth_total", "NIOSXaaS sign-ins by outcome: success, failed.", "outcome")

	for _, o := range allocateOutcomes {
		m.allocateTotal.WithLabelValues(o)
		m.allocateLatency.WithLabelValues(o)
	}
	for _, o := range markOutcomes {
		m.markTotal.WithLabelValues(o)
	}
	for _, o := range jobOutcomes {
		m.syncTotal.WithLabelValues(o)
		m.cleanupTotal.WithLabelValues(o)
		m.expiryTotal.WithLabelValues(o)
	}
	for _, o := range niosOutcomes {
		m.niosCleanup.WithLabelValues(o)
	}
	for _, o := range niosAuthOutcomes {
		m.niosAuth.WithLabelValues(o)
	}

	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if opts.Store != nil {
		m.reg.MustRegister(newPoolCollector(opts))
	}
	return m
}

// Registry returns the registry holding every metric, e.g. to gather them
// in tests.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// factory creates metrics and registers them on one registry.
type factory struct{ reg prometheus.Registerer }

func (f factory) counter(name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	f.reg.MustRegister(c)
	return c
}

func (f factory) counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	f.reg.MustRegister(c)
	return c
}

func (f factory) gaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
	f.reg.MustRegister(g)
	return g
}

func (f factory) histogram(name, help string, buckets []float64) prometheus.Histogram {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
	f.reg.MustRegister(h)
	return h
}

func (f factory) histogramVec(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels)
	f.reg.MustRegister(h)
	return h
}

// knownMethods bounds the method label: a client may send any method token.
var knownMethods = map[string]bool{
	http.MethodGet: true, http.MethodHead: true, http.MethodPost: true, http.MethodPut: true, http.MethodPatch: true,
	http.MethodDelete: true, http.MethodConnect: true, http.MethodOptions: true, http.MethodTrace: true,
}

// ObserveHTTP implements httpapi.Observer. route is the matched ServeMux
// pattern (a bounded set); a "METHOD " prefix is dropped, so the label reads
// like /v1/sandboxes/{id}. Unknown methods are counted as "other".
func (m *Metrics) ObserveHTTP(method, route string, status int, d time.Duration) {
	if !knownMethods[method] {
		method = "other"
	}
	if before, after, ok := strings.Cut(route, " "); ok && knownMethods[before] {
		route = after
	}
	if status == 0 {
		status = http.StatusOK // the handler wrote nothing; net/http sends 200
	}
	m.httpRequests.WithLabelValues(method, route, strconv.Itoa(status)).Inc()
	m.httpDuration.WithLabelValues(method, route).Observe(d.Seconds())
}

// ObserveAllocate implements httpapi.Observer: outcome is success,
// idempotent, no_sandboxes or error.
func (m *Metrics) ObserveAllocate(outcome string, d time.Duration) {
	m.allocateTotal.WithLabelValues(outcome).Inc()
	m.allocateLatency.WithLabelValues(outcome).Observe(d.Seconds())
	if outcome == "idempotent" {
		m.allocateIdem.Inc()
	}
}

// ObserveMark implements httpapi.Observer: outcome is success, not_found,
// not_owner, not_allocated or error.
func (m *Metrics) ObserveMark(outcome string) {
	m.markTotal.WithLabelValues(outcome).Inc()
}

// JobFinished implements jobs.Observer. Besides the generic job metrics it
// records the reference's per-job counters, recognised by the result type
// (lifecycle.SyncResult, CleanupResult, ExpiryResult, PurgeResult); the
// counts of a failed run's partial result are recorded too.
func (m *Metrics) JobFinished(job string, result any, err error, d time.Duration) {
	outcome := "success"
	if err != nil {
		outcome = "error"
	}
	m.jobRuns.WithLabelValues(job, outcome).Inc()
	m.jobDuration.WithLabelValues(job).Observe(d.Seconds())
	if err == nil {
		m.jobLastSuccess.WithLabelValues(job).Set(float64(m.clock.Now().Unix()))
	}
	switch r := result.(type) {
	case lifecycle.SyncResult:
		m.syncFinished(r, outcome, d)
	case *lifecycle.SyncResult:
		if r != nil {
			m.syncFinished(*r, outcome, d)
		}
	case lifecycle.CleanupResult:
		m.cleanupFinished(r, outcome, d)
	case *lifecycle.CleanupResult:
		if r != nil {
			m.cleanupFinished(*r, outcome, d)
		}
	case lifecycle.ExpiryResult:
		m.expiryFinished(r, outcome)
	case *lifecycle.ExpiryResult:
		if r != nil {
			m.expiryFinished(*r, outcome)
		}
	case lifecycle.PurgeResult:
		m.stalePurged.Add(float64(r.Deleted))
	case *lifecycle.PurgeResult:
		if r != nil {
			m.stalePurged.Add(float64(r.Deleted))
		}
	}
}

func (m *Metrics) syncFinished(r lifecycle.SyncResult, outcome string, d time.Duration) {
	m.syncTotal.WithLabelValues(outcome).Inc()
	m.syncSynced.Add(float64(r.Inserted + r.Revived))
	m.syncStale.Add(float64(r.MarkedStale))
	m.syncStaleRefused.Add(float64(r.StaleRefused))
	m.syncDuration.Observe(d.Seconds())
}

func (m *Metrics) cleanupFinished(r lifecycle.CleanupResult, outcome string, d time.Duration) {
	m.cleanupTotal.WithLabelValues(outcome).Inc()
	m.cleanupDeleted.Add(float64(r.Deleted))
	m.cleanupFailed.Add(float64(r.Failed))
	m.cleanupAlreadyGone.Add(float64(r.AlreadyGone))
	m.cleanupRetrying.Add(float64(r.Retrying))
	m.cleanupDuration.Observe(d.Seconds())
}

func (m *Metrics) expiryFinished(r lifecycle.ExpiryResult, outcome string) {
	m.expiryTotal.WithLabelValues(outcome).Inc()
	m.expiryOrphaned.Add(float64(r.Expired))
}

// NIOSXaaSResult counts one NIOSXaaS pre-delete cleanup; use it as
// csp.NIOSXaaSConfig.OnResult.
func (m *Metrics) NIOSXaaSResult(outcome string) { m.niosCleanup.WithLabelValues(outcome).Inc() }

// NIOSXaaSAuth counts one NIOSXaaS sign-in; use it as
// csp.NIOSXaaSConfig.OnAuth.
func (m *Metrics) NIOSXaaSAuth(outcome string) { m.niosAuth.WithLabelValues(outcome).Inc() }

// NIOSXaaSServiceDeleted counts one deleted NIOSXaaS service; use it as
// csp.NIOSXaaSConfig.OnServiceDeleted.
func (m *Metrics) NIOSXaaSServiceDeleted() { m.niosDeleted.Inc() }

// Breaker state values of broker_circuit_breaker_state.
const (
	breakerClosed   = 0
	breakerHalfOpen = 1
	breakerOpen     = 2
)

// RegisterBreaker exports the state of a circuit breaker as
// broker_circuit_breaker_state{breaker=name}: 0 closed, 1 half_open,
// 2 open, -1 for a state it does not know. state is polled at scrape time,
// e.g. (*csp.Client).State; registering a name again replaces its function.
func (m *Metrics) RegisterBreaker(name string, state func() string) {
	m.breakerMu.Lock()
	_, known := m.breakerState[name]
	m.breakerState[name] = state
	m.breakerMu.Unlock()
	if known {
		return
	}
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "broker_circuit_breaker_state",
		Help:        "Circuit breaker state: 0 closed, 1 half_open, 2 open.",
		ConstLabels: prometheus.Labels{"breaker": name},
	}, func() float64 { return m.breakerValue(name) }))
}

func (m *Metrics) breakerValue(name string) float64 {
	m.breakerMu.Lock()
	state := m.breakerState[name]
	m.breakerMu.Unlock()
	switch state() {
	case csp.StateClosed:
		return breakerClosed
	case csp.StateHalfOpen:
		return breakerHalfOpen
	case csp.StateOpen:
		return breakerOpen
	default:
		return -1
	}
}
