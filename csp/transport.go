package csp

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

const (
	userAgent = "sandbox-broker"
	// maxErrorBody is how much of an error response ends up in HTTPError.Body.
	maxErrorBody = 256
	// maxRetryAfterHint caps absurd Retry-After values.
	maxRetryAfterHint = 24 * time.Hour
)

// HTTPError is returned when the provider answers with an unexpected status.
// It implements broker.RetryAfterer; RetryAfter returns 0 when the answer
// carried no Retry-After header.
type HTTPError struct {
	Status        int           // HTTP status code
	RetryAfterDur time.Duration // from the Retry-After header; 0 when absent
	Body          string        // start of the response body, secrets removed
}

func (e *HTTPError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP %d %s", e.Status, http.StatusText(e.Status))
	if e.RetryAfterDur > 0 {
		fmt.Fprintf(&b, " (retry after %s)", e.RetryAfterDur)
	}
	if e.Body != "" {
		b.WriteString(": ")
		b.WriteString(e.Body)
	}
	return b.String()
}

// RetryAfter returns the provider's Retry-After hint, 0 when there was none.
func (e *HTTPError) RetryAfter() time.Duration { return e.RetryAfterDur }

// newHTTPClient returns a client with the connect and response-header
// timeouts set. It does not follow redirects: a redirected DELETE or a token
// sent to another host is never what we want.
func newHTTPClient(connectTimeout, readTimeout time.Duration) *http.Client {
	dialer := &net.Dialer{Timeout: connectTimeout, KeepAlive: 30 * time.Second}
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           dialer.DialContext,
			TLSHandshakeTimeout:   connectTimeout,
			ResponseHeaderTimeout: readTimeout,
			MaxIdleConnsPerHost:   10,
			IdleConnTimeout:       90 * time.Second,
			ForceAttemptHTTP2:     true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// caller sends JSON requests through a breaker.
type caller struct {
	hc      *http.Client
	br      *breaker
	timeout time.Duration // per request, on top of the caller's context
	secrets []string      // removed from any text that ends up in an error
}

// request is one HTTP call.
type request struct {
	method   string
	url      string
	auth     string // Authorization header value
	body     any    // JSON-encoded when not nil
	out      any    // decoded from a 2xx JSON answer when not nil
	allow404 bool   // a 404 is returned as (404, nil) instead of an HTTPError
}

// do sends r through the breaker. It returns the status code, and an error
// for transport failures, refused calls (wrapping broker.ErrCircuitOpen),
// undecodable answers and non-2xx statuses (*HTTPError).
func (c *caller) do(ctx context.Context, r request) (int, error) {
	var body io.Reader
	if r.body != nil {
		b, err := json.Marshal(r.body)
		if err != nil {
			return 0, fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, r.method, r.url, body)
	if err != nil {
		return 0, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", userAgent)
	if r.auth != "" {
		req.Header.Set("Authorization", r.auth)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}

	done, err := c.br.allow()
	if err != nil {
		return 0, err
	}
	status, err := c.send(req, r)
	done(err)
	return status, err
}

func (c *caller) send(req *http.Request, r request) (int, error) {
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, err // the token is in a header, never in the URL or the error
	}
	defer func() {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		_ = resp.Body.Close()
	}()

	if resp.StatusCode == http.StatusNotFound && r.allow404 {
		return resp.StatusCode, nil
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		snippet, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		return resp.StatusCode, &HTTPError{
			Status:        resp.StatusCode,
			RetryAfterDur: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()),
			Body:          c.scrub(strings.TrimSpace(string(snippet))),
		}
	}
	if r.out != nil {
		if err := json.NewDecoder(resp.Body).Decode(r.out); err != nil {
			return resp.StatusCode, fmt.Errorf("decode response: %w", err)
		}
	}
	return resp.StatusCode, nil
}

// scrub removes every configured secret from s.
func (c *caller) scrub(s string) string {
	for _, secret := range c.secrets {
		if secret != "" {
			s = strings.ReplaceAll(s, secret, "[redacted]")
		}
	}
	return s
}

// parseRetryAfter reads a Retry-After header: delay-seconds or an HTTP date.
// It returns 0 for an absent, malformed or past value.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		return time.Duration(min(secs, int64(maxRetryAfterHint/time.Second))) * time.Second
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0
	}
	return min(max(t.Sub(now), 0), maxRetryAfterHint)
}
