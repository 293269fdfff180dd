package dynamostore

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/storetest"
)

// The tests need a DynamoDB endpoint: BROKER_TEST_DYNAMODB_URL (e.g. one
// started by .ci/run), or DYNALITE_BIN, a dynalite executable that TestMain
// starts on a free port and stops at the end.
var testEndpoint string

const howToRun = "DynamoDB store tests need dynalite: set BROKER_TEST_DYNAMODB_URL=http://127.0.0.1:PORT, " +
	"or DYNALITE_BIN=/path/to/node_modules/.bin/dynalite (npm install dynalite)"

func TestMain(m *testing.M) {
	os.Exit(func() int {
		if u := os.Getenv("BROKER_TEST_DYNAMODB_URL"); u != "" {
			testEndpoint = u
			return m.Run()
		}
		bin := os.Getenv("DYNALITE_BIN")
		if bin == "" {
			return m.Run() // every test skips (or fails under CI)
		}
		endpoint, stop, err := startDynalite(bin)
		if err != nil {
			fmt.Fprintln(os.Stderr, "start dynalite:", err)
			return 1
		}
		defer stop()
		testEndpoint = endpoint
		return m.Run()
	}())
}

// startDynalite runs dynalite on a free port and waits until it listens.
func startDynalite(bin string) (string, func(), error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	addr := l.Addr().String()
	l.Close()
	_, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(bin, "--host", "127.0.0.1", "--port", port,
		"--createTableMs", "0", "--deleteTableMs", "0", "--updateTableMs", "0")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return "http://" + addr, stop, nil
		}
	}
	stop()
	return "", nil, fmt.Errorf("dynalite did not listen on %s", addr)
}

// needDynamo skips the test without an endpoint, or fails it under CI.
func needDynamo(t *testing.T) string {
	t.Helper()
	if testEndpoint == "" {
		if os.Getenv("CI") != "" {
			t.Fatal(howToRun)
		}
		t.Skip(howToRun)
	}
	return testEndpoint
}

var tableSeq atomic.Int64

// newTableName returns a table name unique to this test process.
func newTableName() string {
	return fmt.Sprintf("broker-test-%d-%d", time.Now().UnixNano()%1e9, tableSeq.Add(1))
}

// testConfig is the configuration of a store on a fresh table.
func testConfig(t *testing.T) Config {
	return Config{Table: newTableName(), Endpoint: needDynamo(t), CreateIfMissing: true}
}

// MustOpen opens a store on a new, empty table that is deleted when the
// test ends.
func MustOpen(t *testing.T) *Store {
	t.Helper()
	return mustOpenConfig(t, testConfig(t))
}

func mustOpenConfig(t *testing.T, cfg Config) *Store {
	t.Helper()
	s, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() {
		_, _ = s.db.DeleteTable(context.Background(), &dynamodb.DeleteTableInput{TableName: s.table})
	})
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) broker.Store { return MustOpen(t) })
}
