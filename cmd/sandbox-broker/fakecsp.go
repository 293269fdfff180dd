package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/sandbox-broker/broker/fakecsp"
)

func runFakeCSP(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fake-csp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:9400", "listen address")
	n := fs.Int("sandboxes", 50, "accounts created at start")
	prefix := fs.String("prefix", "lab", "account name prefix")
	errRate := fs.Float64("error-rate", 0, "share of provider requests failing with 500 (0-1)")
	latency := fs.Duration("latency", 0, "added latency per provider request, e.g. 50ms")
	pageSize := fs.Int("page-size", 0, "largest page of the account list (0 = no pagination)")
	token := fs.String("token", "", "CSP API token to require (empty accepts any)")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if *n < 0 || *errRate < 0 || *errRate > 1 || *pageSize < 0 {
		return usageError{errors.New("fake-csp: --sandboxes and --page-size must be >= 0 and --error-rate within 0..1")}
	}
	fake := fakecsp.New(fakecsp.Options{Sandboxes: *n, Prefix: *prefix, ErrorRate: *errRate, Latency: *latency, PageSize: *pageSize, Token: *token})
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("fake-csp: listen on %s: %w", *listen, err)
	}
	srv := &http.Server{Handler: fake, ReadHeaderTimeout: 5 * time.Second}
	fmt.Fprintf(stdout, "fake CSP listening: CSP_BASE_URL=http://%s/v2 NIOSXAAS_BASE_URL=http://%s (%d sandboxes)\n", ln.Addr(), ln.Addr(), *n)
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
