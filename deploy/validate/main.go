// Command validate checks the deployment files under deploy/ offline, with
// no cluster, no Docker daemon and no schema downloads:
//
//   - Kubernetes manifests decode strictly into the Kubernetes Go types
//     (unknown or misspelt fields and wrong types fail), and follow the
//     house rules: probes on /healthz and /readyz, resources, non-root,
//     read-only root file system, grace period above SHUTDOWN_GRACE_SEC,
//     selectors that match, a complete kustomization;
//   - docker-compose.yml loads with the Compose specification loader
//     (schema, interpolation, references) and its broker services use known
//     subcommands and configuration names;
//   - the Dockerfile builds a static, version-stamped binary from the Go
//     version go.mod names and runs it non-root with a HEALTHCHECK;
//   - alert rules link to runbook anchors that exist in docs/operations.md,
//     use metric names the broker documents and defines (string literals in
//     its Go source) and each have a firing unit test; the Grafana
//     dashboard is well-formed JSON whose panels use known metrics.
//
// PromQL syntax is left to promtool: with -promtool-dir DIR, validate writes
// there the Prometheus configuration with local rule paths and the
// dashboard's queries as a rule file, for `promtool check`.
//
// Usage: go run . -root ../.. [-promtool-dir DIR] [-v]
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

// report collects the problems found, per file.
type report struct {
	root     string
	files    []string
	problems []string
}

// checked records that file was examined.
func (r *report) checked(file string) { r.files = append(r.files, r.rel(file)) }

// fail records a problem in file.
func (r *report) fail(file, format string, args ...any) {
	r.problems = append(r.problems, r.rel(file)+": "+fmt.Sprintf(format, args...))
}

func (r *report) rel(file string) string {
	if rel, err := filepath.Rel(r.root, file); err == nil && !strings.HasPrefix(rel, "..") {
		return rel
	}
	return file
}

func main() {
	root := flag.String("root", "../..", "repository root")
	promDir := flag.String("promtool-dir", "", "write promtool inputs (prometheus.yml with local rule paths, dashboard queries as rules) here")
	verbose := flag.Bool("v", false, "list the files checked")
	flag.Parse()
	abs, err := filepath.Abs(*root)
	if err != nil {
		fmt.Fprintln(os.Stderr, "validate:", err)
		os.Exit(2)
	}
	r := validateAll(abs, *promDir)
	sort.Strings(r.files)
	if *verbose {
		for _, f := range r.files {
			fmt.Println("checked", f)
		}
	}
	for _, p := range r.problems {
		fmt.Println("FAIL", p)
	}
	fmt.Printf("validate: %d files checked, %d problems\n", len(r.files), len(r.problems))
	if len(r.problems) > 0 {
		os.Exit(1)
	}
}

// validateAll runs every check on the repository at root.
func validateAll(root, promDir string) *report {
	r := &report{root: root}
	env, err := knownEnv(root)
	if err != nil {
		r.fail(filepath.Join(root, "config", "config.go"), "%v", err)
	}
	deploy := filepath.Join(root, "deploy")
	checkKubernetes(r, filepath.Join(deploy, "kubernetes"), env)
	checkCompose(r, filepath.Join(deploy, "docker-compose.yml"), env)
	checkDockerfile(r, filepath.Join(deploy, "Dockerfile"), root)
	anchors := checkDocs(r, filepath.Join(root, "docs", "operations.md"))
	metrics := sourceMetrics(root)
	checkAlerts(r, filepath.Join(deploy, "prometheus"), anchors, metrics)
	checkDashboard(r, filepath.Join(deploy, "grafana", "sandbox-broker-dashboard.json"), promDir, metrics)
	if promDir != "" {
		writePromConfig(r, filepath.Join(deploy, "prometheus"), promDir)
	}
	checkYAMLSyntax(r, deploy)
	return r
}

// checkYAMLSyntax parses every other YAML file under deploy/ (Grafana
// provisioning, ...), for syntax only.
func checkYAMLSyntax(r *report, deploy string) {
	done := map[string]bool{}
	for _, f := range r.files {
		done[f] = true
	}
	_ = filepath.WalkDir(deploy, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			r.fail(path, "%v", err)
			return nil
		}
		if d.IsDir() && d.Name() == "validate" {
			return filepath.SkipDir
		}
		ext := filepath.Ext(path)
		if d.IsDir() || (ext != ".yml" && ext != ".yaml") || done[r.rel(path)] {
			return nil
		}
		r.checked(path)
		data, err := os.ReadFile(path)
		if err != nil {
			r.fail(path, "%v", err)
			return nil
		}
		var v any
		if err := yaml.Unmarshal(data, &v); err != nil {
			r.fail(path, "invalid YAML: %v", err)
		} else if v == nil {
			r.fail(path, "empty YAML document")
		}
		return nil
	})
}
