package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	broker "github.com/sandbox-broker/broker"
)

// Error is an HTTP error answer of the broker, parsed from its envelope
// {"error":{"code","message","request_id","retry_after"}}. An answer that is
// not the envelope (a proxy's error page, say) has an empty Code and the
// start of the body as Message.
//
// Error unwraps to a *broker.Error, so broker.ErrorCode works on it:
//
//	SANDBOX_NOT_FOUND, NOT_FOUND            -> ENOTFOUND
//	NOT_SANDBOX_OWNER                       -> ENOTOWNER
//	NO_SANDBOXES_AVAILABLE                  -> ENOSANDBOX
//	VALIDATION_ERROR, MISSING_SANDBOX_ID    -> EINVALID
//	INVALID_STATE                           -> ECONFLICT
//	SERVICE_UNAVAILABLE, RATE_LIMIT_EXCEEDED,
//	NOT_READY, other 502/503/504/429        -> EUNAVAILABLE
//	anything else (UNAUTHORIZED, FORBIDDEN, INTERNAL_ERROR, ...) -> EINTERNAL
type Error struct {
	Status     int           // HTTP status
	Code       string        // envelope code, e.g. NO_SANDBOXES_AVAILABLE
	Message    string        // envelope message, safe to show
	RequestID  string        // the broker's request id, for its logs
	RetryAfter time.Duration // from retry_after or Retry-After; 0 when absent
}

// Error returns e as "HTTP 409 NO_SANDBOXES_AVAILABLE: message (retry
// after 30s) [request id X]".
func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP %d", e.Status)
	if e.Code != "" {
		b.WriteString(" " + e.Code)
	}
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, " (retry after %s)", e.RetryAfter)
	}
	if e.RequestID != "" {
		b.WriteString(" [request id " + e.RequestID + "]")
	}
	return b.String()
}

// Unwrap returns the *broker.Error with the domain code of e.
func (e *Error) Unwrap() error {
	return &broker.Error{Code: e.BrokerCode(), Message: e.Message}
}

// BrokerCode returns the broker error code (broker.ENOTFOUND, ...) that e
// corresponds to; see Error.
func (e *Error) BrokerCode() string {
	switch e.Code {
	case "SANDBOX_NOT_FOUND", "NOT_FOUND":
		return broker.ENOTFOUND
	case "NOT_SANDBOX_OWNER":
		return broker.ENOTOWNER
	case "NO_SANDBOXES_AVAILABLE":
		return broker.ENOSANDBOX
	case "VALIDATION_ERROR", "MISSING_SANDBOX_ID":
		return broker.EINVALID
	case "INVALID_STATE":
		return broker.ECONFLICT
	case "SERVICE_UNAVAILABLE", "RATE_LIMIT_EXCEEDED", "NOT_READY":
		return broker.EUNAVAILABLE
	case "":
		switch e.Status {
		case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return broker.EUNAVAILABLE
		}
	}
	return broker.EINTERNAL
}

// Temporary reports whether retrying later may succeed: the broker was
// unavailable, rate limited the call, or had no sandbox.
func (e *Error) Temporary() bool {
	switch e.BrokerCode() {
	case broker.EUNAVAILABLE, broker.ENOSANDBOX:
		return true
	}
	return false
}

// parseError builds the *Error of a non-2xx answer.
func parseError(resp *http.Response, body []byte) *Error {
	e := &Error{Status: resp.StatusCode, RequestID: resp.Header.Get("X-Request-ID")}
	if secs, err := strconv.Atoi(strings.TrimSpace(resp.Header.Get("Retry-After"))); err == nil && secs > 0 {
		e.RetryAfter = time.Duration(secs) * time.Second
	}
	var env struct {
		Error *struct {
			Code       string `json:"code"`
			Message    string `json:"message"`
			RequestID  string `json:"request_id"`
			RetryAfter int    `json:"retry_after"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &env) != nil || env.Error == nil || env.Error.Code == "" {
		e.Message = snippet(body)
		if e.Message == "" {
			e.Message = http.StatusText(resp.StatusCode)
		}
		return e
	}
	e.Code, e.Message = env.Error.Code, env.Error.Message
	if env.Error.RequestID != "" {
		e.RequestID = env.Error.RequestID
	}
	if env.Error.RetryAfter > 0 {
		e.RetryAfter = time.Duration(env.Error.RetryAfter) * time.Second
	}
	return e
}

// snippet is the start of a non-JSON body, on one line.
func snippet(body []byte) string {
	s := strings.Join(strings.Fields(string(body)), " ")
	if r := []rune(s); len(r) > 200 {
		s = string(r[:200]) + "..."
	}
	return s
}

// asError finds the *Error in err's chain.
func asError(err error, target **Error) bool { return errors.As(err, target) }
