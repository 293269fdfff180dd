package httpapi

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// reqInfo collects what the request log line says about a request. Handlers
// fill it in as they learn the owner, the sandbox and the outcome.
type reqInfo struct {
	requestID string
	route     string
	owner     string
	track     string
	sandboxID string
	action    string
	outcome   string
	code      string
}

type infoKey struct{}

func requestInfo(ctx context.Context) *reqInfo {
	if i, ok := ctx.Value(infoKey{}).(*reqInfo); ok {
		return i
	}
	return &reqInfo{}
}

// validRequestID reports whether an incoming X-Request-ID may be kept:
// 1-128 characters from [A-Za-z0-9._-].
func validRequestID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
		if !ok {
			return false
		}
	}
	return true
}

func newRequestID() string { return rand.Text() }

// statusWriter remembers the status code for logs and metrics.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// outer is the outermost middleware: request id, security and CORS headers
// (set before anything can answer, so errors, 404s, 405s, 429s and 500s carry
// them too), panic recovery, the request log and metrics.
func (s *Server) outer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := r.Header.Get("X-Request-ID")
		if !validRequestID(id) {
			id = newRequestID()
		}
		info := &reqInfo{requestID: id}
		r = r.WithContext(context.WithValue(r.Context(), infoKey{}, info))
		h := w.Header()
		h.Set("X-Request-ID", id)
		s.securityHeaders(h, r.URL.Path)
		if s.cors(w, r) {
			return
		}
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				s.cfg.Logger.Error("panic serving request", "request_id", id, "panic", fmt.Sprint(p))
				if sw.status == 0 {
					writeError(sw, r, apiError{http.StatusInternalServerError, codeInternal, "An unexpected error occurred", 0})
				}
			}
			s.logRequest(r, info, sw.status, time.Since(start))
		}()
		next.ServeHTTP(sw, r)
	})
}

func (s *Server) logRequest(r *http.Request, info *reqInfo, status int, d time.Duration) {
	route := info.route
	if route == "" {
		route = r.Pattern
	}
	route = routeLabel(route)
	if route == "" {
		route = "unmatched"
	}
	if s.cfg.Observer != nil {
		s.cfg.Observer.ObserveHTTP(r.Method, route, status, d)
	}
	outcome := info.outcome
	if outcome == "" {
		outcome = "success"
		if status >= 400 {
			outcome = "failure"
		}
	}
	level := slog.LevelInfo
	if status >= 500 {
		level = slog.LevelError
	}
	attrs := []slog.Attr{
		slog.String("request_id", info.requestID),
		slog.String("method", r.Method),
		slog.String("route", route),
		slog.Int("status", status),
		slog.Int64("latency_ms", d.Milliseconds()),
		slog.String("outcome", outcome),
	}
	for _, kv := range [][2]string{{"owner", info.owner}, {"track_name", info.track}, {"sandbox_id", info.sandboxID}, {"action", info.action}, {"error_code", info.code}} {
		if kv[1] != "" {
			attrs = append(attrs, slog.String(kv[0], kv[1]))
		}
	}
	s.cfg.Logger.LogAttrs(r.Context(), level, r.Method+" "+route+" "+fmt.Sprint(status), attrs...)
}

// routeLabel is the route of a request for logs and metrics: its ServeMux
// pattern without the method, e.g. /v1/sandboxes/{id}, a bounded set.
func routeLabel(pattern string) string {
	if method, path, ok := strings.Cut(pattern, " "); ok && !strings.HasPrefix(method, "/") {
		return path
	}
	return pattern
}

func (s *Server) securityHeaders(h http.Header, path string) {
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-XSS-Protection", "1; mode=block")
	h.Set("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Permissions-Policy", "geolocation=(), microphone=(), camera=()")
	if path == s.cfg.BasePath+"/docs" {
		// The docs page loads only its own embedded assets.
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'")
		return
	}
	h.Set("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
}

const (
	corsAllowHeaders  = "Authorization, Content-Type, X-Track-ID, X-Instruqt-Sandbox-ID, X-Instruqt-Track-ID, X-Sandbox-Name-Prefix, Idempotency-Key, X-Request-ID"
	corsExposeHeaders = "X-Request-ID, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, Retry-After"
)

// cors sets CORS headers for an allowed Origin and answers preflight
// requests itself (it returns true then).
func (s *Server) cors(w http.ResponseWriter, r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return false
	}
	allowed := ""
	for _, o := range s.cfg.CORSOrigins {
		if o == "*" {
			allowed = "*"
			break
		}
		if o == origin {
			allowed = origin
			break
		}
	}
	if allowed == "" {
		return false
	}
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", allowed)
	if allowed != "*" {
		h.Add("Vary", "Origin")
	}
	h.Set("Access-Control-Expose-Headers", corsExposeHeaders)
	if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
		h.Set("Access-Control-Allow-Methods", "GET, POST")
		h.Set("Access-Control-Allow-Headers", corsAllowHeaders)
		h.Set("Access-Control-Max-Age", "3600")
		w.WriteHeader(http.StatusNoContent)
		return true
	}
	return false
}

// tokenSet holds accepted bearer tokens as SHA-256 digests so that
// comparisons take constant time whatever the lengths.
type tokenSet [][32]byte

func newTokenSet(tokens []string) tokenSet {
	var ts tokenSet
	for _, t := range tokens {
		if t = strings.TrimSpace(t); t != "" {
			ts = append(ts, sha256.Sum256([]byte(t)))
		}
	}
	return ts
}

// contains reports whether token is in the set, in constant time per entry.
func (ts tokenSet) contains(token string) bool {
	d := sha256.Sum256([]byte(token))
	found := 0
	for i := range ts {
		found |= subtle.ConstantTimeCompare(d[:], ts[i][:])
	}
	return found == 1
}

type role int

const (
	roleTrack role = iota
	roleAdmin
)

// bearer extracts the token from "Authorization: Bearer <token>"; the
// scheme is case-insensitive.
func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// auth checks the token before anything else: 401 without a valid token,
// 403 when a track token calls an admin route. The admin token also works on
// track routes.
func (s *Server) auth(need role, next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		token, ok := bearer(r)
		if !ok {
			writeError(w, r, apiError{http.StatusUnauthorized, codeUnauthorized, "Missing or malformed Authorization header; send 'Authorization: Bearer <token>'", 0})
			return
		}
		isAdmin := s.adminTokens.contains(token)
		isTrack := s.apiTokens.contains(token)
		switch {
		case isAdmin:
		case need == roleTrack && isTrack:
		case need == roleAdmin && isTrack:
			writeError(w, r, apiError{http.StatusForbidden, codeForbidden, "Admin access required", 0})
			return
		default:
			writeError(w, r, apiError{http.StatusUnauthorized, codeUnauthorized, "Invalid bearer token", 0})
			return
		}
		next(w, r)
	}
}
