package ratelimit_test

import (
	"fmt"
	"net"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/sandbox-broker/broker/internal/fakeclock"
	"github.com/sandbox-broker/broker/ratelimit"
)

func newClock() *fakeclock.Clock { return fakeclock.New(time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)) }

func TestBurstAndRefill(t *testing.T) {
	clock := newClock()
	l := ratelimit.New(ratelimit.Config{RPS: 2, Burst: 4, Clock: clock})
	for i := range 4 {
		d := l.Allow("a")
		if !d.Allowed || d.Remaining != 3-i || d.Limit != 2 {
			t.Fatalf("request %d: %+v", i, d)
		}
		// (4 - remaining) tokens missing at 2/s.
		if want := time.Duration(i+1) * 500 * time.Millisecond; d.Reset != want {
			t.Fatalf("request %d: reset %v, want %v", i, d.Reset, want)
		}
	}
	d := l.Allow("a")
	if d.Allowed || d.Remaining != 0 || d.RetryAfter != 500*time.Millisecond || d.Reset != 2*time.Second {
		t.Fatalf("over the burst: %+v", d)
	}
	if other := l.Allow("b"); !other.Allowed || other.Remaining != 3 {
		t.Fatalf("another client is limited too: %+v", other)
	}
	clock.Add(250 * time.Millisecond)
	if d := l.Allow("a"); d.Allowed || d.RetryAfter != 250*time.Millisecond {
		t.Fatalf("half a token later: %+v", d)
	}
	clock.Add(250 * time.Millisecond)
	if d := l.Allow("a"); !d.Allowed || d.Remaining != 0 {
		t.Fatalf("one token later: %+v", d)
	}
	clock.Add(time.Hour)
	if d := l.Allow("a"); !d.Allowed || d.Remaining != 3 || d.Reset != 500*time.Millisecond {
		t.Fatalf("refilled bucket never exceeds the burst: %+v", d)
	}
}

