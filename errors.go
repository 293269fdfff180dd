package broker

import (
	"errors"
	"fmt"
)

// Error codes returned by stores and services. The HTTP layer maps them to
// status codes in one place.
const (
	ENOTFOUND    = "not_found"   // the sandbox (or other item) does not exist
	ENOTOWNER    = "not_owner"   // the caller does not own the sandbox
	ENOSANDBOX   = "no_sandbox"  // no available sandbox matches the request
	EINVALID     = "invalid"     // the input is malformed
	ECONFLICT    = "conflict"    // the current state does not allow the change
	EUNAVAILABLE = "unavailable" // the store or provider cannot be reached; retry later
	EINTERNAL    = "internal"    // a bug or an unexpected failure
)

// Error is a domain error with a code and a message safe to show to clients.
// Err, when set, is the underlying cause; it is logged, never sent.
type Error struct {
	Code    string
	Message string
	Err     error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an *Error with the given code and formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Unavailable wraps cause as an EUNAVAILABLE error with a generic message.
func Unavailable(cause error) *Error {
	return &Error{Code: EUNAVAILABLE, Message: "the store is unavailable, retry later", Err: cause}
}

// ErrorCode returns the code of the first *Error in err's chain, EINTERNAL
// for any other non-nil error, and "" for nil.
func ErrorCode(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return EINTERNAL
}

// ErrorMessage returns the client-safe message of err: the message of the
// first *Error in its chain, or a generic text for anything else.
func ErrorMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return "an internal error occurred"
}
