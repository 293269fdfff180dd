package broker

import (
	"context"
	"errors"
	"time"
)

// Provider is where the sandbox accounts really live (today: Infoblox CSP).
type Provider interface {
	// ListAccounts returns every active sandbox account, following pages.
	// Returns ErrCircuitOpen when the circuit breaker is open.
	ListAccounts(ctx context.Context) ([]Account, error)

	// DeleteAccount deletes the account identified by externalID (the
	// identity/accounts/<uuid> path or the bare uuid). Returns
	// ErrAccountGone when the provider answers 404, ErrCircuitOpen when
	// the call was not attempted, and otherwise an error that may implement
	// RetryAfterer.
	DeleteAccount(ctx context.Context, externalID string) error
}

// PreDeleteHook runs before a sandbox is deleted at the provider, e.g. the
// NIOSXaaS universal-service cleanup. An error means "try again later".
type PreDeleteHook interface {
	BeforeDelete(ctx context.Context, sb Sandbox) error
}

// ErrAccountGone is returned by DeleteAccount when the provider no longer
// knows the account (HTTP 404): already deleted.
var ErrAccountGone = errors.New("account not found at the provider")

// ErrCircuitOpen is returned when the provider's circuit breaker is open and
// the call was not attempted.
var ErrCircuitOpen = errors.New("provider circuit breaker is open")

// RetryAfterer is implemented by provider errors that carry a Retry-After hint.
type RetryAfterer interface {
	RetryAfter() time.Duration
}
