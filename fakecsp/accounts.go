package fakecsp

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Account is one account the fake provider holds.
type Account struct {
	CSPID         int64     `json:"csp_id"`              // 0 when added: the next free id
	NoCSPID       bool      `json:"no_csp_id,omitempty"` // list csp_id as null (see B-48)
	UUID          string    `json:"uuid"`                // empty when added: derived
	Name          string    `json:"name"`
	AccountType   string    `json:"account_type"` // empty when added: "sandbox"
	State         string    `json:"state"`        // empty when added: "active"
	CreatedAt     time.Time `json:"created_at"`   // zero when added: derived from CSPID
	SFDCAccountID string    `json:"sfdc_account_id"`
	Services      []Service `json:"services,omitempty"`
}

// ExternalID returns the identity path the provider lists, identity/accounts/<uuid>.
func (a Account) ExternalID() string { return "identity/accounts/" + a.UUID }

// Service is a NIOSXaaS universal service inside an account.
type Service struct {
	UUID string `json:"uuid"`
	Name string `json:"name"`
}

// ID returns the identity path the provider lists, infra/universal_service/<uuid>.
func (s Service) ID() string { return "infra/universal_service/" + s.UUID }

// uuid namespaces, so derived uuids never collide across kinds.
const (
	tagAccount = iota + 1
	tagAccountNoID
	tagService
)

// baseCreatedAt is the created_at of the first account; each next csp_id is
// one minute later.
var baseCreatedAt = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// fakeUUID returns a deterministic, uuid-shaped id, unique per (tag, n).
func fakeUUID(tag, n uint64) string {
	h := splitmix64(n ^ tag<<56)
	var b [36]byte
	putHex(b[0:8], h>>32)
	b[8] = '-'
	putHex(b[9:13], h>>16)
	b[13] = '-'
	b[14] = '4'
	putHex(b[15:18], h)
	b[18] = '-'
	putHex(b[19:23], 0x8000|tag&0x3fff)
	b[23] = '-'
	putHex(b[24:36], n)
	return string(b[:])
}

// putHex writes the low len(dst) hex digits of v into dst.
func putHex(dst []byte, v uint64) {
	const digits = "0123456789abcdef"
	for i := len(dst) - 1; i >= 0; i-- {
		dst[i] = digits[v&0xf]
		v >>= 4
	}
}

func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

// addSandboxesLocked creates n active sandbox accounts named
// <prefix>-0001, ... continuing the prefix's numbering, each with the given
// number of services.
func (s *Server) addSandboxesLocked(n int, prefix string, services int) []Account {
	first := s.nextSeq[prefix] + 1
	width := max(4, len(strconv.Itoa(first+n-1)))
	s.nextSeq[prefix] = first + n - 1
	added := make([]Account, 0, n)
	batch := make([]Account, n) // one allocation for the whole batch
	for i := range batch {
		a := &batch[i]
		a.Name = seqName(prefix, first+i, width)
		for range services {
			a.Services = append(a.Services, s.newServiceLocked(s.opts.ServiceName))
		}
		s.fillLocked(a)
		s.insertLocked(a)
		added = append(added, a.clone())
	}
	return added
}

// seqName returns <prefix>-<n>, n zero-padded to width digits.
func seqName(prefix string, n, width int) string {
	digits := strconv.Itoa(n)
	return prefix + "-" + strings.Repeat("0", max(width-len(digits), 0)) + digits
}

