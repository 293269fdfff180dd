package broker

import (
	"context"
	"time"
)

// Clock tells the time. Inject a fake one in tests.
type Clock interface {
	Now() time.Time
}

// SystemClock is the real wall clock, truncated to whole seconds because the
// wire and the stores keep Unix seconds.
type SystemClock struct{}

// Now returns the current time truncated to the second.
func (SystemClock) Now() time.Time { return time.Now().Truncate(time.Second) }

type actorKey struct{}

// Actor names who causes a state change, for the audit trail.
type Actor struct {
	Name      string // "owner:<id>", "admin", "sync", "cleanup", "expiry", ...
	RequestID string
}

// WithActor returns a context carrying a for the audit trail.
func WithActor(ctx context.Context, a Actor) context.Context {
	return context.WithValue(ctx, actorKey{}, a)
}

// ActorFrom returns the actor stored in ctx, or "system" if none.
func ActorFrom(ctx context.Context) Actor {
	if a, ok := ctx.Value(actorKey{}).(Actor); ok {
		return a
	}
	return Actor{Name: "system"}
}
