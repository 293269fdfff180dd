package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/internal/sqlutil"
)

// AcquireLease takes or renews the named lease for holder until now+ttl in
// one conditional upsert. It returns false when another holder's lease has
// not expired. Returns EUNAVAILABLE.
func (s *Store) AcquireLease(ctx context.Context, name, holder string, ttl time.Duration, now time.Time) (bool, error) {
	var ok bool
	err := s.do(ctx, true, func(ctx context.Context) error {
		tag, err := s.pool.Exec(ctx, `INSERT INTO leases (name, holder, until) VALUES ($1, $2, $3)
			ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
			WHERE leases.holder = excluded.holder OR leases.until < $4`,
			name, holder, sqlutil.Unix(now.Add(ttl)), sqlutil.Unix(now))
		ok = tag.RowsAffected() == 1
		return err
	})
	return ok, err
}

// ReleaseLease gives the lease up if holder holds it. Returns EUNAVAILABLE.
func (s *Store) ReleaseLease(ctx context.Context, name, holder string) error {
	return s.do(ctx, true, func(ctx context.Context) error {
		_, err := s.pool.Exec(ctx, `DELETE FROM leases WHERE name = $1 AND holder = $2`, name, holder)
		return err
	})
}

// SetJobPaused pauses or resumes a job for every replica. Returns
// EUNAVAILABLE.
func (s *Store) SetJobPaused(ctx context.Context, job string, paused bool) error {
	return s.do(ctx, true, func(ctx context.Context) error {
		_, err := s.pool.Exec(ctx, `INSERT INTO job_settings (job, paused) VALUES ($1, $2)
			ON CONFLICT (job) DO UPDATE SET paused = excluded.paused`, job, paused)
		return err
	})
}

// PausedJobs returns the names of the paused jobs. Returns EUNAVAILABLE.
func (s *Store) PausedJobs(ctx context.Context) (map[string]bool, error) {
	var out map[string]bool
	err := s.do(ctx, true, func(ctx context.Context) error {
		rows, err := s.pool.Query(ctx, `SELECT job FROM job_settings WHERE paused`)
		if err != nil {
			return err
		}
		jobs, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		out = make(map[string]bool, len(jobs))
		for _, j := range jobs {
			out[j] = true
		}
		return nil
	})
	return out, err
}

// SaveJobRun creates or replaces a run record by ID. Returns EUNAVAILABLE.
func (s *Store) SaveJobRun(ctx context.Context, run broker.JobRun) error {
	return s.do(ctx, true, func(ctx context.Context) error {
		_, err := s.pool.Exec(ctx, `INSERT INTO job_runs (id, job, status, trigger, queued_at, started_at, finished_at, result)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO UPDATE SET job = excluded.job, status = excluded.status,
			trigger = excluded.trigger, queued_at = excluded.queued_at, started_at = excluded.started_at,
			finished_at = excluded.finished_at, result = excluded.result`,
			run.ID, run.Job, run.Status, run.Trigger, sqlutil.Unix(run.QueuedAt), sqlutil.Unix(run.StartedAt),
			sqlutil.Unix(run.FinishedAt), run.Result)
		return err
	})
}

// QueuedJobRuns returns queued runs of job, oldest first. Returns
// EUNAVAILABLE.
func (s *Store) QueuedJobRuns(ctx context.Context, job string) ([]broker.JobRun, error) {
	return s.jobRuns(ctx, `WHERE job = $1 AND status = 'queued' ORDER BY queued_at, id`, job)
}

// RecentJobRuns returns the latest runs of job, newest first; a negative
// limit means all of them. Returns EUNAVAILABLE.
func (s *Store) RecentJobRuns(ctx context.Context, job string, limit int) ([]broker.JobRun, error) {
	var lim *int64
	if limit >= 0 {
		l := int64(limit)
		lim = &l
	}
	return s.jobRuns(ctx, `WHERE job = $1 ORDER BY queued_at DESC, id DESC LIMIT $2`, job, lim)
}

func (s *Store) jobRuns(ctx context.Context, where string, args ...any) ([]broker.JobRun, error) {
	var out []broker.JobRun
	err := s.do(ctx, true, func(ctx context.Context) error {
		rows, err := s.pool.Query(ctx, `SELECT id, job, status, trigger, queued_at, started_at, finished_at, result FROM job_runs `+where, args...)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (broker.JobRun, error) {
			var r broker.JobRun
			var q, st, fin int64
			err := row.Scan(&r.ID, &r.Job, &r.Status, &r.Trigger, &q, &st, &fin, &r.Result)
			r.QueuedAt, r.StartedAt, r.FinishedAt = sqlutil.Time(q), sqlutil.Time(st), sqlutil.Time(fin)
			return r, err
		})
		return err
	})
	return out, err
}
