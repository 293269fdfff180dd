package metrics

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Handler serves the registry in the Prometheus text format. When token is
// not empty, a request must carry "Authorization: Bearer <token>" (compared
// in constant time) or it gets 401 in the API's error envelope, whose
// request_id is the X-Request-ID response header an outer middleware set.
//
// A collector error never turns the scrape into a 500: what could be
// gathered is served and the error is logged.
func (m *Metrics) Handler(token string) http.Handler {
	h := promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
		ErrorLog:      promLogger{m.log},
	})
	if token == "" {
		return h
	}
	want := sha256.Sum256([]byte(token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := sha256.Sum256([]byte(bearer(r)))
		if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
			unauthorized(w)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// bearer returns the token of "Authorization: Bearer <token>" (scheme
// case-insensitive), or "".
func bearer(r *http.Request) string {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}

// unauthorized writes the API's error envelope with status 401.
func unauthorized(w http.ResponseWriter) {
	type detail struct {
		Code      string `json:"code"`
		Message   string `json:"message"`
		RequestID string `json:"request_id"`
	}
	body := struct {
		Error detail `json:"error"`
	}{detail{"UNAUTHORIZED", "Missing or invalid metrics token; send 'Authorization: Bearer <METRICS_TOKEN>'", w.Header().Get("X-Request-ID")}}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("WWW-Authenticate", `Bearer realm="metrics"`)
	w.WriteHeader(http.StatusUnauthorized)
	_ = json.NewEncoder(w).Encode(body)
}

// promLogger adapts slog to promhttp.Logger.
type promLogger struct{ log *slog.Logger }

func (l promLogger) Println(v ...any) {
	l.log.Warn("metrics: "+strings.TrimSpace(fmt.Sprintln(v...)), "action", "metrics_scrape")
}
