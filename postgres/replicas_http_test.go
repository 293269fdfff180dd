package postgres

import (
	"testing"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/internal/replicatest"
)

// TestReplicasHTTP: three broker servers, each with its own pool, on one
// database; 1,000 students (20% retrying on another replica at once) for
// 600 sandboxes.
func TestReplicasHTTP(t *testing.T) {
	_, url := mustSchema(t)
	stores := make([]broker.Store, 3)
	for i := range stores {
		stores[i] = mustOpen(t, url, Options{MaxConns: 8})
	}
	replicatest.Run(t, stores, replicatest.Scenario{Sandboxes: 600, Students: 1000, RetryRate: 0.2})
}
