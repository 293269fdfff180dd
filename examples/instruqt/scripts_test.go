// Package instruqt_test runs the Instruqt lab scripts, setup.sh and
// cleanup.sh, against a real broker binary in demo mode.
package instruqt_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// requireTools skips the test without bash or curl, unless CI is set: CI
// images must have them.
func requireTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"bash", "curl", "sed"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is required to test the lab scripts: %v", tool, err)
			}
			t.Skipf("%s not found; skipping the lab script tests", tool)
		}
	}
}

// demoBroker is a running `sandbox-broker serve --demo`.
type demoBroker struct {
	url, trackToken, adminToken string
}

// startDemoBroker builds the broker and runs it in demo mode with n
// sandboxes on a SQLite file, with the cleanup job off so that marked
// sandboxes stay pending_deletion. The broker is stopped when the test ends.
func startDemoBroker(t *testing.T, n int) demoBroker {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "sandbox-broker")
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("go tool not found: %v", err)
	}
	build := exec.Command(goTool, "build", "-o", bin, "github.com/sandbox-broker/broker/cmd/sandbox-broker")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "serve", "--demo", "--demo-sandboxes", fmt.Sprint(n), "--listen", "127.0.0.1:0")
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"BROKER_DATABASE_URL=sqlite:" + filepath.Join(dir, "broker.db"),
		"CLEANUP_ENABLED=false",
		"LOG_LEVEL=warn",
	}
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	var logs lockedBuffer
	cmd.Stderr = &logs
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	t.Cleanup(func() {
		cancel()
		if err := <-exited; err != nil && ctx.Err() == nil {
			t.Errorf("broker exited: %v", err)
		}
		if t.Failed() {
			t.Logf("broker log:\n%s", logs.String())
		}
	})

	banner := make(chan demoBroker, 1)
	go func() {
		var b demoBroker
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if v, ok := strings.CutPrefix(line, "sandbox-broker demo is running at "); ok {
				b.url = v
			} else if v, ok := strings.CutPrefix(line, "track token: "); ok {
				b.trackToken = v
			} else if v, ok := strings.CutPrefix(line, "admin token: "); ok {
				b.adminToken = v
				banner <- b
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		exited <- cmd.Wait()
	}()
	select {
	case b := <-banner:
		if !strings.HasPrefix(b.url, "http://127.0.0.1:") || b.trackToken == "" {
			t.Fatalf("unexpected banner: %+v", b)
		}
		return b
	case <-time.After(60 * time.Second):
		t.Fatalf("the broker printed no banner within 60s; log:\n%s", logs.String())
	}
	return demoBroker{}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// script runs setup.sh or cleanup.sh with a clean environment plus env
// ("KEY=value") and returns the exit code, stdout and stderr.
func script(t *testing.T, name string, env ...string) (int, string, string) {
	t.Helper()
	path, err := filepath.Abs(name)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", path)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "BROKER_JITTER_MAX_SEC=0", "BROKER_BACKOFF_MAX_SEC=1"}, env...)
	cmd.Dir = t.TempDir()
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %s: %v", name, err)
	}
	return code, stdout.String(), stderr.String()
}

func readFile(t *testing.T, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatalf("setup.sh did not write %s: %v", name, err)
	}
	return string(b)
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

