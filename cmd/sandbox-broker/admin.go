package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/client"
)

const adminUsage = `usage: sandbox-broker admin [--url URL] [--token TOKEN] [--json] [--timeout D] <command> [args]

Operator commands against a running broker, through its admin API.

  BROKER_URL          API base URL, default http://localhost:8080/v1 (--url overrides)
  BROKER_ADMIN_TOKEN  admin token; of a comma-separated list the first is used (--token overrides)

Output is a table for people; --json prints JSON for scripts (times in RFC 3339,
unset fields left out). Exit status: 0 ok, 1 the broker refused or failed
(the error shows its code, message and request id), 2 bad usage.

commands:
  stats                                 sandboxes per status and per track
  list [--status S] [--prefix P] [--track T] [--owner O] [--limit N] [--cursor C] [--all]
                                        sandboxes, one page (or --all pages)
  sync | cleanup | expire               queue a run of the provider sync, the cleanup or the expiry job
  jobs                                  background jobs and their latest runs
  pause JOB | resume JOB                stop or restart a job's schedule on every replica
  history ID                            audit trail of a sandbox
  retry-deletion ID                     put a deletion_failed sandbox back in the deletion queue
  bulk-delete --status S [--force] [--dry-run]
                                        remove every record in status S from the store (never the
                                        provider accounts); allocated, pending_deletion and deleting
                                        need --force
  auto-delete-stale [--grace-hours N]   purge records stale for at least N hours (default 24)
  help                                  this text
`

const defaultBrokerURL = "http://localhost:8080/v1"

// adminOptions are the flags every admin command accepts.
type adminOptions struct {
	url, token string
	json       bool
	timeout    time.Duration
}

// register adds the common flags to fs, keeping the values parsed so far.
func (o *adminOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&o.url, "url", o.url, "broker API base URL (default $BROKER_URL or "+defaultBrokerURL+")")
	fs.StringVar(&o.token, "token", o.token, "admin token (default $BROKER_ADMIN_TOKEN)")
	fs.BoolVar(&o.json, "json", o.json, "print JSON instead of tables")
	fs.DurationVar(&o.timeout, "timeout", o.timeout, "give up on a request after this long")
}

// adminRun is one parsed admin command ready to run.
type adminRun struct {
	c      *client.Client
	opts   adminOptions
	stdout io.Writer
	stderr io.Writer
}

// runAdmin runs `sandbox-broker admin ...`.
func runAdmin(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	opts := adminOptions{timeout: 30 * time.Second}
	fs := newAdminFlags("admin", stderr)
	opts.register(fs)
	if err := fs.Parse(args); err != nil {
		return adminFlagError(err)
	}
	if fs.NArg() == 0 {
		fmt.Fprint(stderr, adminUsage)
		return usageError{errors.New("admin: a command is required")}
	}
	name, rest := fs.Arg(0), fs.Args()[1:]
	if name == "help" || name == "-h" || name == "--help" {
		fmt.Fprint(stdout, adminUsage)
		return nil
	}
	cmd, ok := adminCommands[name]
	if !ok {
		return usageError{fmt.Errorf("admin: unknown command %q; see: sandbox-broker admin help", name)}
	}
	cfs := newAdminFlags("admin "+name, stderr)
	cfs.Usage = func() {
		fmt.Fprintf(stderr, "usage: sandbox-broker admin %s [flags] %s\n\nflags:\n", name, strings.Join(cmd.args, " "))
		cfs.PrintDefaults()
	}
	opts.register(cfs)
	run := cmd.flags(cfs)
	pos, err := parseInterleaved(cfs, rest)
	if err != nil {
		return adminFlagError(err)
	}
	if len(pos) != len(cmd.args) {
		if len(cmd.args) == 0 {
			return usageError{fmt.Errorf("admin %s takes no arguments, got %q", name, pos)}
		}
		return usageError{fmt.Errorf("usage: sandbox-broker admin %s %s", name, strings.Join(cmd.args, " "))}
	}
	a, err := newAdminRun(opts, getenv, stdout, stderr)
	if err != nil {
		return err
	}
	if err := run(ctx, a, pos); err != nil {
		return adminError(name, err)
	}
	return nil
}

func newAdminFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, adminUsage) }
	return fs
}

func adminFlagError(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return usageError{err}
}

