package httpapi

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	broker "github.com/sandbox-broker/broker"
)

// Wire error codes, as the Python service and its lab scripts know them.
const (
	codeNoSandboxes   = "NO_SANDBOXES_AVAILABLE"
	codeNotOwner      = "NOT_SANDBOX_OWNER"
	codeNotFound      = "SANDBOX_NOT_FOUND"
	codeMissingID     = "MISSING_SANDBOX_ID"
	codeValidation    = "VALIDATION_ERROR"
	codeUnauthorized  = "UNAUTHORIZED"
	codeForbidden     = "FORBIDDEN"
	codeConflict      = "INVALID_STATE"
	codeUnavailable   = "SERVICE_UNAVAILABLE"
	codeInternal      = "INTERNAL_ERROR"
	codeRouteNotFound = "NOT_FOUND"
	codeMethod        = "METHOD_NOT_ALLOWED"
	codeRateLimited   = "RATE_LIMIT_EXCEEDED"
)

// errorBody is the one error envelope:
// {"error":{"code","message","request_id","retry_after"?}}.
type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code       string `json:"code"`
	Message    string `json:"message"`
	RequestID  string `json:"request_id"`
	RetryAfter int    `json:"retry_after,omitempty"`
}

// apiError is an HTTP-level error: status, wire code, message, optional retry hint.
type apiError struct {
	status     int
	code       string
	message    string
	retryAfter time.Duration
}

// domainError maps a domain error to its HTTP form. This is the one place
// where domain codes become status codes.
func (s *Server) domainError(err error) apiError {
	msg := broker.ErrorMessage(err)
	switch broker.ErrorCode(err) {
	case broker.ENOTFOUND:
		return apiError{http.StatusNotFound, codeNotFound, msg, 0}
	case broker.ENOTOWNER:
		return apiError{http.StatusForbidden, codeNotOwner, msg, 0}
	case broker.ENOSANDBOX:
		return apiError{http.StatusConflict, codeNoSandboxes, "No sandboxes available in pool", s.cfg.NoSandboxRetryAfter}
	case broker.EINVALID:
		return apiError{http.StatusBadRequest, codeValidation, msg, 0}
	case broker.ECONFLICT:
		return apiError{http.StatusConflict, codeConflict, msg, 0}
	case broker.EUNAVAILABLE:
		return apiError{http.StatusServiceUnavailable, codeUnavailable, "The service is temporarily unavailable, retry later", s.cfg.UnavailableRetryAfter}
	default:
		return apiError{http.StatusInternalServerError, codeInternal, "An unexpected error occurred", 0}
	}
}

// writeError sends e in the error envelope with the request id of r, and
// records the code for the request log.
func writeError(w http.ResponseWriter, r *http.Request, e apiError) {
	info := requestInfo(r.Context())
	info.code = e.code
	body := errorBody{Error: errorDetail{Code: e.code, Message: e.message, RequestID: info.requestID}}
	if e.retryAfter > 0 {
		secs := int((e.retryAfter + time.Second - 1) / time.Second)
		body.Error.RetryAfter = secs
		w.Header().Set("Retry-After", strconv.Itoa(secs))
	}
	writeJSON(w, e.status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
