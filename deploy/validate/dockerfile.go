package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	line int
	cmd  string // upper case
	args string
}

var dockerInstructions = map[string]bool{
	"FROM": true, "RUN": true, "CMD": true, "LABEL": true, "EXPOSE": true, "ENV": true, "ADD": true, "COPY": true,
	"ENTRYPOINT": true, "VOLUME": true, "USER": true, "WORKDIR": true, "ARG": true, "ONBUILD": true,
	"STOPSIGNAL": true, "HEALTHCHECK": true, "SHELL": true, "MAINTAINER": true,
}

// parseDockerfile splits a Dockerfile into instructions.
func parseDockerfile(src string) ([]instruction, []string) {
	var out []instruction
	var bad []string
	var cur strings.Builder
	start := 0
	for i, line := range strings.Split(src, "\n") {
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if cur.Len() > 0 && strings.HasPrefix(trimmed, "#") {
			continue // comment inside a continued instruction
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if body, ok := strings.CutSuffix(trimmed, `\`); ok {
			cur.WriteString(body + " ")
			continue
		}
		cur.WriteString(trimmed)
		full := cur.String()
		cur.Reset()
		cmd, args, _ := strings.Cut(full, " ")
		cmd = strings.ToUpper(cmd)
		if !dockerInstructions[cmd] {
			bad = append(bad, "line "+strconv.Itoa(start)+": unknown instruction "+cmd)
		}
		out = append(out, instruction{line: start, cmd: cmd, args: strings.TrimSpace(args)})
	}
	if cur.Len() > 0 {
		bad = append(bad, "the file ends inside a continued line")
	}
	return out, bad
}

var goDirective = regexp.MustCompile(`(?m)^go (\d+\.\d+)`)

// checkDockerfile checks the image recipe: a static, trimmed, version-stamped
// build with the Go version of go.mod, and a non-root final stage with a
// HEALTHCHECK that the binary answers itself.
func checkDockerfile(r *report, file, root string) {
	r.checked(file)
	data, err := os.ReadFile(file)
	if err != nil {
		r.fail(file, "%v", err)
		return
	}
	src := string(data)
	ins, bad := parseDockerfile(src)
	for _, b := range bad {
		r.fail(file, "%s", b)
	}
	if strings.Contains(src, "--mount=") && !strings.HasPrefix(src, "# syntax=docker/dockerfile:1") {
		r.fail(file, "RUN --mount needs the first line `# syntax=docker/dockerfile:1`")
	}

	stages := map[string]bool{}
	var finalFrom instruction
	var final []instruction // instructions of the last stage
	var build strings.Builder
	args := map[string]string{}
	for _, in := range ins {
		switch in.cmd {
		case "ARG":
			k, v, _ := strings.Cut(in.args, "=")
			args[k] = v
		case "FROM":
			f := strings.Fields(in.args)
			if len(f) >= 3 && strings.EqualFold(f[len(f)-2], "AS") {
				stages[f[len(f)-1]] = true
			}
			finalFrom, final = in, nil
			continue
		case "COPY":
			for _, f := range strings.Fields(in.args) {
				if from, ok := strings.CutPrefix(f, "--from="); ok && !stages[from] {
					r.fail(file, "line %d: COPY --from=%s names no earlier stage", in.line, from)
				}
			}
		case "RUN":
			build.WriteString(in.args + "\n")
		}
		final = append(final, in)
	}
	if len(stages) == 0 {
		r.fail(file, "want a multi-stage build (FROM ... AS build)")
	}

	// The builder's Go version must be the one go.mod asks for.
	if mod, err := os.ReadFile(filepath.Join(root, "go.mod")); err == nil {
		if m := goDirective.FindStringSubmatch(string(mod)); m != nil && args["GO_VERSION"] != m[1] {
			r.fail(file, "ARG GO_VERSION=%s, but go.mod says go %s", args["GO_VERSION"], m[1])
		}
	}
	b := build.String()
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-X main.version=", "./cmd/sandbox-broker"} {
		if !strings.Contains(b, want) {
			r.fail(file, "the build RUN lacks %q", want)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "cmd", "sandbox-broker")); err != nil {
		r.fail(file, "builds ./cmd/sandbox-broker, which does not exist")
	}

	base := strings.Fields(finalFrom.args)
	if len(base) == 0 || !(strings.HasPrefix(base[0], "gcr.io/distroless/static") || base[0] == "scratch") {
		r.fail(file, "the final stage must be distroless/static or scratch, not %q", finalFrom.args)
	}
	var user, entrypoint, healthcheck string
	var exposes, volumes []string
	copied := map[string]bool{}
	for _, in := range final {
		switch in.cmd {
		case "USER":
			user = in.args
		case "ENTRYPOINT":
			entrypoint = in.args
		case "HEALTHCHECK":
			healthcheck = in.args
		case "EXPOSE":
			exposes = append(exposes, strings.Fields(in.args)...)
		case "VOLUME":
			volumes = append(volumes, in.args)
		case "COPY":
			f := strings.Fields(in.args)
			copied[f[len(f)-1]] = true
		}
	}
	if u, _, _ := strings.Cut(user, ":"); user == "" || u == "0" || u == "root" {
		r.fail(file, "the final stage must set a non-root USER (got %q)", user)
	}
	bin := ""
	if m := regexp.MustCompile(`\["([^"]+)"`).FindStringSubmatch(entrypoint); m != nil {
		bin = m[1]
	}
	if bin == "" || !copied[bin] {
		r.fail(file, "ENTRYPOINT %q must be the exec form of a binary COPYed into the final stage", entrypoint)
	}
	if !strings.Contains(healthcheck, `"`+bin+`", "healthcheck"`) {
		r.fail(file, `HEALTHCHECK must run the binary's own check: CMD ["%s", "healthcheck"] (got %q)`, bin, healthcheck)
	}
	if !containsPort(exposes, "8080") {
		r.fail(file, "EXPOSE 8080 is missing")
	}
	if !strings.Contains(strings.Join(volumes, " "), "/data") || !strings.Contains(src, "sqlite:/data/") {
		r.fail(file, "want VOLUME /data and BROKER_DATABASE_URL=sqlite:/data/... for the SQLite default")
	}
}

func containsPort(ports []string, want string) bool {
	for _, p := range ports {
		if strings.TrimSuffix(p, "/tcp") == want {
			return true
		}
	}
	return false
}
