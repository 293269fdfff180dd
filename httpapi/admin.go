package httpapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	broker "github.com/sandbox-broker/broker"
)

// JobControl is how the admin API reaches the job runner.
type JobControl interface {
	// Trigger queues a run of job now and returns it. Returns ENOTFOUND for
	// an unknown job.
	Trigger(ctx context.Context, job string) (broker.JobRun, error)
	// SetPaused pauses or resumes job on every replica. Returns ENOTFOUND.
	SetPaused(ctx context.Context, job string, paused bool) error
	// Jobs describes every job and its recent runs.
	Jobs(ctx context.Context) ([]broker.JobStatus, error)
}

func (s *Server) adminRoutes(admin func(http.HandlerFunc) http.HandlerFunc) []route {
	b := s.cfg.BasePath + "/admin"
	return []route{
		{"GET", b + "/sandboxes", admin(s.adminList)},
		{"GET", b + "/stats", admin(s.adminStats)},
		{"GET", b + "/sandboxes/{id}/history", admin(s.adminHistory)},
		{"POST", b + "/sandboxes/{id}/retry-deletion", admin(s.adminRetryDeletion)},
		{"POST", b + "/bulk-delete", admin(s.adminBulkDelete)},
		{"POST", b + "/auto-delete-stale", admin(s.adminAutoDeleteStale)},
		{"POST", b + "/sync", admin(s.trigger("sync"))},
		{"POST", b + "/cleanup", admin(s.trigger("cleanup"))},
		{"POST", b + "/expire", admin(s.trigger("expiry"))},
		{"GET", b + "/jobs", admin(s.adminJobs)},
		{"POST", b + "/jobs/{name}/pause", admin(s.adminPause(true))},
		{"POST", b + "/jobs/{name}/resume", admin(s.adminPause(false))},
	}
}

func badRequest(w http.ResponseWriter, r *http.Request, msg string) {
	writeError(w, r, apiError{http.StatusBadRequest, codeValidation, msg, 0})
}

func adminCtx(r *http.Request) context.Context {
	return broker.WithActor(r.Context(), broker.Actor{Name: "admin", RequestID: requestInfo(r.Context()).requestID})
}

type listResponse struct {
	Sandboxes []sandboxResponse `json:"sandboxes"`
	Count     int               `json:"count"`
	Cursor    *string           `json:"cursor"`
}

func (s *Server) adminList(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := broker.ListFilter{Limit: 50, Cursor: q.Get("cursor"), NamePrefix: q.Get("name_prefix"), TrackName: q.Get("track_name"), Owner: q.Get("owner")}
	if v := q.Get("status"); v != "" {
		f.Status = broker.Status(v)
		if !f.Status.Valid() {
			badRequest(w, r, "status must be one of available, allocated, pending_deletion, deleting, stale, deletion_failed")
			return
		}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100 {
			badRequest(w, r, "limit must be an integer from 1 to 100")
			return
		}
		f.Limit = n
	}
	for name, v := range map[string]string{"name_prefix": f.NamePrefix, "track_name": f.TrackName, "owner": f.Owner, "cursor": f.Cursor} {
		if msg := checkValue(name, v); msg != "" {
			badRequest(w, r, msg)
			return
		}
	}
	page, err := s.cfg.Store.List(r.Context(), f)
	if err != nil {
		s.failed(w, r, err)
		return
	}
	resp := listResponse{Sandboxes: make([]sandboxResponse, 0, len(page.Sandboxes)), Count: len(page.Sandboxes), Cursor: nullable(page.Cursor)}
	for _, sb := range page.Sandboxes {
		resp.Sandboxes = append(resp.Sandboxes, toSandboxResponse(sb, string(sb.Status)))
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) adminStats(w http.ResponseWriter, r *http.Request) {
	st, err := s.cfg.Store.Stats(r.Context())
	if err != nil {
		s.failed(w, r, err)
		return
	}
	out := map[string]any{"total": st.Total, "by_track": st.ByTrack}
	for _, status := range broker.Statuses() {
		out[string(status)] = st.ByStatus[status]
	}
	writeJSON(w, http.StatusOK, out)
}

type eventResponse struct {
	From      string `json:"from"`
	To        string `json:"to"`
	Actor     string `json:"actor"`
	RequestID string `json:"request_id"`
	At        int64  `json:"at"`
}

func (s *Server) adminHistory(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	events, err := s.cfg.Store.History(r.Context(), id)
	if err != nil {
		s.failed(w, r, err)
		return
	}
	out := make([]eventResponse, len(events))
	for i, e := range events {
		out[i] = eventResponse{From: string(e.From), To: string(e.To), Actor: e.Actor, RequestID: e.RequestID, At: unix(e.At)}
	}
	writeJSON(w, http.StatusOK, map[string]any{"sandbox_id": id, "events": out})
}

func (s *Server) adminRetryDeletion(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	sb, err := s.cfg.Service.RetryDeletion(adminCtx(r), id)
	if err != nil {
		s.failed(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toSandboxResponse(sb, string(sb.Status)))
}

// boolParam parses an optional true/false/1/0 query parameter.
func boolParam(r *http.Request, name string) (bool, bool) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return false, true
	}
	b, err := strconv.ParseBool(v)
	return b, err == nil
}

