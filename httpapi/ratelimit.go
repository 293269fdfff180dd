package httpapi

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/sandbox-broker/broker/ratelimit"
)

// rateLimitExempt are the paths never limited, as in the reference: probes
// and scrapes must not be starved by a noisy client.
var rateLimitExempt = map[string]bool{"/healthz": true, "/readyz": true, "/metrics": true}

// RateLimit returns a Config.Middleware that limits each client, keyed by
// ratelimit.ClientIP(r, trusted), with l. Every limited response carries
// X-RateLimit-Limit (the sustained rate per second), X-RateLimit-Remaining
// and X-RateLimit-Reset (seconds until the bucket is full); a rejected
// request gets 429 RATE_LIMIT_EXCEEDED with Retry-After. It runs inside the
// outer middleware, so 429s carry X-Request-ID, the security and CORS
// headers and a request log line; and before authentication, so that
// invalid tokens are limited too. A nil or disabled l limits nothing.
func RateLimit(l *ratelimit.Limiter, trusted []*net.IPNet) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		if !l.Enabled() {
			return next
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if rateLimitExempt[r.URL.Path] {
				next.ServeHTTP(w, r)
				return
			}
			d := l.Allow(ratelimit.ClientIP(r, trusted))
			h := w.Header()
			h.Set("X-RateLimit-Limit", strconv.FormatFloat(d.Limit, 'f', -1, 64))
			h.Set("X-RateLimit-Remaining", strconv.Itoa(d.Remaining))
			h.Set("X-RateLimit-Reset", strconv.FormatInt(ceilSeconds(d.Reset), 10))
			if d.Allowed {
				next.ServeHTTP(w, r)
				return
			}
			// Label the 429 in logs and metrics with the route it was
			// meant for: next is the router when used as Config.Middleware.
			if mux, ok := next.(interface {
				Handler(*http.Request) (http.Handler, string)
			}); ok {
				_, requestInfo(r.Context()).route = mux.Handler(r)
			}
			secs := ceilSeconds(d.RetryAfter)
			writeError(w, r, apiError{http.StatusTooManyRequests, codeRateLimited,
				fmt.Sprintf("Rate limit exceeded; retry after %d second%s", secs, plural(secs)), time.Duration(secs) * time.Second})
		})
	}
}

// ceilSeconds rounds d up to whole seconds.
func ceilSeconds(d time.Duration) int64 {
	s := int64(d / time.Second)
	if d%time.Second > 0 {
		s++
	}
	return s
}

func plural(n int64) string {
	if n == 1 {
		return ""
	}
	return "s"
}
