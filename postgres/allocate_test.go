package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/storetest"
)

func TestPrefixRange(t *testing.T) {
	tests := []struct {
		prefix string
		want   namePrefix
	}{
		{"lab", namePrefix{lo: "lab", hi: "lac", hasHi: true}},
		{"a%", namePrefix{lo: "a%", hi: "a&", hasHi: true}},
		{"é", namePrefix{lo: "é", hi: "ê", hasHi: true}},
		{"a\u00ff", namePrefix{lo: "a\u00ff", hi: "a\u0100", hasHi: true}}, // sqlutil's byte bound would be invalid UTF-8
		{"a\U0010FFFF", namePrefix{lo: "a\U0010FFFF", hi: "b", hasHi: true}},
		{"\uD7FF", namePrefix{lo: "\uD7FF", hi: "\uE000", hasHi: true}},
		{"\U0010FFFF", namePrefix{lo: "\U0010FFFF"}},
		{"a\xff", namePrefix{empty: true}},
		{"a\x00", namePrefix{empty: true}},
	}
	for _, tt := range tests {
		if got := prefixRange(tt.prefix); got != tt.want {
			t.Errorf("prefixRange(%q) = %+v, want %+v", tt.prefix, got, tt.want)
		}
	}
}

// TestUnicodePrefix allocates by prefixes whose byte upper bound is not
// valid UTF-8, which PostgreSQL would reject.
func TestUnicodePrefix(t *testing.T) {
	ctx := context.Background()
	s := MustOpen(t)
	if _, err := s.UpsertAccounts(ctx, []broker.Account{
		{ID: "1", Name: "labÿ-1"}, {ID: "2", Name: "labĀ-1"}, {ID: "3", Name: "lab\U0010FFFF-1"}, {ID: "4", Name: "lac-1"},
	}, t0); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ prefix, want string }{
		{"labÿ", "labÿ-1"},
		{"lab\U0010FFFF", "lab\U0010FFFF-1"},
		{"lab", "labĀ-1"},
		{"lab", ""},
		{"la\xff", ""},
		{"la\x00", ""},
	} {
		r := allocReq("owner-" + tt.prefix + tt.want)
		r.NamePrefix = tt.prefix
		a, err := s.Allocate(ctx, r)
		if tt.want == "" {
			if broker.ErrorCode(err) != broker.ENOSANDBOX {
				t.Fatalf("prefix %q: %+v, %v; want %s", tt.prefix, a.Sandbox, err, broker.ENOSANDBOX)
			}
			continue
		}
		if err != nil || a.Sandbox.Name != tt.want {
			t.Fatalf("prefix %q gave %q, %v; want %q", tt.prefix, a.Sandbox.Name, err, tt.want)
		}
	}
	page, err := s.List(ctx, broker.ListFilter{NamePrefix: "labÿ", Limit: 10})
	if err != nil || len(page.Sandboxes) != 1 || page.Sandboxes[0].ID != "1" {
		t.Fatalf("List(labÿ) = %+v, %v", page, err)
	}
}

// TestAllocateWaitsForLockedRows holds every available sandbox locked (as a
// long sync or a stuck transaction would): Allocate must not answer
// ENOSANDBOX but wait, and succeed once the lock is gone, or give up with the
// context.
func TestAllocateWaitsForLockedRows(t *testing.T) {
	ctx := context.Background()
	_, u := mustSchema(t)
	s := mustOpen(t, u, Options{})
	if _, err := s.UpsertAccounts(ctx, storetest.Accounts("lab", 1, 3), t0); err != nil {
		t.Fatal(err)
	}
	other := mustOpen(t, u, Options{MaxConns: 1})
	lock := func() func() {
		t.Helper()
		tx, err := other.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `SELECT id FROM sandboxes FOR UPDATE`); err != nil {
			t.Fatal(err)
		}
		return func() { _ = tx.Rollback(ctx) }
	}

	unlock := lock()
	short, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
	defer cancel()
	_, err := s.Allocate(short, allocReq("impatient"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Allocate with every row locked = %v, want the context's deadline", err)
	}

	done := make(chan error, 1)
	go func() {
		_, err := s.Allocate(ctx, allocReq("patient"))
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("Allocate returned while every row was locked: %v", err)
	default:
	}
	unlock()
	if err := <-done; err != nil {
		t.Fatalf("Allocate after the lock was released: %v", err)
	}
}

// TestUpsertDuplicateIDs lists one account twice: the last listing wins.
func TestUpsertDuplicateIDs(t *testing.T) {
	ctx := context.Background()
	s := MustOpen(t)
	res, err := s.UpsertAccounts(ctx, []broker.Account{{ID: "1", Name: "old"}, {ID: "2", Name: "b"}, {ID: "1", Name: "new"}}, t0)
	if err != nil || res != (broker.UpsertResult{Inserted: 2}) {
		t.Fatalf("upsert = %+v, %v", res, err)
	}
	if sb, err := s.Get(ctx, "1"); err != nil || sb.Name != "new" {
		t.Fatalf("Get = %+v, %v", sb, err)
	}
}

func TestErrorMapping(t *testing.T) {
	ctx := context.Background()
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	pg := func(code string) error {
		return fmt.Errorf("query: %w", &pgconn.PgError{Code: code, Message: "secret driver text"})
	}
	tests := []struct {
		name string
		ctx  context.Context
		err  error
		code string
	}{
		{"AdminShutdown", ctx, pg("57P01"), broker.EUNAVAILABLE},
		{"CannotConnectNow", ctx, pg("57P03"), broker.EUNAVAILABLE},
		{"ConnectionFailure", ctx, pg("08006"), broker.EUNAVAILABLE},
		{"TooManyConnections", ctx, pg("53300"), broker.EUNAVAILABLE},
		{"StatementTimeout", ctx, pg("57014"), broker.EUNAVAILABLE},
		{"ReadOnlyAfterFailover", ctx, pg("25006"), broker.EUNAVAILABLE},
		{"Deadlock", ctx, pg("40P01"), broker.EUNAVAILABLE},
		{"LostConnection", ctx, fmt.Errorf("read: %w", io.ErrUnexpectedEOF), broker.EUNAVAILABLE},
		{"InvalidText", ctx, pg("22021"), broker.EINVALID},
		{"Bug", ctx, pg("42703"), broker.EINTERNAL},
		{"DomainError", ctx, broker.Errorf(broker.ENOTFOUND, "x"), broker.ENOTFOUND},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := dbErr(tt.ctx, tt.err)
			if got := broker.ErrorCode(err); got != tt.code {
				t.Fatalf("code = %q (%v), want %q", got, err, tt.code)
			}
			if msg := broker.ErrorMessage(err); tt.code != broker.ENOTFOUND && (msg == "" || strings.Contains(msg, "secret")) {
				t.Fatalf("message %q leaks the driver's text", msg)
			}
			if !errors.Is(err, tt.err) {
				t.Fatalf("%v does not wrap the cause", err)
			}
		})
	}
	t.Run("ContextPassesThrough", func(t *testing.T) {
		err := dbErr(cancelled, pg("57014")) // the server cancelled the statement for us
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("%v is not context.Canceled", err)
		}
		err = dbErr(ctx, fmt.Errorf("wait: %w", context.DeadlineExceeded))
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%v is not context.DeadlineExceeded", err)
		}
	})
}
