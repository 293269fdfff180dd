package csp_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/csp"
	"github.com/sandbox-broker/broker/fakecsp"
)

const testToken = "tok-3f9c2e-very-secret"

var quiet = slog.New(slog.DiscardHandler)

// mustFake starts a fake provider and returns it with its root URL.
func mustFake(t *testing.T, opts fakecsp.Options) (*fakecsp.Server, string) {
	t.Helper()
	if opts.Token == "" {
		opts.Token = testToken
	}
	fake := fakecsp.New(opts)
	ts := httptest.NewServer(fake)
	t.Cleanup(ts.Close)
	return fake, ts.URL
}

// newClient returns a client for the fake at root; configure tweaks it.
func newClient(root string, configure func(*csp.Config)) *csp.Client {
	cfg := csp.Config{BaseURL: root + "/v2", Token: testToken, Logger: quiet}
	if configure != nil {
		configure(&cfg)
	}
	return csp.New(cfg)
}

// transitions records breaker state changes.
type transitions struct {
	mu  sync.Mutex
	got []string
}

func (tr *transitions) record(name, from, to string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.got = append(tr.got, fmt.Sprintf("%s:%s->%s", name, from, to))
}

func (tr *transitions) String() string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return strings.Join(tr.got, " ")
}

func assertNoToken(t *testing.T, err error) {
	t.Helper()
	if err != nil && strings.Contains(err.Error(), testToken) {
		t.Errorf("error text contains the token: %v", err)
	}
}

func TestListAccounts(t *testing.T) {
	tests := []struct {
		name           string
		sandboxes      int
		serverPageSize int // 0: the server ignores _limit/_offset
		clientPageSize int
		wantRequests   int
	}{
		{"Paginated", 2500, 1000, 1000, 3},
		{"ExactMultiple", 2000, 1000, 1000, 3},
		{"SmallClientPages", 250, 1000, 100, 3},
		{"ServerCapsPages", 250, 100, 1000, 3},
		{"OneShortPage", 5, 1000, 1000, 2},                 // a second request tells "all" from "capped"
		{"ServerIgnoresParamsShort", 5, 0, 0, 2},           // page 2 repeats page 1
		{"ServerIgnoresParamsLong", 2500, 0, 1000, 1},      // more than _limit: everything
		{"ServerIgnoresParamsExactPage", 1000, 0, 1000, 3}, // a repeat of a full page, then a probe
		{"Empty", 0, 1000, 1000, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake, root := mustFake(t, fakecsp.Options{Sandboxes: tt.sandboxes, PageSize: tt.serverPageSize})
			c := newClient(root, func(c *csp.Config) { c.PageSize = tt.clientPageSize })

			accounts, err := c.ListAccounts(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(accounts) != tt.sandboxes {
				t.Errorf("got %d accounts, want %d", len(accounts), tt.sandboxes)
			}
			if got := fake.Requests()[fakecsp.ReqListAccounts]; got != tt.wantRequests {
				t.Errorf("made %d requests, want %d", got, tt.wantRequests)
			}
			seen := make(map[string]bool)
			for _, a := range accounts {
				if seen[a.ID] {
					t.Fatalf("duplicate account %s", a.ID)
				}
				seen[a.ID] = true
			}
		})
	}
}

func TestListAccounts_Mapping(t *testing.T) {
	fake, root := mustFake(t, fakecsp.Options{Sandboxes: 2, PageSize: 3})
	if _, err := fake.AddAccounts(
		fakecsp.Account{Name: "tenant", AccountType: "tenant"},
		fakecsp.Account{Name: "closed", State: "deleted"},
		fakecsp.Account{Name: "null-id", NoCSPID: true},
		fakecsp.Account{CSPID: 42, UUID: "abc-42", SFDCAccountID: "001X",
			CreatedAt: time.Date(2025, 3, 27, 16, 53, 47, 605459000, time.UTC)},
	); err != nil {
		t.Fatal(err)
	}
	first := fake.Accounts()[0]

	accounts, err := newClient(root, nil).ListAccounts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []broker.Account{
		{ID: "2000001", Name: "lab-0001", ExternalID: "identity/accounts/" + first.UUID,
			SFDCAccountID: "001SAND2000001", CreatedAt: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)},
		{ID: "2000002", Name: "lab-0002"},
		{ID: "42", Name: "sandbox-42", ExternalID: "identity/accounts/abc-42", SFDCAccountID: "001X",
			CreatedAt: time.Date(2025, 3, 27, 16, 53, 47, 605459000, time.UTC)},
	}
	if len(accounts) != len(want) {
		t.Fatalf("got %d accounts %+v, want %d", len(accounts), accounts, len(want))
	}
	for i, w := range want {
		got := accounts[i]
		if got.ID != w.ID || got.Name != w.Name {
			t.Errorf("account %d = %+v, want %+v", i, got, w)
		}
		if w.ExternalID != "" && (got.ExternalID != w.ExternalID || got.SFDCAccountID != w.SFDCAccountID ||
			!got.CreatedAt.Equal(w.CreatedAt)) {
			t.Errorf("account %d = %+v, want %+v", i, got, w)
		}
	}
}

