package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/postgres"
	"github.com/sandbox-broker/broker/sqlite"
)

// allocation is one allocated sandbox as the store holds it.
type allocation struct {
	id, name, owner, key string
}

// storeView is what verification reads back from the store after a run.
type storeView struct {
	allocated []allocation
	// multiAllocated counts sandboxes with more than one
	// available->allocated event (a sandbox handed out twice, the second
	// write overwriting the first owner); -1 when the source cannot tell.
	multiAllocated int
	source         string
}

// verifyResult is the verdict on one run.
type verifyResult struct {
	Source         string
	StoreAllocated int // allocated sandboxes of this run in the store
	Acked          int // students answered 201 or 200
	Doubles        int // a sandbox given to two students, or twice in the store's history
	Lost           int // a 201/200 whose sandbox the store does not hold allocated to that student
	Mismatches     int // other disagreements (different sandboxes for one student, two 201s, ...)
	Unacked        int // store allocations never answered with 2xx (after transport errors only)
	PrefixViolated int // a sandbox outside the requested name prefix
	Notes          []string
}

func (v verifyResult) OK() bool {
	return v.Doubles == 0 && v.Lost == 0 && v.Mismatches == 0 && v.PrefixViolated == 0
}

func (v *verifyResult) note(format string, args ...any) {
	if len(v.Notes) < 8 {
		v.Notes = append(v.Notes, fmt.Sprintf(format, args...))
	}
}

func (v verifyResult) String() string {
	s := fmt.Sprintf("store=%d acked=%d doubles=%d lost=%d mismatches=%d unacked=%d", v.StoreAllocated, v.Acked, v.Doubles, v.Lost, v.Mismatches, v.Unacked)
	if v.PrefixViolated > 0 {
		s += fmt.Sprintf(" prefix_violations=%d", v.PrefixViolated)
	}
	return s
}

// verify checks the answers of a run against the store: no sandbox twice,
// one per student and key, every 201/200 matching the store.
func verify(records []studentRecord, view storeView, runPrefix string) verifyResult {
	v := verifyResult{Source: view.source}
	byID := map[string]allocation{}
	byOwner := map[string]string{}
	perOwner := map[string]int{}
	for _, a := range view.allocated {
		if !strings.HasPrefix(a.owner, runPrefix) {
			continue
		}
		if _, dup := byID[a.id]; dup {
			v.Doubles++
			v.note("store lists sandbox %s twice", a.id)
		}
		byID[a.id] = a
		byOwner[a.owner] = a.id
		perOwner[a.owner+"\x00"+a.key]++
	}
	v.StoreAllocated = len(byID)
	for k, n := range perOwner {
		if n > 1 {
			v.Doubles += n - 1
			v.note("store holds %d sandboxes for owner/key %q", n, strings.Replace(k, "\x00", "/", 1))
		}
	}
	if view.multiAllocated > 0 {
		v.Doubles += view.multiAllocated
		v.note("%d sandboxes were allocated more than once in the audit trail", view.multiAllocated)
	}
	holder := map[string]string{} // sandbox id -> student seen with it
	sent := map[string]bool{}
	for _, r := range records {
		sent[r.owner] = true
		var got string
		created, transportErr, definiteFail := 0, false, false
		for _, a := range r.answers {
			switch a.status {
			case http.StatusCreated, http.StatusOK:
				if a.status == http.StatusCreated {
					created++
				}
				if a.sandbox == "" {
					v.Mismatches++
					v.note("%s: %d without sandbox_id (%s)", r.owner, a.status, a.err)
					continue
				}
				if got != "" && got != a.sandbox {
					v.Mismatches++
					v.note("%s got two different sandboxes %s and %s", r.owner, got, a.sandbox)
				}
				got = a.sandbox
				if r.prefix != "" && !strings.HasPrefix(a.name, r.prefix) {
					v.PrefixViolated++
					v.note("%s asked for prefix %q and got %s", r.owner, r.prefix, a.name)
				}
			case 0:
				transportErr = true
			case http.StatusConflict:
				definiteFail = true
			}
		}
		if got == "" {
			if s, ok := byOwner[r.owner]; ok {
				if definiteFail && !transportErr {
					v.Mismatches++
					v.note("%s was told 409 but the store allocated %s to it", r.owner, s)
				} else {
					v.Unacked++
				}
			}
			continue
		}
		v.Acked++
		if created > 1 {
			v.Doubles++
			v.note("%s got %d answers 201 for one key", r.owner, created)
		}
		if created == 0 && !transportErr {
			v.Mismatches++
			v.note("%s got only 200 answers, never 201", r.owner)
		}
		if prev, ok := holder[got]; ok && prev != r.owner {
			v.Doubles++
			v.note("sandbox %s was given to %s and %s", got, prev, r.owner)
		}
		holder[got] = r.owner
		st, ok := byID[got]
		switch {
		case !ok:
			v.Lost++
			v.note("%s holds %s per its answer, the store does not list it allocated", r.owner, got)
		case st.owner != r.owner:
			v.Lost++
			v.note("store has %s allocated to %s, answered to %s", got, st.owner, r.owner)
		case st.key != "" && st.key != r.key:
			v.Mismatches++
			v.note("store has %s under key %s, want %s", got, st.key, r.key)
		}
	}
	for _, a := range byID {
		if !sent[a.owner] {
			v.Mismatches++
			v.note("store has %s allocated to %s, a student this run never sent", a.id, a.owner)
		}
	}
	return v
}

