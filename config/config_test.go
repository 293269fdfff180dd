package config

import (
	"strings"
	"testing"
	"time"
)

func env(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }

func TestDefaults(t *testing.T) {
	c, err := Load(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.ListenAddr != ":8080" || c.BasePath != "/v1" || c.LabDuration != 48*time.Hour || c.GracePeriod != 30*time.Minute ||
		c.RateLimitRPS != 50 || c.RateLimitBurst != 200 || c.SyncMaxStaleFraction != 0.5 || c.CSPBaseURL != "" ||
		!c.NIOSXaaSShadowMode || c.NIOSXaaSEnabled || len(c.CORSOrigins) != 1 || c.CORSOrigins[0] != "*" {
		t.Fatalf("defaults: %+v", c)
	}
	kind, loc, err := c.Store()
	if err != nil || kind != "sqlite" || loc != "./data/sandbox-broker.db" {
		t.Fatalf("default store %s %s %v", kind, loc, err)
	}
}

func TestValues(t *testing.T) {
	c, err := Load(env(map[string]string{
		"BROKER_API_TOKEN": " a, b ,", "LAB_DURATION_HOURS": "4.5", "API_BASE_PATH": "/api/", "TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.1",
		"RATE_LIMIT_RPS": "0", "LOG_FORMAT": "TEXT", "NIOSXAAS_SHADOW_MODE": "false", "CSP_BASE_URL": "https://csp.example.com/v2/",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.APITokens, "|") != "a|b" || c.LabDuration != 4*time.Hour+30*time.Minute || c.BasePath != "/api" ||
		len(c.TrustedProxies) != 2 || c.RateLimitRPS != 0 || c.LogFormat != "text" || c.NIOSXaaSShadowMode ||
		c.CSPBaseURL != "https://csp.example.com/v2" {
		t.Fatalf("values: %+v", c)
	}
}

func TestInvalidNamesTheVariable(t *testing.T) {
	tests := []struct{ name, value string }{
		{"LAB_DURATION_HOURS", "x"},
		{"LAB_DURATION_HOURS", "-1"},
		{"RATE_LIMIT_BURST", "0"},
		{"SYNC_MAX_STALE_FRACTION", "1.5"},
		{"CLEANUP_ENABLED", "maybe"},
		{"TRUSTED_PROXIES", "not-a-cidr"},
		{"LOG_FORMAT", "xml"},
		{"LOG_LEVEL", "loud"},
		{"API_BASE_PATH", "v1"},
		{"CSP_BASE_URL", "ftp://x"},
		{"DELETION_RETRY_MAX_SEC", "1"},
		{"NIOSXAAS_ENABLED", "true"},
	}
	for _, tt := range tests {
		_, err := Load(env(map[string]string{tt.name: tt.value}))
		want := tt.name
		if tt.name == "NIOSXAAS_ENABLED" {
			want = "NIOSXAAS_EMAIL"
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s=%q: error %v, want one naming %s", tt.name, tt.value, err, want)
		}
	}
	_, err := Load(env(map[string]string{"LAB_DURATION_HOURS": "x", "LOG_FORMAT": "xml"}))
	if err == nil || !strings.Contains(err.Error(), "LAB_DURATION_HOURS") || !strings.Contains(err.Error(), "LOG_FORMAT") {
		t.Fatalf("every invalid variable should be reported: %v", err)
	}
}

func TestStoreURL(t *testing.T) {
	tests := []struct {
		url, ddbEndpoint, kind, loc string
		bad                         bool
	}{
		{"sqlite:/tmp/x.db", "", "sqlite", "/tmp/x.db", false},
		{"sqlite:", "", "", "", true},
		{"postgres://u@h/db", "", "postgres", "postgres://u@h/db", false},
		{"postgresql://u@h/db", "", "postgres", "postgresql://u@h/db", false},
		{"dynamodb://pool", "", "dynamodb", "pool", false},
		{"dynamodb://", "", "", "", true},
		{"", "http://127.0.0.1:8000", "dynamodb", "SandboxPool", false},
		{"mysql://x", "", "", "", true},
	}
	for _, tt := range tests {
		c, err := Load(env(map[string]string{"BROKER_DATABASE_URL": tt.url, "DDB_ENDPOINT_URL": tt.ddbEndpoint}))
		if err != nil {
			t.Fatal(err)
		}
		kind, loc, err := c.Store()
		if (err != nil) != tt.bad || kind != tt.kind || loc != tt.loc {
			t.Errorf("%q: %s %s %v", tt.url, kind, loc, err)
		}
		if err != nil && !strings.Contains(err.Error(), "BROKER_DATABASE_URL") {
			t.Errorf("%q: error does not name the variable: %v", tt.url, err)
		}
	}
}
