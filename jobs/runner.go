// Package jobs schedules the background jobs. Each job has a leader: the
// replica holding the store-backed lease "job:<name>". Only the leader runs
// the job, on its interval (with jitter) and whenever an admin queued a run
// on any replica; a crashed leader's lease expires and another replica takes
// over. Pause flags live in the store so they hold for every replica.
package jobs

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"log/slog"
	mrand "math/rand/v2"
	"sync"
	"time"

	broker "github.com/sandbox-broker/broker"
)

// Job is one background job.
type Job struct {
	Name     string
	Enabled  bool          // scheduled runs happen only when enabled
	Disabled string        // why it is disabled, for operators
	Interval time.Duration // time between scheduled runs
	Run      func(ctx context.Context) (any, error)
}

// Observer is told about every finished run (metrics).
type Observer interface {
	JobFinished(job string, result any, err error, d time.Duration)
}

// Config configures a Runner.
type Config struct {
	Store    broker.JobStore
	Jobs     []Job
	Holder   string // unique per process; generated when empty
	Clock    broker.Clock
	Logger   *slog.Logger
	Observer Observer      // optional
	Tick     time.Duration // how often leadership and queued runs are checked; default 2s
	LeaseTTL time.Duration // leader lease; default 30s
	Jitter   float64       // fraction of the interval added at random; default 0
}

// Runner runs jobs. Use New, then Run; Trigger, SetPaused and Jobs may be
// called from any goroutine.
type Runner struct {
	cfg   Config
	jobs  map[string]*jobState
	order []string
}

type jobState struct {
	Job
	poke chan struct{}
	mu   sync.Mutex
	due  time.Time // next scheduled run while this runner leads; zero otherwise
}

// New returns a Runner for cfg.Jobs.
func New(cfg Config) *Runner {
	if cfg.Holder == "" {
		cfg.Holder = "runner-" + rand.Text()
	}
	if cfg.Clock == nil {
		cfg.Clock = broker.SystemClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Tick == 0 {
		cfg.Tick = 2 * time.Second
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = 30 * time.Second
	}
	r := &Runner{cfg: cfg, jobs: map[string]*jobState{}}
	for _, j := range cfg.Jobs {
		r.jobs[j.Name] = &jobState{Job: j, poke: make(chan struct{}, 1)}
		r.order = append(r.order, j.Name)
	}
	return r
}

// Run runs every job until ctx is cancelled, then waits for runs in
// progress to finish (each job decides how: cleanup finishes the item in
// hand) and gives up the leases.
func (r *Runner) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, name := range r.order {
		wg.Add(1)
		go func(js *jobState) {
			defer wg.Done()
			r.loop(ctx, js)
		}(r.jobs[name])
	}
	wg.Wait()
}

func leaseName(job string) string { return "job:" + job }

func (r *Runner) loop(ctx context.Context, js *jobState) {
	log := r.cfg.Logger.With("job", js.Name)
	ticker := time.NewTicker(r.cfg.Tick)
	defer ticker.Stop()
	defer func() {
		_ = r.cfg.Store.ReleaseLease(context.WithoutCancel(ctx), leaseName(js.Name), r.cfg.Holder)
	}()
	for {
		r.step(ctx, js, log)
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		case <-js.poke:
		}
	}
}

// step takes or renews leadership and, as leader, runs queued and due runs.
func (r *Runner) step(ctx context.Context, js *jobState, log *slog.Logger) {
	now := r.cfg.Clock.Now()
	leader, err := r.cfg.Store.AcquireLease(ctx, leaseName(js.Name), r.cfg.Holder, r.cfg.LeaseTTL, now)
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("job lease check failed; will retry", "error", err.Error())
		}
		return
	}
	if !leader {
		js.setDue(time.Time{})
		return
	}
	queued, err := r.cfg.Store.QueuedJobRuns(ctx, js.Name)
	if err != nil {
		log.Warn("reading queued job runs failed; will retry", "error", err.Error())
		return
	}
	for _, run := range queued {
		if ctx.Err() != nil {
			return
		}
		r.execute(ctx, js, run, log)
	}
	if !js.Enabled || ctx.Err() != nil {
		return
	}
	paused, err := r.cfg.Store.PausedJobs(ctx)
	if err != nil || paused[js.Name] {
		return
	}
	due := js.getDue()
	if due.IsZero() {
		due = r.firstDue(ctx, js)
		js.setDue(due)
	}
	if r.cfg.Clock.Now().Before(due) {
		return
	}
	run := broker.JobRun{ID: newRunID(), Job: js.Name, Status: "queued", Trigger: "schedule", QueuedAt: r.cfg.Clock.Now()}
	r.execute(ctx, js, run, log)
	js.setDue(r.cfg.Clock.Now().Add(r.interval(js)))
}

// firstDue is when a new leader runs the job first: one interval after the
// last run any replica started (scheduled, triggered or at startup), or now
// if it never ran.
func (r *Runner) firstDue(ctx context.Context, js *jobState) time.Time {
	runs, err := r.cfg.Store.RecentJobRuns(ctx, js.Name, 5)
	if err == nil {
		for _, run := range runs {
			if !run.StartedAt.IsZero() {
				return run.StartedAt.Add(r.interval(js))
			}
		}
	}
	return r.cfg.Clock.Now()
}

