package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// loadConfig drives one level of allocation load.
type loadConfig struct {
	Targets     []string // base URLs (http://host:port); students are spread over them
	BasePath    string   // "/v1"
	Token       string
	Concurrency int
	Duration    time.Duration // stop issuing new students after it
	MaxStudents int           // and after this many (keeps the pool from running dry)
	DupShare    float64       // share of students retrying at once (same owner and key)
	RaceShare   float64       // share of those retries sent concurrently with the first request
	Prefix      string        // X-Sandbox-Name-Prefix sent by PrefixShare of the students
	PrefixShare float64
	RunID       string // student ids are RunID-sNNNNNNN
	Seed        uint64
}

// answer is one HTTP answer seen by the load generator.
type answer struct {
	status  int // 0: transport error
	sandbox string
	name    string
	err     string
}

// studentRecord is what one student sent and got.
type studentRecord struct {
	owner, key, prefix string
	answers            []answer
}

// loadResult is one level's measurements.
type loadResult struct {
	Concurrency int
	Elapsed     time.Duration
	Students    int
	Requests    int
	Status      map[int]int // 0 = transport error
	Created     int         // 201s
	Replayed    int         // 200s
	AllocsPerS  float64     // 201s per second
	ReqPerS     float64     // every answer per second
	Lat         latency     // 201 answers
	ReplayLat   latency     // 200 answers
	FirstErrors []string
	records     []studentRecord
}

type latency struct {
	N                  int
	P50, P95, P99, Max time.Duration
}

func summarize(d []time.Duration) latency {
	if len(d) == 0 {
		return latency{}
	}
	slices.Sort(d)
	q := func(p float64) time.Duration {
		i := int(math.Ceil(p*float64(len(d)))) - 1
		return d[max(0, min(i, len(d)-1))]
	}
	return latency{N: len(d), P50: q(0.50), P95: q(0.95), P99: q(0.99), Max: d[len(d)-1]}
}

func newClient(concurrency int) *http.Client {
	tr := &http.Transport{
		MaxIdleConns:        concurrency * 2,
		MaxIdleConnsPerHost: concurrency,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

type allocBody struct {
	SandboxID string `json:"sandbox_id"`
	Name      string `json:"name"`
}

// allocate sends one POST /allocate and returns the answer and its latency.
func allocate(ctx context.Context, c *http.Client, url, token, owner, key, prefix string) (answer, time.Duration) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		return answer{err: err.Error()}, 0
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("X-Instruqt-Sandbox-ID", owner)
	req.Header.Set("Idempotency-Key", key)
	if prefix != "" {
		req.Header.Set("X-Sandbox-Name-Prefix", prefix)
	}
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return answer{err: err.Error()}, time.Since(start)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	d := time.Since(start)
	a := answer{status: resp.StatusCode}
	if err != nil {
		a.err = err.Error()
		return a, d
	}
	if resp.StatusCode == http.StatusCreated || resp.StatusCode == http.StatusOK {
		var b allocBody
		if err := json.Unmarshal(body, &b); err != nil {
			a.err = "bad body: " + err.Error()
		}
		a.sandbox, a.name = b.SandboxID, b.Name
	} else if len(body) > 0 {
		a.err = strings.TrimSpace(string(body[:min(len(body), 200)]))
	}
	return a, d
}

// runLoad runs one level: Concurrency workers, each taking the next
// student, allocating for it and, for DupShare of the students, retrying
// at once with the same owner and key (RaceShare of those retries race the
// first request, to another replica when there are several).
func runLoad(ctx context.Context, cfg loadConfig) loadResult {
	client := newClient(cfg.Concurrency)
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	records := make([]studentRecord, cfg.MaxStudents)
	var next atomic.Int64
	deadline := time.Now().Add(cfg.Duration)
	type workerOut struct {
		created, replayed []time.Duration
		status            map[int]int
		errs              []string
	}
	outs := make([]workerOut, cfg.Concurrency)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < cfg.Concurrency; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			out := &outs[w]
			out.status = map[int]int{}
			rng := rand.New(rand.NewPCG(cfg.Seed, uint64(w)))
			var mu sync.Mutex
			record := func(rec *studentRecord, a answer, d time.Duration) {
				mu.Lock()
				defer mu.Unlock()
				rec.answers = append(rec.answers, a)
				out.status[a.status]++
				switch a.status {
				case http.StatusCreated:
					out.created = append(out.created, d)
				case http.StatusOK:
					out.replayed = append(out.replayed, d)
				default:
					if len(out.errs) < 3 {
						out.errs = append(out.errs, fmt.Sprintf("%d %s", a.status, a.err))
					}
				}
			}
			for time.Now().Before(deadline) && ctx.Err() == nil {
				n := int(next.Add(1)) - 1
				if n >= cfg.MaxStudents {
					return
				}
				rec := &records[n]
				rec.owner = fmt.Sprintf("%s-s%07d", cfg.RunID, n)
				rec.key = "key-" + rec.owner
				if cfg.Prefix != "" && rng.Float64() < cfg.PrefixShare {
					rec.prefix = cfg.Prefix
				}
				url := cfg.Targets[n%len(cfg.Targets)] + cfg.BasePath + "/allocate"
				dupURL := cfg.Targets[(n+1)%len(cfg.Targets)] + cfg.BasePath + "/allocate"
				dup := rng.Float64() < cfg.DupShare
				if dup && rng.Float64() < cfg.RaceShare {
					var inner sync.WaitGroup
					inner.Add(1)
					go func() {
						defer inner.Done()
						a, d := allocate(ctx, client, dupURL, cfg.Token, rec.owner, rec.key, rec.prefix)
						record(rec, a, d)
					}()
					a, d := allocate(ctx, client, url, cfg.Token, rec.owner, rec.key, rec.prefix)
					record(rec, a, d)
					inner.Wait()
					continue
				}
				a, d := allocate(ctx, client, url, cfg.Token, rec.owner, rec.key, rec.prefix)
				record(rec, a, d)
				if dup {
					a, d = allocate(ctx, client, dupURL, cfg.Token, rec.owner, rec.key, rec.prefix)
					record(rec, a, d)
				}
			}
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start)
	res := loadResult{Concurrency: cfg.Concurrency, Elapsed: elapsed, Status: map[int]int{}}
	var created, replayed []time.Duration
	for _, o := range outs {
		created = append(created, o.created...)
		replayed = append(replayed, o.replayed...)
		for k, v := range o.status {
			res.Status[k] += v
			res.Requests += v
		}
		for _, e := range o.errs {
			if len(res.FirstErrors) < 5 {
				res.FirstErrors = append(res.FirstErrors, e)
			}
		}
	}
	res.Students = min(int(next.Load()), cfg.MaxStudents)
	res.records = records[:res.Students]
	res.Created, res.Replayed = len(created), len(replayed)
	res.AllocsPerS = float64(res.Created) / elapsed.Seconds()
	res.ReqPerS = float64(res.Requests) / elapsed.Seconds()
	res.Lat = summarize(created)
	res.ReplayLat = summarize(replayed)
	return res
}
