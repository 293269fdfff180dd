// Command sandbox-broker hands out pre-created cloud sandboxes to lab
// students, one each, and cleans them up afterwards.
//
//	sandbox-broker serve [--demo] [--demo-sandboxes N]   API server (+ jobs)
//	sandbox-broker worker                               jobs only (+ /metrics, /healthz)
//	sandbox-broker migrate                              apply store migrations
//	sandbox-broker fake-csp --listen ADDR ...           fake provider for tests
//	sandbox-broker admin ...                            operator commands
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `usage: sandbox-broker <command> [flags]

commands:
  serve      run the API server (and the background jobs unless RUN_JOBS=false)
             --demo: embedded store + built-in demo provider, one command to try it
  worker     run the background jobs only (serves /healthz, /readyz, /metrics)
  migrate    create or upgrade the store schema (tables, indexes) and exit
  fake-csp   run a fake Infoblox CSP provider for tests and demos
  healthcheck  GET /healthz of the broker in this container (the image's HEALTHCHECK)
  admin      operator commands against a running broker (see: sandbox-broker admin help)
  version    print the version

Configuration comes from environment variables; see README.md.
`

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	os.Exit(code)
}

// run executes one command and returns the process exit code.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = runServe(ctx, args[1:], getenv, stdout, stderr, true)
	case "worker":
		err = runServe(ctx, args[1:], getenv, stdout, stderr, false)
	case "migrate":
		err = runMigrate(ctx, args[1:], getenv, stdout)
	case "fake-csp":
		err = runFakeCSP(ctx, args[1:], stdout, stderr)
	case "healthcheck":
		err = runHealthcheck(ctx, args[1:], getenv, stdout, stderr)
	case "admin":
		err = runAdmin(ctx, args[1:], getenv, stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "sandbox-broker", version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "sandbox-broker: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		fmt.Fprintln(stderr, "sandbox-broker:", err)
		return 2
	default:
		fmt.Fprintln(stderr, "sandbox-broker:", err)
		return 1
	}
}

// usageError is a mistake in the command line or configuration.
type usageError struct{ error }