func TestDisabled(t *testing.T) {
	var nilLimiter *ratelimit.Limiter
	for name, l := range map[string]*ratelimit.Limiter{"RPS0": ratelimit.New(ratelimit.Config{RPS: 0, Burst: 1}), "Nil": nilLimiter} {
		t.Run(name, func(t *testing.T) {
			if l.Enabled() {
				t.Fatal("enabled")
			}
			for range 1000 {
				if d := l.Allow("a"); !d.Allowed {
					t.Fatalf("disabled limiter refused: %+v", d)
				}
			}
			if l.Len() != 0 {
				t.Fatalf("disabled limiter tracks %d clients", l.Len())
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	l := ratelimit.New(ratelimit.Config{RPS: 2.5, Clock: newClock()})
	n := 0
	for l.Allow("a").Allowed {
		n++
	}
	if n != 3 {
		t.Fatalf("default burst = %d, want ceil(RPS) = 3", n)
	}
}

func TestBoundedMemory(t *testing.T) {
	clock := newClock()
	l := ratelimit.New(ratelimit.Config{RPS: 1, Burst: 1, MaxClients: 3, IdleTTL: time.Minute, Clock: clock})
	for _, k := range []string{"a", "b", "c"} {
		l.Allow(k)
		clock.Add(time.Second)
	}
	l.Allow("a") // a is now the most recently seen; b the least
	l.Allow("d") // full: b is forgotten
	if l.Len() != 3 || l.Evictions() != 1 {
		t.Fatalf("len %d evictions %d, want 3 and 1", l.Len(), l.Evictions())
	}
	if d := l.Allow("b"); !d.Allowed {
		t.Fatalf("b was not the one evicted (its bucket is still empty): %+v", d)
	}
	if d := l.Allow("a"); d.Allowed {
		t.Fatalf("a was evicted although recently seen: %+v", d)
	}

	// Many distinct clients never grow it beyond MaxClients.
	for i := range 10_000 {
		l.Allow(fmt.Sprintf("spray-%d", i))
	}
	if l.Len() != 3 {
		t.Fatalf("len %d after a spray, want 3", l.Len())
	}

	// Idle clients are forgotten.
	clock.Add(time.Minute)
	l.Allow("e")
	if l.Len() != 1 {
		t.Fatalf("len %d after IdleTTL, want only the new client", l.Len())
	}
}

func TestConcurrent(t *testing.T) {
	l := ratelimit.New(ratelimit.Config{RPS: 1e-3, Burst: 100, MaxClients: 50})
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := 0
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				d := l.Allow("shared")
				l.Allow(fmt.Sprintf("c-%d-%d", g, i%20))
				if d.Allowed {
					mu.Lock()
					allowed++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if allowed < 100 || allowed > 101 { // at most one token refills at 1e-3/s
		t.Fatalf("%d requests of one client allowed concurrently, want the burst of 100", allowed)
	}
	if l.Len() > 50 {
		t.Fatalf("len %d > MaxClients", l.Len())
	}
}

func mustCIDRs(t *testing.T, cidrs ...string) []*net.IPNet {
	t.Helper()
	var out []*net.IPNet
	for _, c := range cidrs {
		_, n, err := net.ParseCIDR(c)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, n)
	}
	return out
}

func TestClientIP(t *testing.T) {
	trusted := mustCIDRs(t, "10.0.0.0/8", "fd00::/8")
	tests := []struct {
		name   string
		remote string
		xff    []string
		want   string
	}{
		{"DirectNoHeader", "203.0.113.7:5555", nil, "203.0.113.7"},
		{"UntrustedPeerHeaderIgnored", "203.0.113.7:5555", []string{"198.51.100.1"}, "203.0.113.7"},
		{"TrustedProxy", "10.0.0.2:443", []string{"198.51.100.1"}, "198.51.100.1"},
		{"SpoofedLeftEntryIgnored", "10.0.0.2:443", []string{"1.1.1.1, 198.51.100.1"}, "198.51.100.1"},
		{"ProxyChain", "10.0.0.2:443", []string{"1.1.1.1, 198.51.100.1, 10.0.0.9"}, "198.51.100.1"},
		{"RepeatedHeaderLines", "10.0.0.2:443", []string{"1.1.1.1", "198.51.100.1, 10.0.0.9"}, "198.51.100.1"},
		{"AllTrusted", "10.0.0.2:443", []string{"10.1.1.1, 10.0.0.9"}, "10.1.1.1"},
		{"TrustedNoHeader", "10.0.0.2:443", nil, "10.0.0.2"},
		{"MalformedStopsAtLastTrusted", "10.0.0.2:443", []string{"198.51.100.1, garbage, 10.0.0.9"}, "10.0.0.9"},
		{"EntryWithPort", "10.0.0.2:443", []string{"198.51.100.1:1234"}, "198.51.100.1"},
		{"IPv6Client", "[fd00::1]:443", []string{"2001:db8::1"}, "2001:db8::1"},
		{"IPv6Untrusted", "[2001:db8::2]:443", []string{"198.51.100.1"}, "2001:db8::2"},
		{"IPv4MappedPeer", "[::ffff:10.0.0.2]:443", []string{"198.51.100.1"}, "198.51.100.1"},
		{"NoTrustedProxies", "10.0.0.2:443", []string{"198.51.100.1"}, "10.0.0.2"},
		{"RemoteAddrWithoutPort", "203.0.113.7", nil, "203.0.113.7"},
		{"NotAnIP", "pipe", []string{"198.51.100.1"}, "pipe"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/v1/allocate", nil)
			r.RemoteAddr = tt.remote
			for _, v := range tt.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			tr := trusted
			if tt.name == "NoTrustedProxies" {
				tr = nil
			}
			if got := ratelimit.ClientIP(r, tr); got != tt.want {
				t.Fatalf("ClientIP = %q, want %q", got, tt.want)
			}
		})
	}
}
