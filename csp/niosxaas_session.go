package csp

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"strings"
	"sync"
	"time"
)

const (
	// jwtRefreshMargin: a cached JWT is replaced this long before it expires.
	jwtRefreshMargin = 10 * time.Minute
	// jwtFallbackTTL: how long a JWT without a readable exp claim is reused.
	jwtFallbackTTL = 10 * time.Minute
)

// session caches the service account's JWT so that cleaning N sandboxes
// signs in once, not N times (B-14). Sign-ins are serialized: concurrent
// callers wait for the one in flight instead of signing in too.
type session struct {
	now    func() time.Time
	signIn func(ctx context.Context) (string, error)

	mu        sync.Mutex
	jwt       string
	refreshAt time.Time
}

// token returns the cached JWT, or signs in when there is none or it is
// about to expire.
func (s *session) token(ctx context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if s.jwt != "" && now.Before(s.refreshAt) {
		return s.jwt, nil
	}
	jwt, err := s.signIn(ctx)
	if err != nil {
		s.jwt = ""
		return "", err
	}
	s.jwt, s.refreshAt = jwt, refreshTime(jwt, now)
	return jwt, nil
}

// invalidate drops jwt from the cache (after a 401) unless another caller
// already replaced it.
func (s *session) invalidate(jwt string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.jwt == jwt {
		s.jwt = ""
	}
}

// refreshTime returns when a JWT obtained at now should be replaced:
// jwtRefreshMargin before its exp claim, or halfway through its life when
// that is shorter, or after jwtFallbackTTL when exp cannot be read. The
// signature is not checked: the token is only used, never trusted.
func refreshTime(jwt string, now time.Time) time.Time {
	exp, ok := jwtExpiry(jwt)
	if !ok {
		return now.Add(jwtFallbackTTL)
	}
	life := exp.Sub(now)
	return exp.Add(-min(jwtRefreshMargin, life/2))
}

// jwtExpiry reads the exp claim of a JWT.
func jwtExpiry(jwt string) (time.Time, bool) {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp json.Number `json:"exp"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		return time.Time{}, false
	}
	secs, err := claims.Exp.Float64()
	if err != nil || secs <= 0 {
		return time.Time{}, false
	}
	return time.Unix(int64(secs), 0), true
}
