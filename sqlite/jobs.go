package sqlite

import (
	"context"
	"database/sql"
	"time"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/internal/sqlutil"
)

// AcquireLease implements broker.JobStore.
func (s *Store) AcquireLease(ctx context.Context, name, holder string, ttl time.Duration, now time.Time) (bool, error) {
	var ok bool
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		r, err := s.exec(ctx, tx, `INSERT INTO leases (name, holder, until) VALUES (?, ?, ?)
			ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
			WHERE leases.holder = excluded.holder OR leases.until < ?`,
			name, holder, sqlutil.Unix(now.Add(ttl)), sqlutil.Unix(now))
		if err != nil {
			return err
		}
		n, _ := r.RowsAffected()
		ok = n == 1
		return nil
	})
	return ok, dbErr(err)
}

// ReleaseLease implements broker.JobStore.
func (s *Store) ReleaseLease(ctx context.Context, name, holder string) error {
	return dbErr(s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		_, err := s.exec(ctx, tx, `DELETE FROM leases WHERE name = ? AND holder = ?`, name, holder)
		return err
	}))
}

// SetJobPaused implements broker.JobStore.
func (s *Store) SetJobPaused(ctx context.Context, job string, paused bool) error {
	return dbErr(s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		_, err := s.exec(ctx, tx, `INSERT INTO job_settings (job, paused) VALUES (?, ?)
			ON CONFLICT (job) DO UPDATE SET paused = excluded.paused`, job, paused)
		return err
	}))
}

// PausedJobs implements broker.JobStore.
func (s *Store) PausedJobs(ctx context.Context) (map[string]bool, error) {
	rows, err := s.readers.QueryContext(ctx, `SELECT job FROM job_settings WHERE paused = 1`)
	if err != nil {
		return nil, dbErr(err)
	}
	ids, err := collectIDs(rows)
	if err != nil {
		return nil, dbErr(err)
	}
	out := make(map[string]bool, len(ids))
	for _, j := range ids {
		out[j] = true
	}
	return out, nil
}

// SaveJobRun implements broker.JobStore.
func (s *Store) SaveJobRun(ctx context.Context, run broker.JobRun) error {
	return dbErr(s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		_, err := s.exec(ctx, tx, `INSERT INTO job_runs (id, job, status, trigger, queued_at, started_at, finished_at, result)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET job = excluded.job, status = excluded.status,
			trigger = excluded.trigger, queued_at = excluded.queued_at, started_at = excluded.started_at,
			finished_at = excluded.finished_at, result = excluded.result`,
			run.ID, run.Job, run.Status, run.Trigger, sqlutil.Unix(run.QueuedAt), sqlutil.Unix(run.StartedAt),
			sqlutil.Unix(run.FinishedAt), run.Result)
		return err
	}))
}

// QueuedJobRuns implements broker.JobStore.
func (s *Store) QueuedJobRuns(ctx context.Context, job string) ([]broker.JobRun, error) {
	return s.jobRuns(ctx, `WHERE job = ? AND status = 'queued' ORDER BY queued_at, id`, job)
}

// RecentJobRuns implements broker.JobStore.
func (s *Store) RecentJobRuns(ctx context.Context, job string, limit int) ([]broker.JobRun, error) {
	return s.jobRuns(ctx, `WHERE job = ? ORDER BY queued_at DESC, id DESC LIMIT ?`, job, limit)
}

func (s *Store) jobRuns(ctx context.Context, where string, args ...any) ([]broker.JobRun, error) {
	rows, err := s.readers.QueryContext(ctx, `SELECT id, job, status, trigger, queued_at, started_at, finished_at, result FROM job_runs `+where, args...)
	if err != nil {
		return nil, dbErr(err)
	}
	defer rows.Close()
	var out []broker.JobRun
	for rows.Next() {
		var r broker.JobRun
		var q, st, fin int64
		if err := rows.Scan(&r.ID, &r.Job, &r.Status, &r.Trigger, &q, &st, &fin, &r.Result); err != nil {
			return nil, dbErr(err)
		}
		r.QueuedAt, r.StartedAt, r.FinishedAt = sqlutil.Time(q), sqlutil.Time(st), sqlutil.Time(fin)
		out = append(out, r)
	}
	return out, dbErr(rows.Err())
}
