package main

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

// checkCompose loads file with the Compose specification's loader (schema,
// interpolation, depends_on and volume references) and checks the broker
// services against the binary and its configuration.
func checkCompose(r *report, file string, env map[string]bool) {
	r.checked(file)
	opts, err := cli.NewProjectOptions([]string{file},
		cli.WithWorkingDirectory(filepath.Dir(file)),
		cli.WithName("sandbox-broker"),
		cli.WithEnv([]string{}), // the defaults in the file, not this machine's environment
		cli.WithProfiles([]string{"*"}),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		r.fail(file, "%v", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	project, err := opts.LoadProject(ctx)
	if err != nil {
		r.fail(file, "%v", err)
		return
	}
	names := make([]string, 0, len(project.Services))
	for n := range project.Services {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		svc := project.Services[name]
		for _, v := range svc.Volumes {
			if v.Type == types.VolumeTypeBind {
				if _, err := os.Stat(v.Source); err != nil {
					r.fail(file, "service %s: bind mount source %s does not exist", name, r.rel(v.Source))
				}
			}
		}
		if !isBrokerImage(svc) {
			continue
		}
		checkBrokerService(r, file, project, name, svc, env)
	}
}

// isBrokerImage reports whether svc runs the image built from deploy/Dockerfile.
func isBrokerImage(svc types.ServiceConfig) bool {
	return svc.Build != nil && strings.HasSuffix(svc.Build.Dockerfile, "deploy/Dockerfile")
}

func checkBrokerService(r *report, file string, project *types.Project, name string, svc types.ServiceConfig, env map[string]bool) {
	if len(svc.Command) == 0 || !subcommands[svc.Command[0]] {
		r.fail(file, "service %s: command %q does not start with a sandbox-broker subcommand", name, []string(svc.Command))
		return
	}
	for k := range svc.Environment {
		if !env[k] {
			r.fail(file, "service %s: environment %s is not a configuration variable of config/config.go", name, k)
		}
	}
	value := func(k string) string {
		if v := svc.Environment[k]; v != nil {
			return *v
		}
		return ""
	}
	// Hosts in URLs must be services of this project.
	for _, k := range []string{"BROKER_DATABASE_URL", "CSP_BASE_URL"} {
		v := value(k)
		if v == "" {
			continue
		}
		u, err := url.Parse(v)
		if err != nil {
			r.fail(file, "service %s: %s: %v", name, k, err)
			continue
		}
		if _, ok := project.Services[u.Hostname()]; !ok {
			r.fail(file, "service %s: %s points at %q, which is not a service of this file", name, k, u.Hostname())
		}
	}
	if svc.Command[0] != "serve" {
		return
	}
	for _, k := range []string{"BROKER_API_TOKEN", "BROKER_ADMIN_TOKEN"} {
		if value(k) == "" {
			r.fail(file, "service %s: serve refuses to start without %s", name, k)
		}
	}
	grace := 20.0
	if v := value("SHUTDOWN_GRACE_SEC"); v != "" {
		grace, _ = strconv.ParseFloat(v, 64)
	}
	stop := 10 * time.Second // Compose's default
	if svc.StopGracePeriod != nil {
		stop = time.Duration(*svc.StopGracePeriod)
	}
	if stop.Seconds() <= grace {
		r.fail(file, "service %s: stop_grace_period %s must exceed SHUTDOWN_GRACE_SEC (%gs)", name, stop, grace)
	}
}
