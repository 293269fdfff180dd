package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/postgres"
	"github.com/sandbox-broker/broker/sqlite"
)

var quietLog = slog.New(slog.DiscardHandler)

// demoAccounts returns n accounts named like the demo provider's.
func demoAccounts(prefix string, firstID, n int) []broker.Account {
	width := max(4, len(strconv.Itoa(n)))
	out := make([]broker.Account, n)
	created := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range out {
		id := firstID + i
		num := strconv.Itoa(i + 1)
		out[i] = broker.Account{
			ID:            strconv.Itoa(id),
			Name:          prefix + "-" + strings.Repeat("0", max(0, width-len(num))) + num,
			ExternalID:    fmt.Sprintf("identity/accounts/%08d-0000-4000-8000-%012d", id, id),
			SFDCAccountID: "001SAND" + strconv.Itoa(id),
			CreatedAt:     created,
		}
	}
	return out
}

// rawResult is the store's allocation throughput without HTTP.
type rawResult struct {
	Store       string
	Concurrency int
	PoolConns   int // PostgreSQL connections (0 for SQLite)
	Allocs      int
	Misses      int // attempts that found every candidate locked (PostgreSQL)
	Elapsed     time.Duration
	AllocsPerS  float64
	Lat         latency
}

// drive runs fn from conc goroutines for d or until max successes.
func drive(ctx context.Context, conc int, d time.Duration, maxN int, fn func(ctx context.Context, n int) (bool, error)) (rawResult, error) {
	var next, misses atomic.Int64
	deadline := time.Now().Add(d)
	lats := make([][]time.Duration, conc)
	errs := make(chan error, conc)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for time.Now().Before(deadline) {
				n := int(next.Add(1)) - 1
				if n >= maxN {
					return
				}
				t := time.Now()
				ok, err := fn(ctx, n)
				if err != nil {
					errs <- err
					return
				}
				if !ok {
					misses.Add(1)
					continue
				}
				lats[w] = append(lats[w], time.Since(t))
			}
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return rawResult{}, err
	}
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	return rawResult{Concurrency: conc, Allocs: len(all), Misses: int(misses.Load()), Elapsed: elapsed,
		AllocsPerS: float64(len(all)) / elapsed.Seconds(), Lat: summarize(all)}, nil
}

// rawSQLite calls store.Allocate in-process from conc goroutines on a
// fresh file holding pool sandboxes.
func rawSQLite(ctx context.Context, dir string, pool, conc int, d time.Duration) (rawResult, error) {
	path := fmt.Sprintf("%s/raw-sqlite-c%d.db", dir, conc)
	defer removeSQLite(path)
	s, err := sqlite.Open(ctx, path)
	if err != nil {
		return rawResult{}, err
	}
	defer s.Close()
	if _, err := s.UpsertAccounts(ctx, demoAccounts("lab", 2000001, pool), time.Now()); err != nil {
		return rawResult{}, err
	}
	res, err := drive(ctx, conc, d, pool*9/10, func(ctx context.Context, n int) (bool, error) {
		owner := "raw-" + strconv.Itoa(n)
		ctx = broker.WithActor(ctx, broker.Actor{Name: "owner:" + owner, RequestID: owner})
		_, err := s.Allocate(ctx, broker.AllocateRequest{Owner: owner, Key: owner, LabDuration: 48 * time.Hour, Now: time.Now()})
		return err == nil, err
	})
	res.Store = "sqlite (store.Allocate in-process)"
	return res, err
}

func removeSQLite(path string) {
	for _, suffix := range []string{"", "-wal", "-shm"} {
		_ = os.Remove(path + suffix)
	}
}

// rawSkipLockedSQL is the bare allocation statement the PostgreSQL target
// is measured against: no idempotency lookup, no audit event, no CTE.
const rawSkipLockedSQL = `UPDATE sandboxes SET status = 'allocated', owner = $1, idem_key = $1, allocated_at = $2, updated_at = $2
WHERE id = (SELECT id FROM sandboxes WHERE status = 'available' ORDER BY name LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id`

// rawPostgres measures UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP
// LOCKED LIMIT 1) with pgx on a fresh database with the broker's schema
// (created by postgres.Open) and pool sandboxes.
func rawPostgres(ctx context.Context, base string, pool, conc, conns int, d time.Duration) (rawResult, error) {
	name := fmt.Sprintf("bench_raw_%d_c%d_p%d", os.Getpid(), conc, conns)
	dbURL, err := createDB(ctx, base, name)
	if err != nil {
		return rawResult{}, err
	}
	defer dropDB(context.WithoutCancel(ctx), base, name)
	s, err := postgres.Open(ctx, dbURL, postgres.Options{Logger: quietLog})
	if err != nil {
		return rawResult{}, err
	}
	_, err = s.UpsertAccounts(ctx, demoAccounts("lab", 2000001, pool), time.Now())
	s.Close()
	if err != nil {
		return rawResult{}, err
	}
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return rawResult{}, err
	}
	cfg.MaxConns, cfg.MinConns = int32(conns), int32(conns)
	p, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return rawResult{}, err
	}
	defer p.Close()
	if _, err := p.Exec(ctx, "ANALYZE sandboxes"); err != nil {
		return rawResult{}, err
	}
	res, err := drive(ctx, conc, d, pool*9/10, func(ctx context.Context, n int) (bool, error) {
		var id string
		err := p.QueryRow(ctx, rawSkipLockedSQL, "raw-"+strconv.Itoa(n), time.Now().Unix()).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			return false, nil
		}
		return err == nil, err
	})
	res.Store = "postgres (raw SKIP LOCKED, pgx)"
	res.PoolConns = conns
	return res, err
}

// analyze runs ANALYZE on the sandboxes table of dbURL.
func analyze(ctx context.Context, dbURL string) error {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "ANALYZE sandboxes")
	return err
}

// createDB creates database name next to base's and returns its URL.
func createDB(ctx context.Context, base, name string) (string, error) {
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		return "", fmt.Errorf("connect to %s: %w", redactURL(base), err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
		return "", err
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	return withDatabase(base, name), nil
}

func dropDB(ctx context.Context, base, name string) {
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		return
	}
	defer conn.Close(ctx)
	_, _ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
}

// withDatabase returns base pointing at database name.
func withDatabase(base, name string) string {
	if strings.HasPrefix(base, "postgres://") || strings.HasPrefix(base, "postgresql://") {
		u, err := url.Parse(base)
		if err == nil {
			u.Path = "/" + name
			return u.String()
		}
	}
	return base + " dbname=" + name
}

func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}

// floorBody is about the size of a real allocation answer.
const floorBody = `{"sandbox_id":"2000001","name":"lab-000001","external_id":"identity/accounts/1e49d18d-5b99-4021-8001-0000001e8481","allocated_at":1795386138,"expires_at":1795558938,"sfdc_account_id":"001SAND2000001"}`

// serveFloor is the HTTP floor: a trivial handler answering every request
// with a small JSON body, in its own process (bench -floor-server ADDR).
func serveFloor(addr string) error {
	srv := &http.Server{
		Addr: addr,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/readyz" {
				w.WriteHeader(http.StatusOK)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusCreated)
			_, _ = w.Write([]byte(floorBody))
		}),
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       120 * time.Second,
	}
	go func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM, os.Interrupt)
		<-ch
		_ = srv.Close()
	}()
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
