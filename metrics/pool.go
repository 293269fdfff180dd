package metrics

import (
	"cmp"
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	broker "github.com/sandbox-broker/broker"
)

// otherTrack sums the tracks beyond Options.MaxTracks.
const otherTrack = "other"

// poolCollector computes the pool gauges from SandboxStore.Stats when
// Prometheus scrapes. One answer is cached for a few seconds so that
// several scrapers (or replicas of Prometheus) cost one query. A failing or
// slow store never fails the scrape: the pool gauges are left out of that
// scrape and broker_pool_scrape_errors_total goes up (the reference answered
// 500, losing every other metric with them).
type poolCollector struct {
	store     broker.SandboxStore
	clock     broker.Clock
	ttl       time.Duration
	timeout   time.Duration
	maxTracks int
	log       *slog.Logger

	byName       map[broker.Status]*prometheus.Desc // the reference's broker_pool_<status>
	total        *prometheus.Desc
	byStatus     *prometheus.Desc
	byTrack      *prometheus.Desc
	backlog      *prometheus.Desc
	scrapeErrors prometheus.Counter

	mu       sync.Mutex // serialises refreshes: concurrent scrapes share one query
	cached   broker.Stats
	cachedAt time.Time
	valid    bool
}

func newPoolCollector(opts Options) *poolCollector {
	c := &poolCollector{
		store: opts.Store, clock: opts.Clock, ttl: opts.PoolCacheTTL, timeout: opts.PoolTimeout, maxTracks: opts.MaxTracks, log: opts.Logger,
		byName: map[broker.Status]*prometheus.Desc{},
		total:  prometheus.NewDesc("broker_pool_total", "Sandbox records in the store, every status included.", nil, nil),
		byStatus: prometheus.NewDesc("broker_pool_sandboxes", "Sandboxes by exact status (deleting included).",
			[]string{"status"}, nil),
		byTrack: prometheus.NewDesc("broker_pool_by_track", "Sandboxes by track name, the largest tracks only; the rest are summed under \"other\".",
			[]string{"track_name"}, nil),
		backlog: prometheus.NewDesc("broker_deletion_backlog_oldest_seconds", "Age of the oldest pending deletion request (pending_deletion or deleting); 0 when there is none.",
			nil, nil),
		scrapeErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "broker_pool_scrape_errors_total",
			Help: "Scrapes whose pool gauges were left out because the store failed or timed out."}),
	}
	if c.ttl <= 0 {
		c.ttl = 5 * time.Second
	}
	if c.timeout <= 0 {
		c.timeout = 3 * time.Second
	}
	if c.maxTracks <= 0 {
		c.maxTracks = 50
	}
	help := map[broker.Status]string{
		broker.StatusAvailable:       "Sandboxes available for allocation.",
		broker.StatusAllocated:       "Sandboxes allocated to a lab participant.",
		broker.StatusPendingDeletion: "Sandboxes waiting for deletion at the provider (pending_deletion and deleting).",
		broker.StatusStale:           "Sandboxes the provider no longer lists.",
		broker.StatusDeletionFailed:  "Sandboxes whose deletion failed for the last time; they need an operator.",
	}
	for st, h := range help {
		c.byName[st] = prometheus.NewDesc("broker_pool_"+string(st), h, nil, nil)
	}
	return c
}

// Describe implements prometheus.Collector.
func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.byName {
		ch <- d
	}
	ch <- c.total
	ch <- c.byStatus
	ch <- c.byTrack
	ch <- c.backlog
	c.scrapeErrors.Describe(ch)
}

// Collect implements prometheus.Collector.
func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	st, ok := c.stats()
	c.scrapeErrors.Collect(ch)
	if !ok {
		return
	}
	gauge := func(d *prometheus.Desc, v int, labels ...string) {
		m, err := prometheus.NewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
		if err == nil {
			ch <- m
		}
	}
	for s, d := range c.byName {
		n := st.ByStatus[s]
		if s == broker.StatusPendingDeletion {
			// The reference had no deleting state; a claimed sandbox still
			// waits for its deletion.
			n += st.ByStatus[broker.StatusDeleting]
		}
		gauge(d, n)
	}
	gauge(c.total, st.Total)
	for _, s := range broker.Statuses() {
		gauge(c.byStatus, st.ByStatus[s], string(s))
	}
	for name, n := range c.topTracks(st.ByTrack) {
		gauge(c.byTrack, n, name)
	}
	var age float64
	if !st.OldestDeletionRequest.IsZero() {
		age = max(0, c.clock.Now().Sub(st.OldestDeletionRequest).Seconds())
	}
	ch <- prometheus.MustNewConstMetric(c.backlog, prometheus.GaugeValue, age)
}

// stats returns the cached Stats, refreshing them when older than ttl. It
// reports false when the store failed; failures are not cached.
func (c *poolCollector) stats() (broker.Stats, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.clock.Now()
	if c.valid && !now.Before(c.cachedAt) && now.Sub(c.cachedAt) < c.ttl {
		return c.cached, true
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	st, err := c.store.Stats(ctx)
	if err != nil {
		c.valid = false
		c.scrapeErrors.Inc()
		c.log.Warn("pool gauges left out of this scrape: store stats failed", "action", "metrics_scrape", "outcome", "error", "error", err.Error())
		return broker.Stats{}, false
	}
	c.cached, c.cachedAt, c.valid = st, now, true
	return st, true
}

// topTracks keeps the maxTracks largest tracks (ties by name) and sums the
// rest under "other". Label values are made valid UTF-8.
func (c *poolCollector) topTracks(byTrack map[string]int) map[string]int {
	type track struct {
		name string
		n    int
	}
	all := make([]track, 0, len(byTrack))
	for name, n := range byTrack {
		all = append(all, track{name, n})
	}
	slices.SortFunc(all, func(a, b track) int {
		if a.n != b.n {
			return cmp.Compare(b.n, a.n)
		}
		return strings.Compare(a.name, b.name)
	})
	out := make(map[string]int, min(len(all), c.maxTracks+1))
	for i, t := range all {
		name := strings.ToValidUTF8(t.name, "\uFFFD")
		if i >= c.maxTracks {
			name = otherTrack
		}
		out[name] += t.n // a real track named "other" merges with the rest
	}
	return out
}
