package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

// kustomization is the part of kustomize's Kustomization this repository
// uses; any other field fails the strict decoding, so that a typo does not
// silently do nothing.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace,omitempty"`
	Resources  []string `json:"resources"`
	Labels     []struct {
		Pairs            map[string]string `json:"pairs"`
		IncludeSelectors bool              `json:"includeSelectors,omitempty"`
		IncludeTemplates bool              `json:"includeTemplates,omitempty"`
	} `json:"labels,omitempty"`
	Images []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
		Digest  string `json:"digest,omitempty"`
	} `json:"images,omitempty"`
}

// typeMeta identifies a manifest's kind before the strict decoding.
type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

// manifests holds the decoded objects of a directory, by kind.
type manifests struct {
	deployments map[string]*appsv1.Deployment
	jobs        map[string]*batchv1.Job
	services    map[string]*corev1.Service
	configMaps  map[string]*corev1.ConfigMap
	secrets     map[string]*corev1.Secret
	pdbs        map[string]*policyv1.PodDisruptionBudget
	accounts    map[string]*corev1.ServiceAccount
	file        map[string]string // "Kind/name" -> file
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// checkKubernetes decodes every manifest under dir and checks them together.
func checkKubernetes(r *report, dir string, env map[string]bool) {
	m := &manifests{
		deployments: map[string]*appsv1.Deployment{}, jobs: map[string]*batchv1.Job{},
		services: map[string]*corev1.Service{}, configMaps: map[string]*corev1.ConfigMap{},
		secrets: map[string]*corev1.Secret{}, pdbs: map[string]*policyv1.PodDisruptionBudget{},
		accounts: map[string]*corev1.ServiceAccount{}, file: map[string]string{},
	}
	var files []string
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && (strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
			files = append(files, path)
		}
		return err
	})
	if err != nil || len(files) == 0 {
		r.fail(dir, "no Kubernetes manifests found (%v)", err)
		return
	}
	sort.Strings(files)
	var kust *kustomization
	for _, f := range files {
		r.checked(f)
		if filepath.Base(f) == "kustomization.yaml" {
			kust = decodeKustomization(r, f)
			continue
		}
		decodeManifests(r, f, m)
	}
	if kust == nil {
		r.fail(dir, "kustomization.yaml is missing")
	} else {
		checkKustomization(r, filepath.Join(dir, "kustomization.yaml"), kust, m)
	}
	checkWorkloads(r, m, env)
	checkConnectionBudget(r, m)
	checkServices(r, m)
	checkConfig(r, m, env)
}

func decodeKustomization(r *report, file string) *kustomization {
	data, err := os.ReadFile(file)
	if err != nil {
		r.fail(file, "%v", err)
		return nil
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(data, &k); err != nil {
		r.fail(file, "%v", err)
		return nil
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		r.fail(file, "want apiVersion kustomize.config.k8s.io/v1beta1, kind Kustomization; got %s %s", k.APIVersion, k.Kind)
	}
	return &k
}

// decodeManifests strictly decodes each YAML document of file into its
// Kubernetes type.
func decodeManifests(r *report, file string, m *manifests) {
	data, err := os.ReadFile(file)
	if err != nil {
		r.fail(file, "%v", err)
		return
	}
	for i, doc := range docSeparator.Split(string(data), -1) {
		js, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			r.fail(file, "document %d: %v", i+1, err)
			continue
		}
		if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
			continue // comments only
		}
		var tm typeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			r.fail(file, "document %d: %v", i+1, err)
			continue
		}
		obj, name := decodeObject(r, file, i+1, tm, []byte(doc))
		if obj == nil {
			continue
		}
		key := tm.Kind + "/" + name
		if prev, dup := m.file[key]; dup {
			r.fail(file, "%s is also defined in %s", key, r.rel(prev))
		}
		m.file[key] = file
		switch o := obj.(type) {
		case *appsv1.Deployment:
			m.deployments[name] = o
		case *batchv1.Job:
			m.jobs[name] = o
		case *corev1.Service:
			m.services[name] = o
		case *corev1.ConfigMap:
			m.configMaps[name] = o
		case *corev1.Secret:
			m.secrets[name] = o
		case *policyv1.PodDisruptionBudget:
			m.pdbs[name] = o
		case *corev1.ServiceAccount:
			m.accounts[name] = o
		}
	}
}

