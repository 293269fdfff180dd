package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"unicode"

	"sigs.k8s.io/yaml"
)

// runbookPrefix is where alert runbook links point.
const runbookPrefix = "https://github.com/sandbox-broker/broker/blob/main/docs/operations.md#"

var severities = map[string]bool{"critical": true, "warning": true, "info": true}

// checkDocs returns the anchors of the runbook document (GitHub's heading
// slugs and explicit <a id> anchors) and checks its own links.
func checkDocs(r *report, file string) map[string]bool {
	r.checked(file)
	data, err := os.ReadFile(file)
	if err != nil {
		r.fail(file, "%v", err)
		return nil
	}
	anchors := map[string]bool{}
	seen := map[string]int{}
	inFence := false
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			inFence = !inFence
			continue
		}
		if inFence {
			continue
		}
		for _, m := range explicitAnchor.FindAllStringSubmatch(line, -1) {
			anchors[m[1]] = true
		}
		if h, ok := heading(line); ok {
			slug := githubSlug(h)
			if n := seen[slug]; n > 0 {
				anchors[fmt.Sprintf("%s-%d", slug, n)] = true
			} else {
				anchors[slug] = true
			}
			seen[slug]++
		}
	}
	for _, m := range mdLink.FindAllStringSubmatch(string(data), -1) {
		target := m[1]
		switch {
		case strings.HasPrefix(target, "#"):
			if !anchors[target[1:]] {
				r.fail(file, "link to #%s: no such heading", target[1:])
			}
		case strings.Contains(target, "://"), strings.HasPrefix(target, "mailto:"):
		default:
			path, _, _ := strings.Cut(target, "#")
			if _, err := os.Stat(filepath.Join(filepath.Dir(file), path)); err != nil {
				r.fail(file, "link to %s: no such file", target)
			}
		}
	}
	return anchors
}

var (
	explicitAnchor = regexp.MustCompile(`<a (?:id|name)="([^"]+)"`)
	mdLink         = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	headingLine    = regexp.MustCompile(`^#{1,6}\s+(.*?)\s*#*\s*$`)
)

func heading(line string) (string, bool) {
	m := headingLine.FindStringSubmatch(line)
	if m == nil {
		return "", false
	}
	return m[1], true
}

// githubSlug is the anchor GitHub gives a heading: lower case, punctuation
// dropped, spaces as hyphens.
func githubSlug(h string) string {
	var b strings.Builder
	for _, c := range strings.ToLower(h) {
		switch {
		case c == ' ':
			b.WriteByte('-')
		case c == '-' || c == '_' || unicode.IsLetter(c) || unicode.IsDigit(c):
			b.WriteRune(c)
		}
	}
	return b.String()
}

type ruleFile struct {
	Groups []struct {
		Name     string `json:"name"`
		Interval string `json:"interval,omitempty"`
		Rules    []struct {
			Alert         string            `json:"alert,omitempty"`
			Record        string            `json:"record,omitempty"`
			Expr          string            `json:"expr"`
			For           string            `json:"for,omitempty"`
			KeepFiringFor string            `json:"keep_firing_for,omitempty"`
			Labels        map[string]string `json:"labels,omitempty"`
			Annotations   map[string]string `json:"annotations,omitempty"`
		} `json:"rules"`
	} `json:"groups"`
}

type ruleTests struct {
	RuleFiles          []string `json:"rule_files"`
	EvaluationInterval string   `json:"evaluation_interval,omitempty"`
	Tests              []struct {
		Interval    string `json:"interval"`
		InputSeries []struct {
			Series string `json:"series"`
			Values string `json:"values"`
		} `json:"input_series"`
		AlertRuleTest []struct {
			EvalTime  string `json:"eval_time"`
			Alertname string `json:"alertname"`
			ExpAlerts []struct {
				ExpLabels      map[string]string `json:"exp_labels,omitempty"`
				ExpAnnotations map[string]string `json:"exp_annotations,omitempty"`
			} `json:"exp_alerts"`
		} `json:"alert_rule_test"`
	} `json:"tests"`
}

