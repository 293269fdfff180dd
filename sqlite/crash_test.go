package sqlite_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/sqlite"
	"github.com/sandbox-broker/broker/storetest"
)

const crashChildEnv = "SANDBOX_BROKER_CRASH_CHILD_DB"

func TestMain(m *testing.M) {
	if path := os.Getenv(crashChildEnv); path != "" {
		crashChild(path)
		return
	}
	os.Exit(m.Run())
}

// crashChild allocates from 16 goroutines forever, printing "owner id"
// after each allocation returns: what a broker would answer 201 with.
func crashChild(path string) {
	s, err := sqlite.Open(context.Background(), path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; ; i++ {
				owner := fmt.Sprintf("g%d-%d", g, i)
				a, err := s.Allocate(context.Background(), broker.AllocateRequest{Owner: owner, Key: owner, LabDuration: time.Hour, Now: time.Now()})
				if err != nil {
					return
				}
				mu.Lock()
				fmt.Printf("%s %s\n", owner, a.Sandbox.ID)
				mu.Unlock()
			}
		}(g)
	}
	wg.Wait()
	os.Exit(0)
}

// TestCrashKeepsAnsweredAllocations kills a process that is allocating
// (SIGKILL, no chance to flush) and checks that every allocation it had
// reported is in the file afterwards.
func TestCrashKeepsAnsweredAllocations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "crash.db")
	s, err := sqlite.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	pool, answers := 20000, 1500
	if sqlite.RaceEnabled {
		pool, answers = 1000, 200
	}
	if _, err := s.UpsertAccounts(context.Background(), storetest.Accounts("lab", 1, pool), time.Now()); err != nil {
		t.Fatal(err)
	}
	s.Close()

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	answered := map[string]string{}
	sc := bufio.NewScanner(out)
	for sc.Scan() && len(answered) < answers {
		owner, id, _ := strings.Cut(sc.Text(), " ")
		answered[id] = owner
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	// Lines printed before the kill landed are answers too.
	for sc.Scan() {
		owner, id, ok := strings.Cut(sc.Text(), " ")
		if ok {
			answered[id] = owner
		}
	}
	_ = cmd.Wait()
	if len(answered) < answers {
		t.Fatalf("child answered only %d allocations", len(answered))
	}

	s, err = sqlite.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for id, owner := range answered {
		sb, err := s.Get(context.Background(), id)
		if err != nil || sb.Status != broker.StatusAllocated || sb.Owner != owner {
			t.Fatalf("answered allocation %s -> %s lost after the crash: %+v %v", id, owner, sb, err)
		}
	}
	t.Logf("%d answered allocations all survived SIGKILL", len(answered))
}