func TestListAccounts_Errors(t *testing.T) {
	t.Run("BadToken", func(t *testing.T) {
		_, root := mustFake(t, fakecsp.Options{Sandboxes: 1, Token: "the-right-one"})
		c := newClient(root, func(c *csp.Config) { c.BreakerThreshold = 1 })
		_, err := c.ListAccounts(context.Background())
		var he *csp.HTTPError
		if !errors.As(err, &he) || he.Status != http.StatusUnauthorized {
			t.Fatalf("err = %v, want HTTP 401", err)
		}
		assertNoToken(t, err)
		if c.State() != csp.StateClosed {
			t.Errorf("a 401 changed the breaker to %s", c.State())
		}
	})

	t.Run("NoPartialList", func(t *testing.T) {
		fake := fakecsp.New(fakecsp.Options{Sandboxes: 30, PageSize: 10, Token: testToken})
		failSecond := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Query().Get("_offset") == "10" {
				http.Error(w, "boom", http.StatusBadGateway)
				return
			}
			fake.ServeHTTP(w, r)
		})
		ts := httptest.NewServer(failSecond)
		defer ts.Close()
		accounts, err := newClient(ts.URL, func(c *csp.Config) { c.PageSize = 10 }).ListAccounts(context.Background())
		if err == nil || accounts != nil {
			t.Fatalf("got %d accounts, err %v; want an error and no accounts", len(accounts), err)
		}
	})
}

func TestDeleteAccount(t *testing.T) {
	fake, root := mustFake(t, fakecsp.Options{Sandboxes: 3})
	accounts := fake.Accounts()
	c := newClient(root, nil)

	tests := []struct {
		name       string
		externalID string
		wantErr    error // nil, broker.ErrAccountGone, or errInvalid
		wantSent   bool
	}{
		{"OK", accounts[0].ExternalID(), nil, true},
		{"BareUUID", accounts[1].UUID, nil, true},
		{"AlreadyDeleted", accounts[0].ExternalID(), broker.ErrAccountGone, true},
		{"Unknown", "identity/accounts/0000-unknown", broker.ErrAccountGone, true},
		{"EmptyUUID", "identity/accounts/", errInvalid, false},
		{"Empty", "", errInvalid, false},
		{"DotDot", "identity/accounts/..", errInvalid, false},
		{"Query", "identity/accounts/x?y=1", errInvalid, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := fake.Deletes().Total
			err := c.DeleteAccount(context.Background(), tt.externalID)
			switch {
			case tt.wantErr == errInvalid:
				if broker.ErrorCode(err) != broker.EINVALID {
					t.Errorf("err = %v, want code %s", err, broker.EINVALID)
				}
			case !errors.Is(err, tt.wantErr):
				t.Errorf("err = %v, want %v", err, tt.wantErr)
			}
			if sent := fake.Deletes().Total > before; sent != tt.wantSent {
				t.Errorf("request sent = %v, want %v", sent, tt.wantSent)
			}
		})
	}
	if got := len(fake.Accounts()); got != 1 {
		t.Errorf("%d accounts left, want 1", got)
	}
}

var errInvalid = errors.New("invalid")

