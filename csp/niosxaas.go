package csp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/sandbox-broker/broker"
)

// Outcomes of one NIOSXaaS cleanup, passed to NIOSXaaSConfig.OnResult.
const (
	OutcomeSuccess = "success" // every matching service was deleted
	OutcomeSkipped = "skipped" // nothing to delete (no matching service, or the account is gone)
	OutcomeShadow  = "shadow"  // shadow mode: matching services were only logged
	OutcomeFailed  = "failed"  // the provider refused a step (an HTTP error status)
	OutcomeError   = "error"   // no answer: network, timeout, open breaker, bad config or answer
)

// Auth outcomes, passed to NIOSXaaSConfig.OnAuth on every sign-in.
const (
	AuthSuccess = "success"
	AuthFailed  = "failed"
)

// DefaultNIOSXaaSServiceName is the service name the Python service matched.
const DefaultNIOSXaaSServiceName = "Instrqt-SaaS"

const defaultNIOSXaaSTimeout = 30 * time.Second

// ErrMissingCredentials is returned by BeforeDelete when Email or Password
// is empty.
var ErrMissingCredentials = errors.New("missing NIOSXaaS email or password")

// errSwitchNotFound: the account switch answered 404 (the account is gone).
var errSwitchNotFound = errors.New("switch account: account not found")

// NIOSXaaSConfig configures the NIOSXaaS pre-delete hook.
//
// The zero values of ShadowMode (false: delete for real) and ServiceName
// (empty: every service) are the destructive ones; start from
// DefaultNIOSXaaSConfig, which sets shadow mode and the default name.
type NIOSXaaSConfig struct {
	BaseURL     string // e.g. https://csp.infoblox.com (no /v2)
	Email       string
	Password    string
	ServiceName string        // delete services with exactly this name; empty = all
	ShadowMode  bool          // log "would delete" and delete nothing
	Timeout     time.Duration // per request; default 30s
	PageSize    int           // _limit of service list pages; default 1000

	BreakerThreshold int           // default 5
	BreakerTimeout   time.Duration // default 60s
	MaxRetryAfter    time.Duration // default 10m
	// OnStateChange is called on breaker transitions (name BreakerNIOSXaaS);
	// see Config.OnStateChange.
	OnStateChange func(name, from, to string)

	// Optional metric hooks; they must be quick and safe for concurrent use.
	OnResult         func(outcome string) // once per BeforeDelete, an OutcomeXxx
	OnAuth           func(outcome string) // once per sign-in attempt, AuthSuccess or AuthFailed
	OnServiceDeleted func()               // once per service deleted (not for 404s)

	HTTPClient *http.Client // optional; replaces the Timeout-based client
	Logger     *slog.Logger // default slog.Default()
}

// DefaultNIOSXaaSConfig returns the safe defaults: shadow mode on, service
// name DefaultNIOSXaaSServiceName, 30s timeout.
func DefaultNIOSXaaSConfig() NIOSXaaSConfig {
	return NIOSXaaSConfig{
		ServiceName: DefaultNIOSXaaSServiceName,
		ShadowMode:  true,
		Timeout:     defaultNIOSXaaSTimeout,
	}
}

// NIOSXaaS deletes the NIOS-X-as-a-Service universal services a lab left
// in a sandbox account before the account itself is deleted. It implements
// broker.PreDeleteHook and is safe for concurrent use. The service
// account's JWT is cached across sandboxes.
type NIOSXaaS struct {
	cfg         NIOSXaaSConfig
	signInURL   string
	switchURL   string
	servicesURL string
	log         *slog.Logger
	br          *breaker
	call        *caller
	session     *session
}

var _ broker.PreDeleteHook = (*NIOSXaaS)(nil)

// universalService is one entry of the universal services list.
type universalService struct {
	ID   string `json:"id"` // infra/universal_service/<uuid>
	Name string `json:"name"`
}

