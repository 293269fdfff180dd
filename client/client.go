// Package client is a Go client for the sandbox-broker HTTP API: the track
// endpoints lab tooling calls, the admin endpoints operators use, and the
// health probes. It is what `sandbox-broker admin` is built on.
//
//	c := client.New("http://localhost:8080/v1", os.Getenv("BROKER_API_TOKEN"))
//	a, err := c.Allocate(ctx, client.AllocateInput{Owner: participant})
//	switch broker.ErrorCode(err) {
//	case "":                  // a.SandboxID is yours; a.Replayed on a retry
//	case broker.ENOSANDBOX:   // the pool is exhausted
//	case broker.EUNAVAILABLE: // retry later
//	}
//
// Every failed call returns an error whose broker.ErrorCode is meaningful:
// an HTTP error is a *Error carrying the envelope's code, message and
// request id, and a network failure is EUNAVAILABLE.
//
// Times in results are time.Time in UTC; a zero time means the broker sent
// null (not set), and a string the broker sent as null is "". The JSON tags
// of the result types name the API's fields; encoding them (as
// `sandbox-broker admin --json` does) writes times in RFC 3339 and leaves
// unset ones out.
package client

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	broker "github.com/sandbox-broker/broker"
)

// maxBody caps how much of a response body is read.
const maxBody = 8 << 20

// Client calls one broker. It is safe for concurrent use.
type Client struct {
	base      *url.URL // API base, e.g. http://host:8080/v1
	root      *url.URL // scheme and host: /healthz and /readyz live there
	token     string
	http      *http.Client
	userAgent string
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient sets the HTTP client (timeouts, transport, proxies). The
// default is a client with a 30 s timeout.
func WithHTTPClient(h *http.Client) Option { return func(c *Client) { c.http = h } }

// WithUserAgent sets the User-Agent header.
func WithUserAgent(ua string) Option { return func(c *Client) { c.userAgent = ua } }

// New returns a client for the broker whose API base URL (API_BASE_PATH
// included) is baseURL, e.g. http://localhost:8080/v1, authenticating with
// token: a track token for the track endpoints, an admin token for the admin
// endpoints (it also works on track endpoints). A malformed baseURL makes
// every call fail with EINVALID.
func New(baseURL, token string, opts ...Option) *Client {
	c := &Client{token: token, http: &http.Client{Timeout: 30 * time.Second}, userAgent: "sandbox-broker-client"}
	if u, err := url.Parse(strings.TrimRight(baseURL, "/")); err == nil && u.Host != "" && (u.Scheme == "http" || u.Scheme == "https") {
		c.base = u
		c.root = &url.URL{Scheme: u.Scheme, Host: u.Host, User: u.User}
	}
	for _, o := range opts {
		o(c)
	}
	return c
}

type requestIDKey struct{}

// WithRequestID returns a context whose calls send id as X-Request-ID, so
// that the broker's logs and error bodies carry it. The broker accepts 1-128
// characters of [A-Za-z0-9._-] and replaces anything else.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey{}, id)
}

// call is one request: method, escaped path below the base (or the root
// when atRoot), query and headers.
type call struct {
	method  string
	path    string
	atRoot  bool
	query   url.Values
	headers map[string]string
}

