package fakecsp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"time"
)

// Faults are injected into provider requests (never into /_fake/ ones).
type Faults struct {
	ErrorRate  float64       // share of requests that fail with Status
	Status     int           // status of failed requests; default 500, 503 for an outage
	Latency    time.Duration // added before every answer
	RetryAfter int           // seconds; sent as Retry-After with failed requests when > 0
	Outage     bool          // every request fails with Status
}

func (f Faults) status() int {
	switch {
	case f.Status != 0:
		return f.Status
	case f.Outage:
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// faultsJSON is Faults on the control API, latency as a Go duration string.
type faultsJSON struct {
	ErrorRate  float64 `json:"error_rate"`
	Status     int     `json:"status"`
	Latency    string  `json:"latency"`
	RetryAfter int     `json:"retry_after"`
	Outage     bool    `json:"outage"`
}

func (f Faults) toJSON() faultsJSON {
	return faultsJSON{ErrorRate: f.ErrorRate, Status: f.Status, Latency: f.Latency.String(),
		RetryAfter: f.RetryAfter, Outage: f.Outage}
}

// SetFaults replaces the injected faults; Faults{} turns them off.
func (s *Server) SetFaults(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = f
}

// Faults returns the injected faults.
func (s *Server) Faults() Faults {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faults
}

// DeleteStats counts the account DELETE requests received, keyed by uuid.
// Total counts every request, even refused or faulted ones; Succeeded only
// those that removed an account.
type DeleteStats struct {
	Total              int            `json:"total"`
	Succeeded          int            `json:"succeeded"`
	ByAccount          map[string]int `json:"by_account"`
	SucceededByAccount map[string]int `json:"succeeded_by_account"`
}

// Deletes returns a copy of the account DELETE counts.
func (s *Server) Deletes() DeleteStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.deletes
	d.ByAccount = maps.Clone(d.ByAccount)
	d.SucceededByAccount = maps.Clone(d.SucceededByAccount)
	return d
}

// Requests returns how many requests each provider endpoint received,
// faulted ones included, keyed by the ReqXxx names.
func (s *Server) Requests() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.requests)
}

// Accounts returns every account, in creation order.
func (s *Server) Accounts() []Account {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Account, 0, len(s.accounts)-s.removed)
	for _, a := range s.accounts {
		if a != nil {
			out = append(out, a.clone())
		}
	}
	return out
}

// Account returns the account with the given uuid, identity path or csp_id.
func (s *Server) Account(id string) (Account, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.lookupLocked(id)
	if !ok {
		return Account{}, false
	}
	return a.clone(), true
}

// AddAccounts adds accounts, filling the defaults documented on Account, and
// returns them as stored. It adds nothing and fails if a uuid is taken.
func (s *Server) AddAccounts(accounts ...Account) ([]Account, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := make(map[string]bool)
	for _, a := range accounts {
		if a.UUID == "" {
			continue
		}
		if s.has(a.UUID) || seen[a.UUID] {
			return nil, fmt.Errorf("fakecsp: account uuid %s already exists", a.UUID)
		}
		seen[a.UUID] = true
	}
	added := make([]Account, 0, len(accounts))
	for _, a := range accounts {
		a.Services = append([]Service(nil), a.Services...)
		s.fillLocked(&a)
		s.insertLocked(&a)
		added = append(added, a.clone())
	}
	return added, nil
}

// AddSandboxes adds n active sandbox accounts named <prefix>-NNNN,
// continuing that prefix's numbering (prefix "" means Options.Prefix).
func (s *Server) AddSandboxes(n int, prefix string) []Account {
	if prefix == "" {
		prefix = s.opts.Prefix
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addSandboxesLocked(n, prefix, s.opts.ServicesPerAccount)
}

// RemoveAccount removes an account (by uuid, identity path or csp_id)
// without recording a delete, as if it vanished at the provider.
func (s *Server) RemoveAccount(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.lookupLocked(id)
	return ok && s.removeLocked(a.UUID)
}

// AddServices adds count universal services with the given name (""
// means Options.ServiceName) to an account (by uuid, identity path or
// csp_id).
func (s *Server) AddServices(account, name string, count int) ([]Service, error) {
	if name == "" {
		name = s.opts.ServiceName
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.lookupLocked(account)
	if !ok {
		return nil, fmt.Errorf("fakecsp: account %s not found", account)
	}
	added := make([]Service, 0, count)
	for range count {
		svc := s.newServiceLocked(name)
		a.Services = append(a.Services, svc)
		added = append(added, svc)
	}
	return added, nil
}

// ExpireSessions invalidates every JWT issued so far, so the next NIOSXaaS
// call with one gets a 401.
func (s *Server) ExpireSessions() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.sessions)
}