// RunNow runs job once in the caller's goroutine, records the run (trigger
// "startup") and returns its result; the schedule then counts from it.
// Returns ENOTFOUND for an unknown job.
func (r *Runner) RunNow(ctx context.Context, job string) (any, error) {
	js, err := r.lookup(job)
	if err != nil {
		return nil, err
	}
	run := broker.JobRun{ID: newRunID(), Job: job, Status: "running", Trigger: "startup", QueuedAt: r.cfg.Clock.Now(), StartedAt: r.cfg.Clock.Now()}
	log := r.cfg.Logger.With("job", job)
	if err := r.cfg.Store.SaveJobRun(ctx, run); err != nil {
		log.Warn("recording job start failed", "run_id", run.ID, "error", err.Error())
	}
	start := time.Now()
	result, err := js.Run(ctx)
	r.finish(ctx, js, run, result, err, time.Since(start), log)
	return result, err
}

func (r *Runner) interval(js *jobState) time.Duration {
	d := js.Interval
	if r.cfg.Jitter > 0 {
		d += time.Duration(mrand.Float64() * r.cfg.Jitter * float64(d))
	}
	return d
}

func (js *jobState) getDue() time.Time {
	js.mu.Lock()
	defer js.mu.Unlock()
	return js.due
}

func (js *jobState) setDue(t time.Time) {
	js.mu.Lock()
	defer js.mu.Unlock()
	js.due = t
}

// execute runs the job once as run, keeping the lease alive meanwhile and
// recording the outcome.
func (r *Runner) execute(ctx context.Context, js *jobState, run broker.JobRun, log *slog.Logger) {
	run.Status, run.StartedAt = "running", r.cfg.Clock.Now()
	if err := r.cfg.Store.SaveJobRun(context.WithoutCancel(ctx), run); err != nil {
		log.Warn("recording job start failed", "run_id", run.ID, "error", err.Error())
	}
	hbCtx, stopHeartbeat := context.WithCancel(ctx)
	go r.heartbeat(hbCtx, js.Name)
	start := time.Now()
	result, err := js.Run(ctx)
	d := time.Since(start)
	stopHeartbeat()
	r.finish(ctx, js, run, result, err, d, log)
}

// finish records a finished run, logs it and tells the observer.
func (r *Runner) finish(ctx context.Context, js *jobState, run broker.JobRun, result any, err error, d time.Duration, log *slog.Logger) {
	run.FinishedAt = r.cfg.Clock.Now()
	run.Status = "succeeded"
	body, _ := json.Marshal(result)
	if err != nil {
		run.Status = "failed"
		body, _ = json.Marshal(map[string]any{"error": err.Error(), "partial": result})
		log.Error("job run failed", "action", js.Name, "run_id", run.ID, "outcome", "error", "error", err.Error(), "duration_ms", d.Milliseconds())
	} else {
		log.Info("job run finished", "action", js.Name, "run_id", run.ID, "outcome", "success", "result", string(body), "duration_ms", d.Milliseconds())
	}
	run.Result = string(body)
	if serr := r.cfg.Store.SaveJobRun(context.WithoutCancel(ctx), run); serr != nil {
		log.Warn("recording job result failed", "run_id", run.ID, "error", serr.Error())
	}
	if r.cfg.Observer != nil {
		r.cfg.Observer.JobFinished(js.Name, result, err, d)
	}
}

func (r *Runner) heartbeat(ctx context.Context, job string) {
	t := time.NewTicker(r.cfg.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if ok, err := r.cfg.Store.AcquireLease(ctx, leaseName(job), r.cfg.Holder, r.cfg.LeaseTTL, r.cfg.Clock.Now()); err == nil && !ok {
				r.cfg.Logger.Warn("job lease lost during a run; the run goes on, its writes are conditional", "job", job)
			}
		}
	}
}

func newRunID() string { return "run-" + rand.Text() }

func (r *Runner) lookup(job string) (*jobState, error) {
	js, ok := r.jobs[job]
	if !ok {
		return nil, broker.Errorf(broker.ENOTFOUND, "no job named %q", job)
	}
	return js, nil
}

// Trigger queues a run of job; the job's leader (on any replica) runs it
// within one tick. It runs even while the job is paused: an operator asked
// for it. Returns ENOTFOUND for an unknown job, ECONFLICT for a disabled one.
func (r *Runner) Trigger(ctx context.Context, job string) (broker.JobRun, error) {
	js, err := r.lookup(job)
	if err != nil {
		return broker.JobRun{}, err
	}
	if !js.Enabled {
		return broker.JobRun{}, broker.Errorf(broker.ECONFLICT, "job %s is disabled: %s", job, js.Disabled)
	}
	run := broker.JobRun{ID: newRunID(), Job: job, Status: "queued", Trigger: "admin", QueuedAt: r.cfg.Clock.Now()}
	if err := r.cfg.Store.SaveJobRun(ctx, run); err != nil {
		return broker.JobRun{}, err
	}
	select {
	case js.poke <- struct{}{}:
	default:
	}
	return run, nil
}

// SetPaused pauses or resumes the schedule of job on every replica.
// Returns ENOTFOUND.
func (r *Runner) SetPaused(ctx context.Context, job string, paused bool) error {
	if _, err := r.lookup(job); err != nil {
		return err
	}
	return r.cfg.Store.SetJobPaused(ctx, job, paused)
}

// Jobs describes every job with its ten latest runs.
func (r *Runner) Jobs(ctx context.Context) ([]broker.JobStatus, error) {
	paused, err := r.cfg.Store.PausedJobs(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]broker.JobStatus, 0, len(r.order))
	for _, name := range r.order {
		js := r.jobs[name]
		runs, err := r.cfg.Store.RecentJobRuns(ctx, name, 10)
		if err != nil {
			return nil, err
		}
		out = append(out, broker.JobStatus{Name: name, Enabled: js.Enabled, Paused: paused[name], Interval: js.Interval, NextRun: js.getDue(), Runs: runs})
	}
	return out, nil
}
