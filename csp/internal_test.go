package csp

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/sandbox-broker/broker"
)

func TestPaginate(t *testing.T) {
	items := func(from, to int) []string {
		var out []string
		for i := from; i < to; i++ {
			out = append(out, fmt.Sprint(i))
		}
		return out
	}
	// server serves total items in pages of at most capSize; ignoreOffset
	// and ignoreLimit make it misbehave.
	type server struct {
		total, capSize            int
		ignoreOffset, ignoreLimit bool
	}
	serve := func(s server, calls *int) fetchPage[string] {
		return func(_ context.Context, limit, offset int) ([]string, error) {
			*calls++
			if s.ignoreLimit {
				limit = s.total
			}
			if s.ignoreOffset {
				offset = 0
			}
			limit = min(limit, s.capSize)
			from := min(offset, s.total)
			return items(from, min(from+limit, s.total)), nil
		}
	}
	tests := []struct {
		name      string
		srv       server
		limit     int
		wantN     int
		wantCalls int
		wantErr   bool
	}{
		{"Pages", server{total: 25, capSize: 100}, 10, 25, 3, false},
		{"ExactMultiple", server{total: 20, capSize: 100}, 10, 20, 3, false},
		{"Capped", server{total: 25, capSize: 4}, 10, 25, 7, false},
		{"CappedExact", server{total: 8, capSize: 4}, 10, 8, 3, false},
		{"ShortFirstPage", server{total: 3, capSize: 100}, 10, 3, 2, false},
		{"IgnoresBothShort", server{total: 3, capSize: 100, ignoreOffset: true, ignoreLimit: true}, 10, 3, 2, false},
		{"IgnoresBothLong", server{total: 30, capSize: 100, ignoreOffset: true, ignoreLimit: true}, 10, 30, 1, false},
		{"IgnoresOffset", server{total: 30, capSize: 100, ignoreOffset: true}, 10, 0, 3, true},                             // repeat, then the probe gets 11
		{"IgnoresBothExactPage", server{total: 10, capSize: 100, ignoreOffset: true, ignoreLimit: true}, 10, 10, 3, false}, // repeat, probe gets the same 10
		{"TooManyPages", server{total: 1000, capSize: 100}, 10, 0, 10, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			got, err := paginate(context.Background(), tt.limit, 10, serve(tt.srv, &calls),
				func(s string) string { return s })
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if len(got) != tt.wantN || calls != tt.wantCalls {
				t.Errorf("got %d items in %d calls, want %d in %d", len(got), calls, tt.wantN, tt.wantCalls)
			}
			if !tt.wantErr && !slices.Equal(got, items(0, tt.wantN)) {
				t.Errorf("items = %v", got)
			}
		})
	}

	t.Run("Dedupes", func(t *testing.T) {
		pages := [][]string{{"a", "b"}, {"b", "c"}, {"", ""}}
		calls := 0
		got, err := paginate(context.Background(), 2, 10, func(context.Context, int, int) ([]string, error) {
			calls++
			if calls > len(pages) {
				return nil, nil
			}
			return pages[calls-1], nil
		}, func(s string) string { return s })
		if err != nil || !slices.Equal(got, []string{"a", "b", "c", "", ""}) {
			t.Errorf("got %q, %v", got, err)
		}
	})

	t.Run("Error", func(t *testing.T) {
		boom := errors.New("boom")
		_, err := paginate(context.Background(), 2, 10, func(context.Context, int, int) ([]string, error) {
			return nil, boom
		}, func(s string) string { return s })
		if !errors.Is(err, boom) {
			t.Errorf("err = %v", err)
		}
	})
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"5", 5 * time.Second},
		{" 120 ", 2 * time.Minute},
		{"0", 0},
		{"-3", 0},
		{"soon", 0},
		{"99999999999999", maxRetryAfterHint},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},
	}
	for _, tt := range tests {
		if got := parseRetryAfter(tt.in, now); got != tt.want {
			t.Errorf("parseRetryAfter(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestParseCSPID(t *testing.T) {
	tests := []struct {
		raw  string
		want string
		ok   bool
	}{
		{"2009521", "2009521", true},
		{`"2009521"`, "2009521", true},
		{"", "", false},
		{"null", "", false},
		{`""`, "", false},
		{"1.5", "", false},
		{"-1", "", false},
		{`"abc"`, "", false},
	}
	for _, tt := range tests {
		got, ok := parseCSPID(json.RawMessage(tt.raw))
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseCSPID(%s) = %q, %v; want %q, %v", tt.raw, got, ok, tt.want, tt.ok)
		}
	}
}

func TestParseTime(t *testing.T) {
	tests := []struct {
		in   string
		want time.Time
	}{
		{"2025-03-27T16:53:47.605459Z", time.Date(2025, 3, 27, 16, 53, 47, 605459000, time.UTC)},
		{"2025-03-27T16:53:47+02:00", time.Date(2025, 3, 27, 14, 53, 47, 0, time.UTC)},
		{"2025-03-27T16:53:47.5", time.Date(2025, 3, 27, 16, 53, 47, 500000000, time.UTC)},
		{"", time.Time{}},
		{"yesterday", time.Time{}},
	}
	for _, tt := range tests {
		if got := parseTime(tt.in); !got.Equal(tt.want) {
			t.Errorf("parseTime(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestLastSegment(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"identity/accounts/3f2a-9b", "3f2a-9b"},
		{"3f2a-9b", "3f2a-9b"},
		{"infra/universal_service/a_b.c", "a_b.c"},
		{"identity/accounts/", ""},
		{"", ""},
		{"identity/accounts/..", ""},
		{"identity/accounts/a b", ""},
		{"identity/accounts/a%2F", ""},
	}
	for _, tt := range tests {
		got, err := lastSegment(tt.in)
		if got != tt.want || (err != nil) != (tt.want == "") {
			t.Errorf("lastSegment(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
		if err != nil && broker.ErrorCode(err) != broker.EINVALID {
			t.Errorf("lastSegment(%q) error code = %s", tt.in, broker.ErrorCode(err))
		}
	}
}

func fakeJWT(claims string) string {
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(`{"alg":"none"}`)) + "." + enc.EncodeToString([]byte(claims)) + ".sig"
}

func TestRefreshTime(t *testing.T) {
	now := time.Unix(1_750_000_000, 0)
	tests := []struct {
		name string
		jwt  string
		want time.Time
	}{
		{"OneHour", fakeJWT(fmt.Sprintf(`{"exp":%d}`, now.Add(time.Hour).Unix())), now.Add(50 * time.Minute)},
		{"Short", fakeJWT(fmt.Sprintf(`{"exp":%d}`, now.Add(4*time.Minute).Unix())), now.Add(2 * time.Minute)},
		{"FloatExp", fakeJWT(fmt.Sprintf(`{"exp":%d.0}`, now.Add(time.Hour).Unix())), now.Add(50 * time.Minute)},
		{"NoExp", fakeJWT(`{"sub":"x"}`), now.Add(jwtFallbackTTL)},
		{"Opaque", "not-a-jwt", now.Add(jwtFallbackTTL)},
		{"BadBase64", "a.!!!.c", now.Add(jwtFallbackTTL)},
	}
	for _, tt := range tests {
		if got := refreshTime(tt.jwt, now); !got.Equal(tt.want) {
			t.Errorf("%s: refreshTime = %s, want %s", tt.name, got, tt.want)
		}
	}
}

func TestSession(t *testing.T) {
	now := time.Unix(1_750_000_000, 0)
	signIns := 0
	s := &session{
		now: func() time.Time { return now },
		signIn: func(context.Context) (string, error) {
			signIns++
			return fakeJWT(fmt.Sprintf(`{"exp":%d,"n":%d}`, now.Add(time.Hour).Unix(), signIns)), nil
		},
	}
	ctx := context.Background()
	first, _ := s.token(ctx)
	if again, _ := s.token(ctx); again != first || signIns != 1 {
		t.Fatalf("second call signed in again (%d sign-ins)", signIns)
	}
	now = now.Add(51 * time.Minute) // within 10 minutes of exp
	second, _ := s.token(ctx)
	if second == first || signIns != 2 {
		t.Fatalf("no refresh near expiry (%d sign-ins)", signIns)
	}
	s.invalidate(first) // stale: ignored
	if got, _ := s.token(ctx); got != second {
		t.Error("invalidating an old token dropped the current one")
	}
	s.invalidate(second)
	if got, _ := s.token(ctx); got == second || signIns != 3 {
		t.Errorf("no sign-in after invalidate (%d sign-ins)", signIns)
	}
}

func TestBreakerHoldIsCapped(t *testing.T) {
	now := time.Unix(1_750_000_000, 0)
	b := newBreaker(breakerConfig{
		name:          "test",
		threshold:     100,
		maxRetryAfter: time.Minute,
		logger:        slog.New(slog.DiscardHandler),
		now:           func() time.Time { return now },
	})
	done, err := b.allow()
	if err != nil {
		t.Fatal(err)
	}
	done(&HTTPError{Status: http.StatusTooManyRequests, RetryAfterDur: time.Hour})

	_, err = b.allow()
	var ra broker.RetryAfterer
	if !errors.Is(err, broker.ErrCircuitOpen) || !errors.As(err, &ra) || ra.RetryAfter() != time.Minute {
		t.Fatalf("err = %v, want ErrCircuitOpen with a 1m hint", err)
	}
	if b.state() != StateOpen {
		t.Errorf("state = %s, want open", b.state())
	}
	now = now.Add(61 * time.Second)
	if _, err := b.allow(); err != nil {
		t.Errorf("still refused after the capped hold: %v", err)
	}

	// A Retry-After on another status does not hold.
	done, _ = b.allow()
	done(&HTTPError{Status: http.StatusInternalServerError, RetryAfterDur: time.Hour})
	if _, err := b.allow(); err != nil {
		t.Errorf("a 500 with Retry-After held the breaker: %v", err)
	}
}