func TestBreaker_TripsOn5xxAndRecovers(t *testing.T) {
	fake, root := mustFake(t, fakecsp.Options{Sandboxes: 2})
	ext := fake.Accounts()[0].ExternalID()
	var tr transitions
	c := newClient(root, func(c *csp.Config) {
		c.BreakerThreshold = 3
		c.BreakerTimeout = 200 * time.Millisecond
		c.OnStateChange = tr.record
	})
	ctx := context.Background()

	fake.SetFaults(fakecsp.Faults{Outage: true, Status: http.StatusInternalServerError})
	for i := range 3 {
		err := c.DeleteAccount(ctx, ext)
		var he *csp.HTTPError
		if !errors.As(err, &he) || he.Status != http.StatusInternalServerError {
			t.Fatalf("call %d: err = %v, want HTTP 500", i+1, err)
		}
		assertNoToken(t, err)
	}
	if c.State() != csp.StateOpen {
		t.Fatalf("state = %s after 3 failures, want open", c.State())
	}

	// Open: refused without a request.
	err := c.DeleteAccount(ctx, ext)
	if !errors.Is(err, broker.ErrCircuitOpen) {
		t.Fatalf("err = %v, want ErrCircuitOpen", err)
	}
	var ra broker.RetryAfterer
	if !errors.As(err, &ra) || ra.RetryAfter() <= 0 || ra.RetryAfter() > 200*time.Millisecond {
		t.Errorf("open error retry-after hint = %v", err)
	}
	if _, err := c.ListAccounts(ctx); !errors.Is(err, broker.ErrCircuitOpen) {
		t.Errorf("ListAccounts err = %v, want ErrCircuitOpen", err)
	}
	if got := fake.Deletes().Total; got != 3 {
		t.Errorf("provider received %d deletes, want 3", got)
	}

	// Half-open: one failing probe opens it again.
	time.Sleep(250 * time.Millisecond)
	if c.State() != csp.StateHalfOpen {
		t.Fatalf("state = %s after the timeout, want half_open", c.State())
	}
	if err := c.DeleteAccount(ctx, ext); errors.Is(err, broker.ErrCircuitOpen) || err == nil {
		t.Fatalf("probe err = %v, want the provider's error", err)
	}
	if c.State() != csp.StateOpen {
		t.Fatalf("state = %s after a failed probe, want open", c.State())
	}

	// Half-open again: a successful probe closes it.
	fake.SetFaults(fakecsp.Faults{})
	time.Sleep(250 * time.Millisecond)
	if err := c.DeleteAccount(ctx, ext); err != nil {
		t.Fatalf("probe err = %v", err)
	}
	if c.State() != csp.StateClosed {
		t.Errorf("state = %s after a good probe, want closed", c.State())
	}
	if got := fake.Deletes().Total; got != 5 {
		t.Errorf("provider received %d deletes, want 5", got)
	}
	want := "eng_csp:closed->open eng_csp:open->half_open eng_csp:half_open->open " +
		"eng_csp:open->half_open eng_csp:half_open->closed"
	if got := tr.String(); got != want {
		t.Errorf("transitions:\n got %s\nwant %s", got, want)
	}
}

func TestBreaker_Classification(t *testing.T) {
	tests := []struct {
		name     string
		status   int
		wantOpen bool
	}{
		{"500", http.StatusInternalServerError, true},
		{"502", http.StatusBadGateway, true},
		{"429", http.StatusTooManyRequests, true},
		{"400", http.StatusBadRequest, false},
		{"401", http.StatusUnauthorized, false},
		{"403", http.StatusForbidden, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake, root := mustFake(t, fakecsp.Options{Sandboxes: 1})
			fake.SetFaults(fakecsp.Faults{Outage: true, Status: tt.status})
			c := newClient(root, func(c *csp.Config) { c.BreakerThreshold = 2 })
			for range 2 {
				_ = c.DeleteAccount(context.Background(), fake.Accounts()[0].UUID)
			}
			if open := c.State() == csp.StateOpen; open != tt.wantOpen {
				t.Errorf("open = %v, want %v", open, tt.wantOpen)
			}
		})
	}

	t.Run("404", func(t *testing.T) {
		_, root := mustFake(t, fakecsp.Options{})
		c := newClient(root, func(c *csp.Config) { c.BreakerThreshold = 1 })
		for range 3 {
			if err := c.DeleteAccount(context.Background(), "nope"); !errors.Is(err, broker.ErrAccountGone) {
				t.Fatalf("err = %v, want ErrAccountGone", err)
			}
		}
		if c.State() != csp.StateClosed {
			t.Errorf("404s changed the breaker to %s", c.State())
		}
	})

	t.Run("ConnectionRefused", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		root := "http://" + l.Addr().String()
		_ = l.Close()
		c := newClient(root, func(c *csp.Config) { c.BreakerThreshold = 2 })
		for range 2 {
			if _, err := c.ListAccounts(context.Background()); err == nil {
				t.Fatal("no error from a closed port")
			}
		}
		if c.State() != csp.StateOpen {
			t.Errorf("state = %s, want open", c.State())
		}
	})

	t.Run("CanceledContextIsNotAFailure", func(t *testing.T) {
		fake, root := mustFake(t, fakecsp.Options{Sandboxes: 1, Latency: time.Second})
		c := newClient(root, func(c *csp.Config) { c.BreakerThreshold = 1 })
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(20*time.Millisecond, cancel)
		if err := c.DeleteAccount(ctx, fake.Accounts()[0].UUID); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		if c.State() != csp.StateClosed {
			t.Errorf("a canceled call changed the breaker to %s", c.State())
		}
	})
}