// parseInterleaved parses flags that may come before or after positional
// arguments (`history 42 --json`) and returns the positional ones.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// newAdminRun resolves the broker URL and token from flags and environment.
func newAdminRun(opts adminOptions, getenv func(string) string, stdout, stderr io.Writer) (*adminRun, error) {
	if opts.url == "" {
		opts.url = strings.TrimSpace(getenv("BROKER_URL"))
	}
	if opts.url == "" {
		opts.url = defaultBrokerURL
	}
	if opts.token == "" {
		for _, t := range strings.Split(getenv("BROKER_ADMIN_TOKEN"), ",") {
			if t = strings.TrimSpace(t); t != "" {
				opts.token = t
				break
			}
		}
	}
	if opts.token == "" {
		return nil, usageError{errors.New("BROKER_ADMIN_TOKEN is not set: export the broker's admin token or pass --token")}
	}
	if !strings.HasPrefix(opts.url, "http://") && !strings.HasPrefix(opts.url, "https://") {
		return nil, usageError{fmt.Errorf("broker URL %q must start with http:// or https://, e.g. %s (BROKER_URL or --url)", opts.url, defaultBrokerURL)}
	}
	if opts.timeout <= 0 {
		return nil, usageError{errors.New("--timeout must be positive")}
	}
	c := client.New(opts.url, opts.token,
		client.WithHTTPClient(&http.Client{Timeout: opts.timeout}),
		client.WithUserAgent("sandbox-broker-admin/"+version))
	return &adminRun{c: c, opts: opts, stdout: stdout, stderr: stderr}, nil
}

// adminError explains a failed call: the broker's code, message and request
// id, plus a hint for the usual mistakes.
func adminError(cmd string, err error) error {
	var e *client.Error
	if errors.As(err, &e) {
		switch e.Code {
		case "UNAUTHORIZED":
			return fmt.Errorf("%s: %w (check BROKER_ADMIN_TOKEN or --token)", cmd, err)
		case "FORBIDDEN":
			return fmt.Errorf("%s: %w (that is a track token; admin commands need BROKER_ADMIN_TOKEN)", cmd, err)
		case "NOT_FOUND", "METHOD_NOT_ALLOWED":
			if e.Status == http.StatusMethodNotAllowed || strings.Contains(e.Message, "No such route") {
				return fmt.Errorf("%s: %w (is BROKER_URL the API base URL, e.g. %s?)", cmd, err, defaultBrokerURL)
			}
		}
		return fmt.Errorf("%s: %w", cmd, err)
	}
	if broker.ErrorCode(err) == broker.EUNAVAILABLE {
		return fmt.Errorf("%s: %w (is the broker running, and BROKER_URL right?)", cmd, err)
	}
	return fmt.Errorf("%s: %w", cmd, err)
}

// adminCommand is one subcommand: its positional arguments and a function
// that declares its flags and returns the code to run.
type adminCommand struct {
	args  []string
	flags func(fs *flag.FlagSet) func(ctx context.Context, a *adminRun, args []string) error
}

// noFlags wraps a command without flags of its own.
func noFlags(run func(ctx context.Context, a *adminRun, args []string) error) func(*flag.FlagSet) func(context.Context, *adminRun, []string) error {
	return func(*flag.FlagSet) func(context.Context, *adminRun, []string) error { return run }
}

var adminCommands = map[string]adminCommand{
	"stats":             {flags: noFlags(adminStats)},
	"list":              {flags: adminList},
	"sync":              {flags: noFlags(adminTrigger((*client.Client).Sync))},
	"cleanup":           {flags: noFlags(adminTrigger((*client.Client).Cleanup))},
	"expire":            {flags: noFlags(adminTrigger((*client.Client).Expire))},
	"jobs":              {flags: noFlags(adminJobs)},
	"pause":             {args: []string{"JOB"}, flags: noFlags(adminPause(true))},
	"resume":            {args: []string{"JOB"}, flags: noFlags(adminPause(false))},
	"history":           {args: []string{"ID"}, flags: noFlags(adminHistory)},
	"retry-deletion":    {args: []string{"ID"}, flags: noFlags(adminRetryDeletion)},
	"bulk-delete":       {flags: adminBulkDelete},
	"auto-delete-stale": {flags: adminAutoDeleteStale},
}

