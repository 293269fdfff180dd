// Package csp talks to Infoblox CSP, the provider where sandbox accounts
// live. Client implements broker.Provider and NIOSXaaS implements
// broker.PreDeleteHook. Every call goes through a circuit breaker that
// counts network errors, timeouts, 5xx and 429 as failures.
package csp

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sandbox-broker/broker"
)

// Client defaults.
const (
	defaultConnectTimeout = 5 * time.Second
	defaultReadTimeout    = 15 * time.Second
	defaultRequestTimeout = 60 * time.Second
)

// Config configures a Client. Zero values take the documented defaults.
type Config struct {
	BaseURL string // e.g. https://csp.infoblox.com/v2, no trailing slash needed
	Token   string // CSP API token, sent as "Authorization: Token <token>"

	ConnectTimeout time.Duration // TCP connect and TLS handshake; default 5s
	ReadTimeout    time.Duration // wait for response headers; default 15s
	RequestTimeout time.Duration // whole request incl. body; default 60s
	PageSize       int           // _limit of account list pages; default 1000 (a lower server cap is detected)

	BreakerThreshold int           // consecutive failures that open the breaker; default 5
	BreakerTimeout   time.Duration // open -> half-open; default 60s
	MaxRetryAfter    time.Duration // longest Retry-After hold honoured; default 10m
	// OnStateChange, when set, is called on every breaker transition with
	// the breaker name (BreakerCSP) and the StateXxx names. It runs under
	// the breaker's lock: it must be quick and must not call State.
	OnStateChange func(name, from, to string)

	HTTPClient *http.Client // optional; replaces the timeouts above except RequestTimeout
	Logger     *slog.Logger // default slog.Default()
}

// Client is the CSP provider client. It is safe for concurrent use.
type Client struct {
	accountsURL string
	deleteURL   string
	auth        string
	pageSize    int
	log         *slog.Logger
	br          *breaker
	call        *caller
}

var _ broker.Provider = (*Client)(nil)

// New returns a Client for cfg.
func New(cfg Config) *Client {
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = defaultConnectTimeout
	}
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = defaultReadTimeout
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = defaultRequestTimeout
	}
	if cfg.PageSize <= 0 {
		cfg.PageSize = defaultPageSize
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = newHTTPClient(cfg.ConnectTimeout, cfg.ReadTimeout)
	}
	br := newBreaker(breakerConfig{
		name:          BreakerCSP,
		threshold:     cfg.BreakerThreshold,
		timeout:       cfg.BreakerTimeout,
		maxRetryAfter: cfg.MaxRetryAfter,
		onStateChange: cfg.OnStateChange,
		logger:        cfg.Logger,
	})
	base := strings.TrimRight(cfg.BaseURL, "/")
	return &Client{
		accountsURL: base + "/current_user/accounts",
		deleteURL:   base + "/sandbox/accounts/",
		auth:        "Token " + cfg.Token,
		pageSize:    cfg.PageSize,
		log:         cfg.Logger,
		br:          br,
		call:        &caller{hc: hc, br: br, timeout: cfg.RequestTimeout, secrets: []string{cfg.Token}},
	}
}

// State returns the breaker state: StateClosed, StateOpen or StateHalfOpen.
func (c *Client) State() string { return c.br.state() }

// accountRecord is one entry of GET /current_user/accounts.
type accountRecord struct {
	AccountType   string          `json:"account_type"`
	State         string          `json:"state"`
	ID            string          `json:"id"` // identity/accounts/<uuid>
	Name          string          `json:"name"`
	CSPID         json.RawMessage `json:"csp_id"`
	CreatedAt     string          `json:"created_at"`
	SFDCAccountID string          `json:"sfdc_account_id"`
}