func TestLabScripts(t *testing.T) {
	requireTools(t)
	b := startDemoBroker(t, 5)
	base := []string{"BROKER_API_URL=" + b.url, "BROKER_API_TOKEN=" + b.trackToken, "INSTRUQT_TRACK_SLUG=lab-adventure"}
	participant := func(id, dir string) []string {
		return append(append([]string{}, base...), "INSTRUQT_PARTICIPANT_ID="+id, "OUTPUT_DIR="+dir)
	}

	// The first participant gets a sandbox and the reference's files.
	dir0 := t.TempDir()
	code, out, errOut := script(t, "setup.sh", participant("participant-0", dir0)...)
	if code != 0 {
		t.Fatalf("setup.sh: exit %d\n%s\n%s", code, out, errOut)
	}
	id := readFile(t, dir0, "subtenant_id.txt")
	uuid := readFile(t, dir0, "sandbox_id.txt")
	name := readFile(t, dir0, "sandbox_name.txt")
	sfdc := readFile(t, dir0, "sfdc_account_id.txt")
	if !regexp.MustCompile(`^[0-9]+$`).MatchString(id) || !uuidRE.MatchString(uuid) || readFile(t, dir0, "external_id.txt") != uuid ||
		!strings.HasPrefix(name, "lab-") || !strings.HasPrefix(sfdc, "001") {
		t.Fatalf("files: id=%q uuid=%q name=%q sfdc=%q", id, uuid, name, sfdc)
	}
	envOut, err := exec.Command("bash", "-c", `set -eu; . "$1/sandbox_env.sh"; echo "$STUDENT_TENANT|$CSP_ACCOUNT_ID|$BROKER_SANDBOX_ID|$SFDC_ACCOUNT_ID"`, "bash", dir0).Output()
	if err != nil || strings.TrimSpace(string(envOut)) != strings.Join([]string{name, uuid, id, sfdc}, "|") {
		t.Fatalf("sandbox_env.sh gives %q, %v", envOut, err)
	}
	if !strings.Contains(out, "sandbox_id:      "+id) || !strings.Contains(errOut, "allocated sandbox "+id) {
		t.Fatalf("setup.sh output:\n%s\n%s", out, errOut)
	}

	// Running it again is harmless: same sandbox.
	code, _, errOut = script(t, "setup.sh", participant("participant-0", dir0)...)
	if code != 0 || readFile(t, dir0, "subtenant_id.txt") != id || !strings.Contains(errOut, "already holds sandbox "+id) {
		t.Fatalf("second setup.sh: exit %d, id %s, %s", code, readFile(t, dir0, "subtenant_id.txt"), errOut)
	}

	// Four more participants empty the pool of five; the next one fails.
	ids := map[string]string{id: "participant-0"}
	dirs := map[int]string{}
	for i := 1; i <= 5; i++ {
		dirs[i] = t.TempDir()
		code, out, errOut := script(t, "setup.sh", participant(fmt.Sprintf("participant-%d", i), dirs[i])...)
		if i == 5 {
			if code != 1 || !strings.Contains(errOut, "pool exhausted") || !strings.Contains(errOut, "NO_SANDBOXES_AVAILABLE") {
				t.Fatalf("setup.sh on an empty pool: exit %d\n%s\n%s", code, out, errOut)
			}
			if _, err := os.Stat(filepath.Join(dirs[i], "subtenant_id.txt")); err == nil {
				t.Fatal("setup.sh wrote subtenant_id.txt without a sandbox")
			}
			break
		}
		if code != 0 {
			t.Fatalf("setup.sh for participant-%d: exit %d\n%s", i, code, errOut)
		}
		got := readFile(t, dirs[i], "subtenant_id.txt")
		if prev, dup := ids[got]; dup {
			t.Fatalf("sandbox %s given to %s and participant-%d", got, prev, i)
		}
		ids[got] = fmt.Sprint(i)
	}

	// Cleanup marks the sandbox for deletion, and again without harm.
	for range 2 {
		code, _, errOut := script(t, "cleanup.sh", participant("participant-0", dir0)...)
		if code != 0 || !strings.Contains(errOut, "sandbox "+id+" is marked for deletion") {
			t.Fatalf("cleanup.sh: exit %d %s", code, errOut)
		}
	}
	// Someone else's sandbox is refused with the broker's code and message.
	code, _, errOut = script(t, "cleanup.sh", participant("participant-0", dirs[1])...)
	if code != 1 || !strings.Contains(errOut, "HTTP 403: NOT_SANDBOX_OWNER") || !strings.Contains(errOut, "request id") {
		t.Fatalf("cleanup.sh of another's sandbox: exit %d %s", code, errOut)
	}
	// Nothing allocated here: nothing to do.
	code, _, errOut = script(t, "cleanup.sh", participant("participant-9", t.TempDir())...)
	if code != 0 || !strings.Contains(errOut, "nothing to clean up") {
		t.Fatalf("cleanup.sh without subtenant_id.txt: exit %d %s", code, errOut)
	}
	// Once the broker has forgotten the sandbox (404), cleanup is done.
	adminPost(t, b, "/admin/bulk-delete?status=pending_deletion&force=true")
	code, _, errOut = script(t, "cleanup.sh", participant("participant-0", dir0)...)
	if code != 0 || !strings.Contains(errOut, "already cleaned up") {
		t.Fatalf("cleanup.sh after deletion: exit %d %s", code, errOut)
	}

	// Configuration mistakes are named.
	code, _, errOut = script(t, "setup.sh", "BROKER_API_URL="+b.url, "INSTRUQT_PARTICIPANT_ID=p")
	if code != 1 || !strings.Contains(errOut, "BROKER_API_TOKEN is not set") {
		t.Fatalf("setup.sh without a token: exit %d %s", code, errOut)
	}
	code, _, errOut = script(t, "setup.sh", "BROKER_API_URL="+b.url, "BROKER_API_TOKEN=wrong", "INSTRUQT_PARTICIPANT_ID=p", "OUTPUT_DIR="+t.TempDir())
	if code != 1 || !strings.Contains(errOut, "HTTP 401: UNAUTHORIZED") {
		t.Fatalf("setup.sh with a bad token: exit %d %s", code, errOut)
	}
}