// decodeObject decodes one document of a known kind, strictly. It returns
// nil after reporting an unknown kind or a decoding error.
func decodeObject(r *report, file string, n int, tm typeMeta, doc []byte) (any, string) {
	var obj any
	switch tm.APIVersion + " " + tm.Kind {
	case "apps/v1 Deployment":
		obj = &appsv1.Deployment{}
	case "batch/v1 Job":
		obj = &batchv1.Job{}
	case "v1 Service":
		obj = &corev1.Service{}
	case "v1 ConfigMap":
		obj = &corev1.ConfigMap{}
	case "v1 Secret":
		obj = &corev1.Secret{}
	case "v1 ServiceAccount":
		obj = &corev1.ServiceAccount{}
	case "v1 Namespace":
		obj = &corev1.Namespace{}
	case "policy/v1 PodDisruptionBudget":
		obj = &policyv1.PodDisruptionBudget{}
	default:
		r.fail(file, "document %d: unknown apiVersion/kind %q %q (teach deploy/validate/kube.go the type)", n, tm.APIVersion, tm.Kind)
		return nil, ""
	}
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		r.fail(file, "document %d (%s): %v", n, tm.Kind, err)
		return nil, ""
	}
	var meta struct {
		Metadata struct {
			Name         string `json:"name"`
			GenerateName string `json:"generateName"`
		} `json:"metadata"`
	}
	_ = yaml.Unmarshal(doc, &meta)
	name := meta.Metadata.Name
	if name == "" {
		name = meta.Metadata.GenerateName
	}
	if name == "" {
		r.fail(file, "document %d (%s): metadata.name is empty", n, tm.Kind)
		return nil, ""
	}
	return obj, name
}

// checkKustomization checks that the kustomization lists every top-level
// manifest (but the *.example.yaml ones) and only files that exist.
func checkKustomization(r *report, file string, k *kustomization, m *manifests) {
	dir := filepath.Dir(file)
	listed := map[string]bool{}
	for _, res := range k.Resources {
		listed[res] = true
		if _, err := os.Stat(filepath.Join(dir, res)); err != nil {
			r.fail(file, "resource %s: %v", res, err)
		}
		if strings.HasSuffix(res, ".example.yaml") {
			r.fail(file, "resource %s is an example with placeholder values; do not apply it", res)
		}
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		n := e.Name()
		if e.IsDir() || n == "kustomization.yaml" || strings.HasSuffix(n, ".example.yaml") || !strings.HasSuffix(n, ".yaml") {
			continue
		}
		if !listed[n] {
			r.fail(file, "%s is not listed in resources (name it *.example.yaml or move it to a subdirectory if it is not meant to be applied)", n)
		}
	}
	images := map[string]bool{}
	for _, d := range m.deployments {
		for _, c := range d.Spec.Template.Spec.Containers {
			images[c.Image] = true
		}
	}
	for _, img := range k.Images {
		if !images[img.Name] {
			r.fail(file, "images: %q is not the image of any Deployment container", img.Name)
		}
		if img.NewTag == "" && img.Digest == "" {
			r.fail(file, "images: %q has neither newTag nor digest", img.Name)
		}
	}
}

// pods returns the pod templates to check, by "Kind/name" of their owner.
func (m *manifests) pods() map[string]*corev1.PodTemplateSpec {
	out := map[string]*corev1.PodTemplateSpec{}
	for n, d := range m.deployments {
		out["Deployment/"+n] = &d.Spec.Template
	}
	for n, j := range m.jobs {
		out["Job/"+n] = &j.Spec.Template
	}
	return out
}

