// Package config reads the broker's configuration from environment
// variables (the Python service's names where they exist), with defaults,
// and fails fast with a message naming the variable at fault.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Config is every setting of the broker. See README.md for the table.
type Config struct {
	ListenAddr     string   // BROKER_LISTEN_ADDR
	DatabaseURL    string   // BROKER_DATABASE_URL
	DBMaxConns     int      // BROKER_DB_MAX_CONNS (PostgreSQL pool size)
	APITokens      []string // BROKER_API_TOKEN
	AdminTokens    []string // BROKER_ADMIN_TOKEN
	BasePath       string   // API_BASE_PATH
	CORSOrigins    []string // CORS_ALLOWED_ORIGINS
	LogLevel       string   // LOG_LEVEL
	LogFormat      string   // LOG_FORMAT
	MetricsToken   string   // METRICS_TOKEN
	RateLimitRPS   float64  // RATE_LIMIT_RPS (0 = off)
	RateLimitBurst int      // RATE_LIMIT_BURST
	TrustedProxies []*net.IPNet
	ShutdownGrace  time.Duration // SHUTDOWN_GRACE_SEC

	LabDuration time.Duration // LAB_DURATION_HOURS
	GracePeriod time.Duration // GRACE_PERIOD_MINUTES

	// DynamoDB (reference names)
	DDBTable    string // DDB_TABLE_NAME
	DDBEndpoint string // DDB_ENDPOINT_URL
	AWSRegion   string // AWS_REGION
	// DDBCreateTable creates a missing table on start (DDB_CREATE_TABLE);
	// otherwise run `sandbox-broker migrate`.
	DDBCreateTable bool

	// Provider
	CSPBaseURL        string        // CSP_BASE_URL; empty = no provider
	CSPToken          string        // CSP_API_TOKEN
	CSPConnectTimeout time.Duration // CSP_TIMEOUT_CONNECT_SEC
	CSPReadTimeout    time.Duration // CSP_TIMEOUT_READ_SEC
	CSPDeleteRate     float64       // CSP_DELETE_RATE (deletions per second)
	BreakerThreshold  int           // CIRCUIT_BREAKER_THRESHOLD
	BreakerTimeout    time.Duration // CIRCUIT_BREAKER_TIMEOUT_SEC

	// Jobs
	RunJobs              bool          // RUN_JOBS: serve runs the jobs too
	SyncEnabled          bool          // SYNC_ENABLED
	SyncInterval         time.Duration // SYNC_INTERVAL_SEC
	SyncMaxStaleFraction float64       // SYNC_MAX_STALE_FRACTION
	CleanupEnabled       bool          // CLEANUP_ENABLED
	CleanupInterval      time.Duration // CLEANUP_INTERVAL_SEC
	CleanupBatchSize     int           // CLEANUP_BATCH_SIZE
	CleanupLease         time.Duration // CLEANUP_LEASE_SEC
	DeletionMaxAttempts  int           // DELETION_RETRY_MAX_ATTEMPTS
	DeletionRetryBase    time.Duration // DELETION_RETRY_BASE_SEC
	DeletionRetryMax     time.Duration // DELETION_RETRY_MAX_SEC
	ExpiryEnabled        bool          // AUTO_EXPIRY_ENABLED
	ExpiryInterval       time.Duration // AUTO_EXPIRY_INTERVAL_SEC
	StalePurgeEnabled    bool          // STALE_PURGE_ENABLED
	StalePurgeInterval   time.Duration // STALE_PURGE_INTERVAL_SEC
	StaleGrace           time.Duration // STALE_GRACE_HOURS
	JobJitter            float64       // JOB_JITTER_FRACTION

	// NIOSXaaS pre-delete cleanup
	NIOSXaaSEnabled     bool          // NIOSXAAS_ENABLED
	NIOSXaaSBaseURL     string        // NIOSXAAS_BASE_URL
	NIOSXaaSEmail       string        // NIOSXAAS_EMAIL
	NIOSXaaSPassword    string        // NIOSXAAS_PASSWORD
	NIOSXaaSServiceName string        // NIOSXAAS_SERVICE_NAME
	NIOSXaaSTimeout     time.Duration // NIOSXAAS_TIMEOUT_SEC
	NIOSXaaSShadowMode  bool          // NIOSXAAS_SHADOW_MODE
}

