package postgres

import (
	"context"
	"testing"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) broker.Store { return MustOpen(t) })
}

func TestOpen(t *testing.T) {
	ctx := context.Background()
	t.Run("ErrInvalidURL", func(t *testing.T) {
		_, err := Open(ctx, "postgres://%zz", Options{Logger: quietLog})
		if broker.ErrorCode(err) != broker.EINVALID {
			t.Fatalf("error = %v, want %s", err, broker.EINVALID)
		}
	})
	t.Run("ErrUnavailable", func(t *testing.T) {
		_, err := Open(ctx, "postgres://postgres@127.0.0.1:1/test?sslmode=disable&connect_timeout=2", Options{Logger: quietLog})
		if broker.ErrorCode(err) != broker.EUNAVAILABLE {
			t.Fatalf("error = %v, want %s", err, broker.EUNAVAILABLE)
		}
		if msg := broker.ErrorMessage(err); msg != "the store is unavailable, retry later" {
			t.Fatalf("message leaks driver text: %q", msg)
		}
	})
	t.Run("ClosedStoreUnavailable", func(t *testing.T) {
		s := MustOpen(t)
		s.Close()
		err := s.Ping(ctx)
		if broker.ErrorCode(err) != broker.EUNAVAILABLE {
			t.Fatalf("Ping after Close = %v, want %s", err, broker.EUNAVAILABLE)
		}
		_, err = s.Allocate(ctx, broker.AllocateRequest{Owner: "a", Key: "a"})
		if broker.ErrorCode(err) != broker.EUNAVAILABLE {
			t.Fatalf("Allocate after Close = %v, want %s", err, broker.EUNAVAILABLE)
		}
	})
}