// checkWorkloads applies the house rules to every pod template.
func checkWorkloads(r *report, m *manifests, env map[string]bool) {
	hasWorker := false
	for _, d := range m.deployments {
		for _, c := range d.Spec.Template.Spec.Containers {
			if len(c.Args) > 0 && c.Args[0] == "worker" {
				hasWorker = true
			}
		}
	}
	for key, tmpl := range m.pods() {
		file := m.file[key]
		spec := &tmpl.Spec
		isDeployment := strings.HasPrefix(key, "Deployment/")
		if isDeployment {
			d := m.deployments[strings.TrimPrefix(key, "Deployment/")]
			if d.Spec.Selector == nil || !selects(d.Spec.Selector.MatchLabels, tmpl.Labels) {
				r.fail(file, "%s: spec.selector does not match the pod template's labels", key)
			}
		}
		if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
			r.fail(file, "%s: set automountServiceAccountToken: false (the broker does not use the Kubernetes API)", key)
		}
		if spec.ServiceAccountName != "" && m.accounts[spec.ServiceAccountName] == nil {
			r.fail(file, "%s: serviceAccountName %q is not defined", key, spec.ServiceAccountName)
		}
		podNonRoot := spec.SecurityContext != nil && spec.SecurityContext.RunAsNonRoot != nil && *spec.SecurityContext.RunAsNonRoot
		if spec.SecurityContext == nil || spec.SecurityContext.SeccompProfile == nil || spec.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			r.fail(file, "%s: set securityContext.seccompProfile.type: RuntimeDefault (the namespace enforces the restricted Pod Security Standard)", key)
		}
		if len(spec.Containers) == 0 {
			r.fail(file, "%s: no containers", key)
		}
		for _, c := range spec.Containers {
			where := key + " container " + c.Name
			checkContainer(r, file, where, &c, podNonRoot, env, m)
			if !isDeployment || len(c.Args) == 0 {
				continue
			}
			if c.Args[0] == "serve" && envValue(&c, m, "RUN_JOBS") == "false" && !hasWorker {
				r.fail(file, "%s: RUN_JOBS=false but no Deployment runs `sandbox-broker worker`: nothing would run the jobs", where)
			}
			checkProbes(r, file, where, &c)
			grace := int64(30)
			if spec.TerminationGracePeriodSeconds != nil {
				grace = *spec.TerminationGracePeriodSeconds
			}
			need := shutdownGrace(&c, m)
			if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
				need += float64(c.Lifecycle.PreStop.Sleep.Seconds)
			}
			if float64(grace) <= need {
				r.fail(file, "%s: terminationGracePeriodSeconds %d must exceed SHUTDOWN_GRACE_SEC plus the preStop sleep (%gs), or in-flight work is killed", where, grace, need)
			}
		}
	}
}

func checkContainer(r *report, file, where string, c *corev1.Container, podNonRoot bool, env map[string]bool, m *manifests) {
	if c.Image == "" {
		r.fail(file, "%s: no image", where)
	}
	if len(c.Args) > 0 && !subcommands[c.Args[0]] {
		r.fail(file, "%s: %q is not a sandbox-broker subcommand", where, c.Args[0])
	}
	req, lim := c.Resources.Requests, c.Resources.Limits
	if req.Cpu().IsZero() || req.Memory().IsZero() {
		r.fail(file, "%s: set resources.requests.cpu and .memory", where)
	}
	if lim.Memory().IsZero() {
		r.fail(file, "%s: set resources.limits.memory", where)
	}
	if !lim.Memory().IsZero() && lim.Memory().Cmp(*req.Memory()) < 0 {
		r.fail(file, "%s: the memory limit is below the request", where)
	}
	sc := c.SecurityContext
	switch {
	case sc == nil:
		r.fail(file, "%s: no securityContext", where)
	default:
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			r.fail(file, "%s: set securityContext.allowPrivilegeEscalation: false", where)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			r.fail(file, "%s: set securityContext.readOnlyRootFilesystem: true", where)
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			r.fail(file, "%s: drop ALL capabilities", where)
		}
		if !podNonRoot && (sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot) {
			r.fail(file, "%s: set runAsNonRoot: true on the pod or the container", where)
		}
		if sc.RunAsUser != nil && *sc.RunAsUser == 0 {
			r.fail(file, "%s: runs as root (runAsUser: 0)", where)
		}
	}
	for _, e := range c.Env {
		if !env[e.Name] {
			r.fail(file, "%s: env %s is not a configuration variable of config/config.go", where, e.Name)
		}
	}
	for _, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil && m.configMaps[ef.ConfigMapRef.Name] == nil:
			r.fail(file, "%s: envFrom ConfigMap %q is not defined", where, ef.ConfigMapRef.Name)
		case ef.SecretRef != nil && m.secrets[ef.SecretRef.Name] == nil:
			r.fail(file, "%s: envFrom Secret %q has no example (secret.example.yaml)", where, ef.SecretRef.Name)
		}
	}
}

