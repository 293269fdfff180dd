package dynamostore

import (
	"context"
	"sync"
	"testing"
	"time"
)

func TestDebugBench(t *testing.T) {
	s := MustOpen(t)
	ctx := context.Background()
	for _, conc := range []int{1, 10, 100} {
		for _, op := range []string{"get", "put", "query"} {
			start := time.Now()
			var wg sync.WaitGroup
			n := 1000
			ch := make(chan int, n)
			for i := 0; i < n; i++ {
				ch <- i
			}
			close(ch)
			for w := 0; w < conc; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range ch {
						switch op {
						case "get":
							s.getItem(ctx, sbxKey("x"))
						case "put":
							it := itemKey("X#"+string(rune('a'+i%26)), "x")
							s.putItem(ctx, it, "", nil)
						case "query":
							s.IDsWithStatus(ctx, "available")
						}
					}
				}()
			}
			wg.Wait()
			t.Logf("conc %d %s: %v per op", conc, op, time.Since(start)/time.Duration(n))
		}
	}
}
