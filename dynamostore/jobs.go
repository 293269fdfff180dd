package dynamostore

import (
	"context"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"

	broker "github.com/sandbox-broker/broker"
)

// AcquireLease takes or renews the named lease for holder until now+ttl
// with one conditional put on LEASE#<name>: it succeeds when no lease
// exists, holder already holds it, or the lease expired before now. It
// returns false when another holder's lease has not expired. Returns
// EUNAVAILABLE.
func (s *Store) AcquireLease(ctx context.Context, name, holder string, ttl time.Duration, now time.Time) (bool, error) {
	it := itemKey(leasePrefix+name, "LEASE")
	it["holder"] = avS(holder)
	it[aLeaseUntil] = avN(unix(now.Add(ttl)))
	return s.putItem(ctx, it, "attribute_not_exists(#PK) OR #holder = :holder OR #lease_until < :now",
		item{":holder": avS(holder), ":now": avN(unix(now))})
}

// ReleaseLease gives the lease up if holder holds it (a conditional
// delete); otherwise it does nothing. Returns EUNAVAILABLE.
func (s *Store) ReleaseLease(ctx context.Context, name, holder string) error {
	_, _, err := s.deleteItem(ctx, itemKey(leasePrefix+name, "LEASE"), "#holder = :holder", item{":holder": avS(holder)})
	return err
}

// SetJobPaused pauses or resumes a job for every replica (item
// JOBCFG/<job>). Returns EUNAVAILABLE.
func (s *Store) SetJobPaused(ctx context.Context, job string, paused bool) error {
	it := itemKey(jobCfgPK, job)
	it["paused"] = avBool(paused)
	_, err := s.putItem(ctx, it, "", nil)
	return err
}

// PausedJobs returns the names of the paused jobs (one Query on the JOBCFG
// partition). Returns EUNAVAILABLE.
func (s *Store) PausedJobs(ctx context.Context) (map[string]bool, error) {
	out := map[string]bool{}
	err := s.queryAll(ctx, &dynamodb.QueryInput{
		TableName:                 s.table,
		KeyConditionExpression:    aws.String("#PK = :pk"),
		ExpressionAttributeValues: item{":pk": avS(jobCfgPK)},
		ConsistentRead:            aws.Bool(true),
	}, func(it item) error {
		if getBool(it, "paused") {
			out[getS(it, aSK)] = true
		}
		return nil
	})
	return out, err
}

// Job runs live in RUN#<job> sorted by queue time; a queued run also has a
// marker copy in RUNQ#<job>, so QueuedJobRuns reads only queued runs; and
// RUNID#<id> points at the run's current key, so that SaveJobRun replaces
// by ID even if the job or queue time of a run changes. Runs are written
// by the one lease holder, so the three writes need no transaction.

func runSK(run broker.JobRun) string { return fmt.Sprintf("%020d#%s", unix(run.QueuedAt), run.ID) }

func runItem(pk string, run broker.JobRun) item {
	it := itemKey(pk, runSK(run))
	it["run_id"] = avS(run.ID)
	it["job"] = avS(run.Job)
	it["run_status"] = avS(run.Status)
	it["run_trigger"] = avS(run.Trigger)
	it["queued_at"] = avN(unix(run.QueuedAt))
	it["started_at"] = avN(unix(run.StartedAt))
	it["finished_at"] = avN(unix(run.FinishedAt))
	if run.Result != "" {
		it["result"] = avS(run.Result)
	}
	return it
}

func decodeRun(it item) broker.JobRun {
	return broker.JobRun{
		ID:         getS(it, "run_id"),
		Job:        getS(it, "job"),
		Status:     getS(it, "run_status"),
		Trigger:    getS(it, "run_trigger"),
		QueuedAt:   fromUnix(getN(it, "queued_at")),
		StartedAt:  fromUnix(getN(it, "started_at")),
		FinishedAt: fromUnix(getN(it, "finished_at")),
		Result:     getS(it, "result"),
	}
}

// SaveJobRun creates or replaces a run record by ID. Returns EUNAVAILABLE.
func (s *Store) SaveJobRun(ctx context.Context, run broker.JobRun) error {
	ptrKey := itemKey(runIDPrefix+run.ID, "RUNID")
	ptr, err := s.getItem(ctx, ptrKey)
	if err != nil {
		return err
	}
	pk, sk := runPrefix+run.Job, runSK(run)
	if ptr != nil && (getS(ptr, "run_pk") != pk || getS(ptr, "run_sk") != sk) {
		oldJob := getS(ptr, "job")
		for _, key := range []item{itemKey(getS(ptr, "run_pk"), getS(ptr, "run_sk")), itemKey(runQPrefix+oldJob, getS(ptr, "run_sk"))} {
			if _, _, err := s.deleteItem(ctx, key, "", nil); err != nil {
				return err
			}
		}
	}
	if _, err := s.putItem(ctx, runItem(pk, run), "", nil); err != nil {
		return err
	}
	if run.Status == "queued" {
		if _, err := s.putItem(ctx, runItem(runQPrefix+run.Job, run), "", nil); err != nil {
			return err
		}
	} else if _, _, err := s.deleteItem(ctx, itemKey(runQPrefix+run.Job, sk), "", nil); err != nil {
		return err
	}
	p := ptrKey
	p["run_pk"], p["run_sk"], p["job"] = avS(pk), avS(sk), avS(run.Job)
	_, err = s.putItem(ctx, p, "", nil)
	return err
}

// QueuedJobRuns returns queued runs of job, oldest first. Returns
// EUNAVAILABLE.
func (s *Store) QueuedJobRuns(ctx context.Context, job string) ([]broker.JobRun, error) {
	var out []broker.JobRun
	err := s.queryAll(ctx, &dynamodb.QueryInput{
		TableName:                 s.table,
		KeyConditionExpression:    aws.String("#PK = :pk"),
		ExpressionAttributeValues: item{":pk": avS(runQPrefix + job)},
		ConsistentRead:            aws.Bool(true),
	}, func(it item) error {
		out = append(out, decodeRun(it))
		return nil
	})
	return out, err
}

// RecentJobRuns returns the latest runs of job, newest first (one Query,
// newest first, limited). Returns EUNAVAILABLE.
func (s *Store) RecentJobRuns(ctx context.Context, job string, limit int) ([]broker.JobRun, error) {
	var out []broker.JobRun
	if limit <= 0 {
		return out, nil
	}
	in := &dynamodb.QueryInput{
		TableName:                 s.table,
		KeyConditionExpression:    aws.String("#PK = :pk"),
		ExpressionAttributeValues: item{":pk": avS(runPrefix + job)},
		ScanIndexForward:          aws.Bool(false),
		ConsistentRead:            aws.Bool(true),
		Limit:                     aws.Int32(int32(min(limit, 1000))),
	}
	in.ExpressionAttributeNames = names(in.KeyConditionExpression)
	for {
		res, err := s.db.Query(ctx, in)
		if err != nil {
			return nil, dbErr(err)
		}
		for _, it := range res.Items {
			out = append(out, decodeRun(it))
			if len(out) == limit {
				return out, nil
			}
		}
		if len(res.LastEvaluatedKey) == 0 {
			return out, nil
		}
		in.ExclusiveStartKey = res.LastEvaluatedKey
	}
}