// fillLocked sets the defaults of an account being added.
func (s *Server) fillLocked(a *Account) {
	if a.CSPID == 0 && !a.NoCSPID {
		a.CSPID = s.nextCSPID
	}
	s.nextCSPID = max(s.nextCSPID, a.CSPID+1)
	if a.UUID == "" && !a.NoCSPID {
		a.UUID = fakeUUID(tagAccount, uint64(a.CSPID))
	}
	if a.UUID == "" || s.has(a.UUID) {
		s.serial++
		a.UUID = fakeUUID(tagAccountNoID, s.serial)
	}
	if a.AccountType == "" {
		a.AccountType = "sandbox"
	}
	if a.State == "" {
		a.State = "active"
	}
	if a.CreatedAt.IsZero() {
		a.CreatedAt = baseCreatedAt.Add(time.Duration(max(a.CSPID-firstCSPID, 0)) * time.Minute)
	}
	if a.SFDCAccountID == "" && !a.NoCSPID {
		a.SFDCAccountID = "001SAND" + strconv.FormatInt(a.CSPID, 10)
	}
	for i := range a.Services {
		if a.Services[i].UUID == "" {
			a.Services[i] = s.newServiceLocked(a.Services[i].Name)
		}
	}
}

func (s *Server) newServiceLocked(name string) Service {
	s.serial++
	return Service{UUID: fakeUUID(tagService, s.serial), Name: name}
}

func (s *Server) has(uuid string) bool {
	_, ok := s.index[uuid]
	return ok
}

func (s *Server) insertLocked(a *Account) {
	s.index[a.UUID] = len(s.accounts)
	s.accounts = append(s.accounts, a)
}

// lookupLocked finds an account by uuid, identity path or csp_id.
func (s *Server) lookupLocked(id string) (*Account, bool) {
	id = id[strings.LastIndexByte(id, '/')+1:]
	if i, ok := s.index[id]; ok {
		return s.accounts[i], true
	}
	if n, err := strconv.ParseInt(id, 10, 64); err == nil {
		for _, a := range s.accounts {
			if a != nil && !a.NoCSPID && a.CSPID == n {
				return a, true
			}
		}
	}
	return nil, false
}

func (s *Server) removeLocked(uuid string) bool {
	i, ok := s.index[uuid]
	if !ok {
		return false
	}
	s.accounts[i] = nil
	delete(s.index, uuid)
	s.removed++
	return true
}

// compactLocked drops removed accounts so that offsets count live ones.
func (s *Server) compactLocked() {
	if s.removed == 0 {
		return
	}
	s.accounts = slices.DeleteFunc(s.accounts, func(a *Account) bool { return a == nil })
	for i, a := range s.accounts {
		s.index[a.UUID] = i
	}
	s.removed = 0
}

func (a *Account) clone() Account {
	c := *a
	c.Services = slices.Clone(a.Services)
	return c
}

// wireAccount is an account as GET /v2/current_user/accounts lists it.
type wireAccount struct {
	AccountType   string `json:"account_type"`
	State         string `json:"state"`
	ID            string `json:"id"`
	Name          string `json:"name"`
	CSPID         *int64 `json:"csp_id"`
	CreatedAt     string `json:"created_at"`
	SFDCAccountID string `json:"sfdc_account_id"`
}

func (s *Server) handleListAccounts(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.compactLocked()
	from, to := s.page(r, len(s.accounts))
	results := make([]wireAccount, 0, to-from)
	for _, a := range s.accounts[from:to] {
		wa := wireAccount{
			AccountType:   a.AccountType,
			State:         a.State,
			ID:            a.ExternalID(),
			Name:          a.Name,
			CreatedAt:     a.CreatedAt.UTC().Format("2006-01-02T15:04:05.000000Z"),
			SFDCAccountID: a.SFDCAccountID,
		}
		if !a.NoCSPID {
			id := a.CSPID
			wa.CSPID = &id
		}
		results = append(results, wa)
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"results": results})
}

func (s *Server) handleDeleteAccount(w http.ResponseWriter, r *http.Request) {
	uuid := r.PathValue("uuid")
	s.mu.Lock()
	ok := s.removeLocked(uuid)
	if ok {
		s.deletes.Succeeded++
		s.deletes.SucceededByAccount[uuid]++
	}
	s.mu.Unlock()
	if !ok {
		writeError(w, http.StatusNotFound, "account not found")
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
