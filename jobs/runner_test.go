package jobs_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/jobs"
	"github.com/sandbox-broker/broker/sqlite"
)

func openStore(t *testing.T) broker.Store {
	t.Helper()
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "jobs.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// counter is a job body that counts its runs and notices overlap.
type counter struct {
	runs, running, overlaps atomic.Int64
}

func (c *counter) run(context.Context) (any, error) {
	if c.running.Add(1) > 1 {
		c.overlaps.Add(1)
	}
	time.Sleep(5 * time.Millisecond)
	c.running.Add(-1)
	c.runs.Add(1)
	return map[string]int{"ok": 1}, nil
}

func newRunner(s broker.Store, holder string, c *counter, interval time.Duration) *jobs.Runner {
	return jobs.New(jobs.Config{Store: s, Holder: holder, Tick: 10 * time.Millisecond, LeaseTTL: 2 * time.Second, Clock: preciseClock{},
		Jobs: []jobs.Job{
			{Name: "work", Enabled: true, Interval: interval, Run: c.run},
			{Name: "off", Enabled: false, Disabled: "OFF_ENABLED=false", Interval: time.Hour, Run: c.run},
		}})
}

// TestOneLeader: three runners on one store run a scheduled job once per
// interval between them, never two at a time.
func TestOneLeader(t *testing.T) {
	s := openStore(t)
	c := &counter{}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		r := newRunner(s, fmt.Sprintf("r%d", i), c, 200*time.Millisecond)
		wg.Add(1)
		go func() { defer wg.Done(); r.Run(ctx) }()
	}
	time.Sleep(1100 * time.Millisecond)
	cancel()
	wg.Wait()
	// One run at start plus one per 200 ms: about 6, never 3x that.
	if n := c.runs.Load(); n < 2 || n > 8 {
		t.Fatalf("%d scheduled runs in 1.1 s with a 200 ms interval across 3 runners", n)
	}
	if c.overlaps.Load() != 0 {
		t.Fatalf("%d overlapping runs", c.overlaps.Load())
	}
}

func TestTriggerPauseRunNow(t *testing.T) {
	s := openStore(t)
	c := &counter{}
	r := newRunner(s, "r", c, time.Hour)
	ctx := context.Background()
	if _, err := r.Trigger(ctx, "nope"); broker.ErrorCode(err) != broker.ENOTFOUND {
		t.Fatalf("unknown job: %v", err)
	}
	if _, err := r.Trigger(ctx, "off"); broker.ErrorCode(err) != broker.ECONFLICT {
		t.Fatalf("disabled job: %v", err)
	}
	if err := r.SetPaused(ctx, "nope", true); broker.ErrorCode(err) != broker.ENOTFOUND {
		t.Fatalf("pause unknown: %v", err)
	}
	// A startup run counts as the last run: the hourly schedule waits.
	if _, err := r.RunNow(ctx, "work"); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); r.Run(rctx) }()
	time.Sleep(100 * time.Millisecond)
	if n := c.runs.Load(); n != 1 {
		t.Fatalf("%d runs after RunNow; the schedule should wait an interval", n)
	}
	if err := r.SetPaused(ctx, "work", true); err != nil {
		t.Fatal(err)
	}
	run, err := r.Trigger(ctx, "work")
	if err != nil || run.Status != "queued" {
		t.Fatalf("trigger = %+v, %v", run, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for c.runs.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if c.runs.Load() != 2 {
		t.Fatalf("a trigger must run even while paused: %d runs", c.runs.Load())
	}
	st, err := r.Jobs(ctx)
	if err != nil || len(st) != 2 || !st[0].Paused || len(st[0].Runs) != 2 || st[0].Runs[0].Status != "succeeded" || st[0].Runs[0].Result != `{"ok":1}` {
		t.Fatalf("jobs = %+v, %v", st, err)
	}
}

// preciseClock is the wall clock without the system clock's truncation to
// whole seconds, so that sub-second intervals keep tests short.
type preciseClock struct{}

func (preciseClock) Now() time.Time { return time.Now() }