// Load reads the configuration through getenv (os.Getenv in production).
// It returns every invalid variable in one error.
func Load(getenv func(string) string) (Config, error) {
	p := parser{getenv: getenv}
	c := Config{
		ListenAddr:     p.str("BROKER_LISTEN_ADDR", ":8080"),
		DatabaseURL:    p.str("BROKER_DATABASE_URL", ""),
		DBMaxConns:     p.integer("BROKER_DB_MAX_CONNS", 0, 0, 1000),
		APITokens:      p.list("BROKER_API_TOKEN", ""),
		AdminTokens:    p.list("BROKER_ADMIN_TOKEN", ""),
		BasePath:       p.str("API_BASE_PATH", "/v1"),
		CORSOrigins:    p.list("CORS_ALLOWED_ORIGINS", "*"),
		LogLevel:       strings.ToLower(p.str("LOG_LEVEL", "info")),
		LogFormat:      strings.ToLower(p.str("LOG_FORMAT", "json")),
		MetricsToken:   p.str("METRICS_TOKEN", ""),
		RateLimitRPS:   p.float("RATE_LIMIT_RPS", 50, 0, 1e9),
		RateLimitBurst: p.integer("RATE_LIMIT_BURST", 200, 1, 1e9),
		ShutdownGrace:  p.seconds("SHUTDOWN_GRACE_SEC", 20, 0, 3600),

		LabDuration: p.hours("LAB_DURATION_HOURS", 48, 0.01, 24*365),
		GracePeriod: time.Duration(p.float("GRACE_PERIOD_MINUTES", 30, 0, 60*24*30) * float64(time.Minute)),

		DDBTable:       p.str("DDB_TABLE_NAME", "SandboxPool"),
		DDBEndpoint:    p.str("DDB_ENDPOINT_URL", ""),
		AWSRegion:      p.str("AWS_REGION", "us-east-1"),
		DDBCreateTable: p.boolean("DDB_CREATE_TABLE", false),

		CSPBaseURL:        strings.TrimRight(p.str("CSP_BASE_URL", ""), "/"),
		CSPToken:          p.str("CSP_API_TOKEN", ""),
		CSPConnectTimeout: p.seconds("CSP_TIMEOUT_CONNECT_SEC", 5, 0.1, 300),
		CSPReadTimeout:    p.seconds("CSP_TIMEOUT_READ_SEC", 15, 0.1, 600),
		CSPDeleteRate:     p.float("CSP_DELETE_RATE", 2, 0.001, 1000),
		BreakerThreshold:  p.integer("CIRCUIT_BREAKER_THRESHOLD", 5, 1, 1000),
		BreakerTimeout:    p.seconds("CIRCUIT_BREAKER_TIMEOUT_SEC", 60, 1, 3600),

		RunJobs:              p.boolean("RUN_JOBS", true),
		SyncEnabled:          p.boolean("SYNC_ENABLED", true),
		SyncInterval:         p.seconds("SYNC_INTERVAL_SEC", 600, 1, 86400*7),
		SyncMaxStaleFraction: p.float("SYNC_MAX_STALE_FRACTION", 0.5, 0, 1),
		CleanupEnabled:       p.boolean("CLEANUP_ENABLED", true),
		CleanupInterval:      p.seconds("CLEANUP_INTERVAL_SEC", 300, 1, 86400*7),
		CleanupBatchSize:     p.integer("CLEANUP_BATCH_SIZE", 10, 1, 10000),
		CleanupLease:         p.seconds("CLEANUP_LEASE_SEC", 300, 5, 86400),
		DeletionMaxAttempts:  p.integer("DELETION_RETRY_MAX_ATTEMPTS", 5, 1, 1000),
		DeletionRetryBase:    p.seconds("DELETION_RETRY_BASE_SEC", 60, 0.001, 86400),
		DeletionRetryMax:     p.seconds("DELETION_RETRY_MAX_SEC", 3600, 0.001, 86400*7),
		ExpiryEnabled:        p.boolean("AUTO_EXPIRY_ENABLED", true),
		ExpiryInterval:       p.seconds("AUTO_EXPIRY_INTERVAL_SEC", 300, 1, 86400*7),
		StalePurgeEnabled:    p.boolean("STALE_PURGE_ENABLED", true),
		StalePurgeInterval:   p.seconds("STALE_PURGE_INTERVAL_SEC", 86400, 1, 86400*30),
		StaleGrace:           p.hours("STALE_GRACE_HOURS", 24, 1, 24*365),
		JobJitter:            p.float("JOB_JITTER_FRACTION", 0.1, 0, 1),

		NIOSXaaSEnabled:     p.boolean("NIOSXAAS_ENABLED", false),
		NIOSXaaSBaseURL:     strings.TrimRight(p.str("NIOSXAAS_BASE_URL", "https://csp.infoblox.com"), "/"),
		NIOSXaaSEmail:       p.str("NIOSXAAS_EMAIL", ""),
		NIOSXaaSPassword:    p.str("NIOSXAAS_PASSWORD", ""),
		NIOSXaaSServiceName: p.str("NIOSXAAS_SERVICE_NAME", "Instrqt-SaaS"),
		NIOSXaaSTimeout:     p.seconds("NIOSXAAS_TIMEOUT_SEC", 30, 1, 600),
		NIOSXaaSShadowMode:  p.boolean("NIOSXAAS_SHADOW_MODE", true),
	}
	c.TrustedProxies = p.cidrs("TRUSTED_PROXIES")
	if !strings.HasPrefix(c.BasePath, "/") || strings.ContainsAny(c.BasePath, " {}") {
		p.fail("API_BASE_PATH", c.BasePath, "must start with / and contain no spaces or braces, e.g. /v1")
	}
	c.BasePath = strings.TrimRight(c.BasePath, "/")
	if c.LogFormat != "json" && c.LogFormat != "text" {
		p.fail("LOG_FORMAT", c.LogFormat, "must be json or text")
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "warning", "error":
	default:
		p.fail("LOG_LEVEL", c.LogLevel, "must be debug, info, warn or error")
	}
	if c.CSPBaseURL != "" {
		if u, err := url.Parse(c.CSPBaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			p.fail("CSP_BASE_URL", c.CSPBaseURL, "must be an http(s) URL such as https://csp.infoblox.com/v2, or empty for no provider")
		}
	}
	if c.DeletionRetryMax < c.DeletionRetryBase {
		p.fail("DELETION_RETRY_MAX_SEC", p.getenv("DELETION_RETRY_MAX_SEC"), "must be at least DELETION_RETRY_BASE_SEC")
	}
	if c.NIOSXaaSEnabled && (c.NIOSXaaSEmail == "" || c.NIOSXaaSPassword == "") {
		p.fail("NIOSXAAS_EMAIL", "", "NIOSXAAS_EMAIL and NIOSXAAS_PASSWORD are required when NIOSXAAS_ENABLED=true")
	}
	return c, errors.Join(p.errs...)
}