// listAllocated pages through every allocated sandbox with store.List.
func listAllocated(ctx context.Context, s broker.SandboxStore) ([]allocation, error) {
	var out []allocation
	cursor := ""
	for {
		page, err := s.List(ctx, broker.ListFilter{Status: broker.StatusAllocated, Limit: 100, Cursor: cursor})
		if err != nil {
			return nil, err
		}
		for _, sb := range page.Sandboxes {
			out = append(out, allocation{id: sb.ID, name: sb.Name, owner: sb.Owner, key: sb.IdempotencyKey})
		}
		if page.Cursor == "" {
			return out, nil
		}
		cursor = page.Cursor
	}
}

// sqliteView opens a stopped broker's SQLite file with sqlite.Open and
// reads the audit trail with a read-only connection.
func sqliteView(ctx context.Context, path string) (storeView, error) {
	s, err := sqlite.Open(ctx, path)
	if err != nil {
		return storeView{}, err
	}
	allocated, err := listAllocated(ctx, s)
	s.Close()
	if err != nil {
		return storeView{}, err
	}
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		return storeView{}, err
	}
	defer db.Close()
	var multi int
	err = db.QueryRowContext(ctx, `SELECT count(*) FROM (SELECT sandbox_id FROM events
		WHERE from_status = 'available' AND to_status = 'allocated' GROUP BY sandbox_id HAVING count(*) > 1)`).Scan(&multi)
	if err != nil {
		return storeView{}, fmt.Errorf("read audit trail: %w", err)
	}
	return storeView{allocated: allocated, multiAllocated: multi, source: "sqlite.Open + events table"}, nil
}

// postgresView reads the store with postgres.Open and the audit trail with pgx.
func postgresView(ctx context.Context, dbURL string) (storeView, error) {
	s, err := postgres.Open(ctx, dbURL, postgres.Options{Logger: quietLog})
	if err != nil {
		return storeView{}, err
	}
	allocated, err := listAllocated(ctx, s)
	s.Close()
	if err != nil {
		return storeView{}, err
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return storeView{}, err
	}
	defer conn.Close(ctx)
	var multi int
	err = conn.QueryRow(ctx, `SELECT count(*) FROM (SELECT sandbox_id FROM events
		WHERE from_status = 'available' AND to_status = 'allocated' GROUP BY sandbox_id HAVING count(*) > 1) t`).Scan(&multi)
	if err != nil {
		return storeView{}, fmt.Errorf("read audit trail: %w", err)
	}
	return storeView{allocated: allocated, multiAllocated: multi, source: "postgres.Open + events table"}, nil
}

// apiView pages GET /admin/sandboxes?status=allocated with the cursor (for
// stores the bench cannot open itself). The API does not show the
// idempotency key, nor the audit trail in bulk.
func apiView(ctx context.Context, base, basePath, adminToken string) (storeView, error) {
	c := &http.Client{Timeout: 30 * time.Second}
	var out []allocation
	cursor := ""
	for {
		u := base + basePath + "/admin/sandboxes?status=allocated&limit=100"
		if cursor != "" {
			u += "&cursor=" + url.QueryEscape(cursor)
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := c.Do(req)
		if err != nil {
			return storeView{}, err
		}
		var page struct {
			Sandboxes []struct {
				SandboxID string  `json:"sandbox_id"`
				Name      string  `json:"name"`
				Owner     *string `json:"allocated_to_track"`
			} `json:"sandboxes"`
			Cursor *string `json:"cursor"`
		}
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			return storeView{}, fmt.Errorf("admin list: status %d: %v", resp.StatusCode, err)
		}
		for _, sb := range page.Sandboxes {
			a := allocation{id: sb.SandboxID, name: sb.Name}
			if sb.Owner != nil {
				a.owner = *sb.Owner
			}
			out = append(out, a)
		}
		if page.Cursor == nil || *page.Cursor == "" {
			return storeView{allocated: out, multiAllocated: -1, source: "admin API"}, nil
		}
		cursor = *page.Cursor
	}
}