// ListAccounts returns every active sandbox account, following _limit and
// _offset pages (see paginate: one extra request when everything fits in the
// first page). Records without a csp_id are skipped with a warning, as are
// duplicate csp_ids. It returns an error
// wrapping broker.ErrCircuitOpen when the breaker refused a page, and
// *HTTPError for unexpected statuses; it never returns a partial list.
func (c *Client) ListAccounts(ctx context.Context) ([]broker.Account, error) {
	records, err := paginate(ctx, c.pageSize, maxPages, c.fetchAccounts,
		func(r accountRecord) string { return r.ID })
	if err != nil {
		return nil, fmt.Errorf("csp: list accounts: %w", err)
	}
	accounts := make([]broker.Account, 0, len(records))
	seen := make(map[string]struct{}, len(records))
	for _, r := range records {
		if r.AccountType != "sandbox" || r.State != "active" {
			continue
		}
		a, ok := c.toAccount(r)
		if !ok {
			continue
		}
		if _, dup := seen[a.ID]; dup {
			c.log.Warn("csp: duplicate csp_id, keeping the first record",
				"csp_id", a.ID, "external_id", a.ExternalID)
			continue
		}
		seen[a.ID] = struct{}{}
		accounts = append(accounts, a)
	}
	return accounts, nil
}

func (c *Client) fetchAccounts(ctx context.Context, limit, offset int) ([]accountRecord, error) {
	var page struct {
		Results []accountRecord `json:"results"`
	}
	_, err := c.call.do(ctx, request{
		method: http.MethodGet,
		url:    pageURL(c.accountsURL, limit, offset),
		auth:   c.auth,
		out:    &page,
	})
	return page.Results, err
}

// toAccount maps a record; ok is false when it has no usable csp_id.
func (c *Client) toAccount(r accountRecord) (broker.Account, bool) {
	id, ok := parseCSPID(r.CSPID)
	if !ok {
		c.log.Warn("csp: skipping sandbox account without a valid csp_id",
			"external_id", r.ID, "name", r.Name, "csp_id", string(r.CSPID))
		return broker.Account{}, false
	}
	name := r.Name
	if name == "" {
		name = "sandbox-" + id
	}
	return broker.Account{
		ID:            id,
		Name:          name,
		ExternalID:    r.ID,
		SFDCAccountID: r.SFDCAccountID,
		CreatedAt:     parseTime(r.CreatedAt),
	}, true
}

// parseCSPID returns the decimal string of an integer csp_id, accepting a
// JSON number or a string of digits. Missing, null and other values fail.
func parseCSPID(raw json.RawMessage) (string, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) > 0 && raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", false
		}
		raw = []byte(strings.TrimSpace(s))
	}
	n, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil || n < 0 {
		return "", false
	}
	return strconv.FormatInt(n, 10), true
}

// parseTime parses an ISO-8601 timestamp; one without a zone is read as
// UTC. It returns the zero time for an empty or malformed value.
func parseTime(s string) time.Time {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC()
		}
	}
	return time.Time{}
}

// DeleteAccount deletes the account identified by externalID
// (identity/accounts/<uuid> or the bare uuid). It returns an EINVALID
// *broker.Error without sending anything when externalID has no uuid,
// broker.ErrAccountGone on 404, an error wrapping broker.ErrCircuitOpen
// when the breaker refused the call, and *HTTPError (a broker.RetryAfterer)
// for other unexpected statuses.
func (c *Client) DeleteAccount(ctx context.Context, externalID string) error {
	id, err := lastSegment(externalID)
	if err != nil {
		return err
	}
	status, err := c.call.do(ctx, request{
		method:   http.MethodDelete,
		url:      c.deleteURL + id,
		auth:     c.auth,
		allow404: true,
	})
	if err != nil {
		return fmt.Errorf("csp: delete account %s: %w", id, err)
	}
	if status == http.StatusNotFound {
		return fmt.Errorf("csp: delete account %s: %w", id, broker.ErrAccountGone)
	}
	return nil
}

// lastSegment returns the uuid at the end of an identity path such as
// identity/accounts/<uuid>. It refuses empty segments and anything that is
// not a plain path segment, so a bad id can never address another resource.
func lastSegment(path string) (string, error) {
	seg := path[strings.LastIndexByte(path, '/')+1:]
	if seg == "" || seg == "." || seg == ".." || strings.IndexFunc(seg, notIDRune) >= 0 {
		return "", broker.Errorf(broker.EINVALID, "no valid uuid at the end of %q", path)
	}
	return seg, nil
}

func notIDRune(r rune) bool {
	return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
		r == '-' || r == '_' || r == '.')
}
