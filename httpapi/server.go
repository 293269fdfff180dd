// Package httpapi serves the broker's HTTP API: the track endpoints lab
// scripts call, the admin endpoints, health and readiness. Every response,
// errors included, uses one JSON error envelope and carries X-Request-ID and
// the security headers.
package httpapi

import (
	"context"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"time"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/service"
)

// Observer receives per-request measurements (e.g. Prometheus metrics).
type Observer interface {
	ObserveHTTP(method, route string, status int, d time.Duration)
	ObserveAllocate(outcome string, d time.Duration)
	ObserveMark(outcome string)
}

// Config configures a Server. Service and Store are required.
type Config struct {
	BasePath              string   // API_BASE_PATH, default /v1
	APITokens             []string // BROKER_API_TOKEN (comma-separated list allowed)
	AdminTokens           []string // BROKER_ADMIN_TOKEN
	CORSOrigins           []string // CORS_ALLOWED_ORIGINS
	Service               *service.Service
	Store                 broker.Store
	Jobs                  JobControl // optional: admin job endpoints answer 503 without it
	Logger                *slog.Logger
	Clock                 broker.Clock
	Observer              Observer                        // optional
	Extra                 map[string]http.Handler         // optional extra root routes, e.g. "GET /metrics"
	Middleware            func(http.Handler) http.Handler // optional, wraps routes inside the outer layer (rate limiting)
	NoSandboxRetryAfter   time.Duration                   // Retry-After on 409, default 30s
	UnavailableRetryAfter time.Duration                   // Retry-After on 503, default 5s
	HealthOnly            bool                            // serve only /healthz, /readyz and Extra (worker); Service and tokens unused
}

// Server is the broker's http.Handler.
type Server struct {
	cfg         Config
	apiTokens   tokenSet
	adminTokens tokenSet
	handler     http.Handler
}

// New builds the router.
func New(cfg Config) *Server {
	if cfg.BasePath == "" {
		cfg.BasePath = "/v1"
	}
	cfg.BasePath = strings.TrimRight(cfg.BasePath, "/")
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = broker.SystemClock{}
	}
	if cfg.NoSandboxRetryAfter == 0 {
		cfg.NoSandboxRetryAfter = 30 * time.Second
	}
	if cfg.UnavailableRetryAfter == 0 {
		cfg.UnavailableRetryAfter = 5 * time.Second
	}
	if len(cfg.CORSOrigins) == 0 {
		cfg.CORSOrigins = []string{"*"}
	}
	s := &Server{cfg: cfg, apiTokens: newTokenSet(cfg.APITokens), adminTokens: newTokenSet(cfg.AdminTokens)}
	s.handler = s.routes()
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

// Routes returns every "METHOD /path" pattern the server answers, sorted.
func (s *Server) Routes() []string {
	out := make([]string, 0, len(s.routeTable()))
	for _, rt := range s.routeTable() {
		out = append(out, rt.method+" "+rt.path)
	}
	sort.Strings(out)
	return out
}

type route struct {
	method, path string
	h            http.HandlerFunc
}

func (s *Server) routeTable() []route {
	if s.cfg.HealthOnly {
		return []route{{"GET", "/healthz", s.healthz}, {"GET", "/readyz", s.readyz}}
	}
	b := s.cfg.BasePath
	track := func(h http.HandlerFunc) http.HandlerFunc { return s.auth(roleTrack, h) }
	admin := func(h http.HandlerFunc) http.HandlerFunc { return s.auth(roleAdmin, h) }
	rs := []route{
		{"GET", "/healthz", s.healthz},
		{"GET", "/readyz", s.readyz},
		{"POST", b + "/allocate", track(s.allocate)},
		{"GET", b + "/sandboxes/{id}", track(s.getSandbox)},
		{"POST", b + "/sandboxes/{id}/mark-for-deletion", track(s.markForDeletion)},
		{"GET", b + "/openapi.json", s.openAPI()},
		{"GET", b + "/docs", s.docs()},
		{"GET", b + "/docs/assets/docs.js", s.docsAsset("docs.js")},
		{"GET", b + "/docs/assets/docs.css", s.docsAsset("docs.css")},
	}
	return append(rs, s.adminRoutes(admin)...)
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	methods := map[string][]string{}
	var paths []string
	for _, rt := range s.routeTable() {
		mux.HandleFunc(rt.method+" "+rt.path, rt.h)
		if methods[rt.path] == nil {
			paths = append(paths, rt.path)
		}
		methods[rt.path] = append(methods[rt.path], rt.method)
	}
	for pattern, h := range s.cfg.Extra {
		mux.Handle(pattern, h)
		_, p, _ := strings.Cut(pattern, " ")
		if methods[p] == nil {
			paths = append(paths, p)
		}
		m, _, _ := strings.Cut(pattern, " ")
		methods[p] = append(methods[p], m)
	}
	// Wrong methods and unknown paths answer in the error envelope too.
	for _, p := range paths {
		allow := strings.Join(methods[p], ", ")
		mux.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allow)
			writeError(w, r, apiError{http.StatusMethodNotAllowed, codeMethod, "Method " + r.Method + " is not allowed here; use " + allow, 0})
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, apiError{http.StatusNotFound, codeRouteNotFound, "No such route; see " + s.cfg.BasePath + "/docs", 0})
	})
	var h http.Handler = mux
	if s.cfg.Middleware != nil {
		h = s.cfg.Middleware(h)
	}
	return s.outer(h)
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"status": "healthy", "timestamp": s.cfg.Clock.Now().Unix()})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.cfg.Store.Ping(ctx); err != nil {
		s.cfg.Logger.Warn("readiness check failed: store unreachable", "request_id", requestInfo(r.Context()).requestID, "error", err.Error())
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "not_ready", "timestamp": s.cfg.Clock.Now().Unix(), "checks": map[string]string{"store": "unavailable"}})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ready", "timestamp": s.cfg.Clock.Now().Unix(), "checks": map[string]string{"store": "ok"}})
}

// failed logs a 5xx cause (never sent to the client) and writes the error.
func (s *Server) failed(w http.ResponseWriter, r *http.Request, err error) {
	e := s.domainError(err)
	if e.status >= 500 {
		s.cfg.Logger.Error("request failed", "request_id", requestInfo(r.Context()).requestID, "error", err.Error())
	}
	writeError(w, r, e)
}
