package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// The tests run against a real PostgreSQL named by this variable, e.g.
// postgres://postgres@127.0.0.1:5432/test?sslmode=disable. Each store gets a
// schema of its own, dropped when the test ends.
const urlEnv = "BROKER_TEST_POSTGRES_URL"

// mustBaseURL returns the test database URL, skipping the test when it is
// not set (failing instead under CI).
func mustBaseURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv(urlEnv)
	if u == "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not set; the PostgreSQL tests must run under CI", urlEnv)
		}
		t.Skip("set " + urlEnv + "=postgres://... to run the PostgreSQL tests")
	}
	return u
}

// withParam returns the connection string u with one more parameter, in
// URL or key=value form.
func withParam(t testing.TB, u, key, value string) string {
	t.Helper()
	if !strings.HasPrefix(u, "postgres://") && !strings.HasPrefix(u, "postgresql://") {
		return u + " " + key + "=" + value
	}
	parsed, err := url.Parse(u)
	if err != nil {
		t.Fatalf("parse %s: %v", urlEnv, err)
	}
	q := parsed.Query()
	q.Set(key, value)
	parsed.RawQuery = q.Encode()
	return parsed.String()
}

// mustAdmin connects to the test database outside any test schema.
func mustAdmin(t testing.TB) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), mustBaseURL(t))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// mustSchema creates an empty schema, drops it when the test ends, and
// returns its name and a URL whose search_path selects it.
func mustSchema(t testing.TB) (name, url string) {
	t.Helper()
	base := mustBaseURL(t)
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name = "test_" + hex.EncodeToString(b)
	admin := mustAdmin(t)
	ctx := context.Background()
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+name); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		// Cleanups run last-in first-out: every store opened on the schema
		// later is closed by now.
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Errorf("drop schema %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA "+name+" CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", name, err)
		}
	})
	return name, withParam(t, base, "search_path", name)
}

var quietLog = slog.New(slog.DiscardHandler)

// mustOpen opens a store on url (closed when the test ends).
func mustOpen(t testing.TB, url string, opts Options) *Store {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = quietLog
	}
	s, err := Open(context.Background(), url, opts)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// MustOpen opens a store on a new, empty schema.
func MustOpen(t testing.TB) *Store {
	t.Helper()
	_, u := mustSchema(t)
	return mustOpen(t, u, Options{})
}
