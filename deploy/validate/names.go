package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// subcommands are the commands of the sandbox-broker binary a container may
// run.
var subcommands = map[string]bool{
	"serve": true, "worker": true, "migrate": true, "fake-csp": true, "admin": true, "healthcheck": true, "version": true,
}

// runtimeEnv are variables the Go runtime reads rather than the broker.
var runtimeEnv = map[string]bool{"GOMEMLIMIT": true, "GOMAXPROCS": true, "GOGC": true, "GODEBUG": true, "TZ": true}

var envLiteral = regexp.MustCompile(`"([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)"`)

// knownEnv returns the configuration variable names config/config.go reads
// (every upper-case string literal with an underscore), plus the runtime's.
func knownEnv(root string) (map[string]bool, error) {
	src, err := os.ReadFile(filepath.Join(root, "config", "config.go"))
	if err != nil {
		return nil, fmt.Errorf("read the configuration names: %w", err)
	}
	names := map[string]bool{}
	for _, m := range envLiteral.FindAllSubmatch(src, -1) {
		names[string(m[1])] = true
	}
	if len(names) < 10 {
		return nil, fmt.Errorf("found only %d configuration names; has config.Load changed shape?", len(names))
	}
	for n := range runtimeEnv {
		names[n] = true
	}
	return names, nil
}

// knownMetrics are the metric names the broker exports (SPEC §6.2 plus the
// Go service's additions). Histograms are listed by their base name.
var knownMetrics = map[string]bool{
	"broker_http_requests_total":                true,
	"broker_http_request_duration_seconds":      true,
	"broker_pool_available":                     true,
	"broker_pool_allocated":                     true,
	"broker_pool_pending_deletion":              true,
	"broker_pool_stale":                         true,
	"broker_pool_deletion_failed":               true,
	"broker_pool_total":                         true,
	"broker_pool_deleting":                      true,
	"broker_pool_by_track":                      true,
	"broker_pool_scrape_errors_total":           true,
	"broker_pool_sandboxes":                     true,
	"broker_deletion_backlog_oldest_seconds":    true,
	"broker_job_runs_total":                     true,
	"broker_job_last_success_timestamp_seconds": true,
	"broker_job_duration_seconds":               true,
	"broker_circuit_breaker_state":              true,
	"broker_allocate_total":                     true,
	"broker_allocate_idempotent_hits_total":     true,
	"broker_allocate_conflicts_total":           true,
	"broker_allocation_latency_seconds":         true,
	"broker_deletion_marked_total":              true,
	"broker_sync_total":                         true,
	"broker_sync_sandboxes_synced_total":        true,
	"broker_sync_sandboxes_stale_total":         true,
	"broker_sync_stale_refused_total":           true,
	"broker_sync_duration_seconds":              true,
	"broker_cleanup_total":                      true,
	"broker_cleanup_deleted_total":              true,
	"broker_cleanup_failed_total":               true,
	"broker_cleanup_retrying_total":             true,
	"broker_cleanup_already_gone_total":         true,
	"broker_stale_purge_deleted_total":          true,
	"broker_cleanup_duration_seconds":           true,
	"broker_expiry_total":                       true,
	"broker_expiry_orphaned_total":              true,
	"broker_niosxaas_cleanup_total":             true,
	"broker_niosxaas_services_deleted_total":    true,
	"broker_niosxaas_auth_total":                true,
	"broker_niosxaas_cleanup_duration_seconds":  true,
	"broker_request_latency_seconds":            true,
}

var (
	metricToken   = regexp.MustCompile(`\bbroker_[a-z0-9_]+`)
	metricLiteral = regexp.MustCompile(`"(broker_[a-z0-9_]+)"`)
)

// metricSet says which broker_* names exist: the documented list, and, when
// the repository has metric definitions, the names in its Go source.
type metricSet struct {
	source map[string]bool // string literals in non-test Go files; nil if none
}

// sourceMetrics collects the broker_* string literals of the module's
// non-test Go files (deploy/ excluded). Names built at run time, such as
// "broker_pool_"+status, appear as their prefix.
func sourceMetrics(root string) metricSet {
	names := map[string]bool{}
	_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() {
			if n := d.Name(); path != root && (n == "deploy" || n == "testdata" || strings.HasPrefix(n, ".")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		for _, m := range metricLiteral.FindAllSubmatch(src, -1) {
			names[string(m[1])] = true
		}
		return nil
	})
	if len(names) == 0 {
		return metricSet{}
	}
	return metricSet{source: names}
}

// inSource reports whether name is defined in the Go source (always true
// when the source defines no metrics yet).
func (ms metricSet) inSource(name string) bool {
	if ms.source == nil || ms.source[name] {
		return true
	}
	for prefix := range ms.source {
		if strings.HasSuffix(prefix, "_") && strings.HasPrefix(name, prefix) {
			return true
		}
	}
	return false
}

// unknown returns the problems with the broker_* names of a PromQL
// expression: names the broker does not document, or does not define.
func (ms metricSet) unknown(expr string) []string {
	var out []string
	for _, name := range metricToken.FindAllString(expr, -1) {
		base := name
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(name, suffix); ok && knownMetrics[b] {
				base = b
			}
		}
		switch {
		case !knownMetrics[base]:
			out = append(out, name+" is not a metric the broker exports")
		case !ms.inSource(base):
			out = append(out, name+" is not defined in the Go source (no string literal names it)")
		}
	}
	return out
}
