package dynamostore

import (
	"testing"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/internal/replicatest"
)

// TestReplicasHTTP: three broker servers, each with its own client, on one
// table; 1,000 students (20% retrying on another replica at once) for 600
// sandboxes.
func TestReplicasHTTP(t *testing.T) {
	cfg := testConfig(t)
	stores := make([]broker.Store, 3)
	for i := range stores {
		stores[i] = mustOpenConfig(t, cfg)
	}
	replicatest.Run(t, stores, replicatest.Scenario{Sandboxes: 600, Students: 1000, RetryRate: 0.2})
}