// response is a successful answer.
type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends the call and returns a 2xx answer, or an error: *Error for an
// HTTP error, EUNAVAILABLE for a network failure, EINVALID for a bad base URL.
func (c *Client) do(ctx context.Context, cl call) (response, error) {
	if c.base == nil {
		return response{}, broker.Errorf(broker.EINVALID, "the broker URL must be an absolute http(s) URL such as http://localhost:8080/v1")
	}
	u := *c.base
	if cl.atRoot {
		u = *c.root
	}
	// cl.path is escaped (ids may hold any character); keep it so.
	u.RawPath = strings.TrimRight(u.EscapedPath(), "/") + cl.path
	p, err := url.PathUnescape(u.RawPath)
	if err != nil {
		return response{}, broker.Errorf(broker.EINVALID, "bad request path: %v", err)
	}
	u.Path = p
	u.RawQuery = cl.query.Encode()
	req, err := http.NewRequestWithContext(ctx, cl.method, u.String(), nil)
	if err != nil {
		return response{}, broker.Errorf(broker.EINVALID, "build request: %v", err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.userAgent)
	if id, ok := ctx.Value(requestIDKey{}).(string); ok && id != "" {
		req.Header.Set("X-Request-ID", id)
	}
	for k, v := range cl.headers {
		if v != "" {
			req.Header.Set(k, v)
		}
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return response{}, &broker.Error{Code: broker.EUNAVAILABLE, Message: fmt.Sprintf("cannot reach the broker at %s", c.base.Redacted()), Err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return response{}, &broker.Error{Code: broker.EUNAVAILABLE, Message: "reading the broker's answer failed", Err: err}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return response{status: resp.StatusCode, header: resp.Header, body: body}, parseError(resp, body)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: body}, nil
}

// doJSON sends the call and decodes a 2xx JSON body into out.
func (c *Client) doJSON(ctx context.Context, cl call, out any) (response, error) {
	resp, err := c.do(ctx, cl)
	if err != nil {
		return resp, err
	}
	if err := json.Unmarshal(resp.body, out); err != nil {
		return resp, &Error{Status: resp.status, Message: fmt.Sprintf("unexpected answer (not the documented JSON): %v", err), RequestID: resp.header.Get("X-Request-ID")}
	}
	return resp, nil
}

func pathID(id string) string { return url.PathEscape(id) }

// Allocate gives in.Owner a sandbox, or returns the one (owner, key) already
// holds with Replayed set. Returns ENOSANDBOX when the pool (or the name
// prefix) is exhausted, EINVALID for a missing or malformed owner,
// EUNAVAILABLE when the broker cannot answer now.
func (c *Client) Allocate(ctx context.Context, in AllocateInput) (Allocation, error) {
	var w wireAllocation
	resp, err := c.doJSON(ctx, call{method: "POST", path: "/allocate", headers: map[string]string{
		"X-Instruqt-Sandbox-ID": in.Owner, "X-Instruqt-Track-ID": in.TrackName,
		"X-Sandbox-Name-Prefix": in.NamePrefix, "Idempotency-Key": in.IdempotencyKey,
	}}, &w)
	if err != nil {
		return Allocation{}, err
	}
	return Allocation{
		SandboxID: w.SandboxID, Name: w.Name, ExternalID: w.ExternalID, SFDCAccountID: str(w.SFDCAccountID),
		AllocatedAt: unixTime(w.AllocatedAt), ExpiresAt: unixTime(w.ExpiresAt), Replayed: resp.status == http.StatusOK,
	}, nil
}

// Get returns sandbox id if it is (or was, until released) allocated to
// owner. Returns ENOTFOUND, ENOTOWNER.
func (c *Client) Get(ctx context.Context, id, owner string) (Sandbox, error) {
	var w wireSandbox
	_, err := c.doJSON(ctx, call{method: "GET", path: "/sandboxes/" + pathID(id), headers: map[string]string{"X-Instruqt-Sandbox-ID": owner}}, &w)
	return w.sandbox(), err
}

// MarkForDeletion releases owner's sandbox id for deletion. Repeating it
// returns the original request time. Returns ENOTFOUND (already deleted),
// ENOTOWNER, ECONFLICT.
func (c *Client) MarkForDeletion(ctx context.Context, id, owner string) (MarkResult, error) {
	var w struct {
		SandboxID           string `json:"sandbox_id"`
		Status              string `json:"status"`
		DeletionRequestedAt int64  `json:"deletion_requested_at"`
	}
	_, err := c.doJSON(ctx, call{method: "POST", path: "/sandboxes/" + pathID(id) + "/mark-for-deletion", headers: map[string]string{"X-Instruqt-Sandbox-ID": owner}}, &w)
	return MarkResult{SandboxID: w.SandboxID, Status: broker.Status(w.Status), DeletionRequestedAt: unixTime(w.DeletionRequestedAt)}, err
}

// List returns one page of sandboxes matching f (admin). Follow
// ListPage.Cursor, or use ListAll. Returns EINVALID for a bad filter or
// cursor.
func (c *Client) List(ctx context.Context, f ListFilter) (ListPage, error) {
	q := url.Values{}
	for k, v := range map[string]string{"status": string(f.Status), "name_prefix": f.NamePrefix, "track_name": f.TrackName, "owner": f.Owner, "cursor": f.Cursor} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var w struct {
		Sandboxes []wireSandbox `json:"sandboxes"`
		Cursor    *string       `json:"cursor"`
	}
	if _, err := c.doJSON(ctx, call{method: "GET", path: "/admin/sandboxes", query: q}, &w); err != nil {
		return ListPage{}, err
	}
	page := ListPage{Sandboxes: make([]Sandbox, 0, len(w.Sandboxes)), Cursor: str(w.Cursor)}
	for _, s := range w.Sandboxes {
		page.Sandboxes = append(page.Sandboxes, s.sandbox())
	}
	return page, nil
}

// ListAll calls fn for every sandbox matching f, page after page (f.Cursor
// is the starting point, f.Limit the page size), until fn returns false or
// the last page. It returns the first error.
func (c *Client) ListAll(ctx context.Context, f ListFilter, fn func(Sandbox) bool) error {
	for {
		page, err := c.List(ctx, f)
		if err != nil {
			return err
		}
		for _, sb := range page.Sandboxes {
			if !fn(sb) {
				return nil
			}
		}
		if page.Cursor == "" {
			return nil
		}
		f.Cursor = page.Cursor
	}
}

// Stats counts the sandboxes by status and by track name (admin).
func (c *Client) Stats(ctx context.Context) (Stats, error) {
	var w map[string]json.RawMessage
	if _, err := c.doJSON(ctx, call{method: "GET", path: "/admin/stats"}, &w); err != nil {
		return Stats{}, err
	}
	st := Stats{ByStatus: map[broker.Status]int{}, ByTrack: map[string]int{}}
	_ = json.Unmarshal(w["total"], &st.Total)
	_ = json.Unmarshal(w["by_track"], &st.ByTrack)
	for _, s := range broker.Statuses() {
		var n int
		if json.Unmarshal(w[string(s)], &n) == nil {
			st.ByStatus[s] = n
		}
	}
	return st, nil
}

// History returns the audit trail of sandbox id, oldest first; empty for an
// unknown id (admin).
func (c *Client) History(ctx context.Context, id string) ([]Event, error) {
	var w struct {
		Events []struct {
			From      string `json:"from"`
			To        string `json:"to"`
			Actor     string `json:"actor"`
			RequestID string `json:"request_id"`
			At        int64  `json:"at"`
		} `json:"events"`
	}
	if _, err := c.doJSON(ctx, call{method: "GET", path: "/admin/sandboxes/" + pathID(id) + "/history"}, &w); err != nil {
		return nil, err
	}
	out := make([]Event, 0, len(w.Events))
	for _, e := range w.Events {
		out = append(out, Event{From: broker.Status(e.From), To: broker.Status(e.To), Actor: e.Actor, RequestID: e.RequestID, At: unixTime(e.At)})
	}
	return out, nil
}

// RetryDeletion puts a deletion_failed sandbox back in the deletion queue
// (admin). Returns ENOTFOUND, ECONFLICT when it is not deletion_failed.
func (c *Client) RetryDeletion(ctx context.Context, id string) (Sandbox, error) {
	var w wireSandbox
	_, err := c.doJSON(ctx, call{method: "POST", path: "/admin/sandboxes/" + pathID(id) + "/retry-deletion"}, &w)
	return w.sandbox(), err
}

// BulkDelete removes every sandbox in status from the store, never from the
// provider (admin). Allocated, pending_deletion and deleting sandboxes need
// force; with dryRun it only counts. Returns EINVALID, ECONFLICT (force
// needed).
func (c *Client) BulkDelete(ctx context.Context, status broker.Status, force, dryRun bool) (BulkDeleteResult, error) {
	q := url.Values{"status": {string(status)}}
	if force {
		q.Set("force", "true")
	}
	if dryRun {
		q.Set("dry_run", "true")
	}
	var w struct {
		Status      string `json:"status"`
		Deleted     int    `json:"deleted"`
		WouldDelete int    `json:"would_delete"`
		DurationMS  int64  `json:"duration_ms"`
		DryRun      bool   `json:"dry_run"`
	}
	_, err := c.doJSON(ctx, call{method: "POST", path: "/admin/bulk-delete", query: q}, &w)
	return BulkDeleteResult{Deleted: w.Deleted, WouldDelete: w.WouldDelete, DryRun: w.DryRun, Duration: time.Duration(w.DurationMS) * time.Millisecond}, err
}

// AutoDeleteStale removes stale sandboxes that have been stale for at least
// graceHours (admin); 0 means the broker's default, 24. Returns EINVALID.
func (c *Client) AutoDeleteStale(ctx context.Context, graceHours int) (AutoDeleteStaleResult, error) {
	q := url.Values{}
	if graceHours != 0 {
		q.Set("grace_period_hours", strconv.Itoa(graceHours))
	}
	var w struct {
		Deleted    int   `json:"deleted"`
		DurationMS int64 `json:"duration_ms"`
		GraceHours int   `json:"grace_period_hours"`
	}
	_, err := c.doJSON(ctx, call{method: "POST", path: "/admin/auto-delete-stale", query: q}, &w)
	return AutoDeleteStaleResult{Deleted: w.Deleted, GraceHours: w.GraceHours, Duration: time.Duration(w.DurationMS) * time.Millisecond}, err
}

// Sync queues a run of the provider sync (admin). Returns ECONFLICT when
// the job is disabled, EUNAVAILABLE when this broker runs no jobs.
func (c *Client) Sync(ctx context.Context) (JobRun, error) { return c.trigger(ctx, "/admin/sync") }

// Cleanup queues a run of the cleanup job, which deletes pending_deletion
// sandboxes at the provider (admin). Errors as for Sync.
func (c *Client) Cleanup(ctx context.Context) (JobRun, error) {
	return c.trigger(ctx, "/admin/cleanup")
}

// Expire queues a run of the expiry job, which marks expired allocations
// for deletion (admin). Errors as for Sync.
func (c *Client) Expire(ctx context.Context) (JobRun, error) { return c.trigger(ctx, "/admin/expire") }

func (c *Client) trigger(ctx context.Context, path string) (JobRun, error) {
	var w wireRun
	_, err := c.doJSON(ctx, call{method: "POST", path: path}, &w)
	return w.run(), err
}

// Jobs describes every background job with its latest runs (admin).
// Returns EUNAVAILABLE when this broker runs no jobs.
func (c *Client) Jobs(ctx context.Context) ([]Job, error) {
	var w struct {
		Jobs []struct {
			Name        string    `json:"name"`
			Enabled     bool      `json:"enabled"`
			Paused      bool      `json:"paused"`
			IntervalSec int64     `json:"interval_sec"`
			NextRun     *int64    `json:"next_run"`
			Runs        []wireRun `json:"runs"`
		} `json:"jobs"`
	}
	if _, err := c.doJSON(ctx, call{method: "GET", path: "/admin/jobs"}, &w); err != nil {
		return nil, err
	}
	out := make([]Job, 0, len(w.Jobs))
	for _, j := range w.Jobs {
		job := Job{Name: j.Name, Enabled: j.Enabled, Paused: j.Paused, Interval: time.Duration(j.IntervalSec) * time.Second, NextRun: unixPtr(j.NextRun)}
		for _, r := range j.Runs {
			job.Runs = append(job.Runs, r.run())
		}
		out = append(out, job)
	}
	return out, nil
}

// PauseJob stops the scheduled runs of job on every replica (admin).
// Returns ENOTFOUND for an unknown job.
func (c *Client) PauseJob(ctx context.Context, job string) error {
	_, err := c.do(ctx, call{method: "POST", path: "/admin/jobs/" + pathID(job) + "/pause"})
	return err
}

// ResumeJob restarts the scheduled runs of job (admin). Returns ENOTFOUND.
func (c *Client) ResumeJob(ctx context.Context, job string) error {
	_, err := c.do(ctx, call{method: "POST", path: "/admin/jobs/" + pathID(job) + "/resume"})
	return err
}

// Healthz calls GET /healthz at the broker's root; no token needed.
func (c *Client) Healthz(ctx context.Context) (Health, error) {
	var w struct {
		Status    string `json:"status"`
		Timestamp int64  `json:"timestamp"`
	}
	_, err := c.doJSON(ctx, call{method: "GET", path: "/healthz", atRoot: true}, &w)
	return Health{Status: w.Status, Time: unixTime(w.Timestamp)}, err
}

// Readyz calls GET /readyz at the broker's root. When the broker is not
// ready it returns the readiness it reported (Ready false, Checks saying
// what failed) and an EUNAVAILABLE *Error.
func (c *Client) Readyz(ctx context.Context) (Readiness, error) {
	var w struct {
		Status    string            `json:"status"`
		Timestamp int64             `json:"timestamp"`
		Checks    map[string]string `json:"checks"`
	}
	resp, err := c.doJSON(ctx, call{method: "GET", path: "/readyz", atRoot: true}, &w)
	var e *Error
	if err != nil && asError(err, &e) && resp.status == http.StatusServiceUnavailable && json.Unmarshal(resp.body, &w) == nil && w.Status != "" {
		e.Code = "NOT_READY"
		e.Message = "the broker is not ready: " + checksText(w.Checks)
	}
	return Readiness{Ready: err == nil && w.Status == "ready", Status: w.Status, Time: unixTime(w.Timestamp), Checks: w.Checks}, err
}

func checksText(checks map[string]string) string {
	var parts []string
	for k, v := range checks {
		parts = append(parts, k+"="+v)
	}
	if len(parts) == 0 {
		return "no check reported"
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}