func TestBreaker_RetryAfter(t *testing.T) {
	tests := []struct {
		name   string
		status int
	}{
		{"429", http.StatusTooManyRequests},
		{"503", http.StatusServiceUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake, root := mustFake(t, fakecsp.Options{Sandboxes: 1})
			ext := fake.Accounts()[0].ExternalID()
			c := newClient(root, func(c *csp.Config) { c.BreakerThreshold = 100 })
			fake.SetFaults(fakecsp.Faults{Outage: true, Status: tt.status, RetryAfter: 1})

			err := c.DeleteAccount(context.Background(), ext)
			var ra broker.RetryAfterer
			if !errors.As(err, &ra) || ra.RetryAfter() != time.Second {
				t.Fatalf("err = %v, want a RetryAfterer with 1s", err)
			}
			fake.SetFaults(fakecsp.Faults{})

			// The hold keeps the breaker open although the count did not trip it.
			err = c.DeleteAccount(context.Background(), ext)
			if !errors.Is(err, broker.ErrCircuitOpen) {
				t.Fatalf("err = %v, want ErrCircuitOpen during Retry-After", err)
			}
			if !errors.As(err, &ra) || ra.RetryAfter() <= 0 || ra.RetryAfter() > time.Second {
				t.Errorf("hold hint = %v, want (0, 1s]", ra.RetryAfter())
			}
			if c.State() != csp.StateOpen {
				t.Errorf("state = %s during the hold, want open", c.State())
			}
			if got := fake.Deletes().Total; got != 1 {
				t.Errorf("provider received %d deletes, want 1", got)
			}

			time.Sleep(1100 * time.Millisecond)
			if err := c.DeleteAccount(context.Background(), ext); err != nil {
				t.Fatalf("after the hold: %v", err)
			}
			if c.State() != csp.StateClosed {
				t.Errorf("state = %s, want closed", c.State())
			}
		})
	}
}

func TestTimeouts(t *testing.T) {
	tests := []struct {
		name      string
		configure func(*csp.Config)
	}{
		{"ReadTimeout", func(c *csp.Config) { c.ReadTimeout = 50 * time.Millisecond }},
		{"RequestTimeout", func(c *csp.Config) { c.RequestTimeout = 50 * time.Millisecond }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake, root := mustFake(t, fakecsp.Options{Sandboxes: 1, Latency: 500 * time.Millisecond})
			c := newClient(root, func(c *csp.Config) {
				c.BreakerThreshold = 2
				tt.configure(c)
			})
			ext := fake.Accounts()[0].ExternalID()
			for i := range 2 {
				start := time.Now()
				err := c.DeleteAccount(context.Background(), ext)
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					t.Fatalf("call %d: err = %v, want a timeout", i+1, err)
				}
				if d := time.Since(start); d > 400*time.Millisecond {
					t.Errorf("call %d took %s", i+1, d)
				}
			}
			if c.State() != csp.StateOpen {
				t.Errorf("state = %s after 2 timeouts, want open", c.State())
			}
			if err := c.DeleteAccount(context.Background(), ext); !errors.Is(err, broker.ErrCircuitOpen) {
				t.Errorf("err = %v, want ErrCircuitOpen", err)
			}
		})
	}
}

func TestTokenNeverInErrors(t *testing.T) {
	// A provider that echoes the Authorization header in its error body.
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "bad request from "+r.Header.Get("Authorization"), http.StatusInternalServerError)
	}))
	defer echo.Close()
	c := newClient(echo.URL, nil)

	_, err := c.ListAccounts(context.Background())
	if err == nil || !strings.Contains(err.Error(), "[redacted]") {
		t.Errorf("err = %v, want the echoed token redacted", err)
	}
	assertNoToken(t, err)
	err = c.DeleteAccount(context.Background(), "identity/accounts/x")
	assertNoToken(t, err)
}

func TestConcurrentUse(t *testing.T) {
	fake, root := mustFake(t, fakecsp.Options{Sandboxes: 100, PageSize: 10, ErrorRate: 0.05, Seed: 7})
	c := newClient(root, func(c *csp.Config) { c.BreakerThreshold = 1000 })
	var wg sync.WaitGroup
	for i, a := range fake.Accounts() {
		wg.Go(func() {
			err := c.DeleteAccount(context.Background(), a.ExternalID())
			assertNoToken(t, err)
			if i%20 == 0 {
				_, _ = c.ListAccounts(context.Background())
			}
		})
	}
	wg.Wait()
	if d := fake.Deletes(); d.Total != 100 {
		t.Errorf("provider received %d deletes, want 100", d.Total)
	}
}