func adminPost(t *testing.T, b demoBroker, path string) {
	t.Helper()
	req, _ := http.NewRequest("POST", b.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+b.adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("POST %s = %d %s", path, resp.StatusCode, body)
	}
}

// TestLabScriptsRetry checks that both scripts retry a busy or unavailable
// broker, honouring Retry-After, and give up after BROKER_MAX_ATTEMPTS.
func TestLabScriptsRetry(t *testing.T) {
	requireTools(t)
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.URL.Path == "/v1/down/allocate":
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, `{"error":{"code":"SERVICE_UNAVAILABLE","message":"The service is temporarily unavailable, retry later","request_id":"rid-down","retry_after":5}}`)
		case n == 1 && strings.HasSuffix(r.URL.Path, "/allocate"):
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, `{"error":{"code":"SERVICE_UNAVAILABLE","message":"The service is temporarily unavailable, retry later","request_id":"rid-1","retry_after":1}}`)
		case strings.HasSuffix(r.URL.Path, "/allocate"):
			if r.Header.Get("X-Instruqt-Sandbox-ID") != "p-1" || r.Header.Get("X-Sandbox-Name-Prefix") != "" || r.Header.Get("Idempotency-Key") != "k-1" {
				w.WriteHeader(http.StatusBadRequest)
				fmt.Fprintf(w, `{"error":{"code":"VALIDATION_ERROR","message":"unexpected headers %v","request_id":"rid-x"}}`+"\n", r.Header)
				return
			}
			w.WriteHeader(http.StatusCreated)
			fmt.Fprintln(w, `{"sandbox_id":"77","name":"any-0001","external_id":"identity/accounts/0e0e0e0e-0000-4000-8000-000000000077","allocated_at":1,"expires_at":2,"sfdc_account_id":null}`)
		case n == 3:
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			fmt.Fprintln(w, `{"error":{"code":"RATE_LIMIT_EXCEEDED","message":"Rate limit exceeded","request_id":"rid-3","retry_after":1}}`)
		default:
			fmt.Fprintln(w, `{"sandbox_id":"77","status":"pending_deletion","deletion_requested_at":3}`)
		}
	}))
	defer srv.Close()
	dir := t.TempDir()
	env := []string{"BROKER_API_URL=" + srv.URL + "/v1/", "BROKER_API_TOKEN=t", "INSTRUQT_PARTICIPANT_ID=p-1", "OUTPUT_DIR=" + dir,
		"SANDBOX_NAME_PREFIX=", "BROKER_IDEMPOTENCY_KEY=k-1"}

	code, _, errOut := script(t, "setup.sh", env...)
	if code != 0 || !strings.Contains(errOut, "attempt 1/5 failed (HTTP 503: SERVICE_UNAVAILABLE") || !strings.Contains(errOut, "retrying in 1s") {
		t.Fatalf("setup.sh after a 503: exit %d %s", code, errOut)
	}
	if readFile(t, dir, "subtenant_id.txt") != "77" || readFile(t, dir, "sfdc_account_id.txt") != "" || readFile(t, dir, "sandbox_name.txt") != "any-0001" {
		t.Fatal("setup.sh wrote the wrong files")
	}
	code, _, errOut = script(t, "cleanup.sh", env...)
	if code != 0 || !strings.Contains(errOut, "HTTP 429: RATE_LIMIT_EXCEEDED") || !strings.Contains(errOut, "marked for deletion") {
		t.Fatalf("cleanup.sh after a 429: exit %d %s", code, errOut)
	}
	start := time.Now()
	code, _, errOut = script(t, "setup.sh", "BROKER_API_URL="+srv.URL+"/v1/down", "BROKER_API_TOKEN=t", "INSTRUQT_PARTICIPANT_ID=p-1",
		"OUTPUT_DIR="+t.TempDir(), "BROKER_MAX_ATTEMPTS=3")
	if code != 1 || !strings.Contains(errOut, "failed after 3 attempts") || !strings.Contains(errOut, "request id rid-down") {
		t.Fatalf("setup.sh against a broker that stays down: exit %d %s", code, errOut)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatalf("Retry-After: 0 was not honoured: %v", time.Since(start))
	}
}