// printJSON writes v as indented JSON.
func (a *adminRun) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table returns a tabwriter for aligned columns; call Flush.
func (a *adminRun) table(header ...string) *tabwriter.Writer {
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	return tw
}

func row(tw io.Writer, cols ...any) {
	s := make([]string, len(cols))
	for i, c := range cols {
		s[i] = orDash(fmt.Sprint(c))
	}
	fmt.Fprintln(tw, strings.Join(s, "\t"))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// when formats a time for tables: RFC 3339 in UTC, "" when unset.
func when(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func adminStats(ctx context.Context, a *adminRun, _ []string) error {
	st, err := a.c.Stats(ctx)
	if err != nil {
		return err
	}
	if a.opts.json {
		return a.printJSON(st)
	}
	tw := a.table("STATUS", "COUNT")
	for _, s := range broker.Statuses() {
		row(tw, s, st.ByStatus[s])
	}
	row(tw, "total", st.Total)
	if len(st.ByTrack) > 0 {
		fmt.Fprintln(tw)
		fmt.Fprintln(tw, "TRACK\tCOUNT")
		tracks := make([]string, 0, len(st.ByTrack))
		for t := range st.ByTrack {
			tracks = append(tracks, t)
		}
		sort.Strings(tracks)
		for _, t := range tracks {
			row(tw, orDash(t), st.ByTrack[t])
		}
	}
	return tw.Flush()
}

func adminList(fs *flag.FlagSet) func(context.Context, *adminRun, []string) error {
	var f client.ListFilter
	status := fs.String("status", "", "only this status: "+statusList())
	fs.StringVar(&f.NamePrefix, "prefix", "", "only names starting with this prefix")
	fs.StringVar(&f.TrackName, "track", "", "only this track name (lab slug)")
	fs.StringVar(&f.Owner, "owner", "", "only this owner (participant id)")
	fs.IntVar(&f.Limit, "limit", 50, "page size, 1 to 100")
	fs.StringVar(&f.Cursor, "cursor", "", "start at this cursor (printed after a page)")
	all := fs.Bool("all", false, "follow the cursor through every page")
	return func(ctx context.Context, a *adminRun, _ []string) error {
		f.Status = broker.Status(*status)
		if f.Status != "" && !f.Status.Valid() {
			return usageError{fmt.Errorf("--status must be one of %s", statusList())}
		}
		if f.Limit < 1 || f.Limit > 100 {
			return usageError{errors.New("--limit must be from 1 to 100")}
		}
		var page client.ListPage
		if *all {
			page.Sandboxes = []client.Sandbox{}
			err := a.c.ListAll(ctx, f, func(sb client.Sandbox) bool {
				page.Sandboxes = append(page.Sandboxes, sb)
				return true
			})
			if err != nil {
				return err
			}
		} else {
			var err error
			if page, err = a.c.List(ctx, f); err != nil {
				return err
			}
		}
		if a.opts.json {
			return a.printJSON(page)
		}
		tw := a.table("ID", "NAME", "STATUS", "OWNER", "TRACK", "ALLOCATED", "EXPIRES")
		for _, sb := range page.Sandboxes {
			row(tw, sb.SandboxID, sb.Name, sb.Status, sb.Owner, sb.TrackName, when(sb.AllocatedAt), when(sb.ExpiresAt))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if page.Cursor != "" {
			fmt.Fprintf(a.stderr, "more sandboxes: add --cursor %s (or use --all)\n", page.Cursor)
		}
		return nil
	}
}

func statusList() string {
	s := make([]string, len(broker.Statuses()))
	for i, st := range broker.Statuses() {
		s[i] = string(st)
	}
	return strings.Join(s, ", ")
}

func adminTrigger(call func(*client.Client, context.Context) (client.JobRun, error)) func(context.Context, *adminRun, []string) error {
	return func(ctx context.Context, a *adminRun, _ []string) error {
		run, err := call(a.c, ctx)
		if err != nil {
			return err
		}
		if a.opts.json {
			return a.printJSON(run)
		}
		fmt.Fprintf(a.stdout, "queued %s run %s; follow it with: sandbox-broker admin jobs\n", run.Job, run.ID)
		return nil
	}
}

func adminJobs(ctx context.Context, a *adminRun, _ []string) error {
	js, err := a.c.Jobs(ctx)
	if err != nil {
		return err
	}
	if a.opts.json {
		return a.printJSON(js)
	}
	tw := a.table("JOB", "ENABLED", "PAUSED", "INTERVAL", "NEXT RUN", "LAST RUN", "STATUS", "RESULT")
	for _, j := range js {
		var last client.JobRun
		if len(j.Runs) > 0 {
			last = j.Runs[0]
		}
		lastAt := last.FinishedAt
		if lastAt.IsZero() {
			lastAt = last.QueuedAt
		}
		row(tw, j.Name, j.Enabled, j.Paused, j.Interval, when(j.NextRun), when(lastAt), last.Status, oneLine(string(last.Result), 60))
	}
	return tw.Flush()
}

// oneLine shortens s to at most n runes on one line.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-3]) + "..."
	}
	return s
}

func adminPause(paused bool) func(context.Context, *adminRun, []string) error {
	return func(ctx context.Context, a *adminRun, args []string) error {
		job := args[0]
		call, verb := a.c.ResumeJob, "resumed"
		if paused {
			call, verb = a.c.PauseJob, "paused"
		}
		if err := call(ctx, job); err != nil {
			return err
		}
		if a.opts.json {
			return a.printJSON(map[string]any{"job": job, "paused": paused})
		}
		fmt.Fprintf(a.stdout, "job %s %s on every replica\n", job, verb)
		return nil
	}
}

func adminHistory(ctx context.Context, a *adminRun, args []string) error {
	events, err := a.c.History(ctx, args[0])
	if err != nil {
		return err
	}
	if a.opts.json {
		return a.printJSON(map[string]any{"sandbox_id": args[0], "events": events})
	}
	if len(events) == 0 {
		fmt.Fprintf(a.stdout, "no events for sandbox %s\n", args[0])
		return nil
	}
	tw := a.table("AT", "FROM", "TO", "ACTOR", "REQUEST ID")
	for _, e := range events {
		row(tw, when(e.At), e.From, e.To, e.Actor, e.RequestID)
	}
	return tw.Flush()
}

func adminRetryDeletion(ctx context.Context, a *adminRun, args []string) error {
	sb, err := a.c.RetryDeletion(ctx, args[0])
	if err != nil {
		return err
	}
	if a.opts.json {
		return a.printJSON(sb)
	}
	fmt.Fprintf(a.stdout, "sandbox %s (%s) is %s again; the cleanup job will retry its deletion\n", sb.SandboxID, sb.Name, sb.Status)
	return nil
}

func adminBulkDelete(fs *flag.FlagSet) func(context.Context, *adminRun, []string) error {
	status := fs.String("status", "", "status of the records to remove (required): "+statusList())
	force := fs.Bool("force", false, "allow allocated, pending_deletion and deleting (orphans their provider accounts)")
	dryRun := fs.Bool("dry-run", false, "only count")
	return func(ctx context.Context, a *adminRun, _ []string) error {
		st := broker.Status(*status)
		if !st.Valid() {
			return usageError{fmt.Errorf("bulk-delete needs --status, one of %s", statusList())}
		}
		res, err := a.c.BulkDelete(ctx, st, *force, *dryRun)
		if err != nil {
			return err
		}
		if a.opts.json {
			return a.printJSON(res)
		}
		if res.DryRun {
			fmt.Fprintf(a.stdout, "dry run: would remove %d %s sandbox record(s) from the store\n", res.WouldDelete, st)
			return nil
		}
		fmt.Fprintf(a.stdout, "removed %d %s sandbox record(s) from the store; provider accounts were not touched\n", res.Deleted, st)
		return nil
	}
}

func adminAutoDeleteStale(fs *flag.FlagSet) func(context.Context, *adminRun, []string) error {
	hours := fs.Int("grace-hours", 24, "purge records stale for at least this many hours (1 to 8760)")
	return func(ctx context.Context, a *adminRun, _ []string) error {
		if *hours < 1 || *hours > 8760 {
			return usageError{errors.New("--grace-hours must be from 1 to 8760")}
		}
		res, err := a.c.AutoDeleteStale(ctx, *hours)
		if err != nil {
			return err
		}
		if a.opts.json {
			return a.printJSON(res)
		}
		fmt.Fprintf(a.stdout, "purged %d sandbox record(s) stale for at least %dh\n", res.Deleted, res.GraceHours)
		return nil
	}
}