// checkAlerts checks alerts.yml beyond PromQL syntax (promtool's job):
// labels, annotations, runbook anchors, metric names, and that every alert
// has a unit test in which it fires.
func checkAlerts(r *report, dir string, anchors map[string]bool, ms metricSet) {
	file := filepath.Join(dir, "alerts.yml")
	r.checked(file)
	data, err := os.ReadFile(file)
	if err != nil {
		r.fail(file, "%v", err)
		return
	}
	var rf ruleFile
	if err := yaml.UnmarshalStrict(data, &rf); err != nil {
		r.fail(file, "%v", err)
		return
	}
	alerts := map[string]bool{}
	for _, g := range rf.Groups {
		for _, rule := range g.Rules {
			name := rule.Alert + rule.Record
			if rule.Alert == "" {
				continue
			}
			if alerts[name] {
				r.fail(file, "alert %s is defined twice", name)
			}
			alerts[name] = true
			if !severities[rule.Labels["severity"]] {
				r.fail(file, "alert %s: label severity must be critical, warning or info", name)
			}
			for _, a := range []string{"summary", "description", "runbook_url"} {
				if rule.Annotations[a] == "" {
					r.fail(file, "alert %s: annotation %s is missing", name, a)
				}
			}
			if u := rule.Annotations["runbook_url"]; u != "" {
				anchor, ok := strings.CutPrefix(u, runbookPrefix)
				switch {
				case !ok:
					r.fail(file, "alert %s: runbook_url must start with %s", name, runbookPrefix)
				case anchors != nil && !anchors[anchor]:
					r.fail(file, "alert %s: runbook_url anchor #%s is not a heading of docs/operations.md", name, anchor)
				}
			}
			for _, p := range ms.unknown(rule.Expr) {
				r.fail(file, "alert %s: %s", name, p)
			}
		}
	}
	if len(alerts) == 0 {
		r.fail(file, "no alerts")
	}

	testFile := filepath.Join(dir, "alerts_test.yml")
	r.checked(testFile)
	data, err = os.ReadFile(testFile)
	if err != nil {
		r.fail(testFile, "%v", err)
		return
	}
	var rt ruleTests
	if err := yaml.UnmarshalStrict(data, &rt); err != nil {
		r.fail(testFile, "%v", err)
		return
	}
	fires := map[string]bool{}
	for _, t := range rt.Tests {
		for _, at := range t.AlertRuleTest {
			if !alerts[at.Alertname] {
				r.fail(testFile, "tests alert %s, which alerts.yml does not define", at.Alertname)
			}
			if len(at.ExpAlerts) > 0 {
				fires[at.Alertname] = true
			}
		}
	}
	var untested []string
	for a := range alerts {
		if !fires[a] {
			untested = append(untested, a)
		}
	}
	sort.Strings(untested)
	for _, a := range untested {
		r.fail(testFile, "alert %s has no test in which it fires", a)
	}
}

