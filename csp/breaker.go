package csp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/sandbox-broker/broker"
	"github.com/sony/gobreaker/v2"
)

// Breaker names, used as the name argument of OnStateChange and in logs.
const (
	BreakerCSP      = "eng_csp"
	BreakerNIOSXaaS = "niosxaas"
)

// Breaker states as returned by State and passed to OnStateChange.
const (
	StateClosed   = "closed"
	StateOpen     = "open"
	StateHalfOpen = "half_open"
)

// Breaker defaults shared by the CSP client and the NIOSXaaS hook.
const (
	defaultBreakerThreshold = 5
	defaultBreakerTimeout   = 60 * time.Second
	defaultMaxRetryAfter    = 10 * time.Minute
)

// breakerConfig configures a breaker. Zero values take the defaults above.
type breakerConfig struct {
	name          string
	threshold     int           // consecutive failures that open the breaker
	timeout       time.Duration // open -> half-open
	maxRetryAfter time.Duration // caps how long a Retry-After keeps it open
	onStateChange func(name, from, to string)
	logger        *slog.Logger
	now           func() time.Time // for the Retry-After hold only
}

// breaker wraps a gobreaker two-step breaker and adds a Retry-After hold:
// after a 429 or 503 carrying Retry-After, calls are refused until then even
// if the breaker itself is closed.
//
// Lock order: gobreaker calls onTransition while holding its own mutex, and
// onTransition takes b.mu. So b.mu must never be held while calling into cb.
type breaker struct {
	name          string
	maxRetryAfter time.Duration
	timeout       time.Duration
	now           func() time.Time
	cb            *gobreaker.TwoStepCircuitBreaker[struct{}]

	mu        sync.Mutex
	notBefore time.Time // Retry-After hold
	openUntil time.Time // when the breaker may half-open, set on trips
}

func newBreaker(cfg breakerConfig) *breaker {
	if cfg.threshold <= 0 {
		cfg.threshold = defaultBreakerThreshold
	}
	if cfg.timeout <= 0 {
		cfg.timeout = defaultBreakerTimeout
	}
	if cfg.maxRetryAfter <= 0 {
		cfg.maxRetryAfter = defaultMaxRetryAfter
	}
	if cfg.now == nil {
		cfg.now = time.Now
	}
	if cfg.logger == nil {
		cfg.logger = slog.Default()
	}
	b := &breaker{
		name:          cfg.name,
		maxRetryAfter: cfg.maxRetryAfter,
		timeout:       cfg.timeout,
		now:           cfg.now,
	}
	threshold := uint32(cfg.threshold)
	b.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        cfg.name,
		MaxRequests: 1, // one probe while half-open
		Timeout:     cfg.timeout,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return c.ConsecutiveFailures >= threshold
		},
		IsSuccessful: func(err error) bool { return !countsAsFailure(err) },
		IsExcluded:   func(err error) bool { return errors.Is(err, context.Canceled) },
		OnStateChange: func(name string, from, to gobreaker.State) {
			b.onTransition(to)
			cfg.logger.Warn("circuit breaker state change",
				"breaker", name, "from", stateName(from), "to", stateName(to))
			if cfg.onStateChange != nil {
				cfg.onStateChange(name, stateName(from), stateName(to))
			}
		},
	})
	return b
}

// countsAsFailure reports whether err means the provider is unhealthy:
// network errors, timeouts, malformed answers, 5xx and 429. Other HTTP
// statuses (404, 401, 400, ...) prove the provider answers.
func countsAsFailure(err error) bool {
	if err == nil {
		return false
	}
	var he *HTTPError
	if errors.As(err, &he) {
		return he.Status >= 500 || he.Status == http.StatusTooManyRequests
	}
	return true
}

// allow returns nil and a done callback when the call may go ahead; done must
// be called with the call's error. Otherwise it returns an error wrapping
// broker.ErrCircuitOpen.
func (b *breaker) allow() (done func(error), err error) {
	if wait := b.holdRemaining(); wait > 0 {
		return nil, &circuitOpenError{name: b.name, wait: wait}
	}
	cbDone, err := b.cb.Allow()
	if err != nil {
		return nil, &circuitOpenError{name: b.name, wait: b.openRemaining()}
	}
	return func(err error) {
		b.hold(err)
		cbDone(err)
	}, nil
}

// state returns StateClosed, StateOpen or StateHalfOpen. A Retry-After hold
// reports StateOpen.
func (b *breaker) state() string {
	if b.holdRemaining() > 0 {
		return StateOpen
	}
	return stateName(b.cb.State())
}

// hold starts a Retry-After hold when err is a 429 or 503 carrying one.
func (b *breaker) hold(err error) {
	var he *HTTPError
	if !errors.As(err, &he) || he.RetryAfterDur <= 0 {
		return
	}
	if he.Status != http.StatusTooManyRequests && he.Status != http.StatusServiceUnavailable {
		return
	}
	until := b.now().Add(min(he.RetryAfterDur, b.maxRetryAfter))
	b.mu.Lock()
	defer b.mu.Unlock()
	if until.After(b.notBefore) {
		b.notBefore = until
	}
}

func (b *breaker) holdRemaining() time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	return max(b.notBefore.Sub(b.now()), 0)
}

func (b *breaker) openRemaining() time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	return max(time.Until(b.openUntil), 0)
}

// onTransition runs under gobreaker's lock; it must not call into b.cb.
func (b *breaker) onTransition(to gobreaker.State) {
	if to != gobreaker.StateOpen {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.openUntil = time.Now().Add(b.timeout)
}

func stateName(s gobreaker.State) string {
	switch s {
	case gobreaker.StateOpen:
		return StateOpen
	case gobreaker.StateHalfOpen:
		return StateHalfOpen
	default:
		return StateClosed
	}
}

// circuitOpenError is returned when a breaker refuses a call. It matches
// broker.ErrCircuitOpen with errors.Is and implements broker.RetryAfterer.
type circuitOpenError struct {
	name string
	wait time.Duration // 0 when unknown (e.g. a half-open probe is running)
}

func (e *circuitOpenError) Error() string {
	if e.wait <= 0 {
		return fmt.Sprintf("%s: %v", e.name, broker.ErrCircuitOpen)
	}
	return fmt.Sprintf("%s: %v (retry in %s)", e.name, broker.ErrCircuitOpen, (e.wait + time.Second - 1).Truncate(time.Second))
}

func (e *circuitOpenError) Unwrap() error { return broker.ErrCircuitOpen }

// RetryAfter returns how long until the breaker may let calls through again.
func (e *circuitOpenError) RetryAfter() time.Duration { return e.wait }