// checkProbes checks the probes of a long-running broker container.
func checkProbes(r *report, file, where string, c *corev1.Container) {
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		paths []string
	}{
		{"startupProbe", c.StartupProbe, []string{"/healthz"}},
		{"readinessProbe", c.ReadinessProbe, []string{"/readyz"}},
		{"livenessProbe", c.LivenessProbe, []string{"/healthz"}},
	} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			r.fail(file, "%s: no HTTP %s", where, p.name)
			continue
		}
		g := p.probe.HTTPGet
		if !slices.Contains(p.paths, g.Path) {
			r.fail(file, "%s: %s path %q, want %s", where, p.name, g.Path, strings.Join(p.paths, " or "))
		}
		if !hasPort(c, g.Port.String()) {
			r.fail(file, "%s: %s port %s is not a port of the container", where, p.name, g.Port.String())
		}
	}
	if c.LivenessProbe != nil && c.LivenessProbe.HTTPGet != nil && c.LivenessProbe.HTTPGet.Path == "/readyz" {
		r.fail(file, "%s: the liveness probe must not depend on the database (/readyz): an outage would restart every pod", where)
	}
}

func hasPort(c *corev1.Container, port string) bool {
	for _, p := range c.Ports {
		if p.Name == port || strconv.Itoa(int(p.ContainerPort)) == port {
			return true
		}
	}
	return false
}

// envValue is the value of name for container c: its env, else its
// envFrom ConfigMaps.
func envValue(c *corev1.Container, m *manifests, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	for _, ef := range c.EnvFrom {
		if ef.ConfigMapRef != nil {
			if cm := m.configMaps[ef.ConfigMapRef.Name]; cm != nil {
				if v, ok := cm.Data[name]; ok {
					return v
				}
			}
		}
	}
	return ""
}

// shutdownGrace is SHUTDOWN_GRACE_SEC for c in seconds (default 20).
func shutdownGrace(c *corev1.Container, m *manifests) float64 {
	if v := envValue(c, m, "SHUTDOWN_GRACE_SEC"); v != "" {
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			return f
		}
	}
	return 20
}

// pgMaxConnections is PostgreSQL's default max_connections less its
// superuser_reserved_connections.
const pgMaxConnections = 100 - 3

// checkConnectionBudget checks that the Deployments' database pools, with
// one surge pod per Deployment during a rollout, fit PostgreSQL's default
// max_connections, with room for a migration and an operator.
func checkConnectionBudget(r *report, m *manifests) {
	total, spare := 0, 2
	var parts []string
	for name, d := range m.deployments {
		replicas := 1
		if d.Spec.Replicas != nil {
			replicas = int(*d.Spec.Replicas)
		}
		for _, c := range d.Spec.Template.Spec.Containers {
			conns := 20 // the largest default pool (4 per CPU, at most 20)
			if v, err := strconv.Atoi(envValue(&c, m, "BROKER_DB_MAX_CONNS")); err == nil && v > 0 {
				conns = v
			}
			total += (replicas + 1) * conns
			parts = append(parts, strconv.Itoa(replicas+1)+" x "+strconv.Itoa(conns)+" ("+name+")")
		}
	}
	if total+spare > pgMaxConnections {
		sort.Strings(parts)
		for name := range m.deployments {
			r.fail(m.file["Deployment/"+name], "the database pools need %d connections at a rollout's peak (%s) plus %d spare, over PostgreSQL's default max_connections; lower BROKER_DB_MAX_CONNS or document a larger max_connections", total, strings.Join(parts, " + "), spare)
			break
		}
	}
}

