package fakecsp_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandbox-broker/broker/fakecsp"
)

// listPage is the body of GET /v2/current_user/accounts.
type listPage struct {
	Results []struct {
		AccountType   string `json:"account_type"`
		State         string `json:"state"`
		ID            string `json:"id"`
		Name          string `json:"name"`
		CSPID         *int64 `json:"csp_id"`
		CreatedAt     string `json:"created_at"`
		SFDCAccountID string `json:"sfdc_account_id"`
	} `json:"results"`
}

func mustServe(t *testing.T, opts fakecsp.Options) (*fakecsp.Server, *httptest.Server) {
	t.Helper()
	fake := fakecsp.New(opts)
	ts := httptest.NewServer(fake)
	t.Cleanup(ts.Close)
	return fake, ts
}

// do sends a request and returns the status and body.
func do(t *testing.T, method, url, auth string, body any) (int, []byte, http.Header) {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b, resp.Header
}

func decode[T any](t *testing.T, b []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return v
}

func TestNew(t *testing.T) {
	t.Run("OK", func(t *testing.T) {
		fake, ts := mustServe(t, fakecsp.Options{Sandboxes: 3})
		status, body, _ := do(t, "GET", ts.URL+"/v2/current_user/accounts", "", nil)
		if status != http.StatusOK {
			t.Fatalf("status = %d", status)
		}
		page := decode[listPage](t, body)
		if len(page.Results) != 3 {
			t.Fatalf("got %d accounts, want 3", len(page.Results))
		}
		first := page.Results[0]
		accounts := fake.Accounts()
		if first.Name != "lab-0001" || *first.CSPID != 2000001 || first.AccountType != "sandbox" ||
			first.State != "active" || first.SFDCAccountID != "001SAND2000001" ||
			first.ID != "identity/accounts/"+accounts[0].UUID || first.CreatedAt != "2025-01-01T00:00:00.000000Z" {
			t.Errorf("first account = %+v", first)
		}
		if page.Results[2].Name != "lab-0003" || *page.Results[2].CSPID != 2000003 {
			t.Errorf("third account = %+v", page.Results[2])
		}
	})

	t.Run("Deterministic", func(t *testing.T) {
		a := fakecsp.New(fakecsp.Options{Sandboxes: 5, Prefix: "x"}).Accounts()
		b := fakecsp.New(fakecsp.Options{Sandboxes: 5, Prefix: "x"}).Accounts()
		for i := range a {
			if a[i].UUID != b[i].UUID || a[i].Name != b[i].Name {
				t.Fatalf("account %d differs: %+v vs %+v", i, a[i], b[i])
			}
		}
	})

	t.Run("Large", func(t *testing.T) {
		start := time.Now()
		fake := fakecsp.New(fakecsp.Options{Sandboxes: 100_000})
		limit := time.Second
		if raceEnabled {
			limit *= 10
		}
		if d := time.Since(start); d > limit {
			t.Errorf("creating 100,000 accounts took %s", d)
		}
		accounts := fake.Accounts()
		if len(accounts) != 100_000 {
			t.Fatalf("got %d accounts", len(accounts))
		}
		if got := accounts[0].Name; got != "lab-000001" {
			t.Errorf("first name = %q, want lab-000001", got)
		}
		if got := accounts[99_999].Name; got != "lab-100000" {
			t.Errorf("last name = %q, want lab-100000", got)
		}
		seen := make(map[string]bool, len(accounts))
		for _, a := range accounts {
			if seen[a.UUID] {
				t.Fatalf("duplicate uuid %s", a.UUID)
			}
			seen[a.UUID] = true
		}
	})
}

