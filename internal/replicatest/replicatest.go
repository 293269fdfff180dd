// Package replicatest runs the multi-replica allocation scenario over real
// HTTP: several broker servers, each with its own store handle (its own
// connection pool), on one shared database.
package replicatest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/httpapi"
	"github.com/sandbox-broker/broker/service"
	"github.com/sandbox-broker/broker/storetest"
)

const token = "replica-token"

// Scenario sizes the test.
type Scenario struct {
	Sandboxes int     // pool size, e.g. 600
	Students  int     // concurrent students, e.g. 1000
	RetryRate float64 // share of students who send the same request to another replica at once
}

// Run seeds the pool through stores[0], starts one HTTP server per store and
// fires the students at random replicas. It checks: exactly min(Sandboxes,
// Students) allocated, each student at most one sandbox, no sandbox twice,
// only 201/200/409 answers, and every 201/200 body agrees with the store.
func Run(t *testing.T, stores []broker.Store, sc Scenario) {
	t.Helper()
	ctx := context.Background()
	now := time.Now().Truncate(time.Second)
	if _, err := stores[0].UpsertAccounts(ctx, storetest.Accounts("lab", 700000, sc.Sandboxes), now); err != nil {
		t.Fatal(err)
	}
	urls := make([]string, len(stores))
	for i, s := range stores {
		srv := httptest.NewServer(httpapi.New(httpapi.Config{APITokens: []string{token}, AdminTokens: []string{"admin-" + token},
			Service: service.New(s, nil, time.Hour), Store: s}))
		t.Cleanup(srv.Close)
		urls[i] = srv.URL
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: 60 * time.Second}

	type answer struct {
		student, sandbox, name string
		status                 int
	}
	answers := make(chan answer, 2*sc.Students)
	var wg sync.WaitGroup
	send := func(student string, replica int) {
		defer wg.Done()
		req, _ := http.NewRequest("POST", urls[replica%len(urls)]+"/v1/allocate", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("X-Instruqt-Sandbox-ID", student)
		resp, err := client.Do(req)
		if err != nil {
			t.Errorf("%s: %v", student, err)
			return
		}
		defer resp.Body.Close()
		var body map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&body)
		id, _ := body["sandbox_id"].(string)
		name, _ := body["name"].(string)
		answers <- answer{student, id, name, resp.StatusCode}
	}
	retryEvery := 0
	if sc.RetryRate > 0 {
		retryEvery = int(1 / sc.RetryRate)
	}
	for i := 0; i < sc.Students; i++ {
		student := fmt.Sprintf("student-%04d", i)
		wg.Add(1)
		go send(student, i)
		if retryEvery > 0 && i%retryEvery == 0 {
			wg.Add(1)
			go send(student, i+1) // the same request on another replica, at the same moment
		}
	}
	wg.Wait()
	close(answers)

	byStudent := map[string]string{}
	bySandbox := map[string]string{}
	names := map[string]string{}
	statuses := map[int]int{}
	for a := range answers {
		statuses[a.status]++
		switch a.status {
		case http.StatusCreated, http.StatusOK:
		case http.StatusConflict:
			continue
		default:
			t.Fatalf("%s got HTTP %d", a.student, a.status)
		}
		if prev, ok := byStudent[a.student]; ok && prev != a.sandbox {
			t.Fatalf("student %s got two sandboxes: %s and %s", a.student, prev, a.sandbox)
		}
		byStudent[a.student] = a.sandbox
		if prev, ok := bySandbox[a.sandbox]; ok && prev != a.student {
			t.Fatalf("sandbox %s given to %s and %s", a.sandbox, prev, a.student)
		}
		bySandbox[a.sandbox] = a.student
		names[a.sandbox] = a.name
	}
	want := min(sc.Sandboxes, sc.Students)
	if len(bySandbox) != want {
		t.Fatalf("%d sandboxes allocated, want %d (answers by status: %v)", len(bySandbox), want, statuses)
	}
	for id, student := range bySandbox {
		sb, err := stores[len(stores)-1].Get(ctx, id)
		if err != nil || sb.Status != broker.StatusAllocated || sb.Owner != student || sb.Name != names[id] {
			t.Fatalf("store disagrees with the answer for %s (%s): %+v %v", id, student, sb, err)
		}
	}
	st, err := stores[0].Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.ByStatus[broker.StatusAllocated] != want {
		t.Fatalf("store holds %d allocated, answers name %d", st.ByStatus[broker.StatusAllocated], want)
	}
	t.Logf("%d replicas: answers by status %v, %d allocated", len(stores), statuses, want)
}