func (s *Server) adminBulkDelete(w http.ResponseWriter, r *http.Request) {
	status := broker.Status(r.URL.Query().Get("status"))
	force, ok1 := boolParam(r, "force")
	dryRun, ok2 := boolParam(r, "dry_run")
	if !ok1 || !ok2 {
		badRequest(w, r, "force and dry_run must be true or false")
		return
	}
	if status == "" || !status.Valid() {
		badRequest(w, r, "status is required: one of available, allocated, pending_deletion, deleting, stale, deletion_failed")
		return
	}
	start := time.Now()
	n, err := s.cfg.Service.BulkDelete(adminCtx(r), status, force, dryRun)
	if err != nil {
		s.failed(w, r, err)
		return
	}
	resp := map[string]any{"status": "completed", "deleted": n, "duration_ms": time.Since(start).Milliseconds(), "dry_run": dryRun}
	if dryRun {
		resp = map[string]any{"status": "dry_run", "would_delete": n, "deleted": 0, "duration_ms": time.Since(start).Milliseconds(), "dry_run": true}
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) adminAutoDeleteStale(w http.ResponseWriter, r *http.Request) {
	hours := 24
	if v := r.URL.Query().Get("grace_period_hours"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 24*365 {
			badRequest(w, r, "grace_period_hours must be an integer from 1 to 8760")
			return
		}
		hours = n
	}
	start := time.Now()
	n, err := s.cfg.Service.PurgeStale(adminCtx(r), time.Duration(hours)*time.Hour)
	if err != nil {
		s.failed(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "completed", "deleted": n, "duration_ms": time.Since(start).Milliseconds(), "grace_period_hours": hours})
}

func (s *Server) jobsAvailable(w http.ResponseWriter, r *http.Request) bool {
	if s.cfg.Jobs == nil {
		writeError(w, r, apiError{http.StatusServiceUnavailable, codeUnavailable, "background jobs are not configured in this process", s.cfg.UnavailableRetryAfter})
		return false
	}
	return true
}

type runResponse struct {
	RunID      string          `json:"run_id"`
	Job        string          `json:"job"`
	Status     string          `json:"status"`
	Trigger    string          `json:"trigger,omitempty"`
	QueuedAt   *int64          `json:"queued_at,omitempty"`
	StartedAt  *int64          `json:"started_at"`
	FinishedAt *int64          `json:"finished_at"`
	Result     json.RawMessage `json:"result"`
}

func toRunResponse(run broker.JobRun) runResponse {
	res := json.RawMessage("null")
	if run.Result != "" && json.Valid([]byte(run.Result)) {
		res = json.RawMessage(run.Result)
	}
	return runResponse{RunID: run.ID, Job: run.Job, Status: run.Status, Trigger: run.Trigger, QueuedAt: nullableTime(run.QueuedAt),
		StartedAt: nullableTime(run.StartedAt), FinishedAt: nullableTime(run.FinishedAt), Result: res}
}

func (s *Server) trigger(job string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.jobsAvailable(w, r) {
			return
		}
		run, err := s.cfg.Jobs.Trigger(adminCtx(r), job)
		if err != nil {
			s.failed(w, r, err)
			return
		}
		writeJSON(w, http.StatusAccepted, map[string]any{"run_id": run.ID, "job": run.Job, "status": run.Status})
	}
}

func (s *Server) adminJobs(w http.ResponseWriter, r *http.Request) {
	if !s.jobsAvailable(w, r) {
		return
	}
	jobs, err := s.cfg.Jobs.Jobs(r.Context())
	if err != nil {
		s.failed(w, r, err)
		return
	}
	type jobResponse struct {
		Name        string        `json:"name"`
		Enabled     bool          `json:"enabled"`
		Paused      bool          `json:"paused"`
		IntervalSec int64         `json:"interval_sec"`
		NextRun     *int64        `json:"next_run"`
		Runs        []runResponse `json:"runs"`
	}
	out := make([]jobResponse, 0, len(jobs))
	for _, j := range jobs {
		jr := jobResponse{Name: j.Name, Enabled: j.Enabled, Paused: j.Paused, IntervalSec: int64(j.Interval / time.Second), NextRun: nullableTime(j.NextRun), Runs: []runResponse{}}
		for _, run := range j.Runs {
			jr.Runs = append(jr.Runs, toRunResponse(run))
		}
		out = append(out, jr)
	}
	writeJSON(w, http.StatusOK, map[string]any{"jobs": out})
}

func (s *Server) adminPause(paused bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.jobsAvailable(w, r) {
			return
		}
		name := r.PathValue("name")
		if msg := checkValue("job name", name); msg != "" {
			badRequest(w, r, msg)
			return
		}
		if err := s.cfg.Jobs.SetPaused(adminCtx(r), name, paused); err != nil {
			if broker.ErrorCode(err) == broker.ENOTFOUND {
				writeError(w, r, apiError{http.StatusNotFound, codeRouteNotFound, broker.ErrorMessage(err), 0})
				return
			}
			s.failed(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"job": name, "paused": paused})
	}
}