// selects reports whether selector (matchLabels) selects labels.
func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// checkServices checks that Services and PodDisruptionBudgets select pods.
func checkServices(r *report, m *manifests) {
	for name, s := range m.services {
		file := m.file["Service/"+name]
		var target *appsv1.Deployment
		for _, d := range m.deployments {
			if selects(s.Spec.Selector, d.Spec.Template.Labels) {
				target = d
			}
		}
		if target == nil {
			r.fail(file, "Service/%s selects no Deployment's pods", name)
			continue
		}
		for _, p := range s.Spec.Ports {
			found := false
			for _, c := range target.Spec.Template.Spec.Containers {
				found = found || hasPort(&c, p.TargetPort.String())
			}
			if !found {
				r.fail(file, "Service/%s port %s: targetPort %s is not a container port of Deployment/%s", name, p.Name, p.TargetPort.String(), target.Name)
			}
		}
	}
	for name, p := range m.pdbs {
		file := m.file["PodDisruptionBudget/"+name]
		if p.Spec.Selector == nil {
			r.fail(file, "PodDisruptionBudget/%s has no selector", name)
			continue
		}
		var target *appsv1.Deployment
		for _, d := range m.deployments {
			if selects(p.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
				target = d
			}
		}
		if target == nil {
			r.fail(file, "PodDisruptionBudget/%s selects no Deployment's pods", name)
			continue
		}
		replicas := int32(1)
		if target.Spec.Replicas != nil {
			replicas = *target.Spec.Replicas
		}
		if p.Spec.MinAvailable != nil && p.Spec.MinAvailable.IntValue() >= int(replicas) {
			r.fail(file, "PodDisruptionBudget/%s: minAvailable %s with %d replicas blocks every node drain", name, p.Spec.MinAvailable.String(), replicas)
		}
	}
}

// checkConfig checks that ConfigMap and Secret keys are configuration
// variables and that the Secret example holds only placeholders.
func checkConfig(r *report, m *manifests, env map[string]bool) {
	for name, cm := range m.configMaps {
		for k := range cm.Data {
			if !env[k] {
				r.fail(m.file["ConfigMap/"+name], "ConfigMap/%s: %s is not a configuration variable of config/config.go", name, k)
			}
		}
		if _, ok := cm.Data["BROKER_DATABASE_URL"]; ok {
			r.fail(m.file["ConfigMap/"+name], "ConfigMap/%s: BROKER_DATABASE_URL holds a password: keep it in the Secret", name)
		}
		for _, k := range []string{"BROKER_API_TOKEN", "BROKER_ADMIN_TOKEN", "CSP_API_TOKEN", "NIOSXAAS_PASSWORD", "METRICS_TOKEN"} {
			if _, ok := cm.Data[k]; ok {
				r.fail(m.file["ConfigMap/"+name], "ConfigMap/%s: %s is a secret: keep it in the Secret", name, k)
			}
		}
	}
	for name, s := range m.secrets {
		file := m.file["Secret/"+name]
		if len(s.Data) > 0 {
			r.fail(file, "Secret/%s: use stringData with placeholders, not data", name)
		}
		for k, v := range s.StringData {
			if !env[k] {
				r.fail(file, "Secret/%s: %s is not a configuration variable of config/config.go", name, k)
			}
			if v != "" && !strings.Contains(v, "PLACEHOLDER") {
				r.fail(file, "Secret/%s: %s must be empty or a value marked PLACEHOLDER, never a real one", name, k)
			}
		}
	}
}
