package csp_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/csp"
	"github.com/sandbox-broker/broker/fakecsp"
)

const (
	svcEmail    = "svc@example.com"
	svcPassword = "pw-8d1e-very-secret"
)

// counts records the hook's metric callbacks.
type counts struct {
	mu       sync.Mutex
	results  []string
	auths    []string
	services int
}

func (c *counts) result(o string) { c.mu.Lock(); c.results = append(c.results, o); c.mu.Unlock() }
func (c *counts) auth(o string)   { c.mu.Lock(); c.auths = append(c.auths, o); c.mu.Unlock() }
func (c *counts) deleted()        { c.mu.Lock(); c.services++; c.mu.Unlock() }

func (c *counts) snapshot() (results, auths string, services int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.results, ","), strings.Join(c.auths, ","), c.services
}

// niosFake starts a fake whose first account has two services named
// DefaultNIOSXaaSServiceName and one named "keep-me", and whose second
// account has none.
func niosFake(t *testing.T, opts fakecsp.Options) (*fakecsp.Server, string, []fakecsp.Account) {
	t.Helper()
	opts.Email, opts.Password = svcEmail, svcPassword
	if opts.Sandboxes == 0 {
		opts.Sandboxes = 2
	}
	fake, root := mustFake(t, opts)
	accounts := fake.Accounts()
	if _, err := fake.AddServices(accounts[0].UUID, csp.DefaultNIOSXaaSServiceName, 2); err != nil {
		t.Fatal(err)
	}
	if _, err := fake.AddServices(accounts[0].UUID, "keep-me", 1); err != nil {
		t.Fatal(err)
	}
	return fake, root, accounts
}

func newHook(root string, c *counts, configure func(*csp.NIOSXaaSConfig)) *csp.NIOSXaaS {
	cfg := csp.DefaultNIOSXaaSConfig()
	cfg.BaseURL = root
	cfg.Email, cfg.Password = svcEmail, svcPassword
	cfg.Logger = quiet
	cfg.OnResult, cfg.OnAuth, cfg.OnServiceDeleted = c.result, c.auth, c.deleted
	if configure != nil {
		configure(&cfg)
	}
	return csp.NewNIOSXaaS(cfg)
}

func sandboxOf(a fakecsp.Account) broker.Sandbox {
	return broker.Sandbox{ID: "1", Name: a.Name, ExternalID: a.ExternalID()}
}

func serviceNames(t *testing.T, fake *fakecsp.Server, uuid string) string {
	t.Helper()
	a, ok := fake.Account(uuid)
	if !ok {
		t.Fatalf("account %s not found", uuid)
	}
	var names []string
	for _, s := range a.Services {
		names = append(names, s.Name)
	}
	return strings.Join(names, ",")
}

func TestNIOSXaaS_BeforeDelete(t *testing.T) {
	tests := []struct {
		name         string
		configure    func(*csp.NIOSXaaSConfig)
		account      int // index in the fake's accounts
		wantLeft     string
		wantResult   string
		wantServices int
	}{
		{"ShadowMode", nil, 0, "Instrqt-SaaS,Instrqt-SaaS,keep-me", csp.OutcomeShadow, 0},
		{"DeletesMatching", func(c *csp.NIOSXaaSConfig) { c.ShadowMode = false }, 0, "keep-me", csp.OutcomeSuccess, 2},
		{"EmptyNameDeletesAll", func(c *csp.NIOSXaaSConfig) { c.ShadowMode, c.ServiceName = false, "" }, 0, "", csp.OutcomeSuccess, 3},
		{"NoMatch", func(c *csp.NIOSXaaSConfig) { c.ShadowMode, c.ServiceName = false, "other" }, 0, "Instrqt-SaaS,Instrqt-SaaS,keep-me", csp.OutcomeSkipped, 0},
		{"NoServices", func(c *csp.NIOSXaaSConfig) { c.ShadowMode = false }, 1, "", csp.OutcomeSkipped, 0},
		{"Paginated", func(c *csp.NIOSXaaSConfig) { c.ShadowMode, c.PageSize = false, 1 }, 0, "keep-me", csp.OutcomeSuccess, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake, root, accounts := niosFake(t, fakecsp.Options{PageSize: 2})
			var c counts
			hook := newHook(root, &c, tt.configure)

			if err := hook.BeforeDelete(context.Background(), sandboxOf(accounts[tt.account])); err != nil {
				t.Fatal(err)
			}
			if got := serviceNames(t, fake, accounts[tt.account].UUID); got != tt.wantLeft {
				t.Errorf("services left = %q, want %q", got, tt.wantLeft)
			}
			results, auths, services := c.snapshot()
			if results != tt.wantResult || auths != csp.AuthSuccess || services != tt.wantServices {
				t.Errorf("results %q, auths %q, services %d; want %q, %q, %d",
					results, auths, services, tt.wantResult, csp.AuthSuccess, tt.wantServices)
			}
		})
	}
}