// Control API handlers.

func (s *Server) handleControlAccounts(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.Accounts())
}

// handleControlAddAccounts takes a JSON list of accounts or
// {"count":N,"prefix":"x"}.
func (s *Server) handleControlAddAccounts(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	body = bytes.TrimSpace(body)
	if len(body) > 0 && body[0] == '[' {
		var accounts []Account
		if err := json.Unmarshal(body, &accounts); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		added, err := s.AddAccounts(accounts...)
		if err != nil {
			writeError(w, http.StatusConflict, err.Error())
			return
		}
		writeJSON(w, http.StatusCreated, added)
		return
	}
	var req struct {
		Count  int    `json:"count"`
		Prefix string `json:"prefix"`
	}
	if err := json.Unmarshal(body, &req); err != nil || req.Count <= 0 {
		writeError(w, http.StatusBadRequest, `want a list of accounts or {"count":N,"prefix":"x"} with N > 0`)
		return
	}
	writeJSON(w, http.StatusCreated, s.AddSandboxes(req.Count, req.Prefix))
}

func (s *Server) handleControlRemoveAccount(w http.ResponseWriter, r *http.Request) {
	if !s.RemoveAccount(r.PathValue("id")) {
		writeError(w, http.StatusNotFound, "account not found")
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handleControlAddServices takes {"account":"<uuid|id|csp_id>","name":"x","count":N}.
func (s *Server) handleControlAddServices(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Account string `json:"account"`
		Name    string `json:"name"`
		Count   int    `json:"count"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Account == "" {
		writeError(w, http.StatusBadRequest, `want {"account":"<uuid>","name":"x","count":N}`)
		return
	}
	added, err := s.AddServices(req.Account, req.Name, max(req.Count, 1))
	if err != nil {
		writeError(w, http.StatusNotFound, err.Error())
		return
	}
	writeJSON(w, http.StatusCreated, added)
}

func (s *Server) handleControlDeletes(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.Deletes())
}

func (s *Server) handleControlRequests(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.Requests())
}

func (s *Server) handleControlFaults(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.Faults().toJSON())
}

// handleControlSetFaults replaces the faults with the JSON body, e.g.
// {"error_rate":0.2,"status":500,"latency":"200ms","retry_after":5,"outage":false}.
func (s *Server) handleControlSetFaults(w http.ResponseWriter, r *http.Request) {
	var req faultsJSON
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	f, err := req.toFaults()
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	s.SetFaults(f)
	writeJSON(w, http.StatusOK, f.toJSON())
}

func (f faultsJSON) toFaults() (Faults, error) {
	var latency time.Duration
	if f.Latency != "" {
		d, err := time.ParseDuration(f.Latency)
		if err != nil {
			return Faults{}, fmt.Errorf("latency: %w", err)
		}
		latency = d
	}
	if f.ErrorRate < 0 || f.ErrorRate > 1 {
		return Faults{}, errors.New("error_rate must be within [0, 1]")
	}
	if f.Status != 0 && (f.Status < 400 || f.Status > 599) {
		return Faults{}, errors.New("status must be a 4xx or 5xx code")
	}
	return Faults{ErrorRate: f.ErrorRate, Status: f.Status, Latency: latency,
		RetryAfter: f.RetryAfter, Outage: f.Outage}, nil
}

func (s *Server) handleControlExpireSessions(w http.ResponseWriter, _ *http.Request) {
	s.ExpireSessions()
	w.WriteHeader(http.StatusNoContent)
}
