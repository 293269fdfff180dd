package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// runHealthcheck asks the broker running in this container or pod whether it
// is alive: it GETs /healthz on the port of BROKER_LISTEN_ADDR and fails on
// anything but 200. It exists for the Docker HEALTHCHECK, because the
// distroless image has no shell and no curl.
func runHealthcheck(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	target := fs.String("url", "", "URL to check (default: http://127.0.0.1:<port of BROKER_LISTEN_ADDR>/healthz)")
	timeout := fs.Duration("timeout", 3*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("healthcheck: unexpected argument %q", fs.Arg(0))}
	}
	if *target == "" {
		u, err := healthzURL(getenv("BROKER_LISTEN_ADDR"))
		if err != nil {
			return usageError{err}
		}
		*target = u
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, *target, nil)
	if err != nil {
		return usageError{fmt.Errorf("healthcheck: %w", err)}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: GET %s answered %s", *target, resp.Status)
	}
	fmt.Fprintln(stdout, "healthy")
	return nil
}

// healthzURL is the /healthz URL of a server listening on addr (default
// :8080): loopback when addr binds every interface, else addr's own host.
func healthzURL(addr string) (string, error) {
	if strings.TrimSpace(addr) == "" {
		addr = ":8080"
	}
	host, port, err := net.SplitHostPort(strings.TrimSpace(addr))
	if err != nil || port == "" {
		return "", fmt.Errorf("BROKER_LISTEN_ADDR=%q must be host:port or :port, e.g. :8080", addr)
	}
	switch host {
	case "", "0.0.0.0", "::":
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/healthz", nil
}