// NewNIOSXaaS returns the hook for cfg.
func NewNIOSXaaS(cfg NIOSXaaSConfig) *NIOSXaaS {
	if cfg.Timeout <= 0 {
		cfg.Timeout = defaultNIOSXaaSTimeout
	}
	if cfg.PageSize <= 0 {
		cfg.PageSize = defaultPageSize
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = newHTTPClient(cfg.Timeout, cfg.Timeout)
	}
	br := newBreaker(breakerConfig{
		name:          BreakerNIOSXaaS,
		threshold:     cfg.BreakerThreshold,
		timeout:       cfg.BreakerTimeout,
		maxRetryAfter: cfg.MaxRetryAfter,
		onStateChange: cfg.OnStateChange,
		logger:        cfg.Logger,
	})
	base := strings.TrimRight(cfg.BaseURL, "/")
	h := &NIOSXaaS{
		cfg:         cfg,
		signInURL:   base + "/v2/session/users/sign_in",
		switchURL:   base + "/v2/session/account_switch",
		servicesURL: base + "/api/universalinfra/v1/universalservices",
		log:         cfg.Logger,
		br:          br,
		call:        &caller{hc: hc, br: br, timeout: cfg.Timeout, secrets: []string{cfg.Password}},
	}
	h.session = &session{now: time.Now, signIn: h.signIn}
	return h
}

// State returns the breaker state: StateClosed, StateOpen or StateHalfOpen.
func (h *NIOSXaaS) State() string { return h.br.state() }

// BeforeDelete deletes the universal services of sb's account whose name
// matches ServiceName (all of them when it is empty); in shadow mode it only
// logs them. It returns nil when the account is clean (or would be, in
// shadow mode) and an error otherwise, so the caller retries later:
// ErrMissingCredentials, an error wrapping broker.ErrCircuitOpen, *HTTPError
// or a transport error.
func (h *NIOSXaaS) BeforeDelete(ctx context.Context, sb broker.Sandbox) error {
	start := time.Now()
	outcome, deleted, err := h.cleanup(ctx, sb)
	if h.cfg.OnResult != nil {
		h.cfg.OnResult(outcome)
	}
	attrs := []any{"sandbox_id", sb.ID, "external_id", sb.ExternalID, "outcome", outcome,
		"services_deleted", deleted, "shadow_mode", h.cfg.ShadowMode,
		"duration_ms", time.Since(start).Milliseconds()}
	if err != nil {
		h.log.WarnContext(ctx, "niosxaas cleanup failed", append(attrs, "error", err)...)
		return fmt.Errorf("niosxaas: sandbox %s: %w", sb.ID, err)
	}
	h.log.InfoContext(ctx, "niosxaas cleanup", attrs...)
	return nil
}

// cleanup returns the outcome, the number of services deleted and the error.
func (h *NIOSXaaS) cleanup(ctx context.Context, sb broker.Sandbox) (string, int, error) {
	if h.cfg.Email == "" || h.cfg.Password == "" {
		return OutcomeError, 0, ErrMissingCredentials
	}
	if _, err := lastSegment(sb.ExternalID); err != nil {
		return OutcomeError, 0, err
	}
	token, err := h.accountToken(ctx, sb.ExternalID)
	if errors.Is(err, errSwitchNotFound) {
		// Sign-in worked, so the URL is right: the account itself is gone
		// and so are its services.
		h.log.WarnContext(ctx, "niosxaas: account not found on switch, nothing to clean",
			"sandbox_id", sb.ID, "external_id", sb.ExternalID)
		return OutcomeSkipped, 0, nil
	}
	if err != nil {
		return outcomeOf(err), 0, err
	}
	services, err := h.listServices(ctx, token)
	if err != nil {
		return outcomeOf(err), 0, fmt.Errorf("list services: %w", err)
	}
	var targets []universalService
	for _, s := range services {
		if h.cfg.ServiceName == "" || s.Name == h.cfg.ServiceName {
			targets = append(targets, s)
		}
	}
	if len(targets) == 0 {
		return OutcomeSkipped, 0, nil
	}
	if h.cfg.ShadowMode {
		for _, s := range targets {
			h.log.InfoContext(ctx, "niosxaas: would delete universal service (shadow mode)",
				"sandbox_id", sb.ID, "service_id", s.ID, "service_name", s.Name)
		}
		return OutcomeShadow, 0, nil
	}
	return h.deleteServices(ctx, sb, token, targets)
}

