package broker_test

import (
	"flag"
	"os"
	"strings"
	"testing"

	broker "github.com/sandbox-broker/broker"
)

var update = flag.Bool("update", false, "rewrite docs/state-machine.md from the code")

const (
	tableStart = "<!-- transitions:start -->\n"
	tableEnd   = "<!-- transitions:end -->"
)

// TestStateMachineDoc keeps the table in docs/state-machine.md equal to
// broker.Transitions. Run `go test . -update` after changing Transitions.
func TestStateMachineDoc(t *testing.T) {
	const path = "docs/state-machine.md"
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	i, j := strings.Index(doc, tableStart), strings.Index(doc, tableEnd)
	if i < 0 || j < i {
		t.Fatalf("%s lacks the transitions markers", path)
	}
	want := doc[:i+len(tableStart)] + broker.TransitionTable() + doc[j:]
	if want == doc {
		return
	}
	if *update {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatalf("%s is out of date with broker.Transitions; run: go test . -update", path)
}

func TestCanTransition(t *testing.T) {
	tests := []struct {
		from, to broker.Status
		want     bool
	}{
		{broker.StatusAvailable, broker.StatusAllocated, true},
		{broker.StatusAllocated, broker.StatusAvailable, false}, // never back to the pool
		{broker.StatusAllocated, broker.StatusStale, false},     // sync never touches allocations
		{broker.StatusDeletionFailed, broker.StatusPendingDeletion, true},
		{broker.StatusPendingDeletion, broker.StatusDeleting, true},
		{broker.StatusStale, broker.StatusAllocated, false},
		{broker.StatusAllocated, broker.StatusDeleted, true}, // bulk delete with force
	}
	for _, tt := range tests {
		if got := broker.CanTransition(tt.from, tt.to); got != tt.want {
			t.Errorf("CanTransition(%s, %s) = %v, want %v", tt.from, tt.to, got, tt.want)
		}
	}
}