// checkDashboard checks the Grafana dashboard's structure and metric names,
// and writes its queries as recording rules for promtool to parse.
func checkDashboard(r *report, file, promDir string, ms metricSet) {
	r.checked(file)
	data, err := os.ReadFile(file)
	if err != nil {
		r.fail(file, "%v", err)
		return
	}
	var d struct {
		UID           string            `json:"uid"`
		Title         string            `json:"title"`
		SchemaVersion int               `json:"schemaVersion"`
		Panels        []json.RawMessage `json:"panels"`
		Templating    struct {
			List []struct {
				Name string `json:"name"`
				Type string `json:"type"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		r.fail(file, "invalid JSON: %v", err)
		return
	}
	if d.UID == "" || d.Title == "" || d.SchemaVersion == 0 {
		r.fail(file, "uid, title and schemaVersion are required")
	}
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
	}
	type gridPos struct{ H, W, X, Y int }
	type target struct {
		Expr       string `json:"expr"`
		RefID      string `json:"refId"`
		Datasource struct {
			Type string `json:"type"`
			UID  string `json:"uid"`
		} `json:"datasource"`
	}
	ids := map[int]bool{}
	var exprs []string
	occupied := map[[2]int]int{} // cell -> panel id
	for i, raw := range d.Panels {
		var p struct {
			ID      int      `json:"id"`
			Type    string   `json:"type"`
			Title   string   `json:"title"`
			GridPos *gridPos `json:"gridPos"`
			Targets []target `json:"targets"`
		}
		if err := json.Unmarshal(raw, &p); err != nil {
			r.fail(file, "panel %d: %v", i, err)
			continue
		}
		where := fmt.Sprintf("panel %d (%q)", p.ID, p.Title)
		if p.ID == 0 || ids[p.ID] {
			r.fail(file, "%s: ids must be unique and non-zero", where)
		}
		ids[p.ID] = true
		if p.GridPos == nil || p.GridPos.W < 1 || p.GridPos.H < 1 || p.GridPos.X < 0 || p.GridPos.X+p.GridPos.W > 24 {
			r.fail(file, "%s: gridPos must fit the 24-column grid", where)
		} else if other := place(occupied, p.ID, p.GridPos.X, p.GridPos.Y, p.GridPos.W, p.GridPos.H); other != 0 {
			r.fail(file, "%s overlaps panel %d", where, other)
		}
		if p.Type == "row" {
			continue
		}
		if p.Title == "" || len(p.Targets) == 0 {
			r.fail(file, "%s: a panel needs a title and at least one query", where)
		}
		for _, t := range p.Targets {
			if t.Datasource.Type != "prometheus" || !vars[strings.Trim(t.Datasource.UID, "${}")] {
				r.fail(file, "%s query %s: datasource must be the prometheus ${datasource} variable", where, t.RefID)
			}
			if strings.TrimSpace(t.Expr) == "" {
				r.fail(file, "%s query %s: empty expr", where, t.RefID)
				continue
			}
			for _, p := range ms.unknown(t.Expr) {
				r.fail(file, "%s query %s: %s", where, t.RefID, p)
			}
			exprs = append(exprs, t.Expr)
		}
	}
	if promDir != "" {
		writeDashboardRules(r, file, promDir, exprs)
	}
}

// place marks the w x h cells at (x, y) as panel id's and returns the id of
// a panel already there, or 0.
func place(occupied map[[2]int]int, id, x, y, w, h int) int {
	for i := x; i < x+w; i++ {
		for j := y; j < y+h; j++ {
			if other, ok := occupied[[2]int{i, j}]; ok {
				return other
			}
			occupied[[2]int{i, j}] = id
		}
	}
	return 0
}

var grafanaVar = regexp.MustCompile(`\$(__rate_interval|__interval|__range)\b|\$\{(__rate_interval|__interval|__range)\}`)

// writeDashboardRules writes the dashboard's queries as recording rules, with
// Grafana's interval variables replaced, so that promtool parses them.
func writeDashboardRules(r *report, file, dir string, exprs []string) {
	var b strings.Builder
	b.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, e := range exprs {
		e = grafanaVar.ReplaceAllString(e, "5m")
		js, _ := json.Marshal(e)
		fmt.Fprintf(&b, "      - record: dashboard:query_%d\n        expr: %s\n", i+1, js)
	}
	if err := os.WriteFile(filepath.Join(dir, "dashboard-queries.rules.yml"), []byte(b.String()), 0o644); err != nil {
		r.fail(file, "%v", err)
	}
}

// writePromConfig writes prometheus.yml with its rule_files pointing at the
// local rule files (the compose stack mounts them under /etc/prometheus).
func writePromConfig(r *report, promSrc, dir string) {
	file := filepath.Join(promSrc, "prometheus.yml")
	r.checked(file)
	data, err := os.ReadFile(file)
	if err != nil {
		r.fail(file, "%v", err)
		return
	}
	out := strings.ReplaceAll(string(data), "/etc/prometheus/", promSrc+"/")
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(out), 0o644); err != nil {
		r.fail(file, "%v", err)
	}
}
