package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a goroutine-safe bytes.Buffer.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func envOf(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

func TestConfigErrorsNameTheVariable(t *testing.T) {
	tests := []struct {
		env  map[string]string
		args []string
		want string
	}{
		{map[string]string{"LAB_DURATION_HOURS": "forever"}, []string{"serve", "--demo"}, "LAB_DURATION_HOURS"},
		{map[string]string{"BROKER_DATABASE_URL": "mysql://x"}, []string{"serve", "--demo"}, "BROKER_DATABASE_URL"},
		{map[string]string{"CSP_BASE_URL": "not a url"}, []string{"serve", "--demo"}, "CSP_BASE_URL"},
		{map[string]string{"SYNC_MAX_STALE_FRACTION": "2"}, []string{"worker"}, "SYNC_MAX_STALE_FRACTION"},
		{map[string]string{}, []string{"serve"}, "BROKER_API_TOKEN"},
		{map[string]string{}, []string{"bogus"}, "unknown command"},
	}
	for _, tt := range tests {
		var out, errOut syncBuffer
		code := run(context.Background(), tt.args, envOf(tt.env), &out, &errOut)
		if code != 2 || !strings.Contains(errOut.String(), tt.want) {
			t.Errorf("%v %v: exit %d, stderr %q; want 2 naming %s", tt.args, tt.env, code, errOut.String(), tt.want)
		}
	}
}

// TestServeDemo runs `serve --demo` in-process on a free port, allocates
// through it, and stops it like SIGTERM would.
func TestServeDemo(t *testing.T) {
	dir := t.TempDir()
	env := envOf(map[string]string{
		"BROKER_DATABASE_URL": "sqlite:" + filepath.Join(dir, "demo.db"),
		"LOG_LEVEL":           "error",
	})
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	done := make(chan int)
	go func() {
		done <- run(ctx, []string{"serve", "--demo", "--demo-sandboxes", "3", "--listen", "127.0.0.1:0"}, env, &out, &errOut)
	}()

	base, token := "", ""
	re := regexp.MustCompile(`running at (http://\S+)\s+track token: (\S+)`)
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if m := re.FindStringSubmatch(out.String()); m != nil {
			base, token = m[1], m[2]
			break
		}
	}
	if base == "" {
		cancel()
		t.Fatalf("no banner; stdout %q stderr %q", out.String(), errOut.String())
	}
	ids := map[string]bool{}
	for i := 0; i < 4; i++ {
		req, _ := http.NewRequest("POST", base+"/allocate", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("X-Instruqt-Sandbox-ID", "student-"+string(rune('a'+i)))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		want := http.StatusCreated
		if i == 3 {
			want = http.StatusConflict // the demo pool holds 3
		}
		if resp.StatusCode != want {
			t.Fatalf("allocation %d = %d %v", i, resp.StatusCode, body)
		}
		if id, ok := body["sandbox_id"].(string); ok {
			ids[id] = true
		}
	}
	if len(ids) != 3 {
		t.Fatalf("distinct sandboxes %v", ids)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop after cancellation")
	}
}
