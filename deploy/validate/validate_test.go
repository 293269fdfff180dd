package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// copyRepo copies what the validator reads into a temporary repository.
func copyRepo(t *testing.T) string {
	t.Helper()
	src, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	files := []string{"go.mod", "config/config.go", "docs/operations.md"}
	err = filepath.WalkDir(filepath.Join(src, "deploy"), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		if d.IsDir() && rel == filepath.Join("deploy", "validate") {
			return filepath.SkipDir
		}
		if !d.IsDir() {
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dst, f), string(data))
	}
	if err := os.MkdirAll(filepath.Join(dst, "cmd", "sandbox-broker"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// edit replaces the first old in root/file with new.
func edit(t *testing.T, root, file, old, new string) {
	t.Helper()
	path := filepath.Join(root, file)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), old) {
		t.Fatalf("%s does not contain %q", file, old)
	}
	writeFile(t, path, strings.Replace(string(data), old, new, 1))
}

func TestValidate(t *testing.T) {
	t.Run("OK", func(t *testing.T) {
		r := validateAll(copyRepo(t), t.TempDir())
		if len(r.problems) > 0 {
			t.Fatalf("problems in the repository's deploy files:\n%s", strings.Join(r.problems, "\n"))
		}
		if len(r.files) < 10 {
			t.Fatalf("checked only %d files: %v", len(r.files), r.files)
		}
	})

	const (
		api     = "deploy/kubernetes/deployment-api.yaml"
		cm      = "deploy/kubernetes/configmap.yaml"
		compose = "deploy/docker-compose.yml"
		docker  = "deploy/Dockerfile"
		alerts  = "deploy/prometheus/alerts.yml"
		dash    = "deploy/grafana/sandbox-broker-dashboard.json"
		ops     = "docs/operations.md"
	)
	for _, tc := range []struct {
		name, file, old, new, want string
	}{
		{"ErrUnknownField", api, "readinessProbe:", "readinesProbe:", `unknown field "readinesProbe"`},
		{"ErrWrongType", api, "replicas: 3", "replicas: three", "document 1 (Deployment)"},
		{"ErrGraceTooShort", api, "terminationGracePeriodSeconds: 40", "terminationGracePeriodSeconds: 20", "must exceed SHUTDOWN_GRACE_SEC"},
		{"ErrLivenessOnReadyz", api, "path: /healthz\n              port: http\n            periodSeconds: 20", "path: /readyz\n              port: http\n            periodSeconds: 20", "must not depend on the database"},
		{"ErrNoResources", api, "memory: 512Mi", "", "resources.limits.memory"},
		{"ErrNoSeccomp", api, "seccompProfile:\n          type: RuntimeDefault", "seccompProfile:\n          type: Unconfined", "seccompProfile.type: RuntimeDefault"},
		{"ErrTooManyConnections", api, "replicas: 3", "replicas: 8", "over PostgreSQL's default max_connections"},
		{"ErrWritableRoot", api, "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "readOnlyRootFilesystem: true"},
		{"ErrUnknownSubcommand", api, `args: ["serve"]`, `args: ["server"]`, "not a sandbox-broker subcommand"},
		{"ErrUnknownEnv", cm, `LOG_LEVEL: "info"`, `LOG_LEVLE: "info"`, "LOG_LEVLE is not a configuration variable"},
		{"ErrSecretInConfigMap", cm, `LOG_LEVEL: "info"`, `LOG_LEVEL: "info"` + "\n  BROKER_ADMIN_TOKEN: x", "keep it in the Secret"},
		{"ErrServiceSelectsNothing", "deploy/kubernetes/service.yaml", "component: api\n  ports", "component: apii\n  ports", "selects no Deployment"},
		{"ErrRealSecret", "deploy/kubernetes/secret.example.yaml", "PLACEHOLDER-CHANGE-ME-csp-token", "0123456789abcdef", "never a real one"},
		{"ErrKustomizationMissingFile", "deploy/kubernetes/kustomization.yaml", "  - pdb.yaml", "  - pdbs.yaml", "resource pdbs.yaml"},
		{"ErrComposeSchema", compose, "stop_grace_period: 30s", "stop_grace_perod: 30s", "stop_grace_perod"},
		{"ErrComposeGrace", compose, "stop_grace_period: 30s", "stop_grace_period: 15s", "stop_grace_period 15s must exceed"},
		{"ErrComposeUnknownHost", compose, "CSP_BASE_URL: http://fake-csp:9400/v2", "CSP_BASE_URL: http://fake-cps:9400/v2", `"fake-cps", which is not a service`},
		{"ErrComposeUnknownEnv", compose, "LOG_LEVEL: info", "LOGLEVEL: info", "LOGLEVEL is not a configuration variable"},
		{"ErrComposeMissingMount", compose, "./prometheus/alerts.yml:", "./prometheus/alert.yml:", "bind mount source"},
		{"ErrDockerfileRoot", docker, "USER 65532:65532", "USER root", "non-root USER"},
		{"ErrDockerfileGoVersion", docker, "ARG GO_VERSION=1.26", "ARG GO_VERSION=1.25", "but go.mod says go 1.26"},
		{"ErrDockerfileCgo", docker, "CGO_ENABLED=0 ", "", `lacks "CGO_ENABLED=0"`},
		{"ErrDockerfileHealthcheck", docker, `"healthcheck"]`, `"health"]`, "HEALTHCHECK must run"},
		{"ErrRunbookAnchor", alerts, "operations.md#pool-exhaustion", "operations.md#pool-exhausted", "anchor #pool-exhausted"},
		{"ErrUnknownMetric", alerts, "expr: max(broker_pool_available) < 20", "expr: max(broker_pool_availble) < 20", "broker_pool_availble is not a metric"},
		{"ErrNoSeverity", alerts, "severity: warning", "severity: page", "label severity"},
		{"ErrUntestedAlert", alerts, "alert: BrokerPoolLow", "alert: BrokerPoolLowish", "BrokerPoolLowish has no test"},
		{"ErrDashboardJSON", dash, `"panels": [`, `"panels": [,`, "invalid JSON"},
		{"ErrDashboardMetric", dash, "max(broker_pool_allocated)", "max(broker_pool_alocated)", "broker_pool_alocated is not a metric"},
		{"ErrDocLink", ops, "- [The admin CLI](#the-admin-cli)", "- [The admin CLI](#admin-cli)", "link to #admin-cli"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := copyRepo(t)
			edit(t, root, tc.file, tc.old, tc.new)
			r := validateAll(root, "")
			for _, p := range r.problems {
				if strings.Contains(p, tc.want) {
					return
				}
			}
			t.Fatalf("no problem mentions %q; got:\n%s", tc.want, strings.Join(r.problems, "\n"))
		})
	}

	t.Run("ErrUnlistedManifest", func(t *testing.T) {
		root := copyRepo(t)
		writeFile(t, filepath.Join(root, "deploy/kubernetes/extra.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra\n")
		r := validateAll(root, "")
		if !strings.Contains(strings.Join(r.problems, "\n"), "extra.yaml is not listed in resources") {
			t.Fatalf("problems: %v", r.problems)
		}
	})
	t.Run("ErrUnknownKind", func(t *testing.T) {
		root := copyRepo(t)
		writeFile(t, filepath.Join(root, "deploy/kubernetes/oneoff/cron.yaml"), "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: x\n")
		r := validateAll(root, "")
		if !strings.Contains(strings.Join(r.problems, "\n"), `unknown apiVersion/kind "batch/v1" "CronJob"`) {
			t.Fatalf("problems: %v", r.problems)
		}
	})
}

func TestGithubSlug(t *testing.T) {
	for h, want := range map[string]string{
		"Pool exhaustion":              "pool-exhaustion",
		"Scaling out on PostgreSQL":    "scaling-out-on-postgresql",
		"Metrics and alerts reference": "metrics-and-alerts-reference",
		"The `admin` CLI (v2)":         "the-admin-cli-v2",
	} {
		if got := githubSlug(h); got != want {
			t.Errorf("githubSlug(%q) = %q, want %q", h, got, want)
		}
	}
}

func TestYAMLSyntax(t *testing.T) {
	root := copyRepo(t)
	writeFile(t, filepath.Join(root, "deploy/grafana/provisioning/datasources/prometheus.yml"), "apiVersion: 1\ndatasources:\n  - name: [unclosed\n")
	r := validateAll(root, "")
	if !strings.Contains(strings.Join(r.problems, "\n"), "prometheus.yml: invalid YAML") {
		t.Fatalf("problems: %v", r.problems)
	}
}

func TestMetricsDefinedInSource(t *testing.T) {
	root := copyRepo(t)
	var b strings.Builder
	b.WriteString("package metrics\n\nvar names = []string{\n")
	for name := range knownMetrics {
		if name != "broker_sync_stale_refused_total" && !strings.HasPrefix(name, "broker_pool_") {
			b.WriteString("\t\"" + name + "\",\n")
		}
	}
	b.WriteString("\t\"broker_pool_\",\n}\n")
	writeFile(t, filepath.Join(root, "metrics", "metrics.go"), b.String())

	r := validateAll(root, "")
	want := "broker_sync_stale_refused_total is not defined in the Go source"
	if !strings.Contains(strings.Join(r.problems, "\n"), want) {
		t.Fatalf("no problem mentions %q; got %v", want, r.problems)
	}
	for _, p := range r.problems {
		if !strings.Contains(p, "broker_sync_stale_refused_total") {
			t.Errorf("unexpected problem: %s", p)
		}
	}
}
