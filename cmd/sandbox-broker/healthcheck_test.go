package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHealthzURL(t *testing.T) {
	for addr, want := range map[string]string{
		"":               "http://127.0.0.1:8080/healthz",
		":9000":          "http://127.0.0.1:9000/healthz",
		"0.0.0.0:8080":   "http://127.0.0.1:8080/healthz",
		"[::]:8080":      "http://127.0.0.1:8080/healthz",
		"10.1.2.3:8080":  "http://10.1.2.3:8080/healthz",
		"[::1]:8080":     "http://[::1]:8080/healthz",
		"localhost:8081": "http://localhost:8081/healthz",
	} {
		got, err := healthzURL(addr)
		if err != nil || got != want {
			t.Errorf("healthzURL(%q) = %q, %v; want %q", addr, got, err, want)
		}
	}
	if _, err := healthzURL("8080"); err == nil {
		t.Error("healthzURL(\"8080\") succeeded; want an error naming BROKER_LISTEN_ADDR")
	}
}

func TestHealthcheck(t *testing.T) {
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(status)
	}))
	defer srv.Close()
	getenv := func(name string) string {
		if name == "BROKER_LISTEN_ADDR" {
			return strings.TrimPrefix(srv.URL, "http://")
		}
		return ""
	}

	t.Run("OK", func(t *testing.T) {
		var out bytes.Buffer
		if err := runHealthcheck(context.Background(), nil, getenv, &out, &out); err != nil {
			t.Fatalf("healthcheck: %v", err)
		}
	})
	t.Run("ErrUnhealthy", func(t *testing.T) {
		status = http.StatusServiceUnavailable
		defer func() { status = http.StatusOK }()
		var out bytes.Buffer
		err := runHealthcheck(context.Background(), nil, getenv, &out, &out)
		if err == nil || !strings.Contains(err.Error(), "503") {
			t.Fatalf("healthcheck = %v; want an error naming 503", err)
		}
	})
	t.Run("ErrUnreachable", func(t *testing.T) {
		var out bytes.Buffer
		err := runHealthcheck(context.Background(), []string{"--url", "http://127.0.0.1:1/healthz", "--timeout", "1s"}, getenv, &out, &out)
		if err == nil {
			t.Fatal("healthcheck of a closed port succeeded")
		}
	})
}
