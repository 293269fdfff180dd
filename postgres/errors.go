package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	broker "github.com/sandbox-broker/broker"
)

// SQLSTATE codes the store reacts to.
const (
	codeUniqueViolation      = "23505"
	codeSerializationFailure = "40001"
	codeDeadlockDetected     = "40P01"
	codeAdminShutdown        = "57P01"
	codeCrashShutdown        = "57P02"
	codeCannotConnectNow     = "57P03"
	codeReadOnlyTransaction  = "25006" // a failover left us on a standby
	codeLockNotAvailable     = "55P03"
	codeFeatureNotSupported  = "0A000"
)

// activeKeyIndex is the partial unique index on (owner, idem_key) of
// allocated sandboxes.
const activeKeyIndex = "sandboxes_active_key"

// dbErr maps a driver error to a domain error so that callers never see
// driver text (broker.ErrorMessage stays generic); the cause stays in the
// chain for logs. Domain errors and context errors pass through. A database
// that cannot be reached, is shutting down, is overloaded or timed out gives
// EUNAVAILABLE; a value PostgreSQL rejects (invalid UTF-8, NUL) gives
// EINVALID; anything else PostgreSQL reports (a bug) gives EINTERNAL.
func dbErr(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	var be *broker.Error
	if errors.As(err, &be) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if ctx.Err() != nil {
		// The statement failed because ctx ended (e.g. the server cancelled
		// it on our request): report the context's error.
		return fmt.Errorf("postgres: %w (%w)", ctx.Err(), err)
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		// Not an answer from the server: refused or lost connection, network
		// timeout, closed pool, ...
		return broker.Unavailable(err)
	}
	switch class := sqlClass(pgErr.Code); {
	case class == "08", // connection exception
		class == "53", // insufficient resources (too many connections, disk full)
		class == "57", // operator intervention: shutdown, statement timeout
		class == "58", // system error (I/O)
		class == "40", // serialization failure or deadlock that outlived the retries
		pgErr.Code == codeReadOnlyTransaction,
		pgErr.Code == codeLockNotAvailable:
		return broker.Unavailable(err)
	case class == "22": // data exception
		return &broker.Error{Code: broker.EINVALID, Message: "the request holds a value the store cannot keep", Err: err}
	}
	return &broker.Error{Code: broker.EINTERNAL, Message: "an internal error occurred", Err: err}
}

// retryable reports whether a failed statement may be run again: see
// Store.do.
func retryable(ctx context.Context, err error, idempotent bool) bool {
	if ctx.Err() != nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var be *broker.Error
	if errors.As(err, &be) {
		return false
	}
	if pgconn.SafeToRetry(err) {
		return true
	}
	if code := sqlState(err); code == codeDeadlockDetected || code == codeSerializationFailure {
		return true
	}
	if staleCachedPlan(err) {
		return true
	}
	return idempotent && connectionLost(err)
}

// connectionLost reports whether err means the connection broke or the
// server went away, as opposed to the server rejecting the statement.
func connectionLost(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return true
	}
	switch pgErr.Code {
	case codeAdminShutdown, codeCrashShutdown, codeCannotConnectNow:
		return true
	}
	return sqlClass(pgErr.Code) == "08"
}

// staleCachedPlan reports whether err is PostgreSQL refusing a prepared
// statement whose result type changed under it (another replica migrated
// the schema). It fails before executing; pgx then drops the statement from
// its cache, so running it again prepares it anew.
func staleCachedPlan(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == codeFeatureNotSupported &&
		strings.Contains(pgErr.Message, "cached plan must not change result type")
}

// sqlState returns the SQLSTATE of a server error in err's chain, or "".
func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// isActiveKeyViolation reports whether err is a concurrent allocation for
// the same (owner, key) winning the race on the partial unique index.
func isActiveKeyViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == codeUniqueViolation && pgErr.ConstraintName == activeKeyIndex
}

// sqlClass returns the two-character class of a SQLSTATE code.
func sqlClass(code string) string {
	if len(code) < 2 {
		return code
	}
	return code[:2]
}
