package dynamostore

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/storetest"
)

type countRT struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *countRT) RoundTrip(r *http.Request) (*http.Response, error) {
	c.mu.Lock()
	c.n[r.Header.Get("X-Amz-Target")]++
	c.mu.Unlock()
	return http.DefaultTransport.RoundTrip(r)
}

func TestDebugCount(t *testing.T) {
	rt := &countRT{n: map[string]int{}}
	cfg := testConfig(t)
	cfg.HTTPClient = &http.Client{Transport: rt}
	s := mustOpenConfig(t, cfg)
	ctx := context.Background()
	s.UpsertAccounts(ctx, storetest.Accounts("lab", 100000, 200), time.Unix(1800000000, 0))
	rt.n = map[string]int{}
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[string]int{}
	for i := 0; i < 500; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, err := s.Allocate(ctx, broker.AllocateRequest{Owner: fmt.Sprint("s", i), Key: fmt.Sprint("s", i), Now: time.Unix(1800000000, 0)})
			mu.Lock()
			codes[broker.ErrorCode(err)]++
			mu.Unlock()
		}(i)
	}
	wg.Wait()
	var keys []string
	for k := range rt.n {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		t.Logf("%s %d", k, rt.n[k])
	}
	t.Logf("codes %v", codes)
}