func TestListAccounts_Pagination(t *testing.T) {
	tests := []struct {
		name     string
		pageSize int
		query    string
		want     []string
	}{
		{"NoPaginationIgnoresParams", 0, "?_limit=1&_offset=3", []string{"lab-0001", "lab-0002", "lab-0003", "lab-0004", "lab-0005"}},
		{"DefaultLimit", 2, "", []string{"lab-0001", "lab-0002"}},
		{"Offset", 2, "?_offset=2", []string{"lab-0003", "lab-0004"}},
		{"LimitCappedAtPageSize", 2, "?_limit=100&_offset=3", []string{"lab-0004", "lab-0005"}},
		{"SmallerLimit", 2, "?_limit=1&_offset=4", []string{"lab-0005"}},
		{"PastTheEnd", 2, "?_offset=10", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, ts := mustServe(t, fakecsp.Options{Sandboxes: 5, PageSize: tt.pageSize})
			_, body, _ := do(t, "GET", ts.URL+"/v2/current_user/accounts"+tt.query, "", nil)
			var got []string
			for _, r := range decode[listPage](t, body).Results {
				got = append(got, r.Name)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestToken(t *testing.T) {
	tests := []struct {
		name string
		auth string
		want int
	}{
		{"OK", "Token secret", http.StatusOK},
		{"Wrong", "Token other", http.StatusUnauthorized},
		{"Bearer", "Bearer secret", http.StatusUnauthorized},
		{"Missing", "", http.StatusUnauthorized},
	}
	_, ts := mustServe(t, fakecsp.Options{Sandboxes: 1, Token: "secret"})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if status, _, _ := do(t, "GET", ts.URL+"/v2/current_user/accounts", tt.auth, nil); status != tt.want {
				t.Errorf("status = %d, want %d", status, tt.want)
			}
		})
	}
}

func TestDeleteAccount(t *testing.T) {
	fake, ts := mustServe(t, fakecsp.Options{Sandboxes: 2})
	uuid := fake.Accounts()[0].UUID

	if status, _, _ := do(t, "DELETE", ts.URL+"/v2/sandbox/accounts/"+uuid, "", nil); status != http.StatusNoContent {
		t.Fatalf("first delete: status = %d, want 204", status)
	}
	if status, _, _ := do(t, "DELETE", ts.URL+"/v2/sandbox/accounts/"+uuid, "", nil); status != http.StatusNotFound {
		t.Fatalf("second delete: status = %d, want 404", status)
	}
	if got := len(fake.Accounts()); got != 1 {
		t.Errorf("%d accounts left, want 1", got)
	}
	_, body, _ := do(t, "GET", ts.URL+"/_fake/deletes", "", nil)
	d := decode[fakecsp.DeleteStats](t, body)
	if d.Total != 2 || d.Succeeded != 1 || d.ByAccount[uuid] != 2 || d.SucceededByAccount[uuid] != 1 {
		t.Errorf("deletes = %+v", d)
	}
	// Offsets count live accounts only.
	_, body, _ = do(t, "GET", ts.URL+"/v2/current_user/accounts", "", nil)
	if page := decode[listPage](t, body); len(page.Results) != 1 || page.Results[0].Name != "lab-0002" {
		t.Errorf("list after delete = %+v", page.Results)
	}
}

func TestFaults(t *testing.T) {
	t.Run("Outage", func(t *testing.T) {
		fake, ts := mustServe(t, fakecsp.Options{Sandboxes: 1})
		uuid := fake.Accounts()[0].UUID
		fake.SetFaults(fakecsp.Faults{Outage: true, RetryAfter: 7})

		status, _, h := do(t, "GET", ts.URL+"/v2/current_user/accounts", "", nil)
		if status != http.StatusServiceUnavailable || h.Get("Retry-After") != "7" {
			t.Errorf("list: status = %d, Retry-After = %q", status, h.Get("Retry-After"))
		}
		if status, _, _ := do(t, "DELETE", ts.URL+"/v2/sandbox/accounts/"+uuid, "", nil); status != http.StatusServiceUnavailable {
			t.Errorf("delete: status = %d", status)
		}
		if status, _, _ := do(t, "GET", ts.URL+"/_fake/accounts", "", nil); status != http.StatusOK {
			t.Errorf("control API: status = %d, want 200 during an outage", status)
		}
		d := fake.Deletes()
		if d.Total != 1 || d.Succeeded != 0 {
			t.Errorf("deletes = %+v, want the faulted one recorded, none succeeded", d)
		}
		if len(fake.Accounts()) != 1 {
			t.Error("a faulted delete removed the account")
		}
	})

	t.Run("ErrorRate", func(t *testing.T) {
		fake, ts := mustServe(t, fakecsp.Options{Sandboxes: 1, ErrorRate: 0.5, Seed: 42})
		failed := 0
		for range 200 {
			status, _, _ := do(t, "GET", ts.URL+"/v2/current_user/accounts", "", nil)
			if status == http.StatusInternalServerError {
				failed++
			}
		}
		if failed < 60 || failed > 140 {
			t.Errorf("%d of 200 failed with error rate 0.5", failed)
		}
		if got := fake.Requests()[fakecsp.ReqListAccounts]; got != 200 {
			t.Errorf("list requests = %d, want 200", got)
		}
	})

	t.Run("Latency", func(t *testing.T) {
		_, ts := mustServe(t, fakecsp.Options{Sandboxes: 1, Latency: 50 * time.Millisecond})
		start := time.Now()
		do(t, "GET", ts.URL+"/v2/current_user/accounts", "", nil)
		if d := time.Since(start); d < 50*time.Millisecond {
			t.Errorf("answered in %s, want >= 50ms", d)
		}
	})

	t.Run("ControlAPI", func(t *testing.T) {
		fake, ts := mustServe(t, fakecsp.Options{})
		body := map[string]any{"error_rate": 0.25, "status": 429, "latency": "20ms", "retry_after": 3, "outage": false}
		if status, b, _ := do(t, "POST", ts.URL+"/_fake/faults", "", body); status != http.StatusOK {
			t.Fatalf("status = %d: %s", status, b)
		}
		want := fakecsp.Faults{ErrorRate: 0.25, Status: 429, Latency: 20 * time.Millisecond, RetryAfter: 3}
		if got := fake.Faults(); got != want {
			t.Errorf("faults = %+v, want %+v", got, want)
		}
		for _, bad := range []map[string]any{{"latency": "soon"}, {"error_rate": 2}, {"status": 200}} {
			if status, _, _ := do(t, "POST", ts.URL+"/_fake/faults", "", bad); status != http.StatusBadRequest {
				t.Errorf("%v: status = %d, want 400", bad, status)
			}
		}
	})
}

func TestControlAccounts(t *testing.T) {
	fake, ts := mustServe(t, fakecsp.Options{Sandboxes: 1})

	status, body, _ := do(t, "POST", ts.URL+"/_fake/accounts", "", map[string]any{"count": 2, "prefix": "ws"})
	if status != http.StatusCreated {
		t.Fatalf("add count: status = %d: %s", status, body)
	}
	added := decode[[]fakecsp.Account](t, body)
	if len(added) != 2 || added[0].Name != "ws-0001" || added[1].CSPID != 2000003 {
		t.Errorf("added = %+v", added)
	}

	list := []map[string]any{
		{"name": "tenant", "account_type": "tenant"},
		{"name": "gone", "state": "deleted"},
		{"name": "null-id", "no_csp_id": true},
	}
	status, body, _ = do(t, "POST", ts.URL+"/_fake/accounts", "", list)
	if status != http.StatusCreated {
		t.Fatalf("add list: status = %d: %s", status, body)
	}
	_, body, _ = do(t, "GET", ts.URL+"/v2/current_user/accounts", "", nil)
	page := decode[listPage](t, body)
	if len(page.Results) != 6 {
		t.Fatalf("listed %d accounts, want 6", len(page.Results))
	}
	if r := page.Results[3]; r.AccountType != "tenant" || r.State != "active" {
		t.Errorf("tenant = %+v", r)
	}
	if r := page.Results[5]; r.CSPID != nil || r.Name != "null-id" {
		t.Errorf("null-id = %+v, want csp_id null", r)
	}
	if !strings.Contains(string(body), `"csp_id":null`) {
		t.Error(`body has no "csp_id":null`)
	}

	t.Run("DuplicateUUID", func(t *testing.T) {
		uuid := fake.Accounts()[0].UUID
		if _, err := fake.AddAccounts(fakecsp.Account{UUID: uuid}); err == nil {
			t.Error("AddAccounts accepted a taken uuid")
		}
		status, _, _ := do(t, "POST", ts.URL+"/_fake/accounts", "", []map[string]any{{"uuid": uuid}})
		if status != http.StatusConflict {
			t.Errorf("status = %d, want 409", status)
		}
	})

	t.Run("Remove", func(t *testing.T) {
		for _, id := range []string{"2000001", "identity/accounts/" + added[0].UUID} {
			if status, _, _ := do(t, "DELETE", ts.URL+"/_fake/accounts/"+id, "", nil); status != http.StatusNoContent {
				t.Errorf("remove %s: status = %d", id, status)
			}
		}
		if status, _, _ := do(t, "DELETE", ts.URL+"/_fake/accounts/nope", "", nil); status != http.StatusNotFound {
			t.Errorf("remove unknown: status = %d", status)
		}
		if d := fake.Deletes(); d.Total != 0 {
			t.Errorf("removal recorded deletes: %+v", d)
		}
		if got := len(fake.Accounts()); got != 4 {
			t.Errorf("%d accounts left, want 4", got)
		}
	})

	t.Run("BadBody", func(t *testing.T) {
		for _, body := range []any{map[string]any{"count": 0}, "nonsense"} {
			if status, _, _ := do(t, "POST", ts.URL+"/_fake/accounts", "", body); status != http.StatusBadRequest {
				t.Errorf("%v: status = %d, want 400", body, status)
			}
		}
	})
}

func TestNIOSXaaS(t *testing.T) {
	fake, ts := mustServe(t, fakecsp.Options{Sandboxes: 2, Email: "svc@example.com", Password: "pw",
		ServicesPerAccount: 2, PageSize: 1})
	acct := fake.Accounts()[0]

	status, _, _ := do(t, "POST", ts.URL+"/v2/session/users/sign_in", "", map[string]string{"email": "svc@example.com", "password": "bad"})
	if status != http.StatusUnauthorized {
		t.Fatalf("bad password: status = %d", status)
	}
	status, body, _ := do(t, "POST", ts.URL+"/v2/session/users/sign_in", "", map[string]string{"email": "svc@example.com", "password": "pw"})
	if status != http.StatusOK {
		t.Fatalf("sign in: status = %d: %s", status, body)
	}
	user := decode[map[string]string](t, body)["jwt"]

	// A user JWT cannot list services; it must switch first.
	if status, _, _ := do(t, "GET", ts.URL+"/api/universalinfra/v1/universalservices", "Bearer "+user, nil); status != http.StatusUnauthorized {
		t.Errorf("list with user jwt: status = %d, want 401", status)
	}
	if status, _, _ := do(t, "POST", ts.URL+"/v2/session/account_switch", "Bearer "+user, map[string]string{"id": "identity/accounts/nope"}); status != http.StatusNotFound {
		t.Errorf("switch to unknown account: status = %d, want 404", status)
	}
	_, body, _ = do(t, "POST", ts.URL+"/v2/session/account_switch", "Bearer "+user, map[string]string{"id": acct.ExternalID()})
	sandbox := decode[map[string]string](t, body)["jwt"]

	var ids []string
	for offset := 0; ; offset++ {
		_, body, _ = do(t, "GET", fmt.Sprintf("%s/api/universalinfra/v1/universalservices?_offset=%d", ts.URL, offset), "Bearer "+sandbox, nil)
		page := decode[struct {
			Results []struct{ ID, Name string } `json:"results"`
		}](t, body)
		if len(page.Results) == 0 {
			break
		}
		for _, r := range page.Results {
			if r.Name != fakecsp.DefaultServiceName || !strings.HasPrefix(r.ID, "infra/universal_service/") {
				t.Errorf("service = %+v", r)
			}
			ids = append(ids, r.ID)
		}
	}
	if len(ids) != 2 {
		t.Fatalf("listed %d services, want 2", len(ids))
	}
	uuid := ids[0][strings.LastIndexByte(ids[0], '/')+1:]
	if status, _, _ := do(t, "DELETE", ts.URL+"/api/universalinfra/v1/universalservices/"+uuid, "Bearer "+sandbox, nil); status != http.StatusNoContent {
		t.Errorf("delete service: status = %d", status)
	}
	if status, _, _ := do(t, "DELETE", ts.URL+"/api/universalinfra/v1/universalservices/"+uuid, "Bearer "+sandbox, nil); status != http.StatusNotFound {
		t.Errorf("delete service again: status = %d", status)
	}
	if a, _ := fake.Account(acct.UUID); len(a.Services) != 1 {
		t.Errorf("%d services left, want 1", len(a.Services))
	}

	fake.ExpireSessions()
	if status, _, _ := do(t, "GET", ts.URL+"/api/universalinfra/v1/universalservices", "Bearer "+sandbox, nil); status != http.StatusUnauthorized {
		t.Errorf("expired jwt: status = %d, want 401", status)
	}

	if _, err := fake.AddServices(acct.UUID, "other", 3); err != nil {
		t.Fatal(err)
	}
	if a, _ := fake.Account(acct.UUID); len(a.Services) != 4 || a.Services[3].Name != "other" {
		t.Errorf("services after AddServices = %+v", a.Services)
	}
	status, _, _ = do(t, "POST", ts.URL+"/_fake/services", "", map[string]any{"account": "2000002", "name": "x", "count": 2})
	if a, _ := fake.Account("2000002"); status != http.StatusCreated || len(a.Services) != 4 {
		t.Errorf("control add services: status = %d, services = %+v", status, a.Services)
	}
}

func TestConcurrent(t *testing.T) {
	fake, ts := mustServe(t, fakecsp.Options{Sandboxes: 200, PageSize: 50, ErrorRate: 0.1})
	hit := func(method, url string) {
		req, _ := http.NewRequest(method, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
	}
	var wg sync.WaitGroup
	for i, a := range fake.Accounts() {
		wg.Go(func() {
			hit("DELETE", ts.URL+"/v2/sandbox/accounts/"+a.UUID)
			if i%10 == 0 {
				hit("GET", ts.URL+"/v2/current_user/accounts")
				fake.AddSandboxes(1, "")
				fake.Deletes()
			}
		})
	}
	wg.Wait()
	d := fake.Deletes()
	if d.Total != 200 {
		t.Errorf("total deletes = %d, want 200", d.Total)
	}
	if got := len(fake.Accounts()); got != 200-d.Succeeded+20 {
		t.Errorf("%d accounts left, want %d", got, 200-d.Succeeded+20)
	}
}