func TestNIOSXaaS_SignsInOnce(t *testing.T) {
	fake, root := mustFake(t, fakecsp.Options{Sandboxes: 20, Email: svcEmail, Password: svcPassword, ServicesPerAccount: 1})
	var c counts
	hook := newHook(root, &c, func(c *csp.NIOSXaaSConfig) { c.ShadowMode = false })

	var wg sync.WaitGroup
	for _, a := range fake.Accounts() {
		wg.Go(func() {
			if err := hook.BeforeDelete(context.Background(), sandboxOf(a)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	req := fake.Requests()
	if req[fakecsp.ReqSignIn] != 1 || req[fakecsp.ReqAccountSwitch] != 20 || req[fakecsp.ReqDeleteService] != 20 {
		t.Errorf("requests = %v, want 1 sign-in, 20 switches, 20 deletes", req)
	}

	// After the provider drops the session, the hook signs in again once.
	fake.ExpireSessions()
	if _, err := fake.AddServices(fake.Accounts()[0].UUID, "", 1); err != nil {
		t.Fatal(err)
	}
	if err := hook.BeforeDelete(context.Background(), sandboxOf(fake.Accounts()[0])); err != nil {
		t.Fatal(err)
	}
	if got := fake.Requests()[fakecsp.ReqSignIn]; got != 2 {
		t.Errorf("%d sign-ins after the session expired, want 2", got)
	}
	_, auths, services := c.snapshot()
	if auths != "success,success" || services != 21 {
		t.Errorf("auths %q, services %d", auths, services)
	}
}

func TestNIOSXaaS_Failures(t *testing.T) {
	t.Run("MissingCredentials", func(t *testing.T) {
		fake, root, accounts := niosFake(t, fakecsp.Options{})
		var c counts
		hook := newHook(root, &c, func(c *csp.NIOSXaaSConfig) { c.Password = "" })
		err := hook.BeforeDelete(context.Background(), sandboxOf(accounts[0]))
		if !errors.Is(err, csp.ErrMissingCredentials) {
			t.Errorf("err = %v, want ErrMissingCredentials", err)
		}
		if n := len(fake.Requests()); n != 0 {
			t.Errorf("made requests: %v", fake.Requests())
		}
		if results, _, _ := c.snapshot(); results != csp.OutcomeError {
			t.Errorf("results = %q", results)
		}
	})

	t.Run("BadPassword", func(t *testing.T) {
		_, root, accounts := niosFake(t, fakecsp.Options{})
		var c counts
		hook := newHook(root, &c, func(c *csp.NIOSXaaSConfig) { c.Password = "wrong-" + svcPassword })
		err := hook.BeforeDelete(context.Background(), sandboxOf(accounts[0]))
		if err == nil {
			t.Fatal("no error with a bad password")
		}
		if strings.Contains(err.Error(), svcPassword) {
			t.Errorf("error text contains the password: %v", err)
		}
		if results, auths, _ := c.snapshot(); results != csp.OutcomeFailed || auths != csp.AuthFailed {
			t.Errorf("results %q, auths %q", results, auths)
		}
	})

	t.Run("Outage", func(t *testing.T) {
		fake, root, accounts := niosFake(t, fakecsp.Options{})
		fake.SetFaults(fakecsp.Faults{Outage: true})
		var c counts
		hook := newHook(root, &c, func(c *csp.NIOSXaaSConfig) { c.ShadowMode, c.BreakerThreshold = false, 2 })
		for range 2 {
			if err := hook.BeforeDelete(context.Background(), sandboxOf(accounts[0])); err == nil {
				t.Fatal("no error during an outage")
			}
		}
		if hook.State() != csp.StateOpen {
			t.Fatalf("state = %s, want open", hook.State())
		}
		before := fake.Requests()[fakecsp.ReqSignIn]
		err := hook.BeforeDelete(context.Background(), sandboxOf(accounts[0]))
		if !errors.Is(err, broker.ErrCircuitOpen) {
			t.Errorf("err = %v, want ErrCircuitOpen", err)
		}
		if got := fake.Requests()[fakecsp.ReqSignIn]; got != before {
			t.Errorf("an open breaker let %d sign-ins through", got-before)
		}
		if results, auths, _ := c.snapshot(); results != "failed,failed,error" || auths != "failed,failed" {
			t.Errorf("results %q, auths %q", results, auths)
		}
	})

	t.Run("DeleteFails", func(t *testing.T) {
		fake, _, accounts := niosFake(t, fakecsp.Options{})
		failDeletes := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodDelete {
				http.Error(w, "nope", http.StatusInternalServerError)
				return
			}
			fake.ServeHTTP(w, r)
		}))
		defer failDeletes.Close()
		var c counts
		hook := newHook(failDeletes.URL, &c, func(c *csp.NIOSXaaSConfig) { c.ShadowMode = false })
		err := hook.BeforeDelete(context.Background(), sandboxOf(accounts[0]))
		var he *csp.HTTPError
		if !errors.As(err, &he) || he.Status != http.StatusInternalServerError {
			t.Errorf("err = %v, want an HTTP 500", err)
		}
		if results, _, services := c.snapshot(); results != csp.OutcomeFailed || services != 0 {
			t.Errorf("results %q, services %d", results, services)
		}
	})

	t.Run("AccountGone", func(t *testing.T) {
		fake, root, accounts := niosFake(t, fakecsp.Options{})
		fake.RemoveAccount(accounts[0].UUID)
		var c counts
		hook := newHook(root, &c, func(c *csp.NIOSXaaSConfig) { c.ShadowMode = false })
		if err := hook.BeforeDelete(context.Background(), sandboxOf(accounts[0])); err != nil {
			t.Errorf("err = %v, want nil for an account that is gone", err)
		}
		if results, _, _ := c.snapshot(); results != csp.OutcomeSkipped {
			t.Errorf("results = %q", results)
		}
	})

	t.Run("NoExternalID", func(t *testing.T) {
		_, root, _ := niosFake(t, fakecsp.Options{})
		var c counts
		hook := newHook(root, &c, nil)
		err := hook.BeforeDelete(context.Background(), broker.Sandbox{ID: "1"})
		if broker.ErrorCode(err) != broker.EINVALID {
			t.Errorf("err = %v, want EINVALID", err)
		}
	})
}