// deleteServices deletes every target, going on after a failure unless the
// breaker opens or the context ends.
func (h *NIOSXaaS) deleteServices(ctx context.Context, sb broker.Sandbox, token string, targets []universalService) (string, int, error) {
	var errs []error
	deleted := 0
	for _, s := range targets {
		gone, err := h.deleteService(ctx, token, s)
		if err != nil {
			errs = append(errs, fmt.Errorf("delete service %s: %w", s.ID, err))
			if errors.Is(err, broker.ErrCircuitOpen) || ctx.Err() != nil {
				break
			}
			continue
		}
		deleted++
		if gone {
			continue
		}
		h.log.InfoContext(ctx, "niosxaas: deleted universal service",
			"sandbox_id", sb.ID, "service_id", s.ID, "service_name", s.Name)
		if h.cfg.OnServiceDeleted != nil {
			h.cfg.OnServiceDeleted()
		}
	}
	if len(errs) == 0 {
		return OutcomeSuccess, deleted, nil
	}
	err := fmt.Errorf("%d of %d services not deleted: %w", len(targets)-deleted, len(targets), errors.Join(errs...))
	return outcomeOf(errs[0]), deleted, err
}

// accountToken returns a JWT scoped to the account, signing in again once
// if the cached service-account JWT was refused.
func (h *NIOSXaaS) accountToken(ctx context.Context, externalID string) (string, error) {
	for attempt := 1; ; attempt++ {
		userJWT, err := h.session.token(ctx)
		if err != nil {
			return "", fmt.Errorf("sign in: %w", err)
		}
		var resp struct {
			JWT string `json:"jwt"`
		}
		_, err = h.call.do(ctx, request{
			method: http.MethodPost,
			url:    h.switchURL,
			auth:   "Bearer " + userJWT,
			body:   map[string]string{"id": externalID},
			out:    &resp,
		})
		if isStatus(err, http.StatusUnauthorized) && attempt == 1 {
			h.session.invalidate(userJWT)
			continue
		}
		if isStatus(err, http.StatusNotFound) {
			return "", errSwitchNotFound
		}
		if err != nil {
			return "", fmt.Errorf("switch account: %w", err)
		}
		if resp.JWT == "" {
			return "", errors.New("switch account: answer has no jwt")
		}
		return resp.JWT, nil
	}
}

// signIn signs the service account in and returns its JWT.
func (h *NIOSXaaS) signIn(ctx context.Context) (string, error) {
	var resp struct {
		JWT string `json:"jwt"`
	}
	_, err := h.call.do(ctx, request{
		method: http.MethodPost,
		url:    h.signInURL,
		body:   map[string]string{"email": h.cfg.Email, "password": h.cfg.Password},
		out:    &resp,
	})
	if errors.Is(err, broker.ErrCircuitOpen) {
		return "", err // not an attempt
	}
	if err == nil && resp.JWT == "" {
		err = errors.New("answer has no jwt")
	}
	if h.cfg.OnAuth != nil {
		if err != nil {
			h.cfg.OnAuth(AuthFailed)
		} else {
			h.cfg.OnAuth(AuthSuccess)
		}
	}
	return resp.JWT, err
}

func (h *NIOSXaaS) listServices(ctx context.Context, token string) ([]universalService, error) {
	fetch := func(ctx context.Context, limit, offset int) ([]universalService, error) {
		var page struct {
			Results []universalService `json:"results"`
		}
		_, err := h.call.do(ctx, request{
			method: http.MethodGet,
			url:    pageURL(h.servicesURL, limit, offset),
			auth:   "Bearer " + token,
			out:    &page,
		})
		return page.Results, err
	}
	return paginate(ctx, h.cfg.PageSize, maxPages, fetch, func(s universalService) string { return s.ID })
}

// deleteService deletes one service; gone is true when it was already
// gone (404), which counts as deleted.
func (h *NIOSXaaS) deleteService(ctx context.Context, token string, s universalService) (gone bool, err error) {
	id, err := lastSegment(s.ID)
	if err != nil {
		return false, err
	}
	status, err := h.call.do(ctx, request{
		method:   http.MethodDelete,
		url:      h.servicesURL + "/" + id,
		auth:     "Bearer " + token,
		allow404: true,
	})
	return status == http.StatusNotFound, err
}

// outcomeOf maps an error to OutcomeFailed (the provider answered with an
// error status) or OutcomeError (anything else).
func outcomeOf(err error) string {
	var he *HTTPError
	if errors.As(err, &he) {
		return OutcomeFailed
	}
	return OutcomeError
}

func isStatus(err error, status int) bool {
	var he *HTTPError
	return errors.As(err, &he) && he.Status == status
}