// Store names the store backend BROKER_DATABASE_URL selects: "sqlite",
// "postgres" or "dynamodb", and its location (file path, URL or table).
// Without BROKER_DATABASE_URL, DDB_ENDPOINT_URL selects DynamoDB on
// DDB_TABLE_NAME (the reference's variables), else the default SQLite file.
func (c Config) Store() (kind, location string, err error) {
	u := c.DatabaseURL
	switch {
	case u == "" && c.DDBEndpoint != "":
		return "dynamodb", c.DDBTable, nil
	case u == "":
		return "sqlite", "./data/sandbox-broker.db", nil
	case strings.HasPrefix(u, "sqlite:"):
		path := strings.TrimPrefix(strings.TrimPrefix(u, "sqlite:"), "//")
		if path == "" {
			return "", "", fmt.Errorf("BROKER_DATABASE_URL=%q: give a file path, e.g. sqlite:./data/sandbox-broker.db", u)
		}
		return "sqlite", path, nil
	case strings.HasPrefix(u, "postgres://"), strings.HasPrefix(u, "postgresql://"):
		return "postgres", u, nil
	case strings.HasPrefix(u, "dynamodb://"):
		table := strings.TrimPrefix(u, "dynamodb://")
		if table == "" {
			return "", "", fmt.Errorf("BROKER_DATABASE_URL=%q: give a table name, e.g. dynamodb://sandbox-broker-pool", u)
		}
		return "dynamodb", table, nil
	}
	return "", "", fmt.Errorf("BROKER_DATABASE_URL must start with sqlite:, postgres:// or dynamodb:// (got a value starting with %q)", prefixOf(u))
}

func prefixOf(u string) string {
	if i := strings.Index(u, ":"); i >= 0 && i < 20 {
		return u[:i+1]
	}
	if len(u) > 8 {
		return u[:8]
	}
	return u
}

type parser struct {
	getenv func(string) string
	errs   []error
}

func (p *parser) fail(name, value, why string) {
	p.errs = append(p.errs, fmt.Errorf("%s=%q %s", name, value, why))
}

func (p *parser) str(name, def string) string {
	if v := strings.TrimSpace(p.getenv(name)); v != "" {
		return v
	}
	return def
}

func (p *parser) list(name, def string) []string {
	var out []string
	for _, v := range strings.Split(p.str(name, def), ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

func (p *parser) float(name string, def, lo, hi float64) float64 {
	v := strings.TrimSpace(p.getenv(name))
	if v == "" {
		return def
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < lo || f > hi {
		p.fail(name, v, fmt.Sprintf("must be a number from %g to %g", lo, hi))
		return def
	}
	return f
}

func (p *parser) integer(name string, def, lo, hi int) int {
	v := strings.TrimSpace(p.getenv(name))
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		p.fail(name, v, fmt.Sprintf("must be an integer from %d to %d", lo, hi))
		return def
	}
	return n
}

func (p *parser) seconds(name string, def, lo, hi float64) time.Duration {
	return time.Duration(p.float(name, def, lo, hi) * float64(time.Second))
}

func (p *parser) hours(name string, def, lo, hi float64) time.Duration {
	return time.Duration(p.float(name, def, lo, hi) * float64(time.Hour))
}

func (p *parser) boolean(name string, def bool) bool {
	v := strings.TrimSpace(p.getenv(name))
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		p.fail(name, v, "must be true or false")
		return def
	}
	return b
}

func (p *parser) cidrs(name string) []*net.IPNet {
	var out []*net.IPNet
	for _, v := range p.list(name, "") {
		if !strings.Contains(v, "/") {
			if ip := net.ParseIP(v); ip != nil && ip.To4() != nil {
				v += "/32"
			} else {
				v += "/128"
			}
		}
		_, n, err := net.ParseCIDR(v)
		if err != nil {
			p.fail(name, v, "must be a comma-separated list of CIDRs such as 10.0.0.0/8")
			continue
		}
		out = append(out, n)
	}
	return out
}
