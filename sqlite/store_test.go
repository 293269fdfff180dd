package sqlite_test

import (
	"context"
	"path/filepath"
	"testing"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/sqlite"
	"github.com/sandbox-broker/broker/storetest"
)

// MustOpen opens a store on a new file in a temporary directory.
func MustOpen(t *testing.T) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "broker.db"))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) broker.Store { return MustOpen(t) })
}
