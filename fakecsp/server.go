// Package fakecsp is an in-memory fake of the Infoblox CSP and NIOSXaaS
// APIs the broker calls, for tests, demo mode and the fake-csp command.
//
// Server is an http.Handler. Point the CSP client at <url>/v2 and the
// NIOSXaaS hook at <url>. Paths under /_fake/ are a control API (add and
// remove accounts, inject faults, read what was deleted); every control
// call has a Go method twin for in-process tests.
package fakecsp

import (
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Defaults for Options.
const (
	DefaultPrefix      = "lab"
	DefaultServiceName = "Instrqt-SaaS"
	DefaultJWTTTL      = time.Hour
	firstCSPID         = 2000001
)

// Options configures a Server. Zero values take the documented defaults.
type Options struct {
	Sandboxes int     // accounts created at start, named <Prefix>-0001, ...
	Prefix    string  // default DefaultPrefix
	PageSize  int     // largest page served; 0 ignores _limit/_offset and sends everything
	ErrorRate float64 // share of provider requests failing with 500 (see Faults)
	Latency   time.Duration
	Token     string // CSP API token required; empty accepts any
	Seed      int64  // seeds fault injection

	Email    string // NIOSXaaS sign-in email required; empty accepts any
	Password string // NIOSXaaS sign-in password required; empty accepts any
	// ServicesPerAccount universal services named ServiceName are created
	// in every account created at start.
	ServicesPerAccount int
	ServiceName        string        // default DefaultServiceName
	JWTTTL             time.Duration // lifetime of issued JWTs; default DefaultJWTTTL
}

// Server is the fake provider. It is safe for concurrent use.
type Server struct {
	opts Options
	mux  *http.ServeMux

	mu        sync.Mutex
	rng       *rand.Rand
	faults    Faults
	accounts  []*Account     // in creation order; nil marks a removed one
	index     map[string]int // uuid -> position in accounts
	removed   int            // nil entries in accounts
	nextCSPID int64
	nextSeq   map[string]int // name prefix -> next number
	serial    uint64         // for uuids of services and sessions
	sessions  map[string]session
	deletes   DeleteStats
	requests  map[string]int
}

// New returns a Server holding opts.Sandboxes accounts.
func New(opts Options) *Server {
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if opts.ServiceName == "" {
		opts.ServiceName = DefaultServiceName
	}
	if opts.JWTTTL <= 0 {
		opts.JWTTTL = DefaultJWTTTL
	}
	seed := uint64(opts.Seed)
	s := &Server{
		opts:      opts,
		mux:       http.NewServeMux(),
		rng:       rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		faults:    Faults{ErrorRate: opts.ErrorRate, Latency: opts.Latency},
		index:     make(map[string]int, opts.Sandboxes),
		nextCSPID: firstCSPID,
		nextSeq:   make(map[string]int),
		sessions:  make(map[string]session),
		deletes:   DeleteStats{ByAccount: map[string]int{}, SucceededByAccount: map[string]int{}},
		requests:  make(map[string]int),
	}
	s.mu.Lock()
	s.addSandboxesLocked(opts.Sandboxes, opts.Prefix, opts.ServicesPerAccount)
	s.mu.Unlock()
	s.routes()
	return s
}

// Request counter names, the keys of Requests.
const (
	ReqListAccounts  = "list_accounts"
	ReqDeleteAccount = "delete_account"
	ReqSignIn        = "sign_in"
	ReqAccountSwitch = "account_switch"
	ReqListServices  = "list_services"
	ReqDeleteService = "delete_service"
)

func (s *Server) routes() {
	s.mux.Handle("GET /v2/current_user/accounts", s.provider(ReqListAccounts, s.cspAuth(s.handleListAccounts)))
	s.mux.Handle("DELETE /v2/sandbox/accounts/{uuid}", s.provider(ReqDeleteAccount, s.cspAuth(s.handleDeleteAccount)))
	s.mux.Handle("POST /v2/session/users/sign_in", s.provider(ReqSignIn, s.handleSignIn))
	s.mux.Handle("POST /v2/session/account_switch", s.provider(ReqAccountSwitch, s.handleAccountSwitch))
	s.mux.Handle("GET /api/universalinfra/v1/universalservices", s.provider(ReqListServices, s.handleListServices))
	s.mux.Handle("DELETE /api/universalinfra/v1/universalservices/{uuid}", s.provider(ReqDeleteService, s.handleDeleteService))

	s.mux.HandleFunc("GET /_fake/accounts", s.handleControlAccounts)
	s.mux.HandleFunc("POST /_fake/accounts", s.handleControlAddAccounts)
	s.mux.HandleFunc("DELETE /_fake/accounts/{id...}", s.handleControlRemoveAccount)
	s.mux.HandleFunc("POST /_fake/services", s.handleControlAddServices)
	s.mux.HandleFunc("GET /_fake/deletes", s.handleControlDeletes)
	s.mux.HandleFunc("GET /_fake/requests", s.handleControlRequests)
	s.mux.HandleFunc("GET /_fake/faults", s.handleControlFaults)
	s.mux.HandleFunc("POST /_fake/faults", s.handleControlSetFaults)
	s.mux.HandleFunc("POST /_fake/sessions/expire", s.handleControlExpireSessions)
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mux.ServeHTTP(w, r)
}

// provider wraps a provider endpoint: it counts the request (and records
// account DELETEs, faulted or not), then applies latency and faults.
func (s *Server) provider(name string, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.requests[name]++
		if name == ReqDeleteAccount {
			s.deletes.Total++
			s.deletes.ByAccount[r.PathValue("uuid")]++
		}
		f := s.faults
		fail := f.Outage || (f.ErrorRate > 0 && s.rng.Float64() < f.ErrorRate)
		s.mu.Unlock()

		if f.Latency > 0 {
			t := time.NewTimer(f.Latency)
			defer t.Stop()
			select {
			case <-t.C:
			case <-r.Context().Done():
				return
			}
		}
		if fail {
			if f.RetryAfter > 0 {
				w.Header().Set("Retry-After", strconv.Itoa(f.RetryAfter))
			}
			writeError(w, f.status(), "injected fault")
			return
		}
		h(w, r)
	})
}

// cspAuth checks the "Authorization: Token <token>" header when a token is set.
func (s *Server) cspAuth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.opts.Token != "" && r.Header.Get("Authorization") != "Token "+s.opts.Token {
			writeError(w, http.StatusUnauthorized, "invalid token")
			return
		}
		h(w, r)
	}
}

// page returns the [offset, offset+limit) window of n items per the
// _offset/_limit query parameters, or everything when PageSize is 0.
func (s *Server) page(r *http.Request, n int) (from, to int) {
	if s.opts.PageSize <= 0 {
		return 0, n
	}
	limit := s.opts.PageSize
	if l, err := strconv.Atoi(r.URL.Query().Get("_limit")); err == nil && l > 0 {
		limit = min(l, s.opts.PageSize)
	}
	offset, err := strconv.Atoi(r.URL.Query().Get("_offset"))
	if err != nil || offset < 0 {
		offset = 0
	}
	from = min(offset, n)
	return from, min(from+limit, n)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]any{"error": []map[string]string{{"message": msg}}})
}
