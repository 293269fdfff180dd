// Package ratelimit holds per-client token buckets for the API (SPEC §7.1,
// fixing B-25): keyed by the client's IP address as seen by this process or
// a trusted proxy, never by a header the client chooses, and bounded in
// memory by a cap on tracked clients plus eviction of idle ones.
//
// Buckets live in the process: with N replicas behind a load balancer a
// client can get up to N times the rate.
package ratelimit

import (
	"container/list"
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Defaults of Config.
const (
	DefaultMaxClients = 100_000
	DefaultIdleTTL    = 10 * time.Minute
)

// Clock tells the time; inject a fake one in tests. It needs sub-second
// precision, so broker.SystemClock (truncated to seconds) does not fit.
type Clock interface {
	Now() time.Time
}

type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

// Config configures a Limiter.
type Config struct {
	// RPS is the sustained rate per client, in requests per second
	// (RATE_LIMIT_RPS). 0 disables limiting.
	RPS float64
	// Burst is the bucket size (RATE_LIMIT_BURST); default max(1, ceil(RPS)).
	Burst int
	// MaxClients caps the clients tracked at once; when full, the least
	// recently seen client is forgotten (it starts again with a full
	// bucket). Default 100,000, about 25 MB.
	MaxClients int
	// IdleTTL forgets a client not seen for that long; default 10 minutes.
	// A bucket refills in Burst/RPS seconds, so forgetting a client idle
	// for longer than that changes nothing for it.
	IdleTTL time.Duration
	// Clock defaults to the wall clock.
	Clock Clock
}

// Decision is the answer to one request.
type Decision struct {
	Allowed bool
	// Limit is the sustained rate in requests per second (the reference's
	// X-RateLimit-Limit), not the burst.
	Limit float64
	// Remaining is how many requests the client may still send at once.
	Remaining int
	// Reset is the time until the client's bucket is full again.
	Reset time.Duration
	// RetryAfter is, when not Allowed, the time until one request passes.
	RetryAfter time.Duration
}

// Limiter tracks one token bucket per client key. It is safe for concurrent
// use. A nil *Limiter allows everything.
type Limiter struct {
	cfg       Config
	mu        sync.Mutex
	clients   map[string]*list.Element // of *client
	lru       *list.List               // front: most recently seen
	evictions uint64
}

type client struct {
	key    string
	bucket *rate.Limiter
	seen   time.Time
}

// New returns a Limiter for cfg. With cfg.RPS <= 0 it allows everything.
func New(cfg Config) *Limiter {
	if cfg.Burst < 1 {
		cfg.Burst = max(1, int(math.Ceil(cfg.RPS)))
	}
	if cfg.MaxClients < 1 {
		cfg.MaxClients = DefaultMaxClients
	}
	if cfg.IdleTTL <= 0 {
		cfg.IdleTTL = DefaultIdleTTL
	}
	if cfg.Clock == nil {
		cfg.Clock = wallClock{}
	}
	return &Limiter{cfg: cfg, clients: map[string]*list.Element{}, lru: list.New()}
}

// Enabled reports whether the limiter limits anything (RPS > 0).
func (l *Limiter) Enabled() bool { return l != nil && l.cfg.RPS > 0 }

// Allow takes one token from key's bucket and tells whether the request may
// pass. When disabled it always allows, with a zero Limit.
func (l *Limiter) Allow(key string) Decision {
	if !l.Enabled() {
		return Decision{Allowed: true}
	}
	now := l.cfg.Clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evictIdle(now)
	b := l.bucket(key, now)
	allowed := b.AllowN(now, 1)
	tokens := b.TokensAt(now)
	d := Decision{
		Allowed:   allowed,
		Limit:     l.cfg.RPS,
		Remaining: max(0, int(math.Floor(tokens))),
		Reset:     l.timeFor(float64(l.cfg.Burst) - tokens),
	}
	if !allowed {
		d.RetryAfter = max(l.timeFor(1-tokens), time.Nanosecond)
	}
	return d
}

// timeFor is how long the bucket takes to gain n tokens.
func (l *Limiter) timeFor(n float64) time.Duration {
	if n <= 0 {
		return 0
	}
	ns := math.Ceil(n / l.cfg.RPS * float64(time.Second))
	if ns >= math.MaxInt64 {
		return math.MaxInt64
	}
	return time.Duration(ns)
}

// bucket returns key's bucket, creating it (and evicting the least recently
// seen client when full) if needed. l.mu must be held.
func (l *Limiter) bucket(key string, now time.Time) *rate.Limiter {
	if e, ok := l.clients[key]; ok {
		c := e.Value.(*client)
		c.seen = now
		l.lru.MoveToFront(e)
		return c.bucket
	}
	for len(l.clients) >= l.cfg.MaxClients {
		l.remove(l.lru.Back())
	}
	c := &client{key: key, bucket: rate.NewLimiter(rate.Limit(l.cfg.RPS), l.cfg.Burst), seen: now}
	l.clients[key] = l.lru.PushFront(c)
	return c.bucket
}

// evictIdle forgets clients not seen for IdleTTL. The LRU list is ordered
// by last sight, so this pops from its back: O(1) amortised per call.
// l.mu must be held.
func (l *Limiter) evictIdle(now time.Time) {
	for e := l.lru.Back(); e != nil; e = l.lru.Back() {
		if now.Sub(e.Value.(*client).seen) < l.cfg.IdleTTL {
			return
		}
		l.remove(e)
	}
}

func (l *Limiter) remove(e *list.Element) {
	c := l.lru.Remove(e).(*client)
	delete(l.clients, c.key)
	l.evictions++
}

// Len returns how many clients are tracked.
func (l *Limiter) Len() int {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.clients)
}

// Evictions returns how many clients were forgotten, idle or to make room.
func (l *Limiter) Evictions() uint64 {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.evictions
}
