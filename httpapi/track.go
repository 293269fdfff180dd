package httpapi

import (
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	broker "github.com/sandbox-broker/broker"
	"github.com/sandbox-broker/broker/service"
)

// maxHeaderValue is the longest id accepted in a header or path.
const maxHeaderValue = 256

// checkValue validates an id-like value: at most 256 bytes of UTF-8 without
// control characters. It returns a client-facing message or "".
func checkValue(name, v string) string {
	if len(v) > maxHeaderValue {
		return name + " must be at most 256 bytes"
	}
	if !utf8.ValidString(v) {
		return name + " must be valid UTF-8"
	}
	for _, r := range v {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return name + " must not contain control characters"
		}
	}
	return ""
}

// owner reads the participant id: X-Instruqt-Sandbox-ID, else the legacy
// X-Track-ID. It writes the error itself and returns false when invalid.
func owner(w http.ResponseWriter, r *http.Request) (string, bool) {
	name := "X-Instruqt-Sandbox-ID"
	v := strings.TrimSpace(r.Header.Get(name))
	if v == "" {
		name = "X-Track-ID"
		v = strings.TrimSpace(r.Header.Get(name))
	}
	if v == "" {
		writeError(w, r, apiError{http.StatusBadRequest, codeMissingID, "Either X-Instruqt-Sandbox-ID or X-Track-ID header is required", 0})
		return "", false
	}
	if msg := checkValue(name, v); msg != "" {
		writeError(w, r, apiError{http.StatusBadRequest, codeValidation, msg, 0})
		return "", false
	}
	requestInfo(r.Context()).owner = v
	return v, true
}

// optionalHeader reads and validates an optional header.
func optionalHeader(w http.ResponseWriter, r *http.Request, name string) (string, bool) {
	v := strings.TrimSpace(r.Header.Get(name))
	if msg := checkValue(name, v); msg != "" {
		writeError(w, r, apiError{http.StatusBadRequest, codeValidation, msg, 0})
		return "", false
	}
	return v, true
}

func pathID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := r.PathValue("id")
	if msg := checkValue("sandbox id", id); msg != "" || id == "" {
		if msg == "" {
			msg = "sandbox id is required"
		}
		writeError(w, r, apiError{http.StatusBadRequest, codeValidation, msg, 0})
		return "", false
	}
	requestInfo(r.Context()).sandboxID = id
	return id, true
}

type allocateResponse struct {
	SandboxID     string  `json:"sandbox_id"`
	Name          string  `json:"name"`
	ExternalID    string  `json:"external_id"`
	AllocatedAt   int64   `json:"allocated_at"`
	ExpiresAt     int64   `json:"expires_at"`
	SFDCAccountID *string `json:"sfdc_account_id"`
}

type sandboxResponse struct {
	SandboxID        string  `json:"sandbox_id"`
	Name             string  `json:"name"`
	ExternalID       string  `json:"external_id"`
	Status           string  `json:"status"`
	AllocatedToTrack *string `json:"allocated_to_track"`
	AllocatedAt      *int64  `json:"allocated_at"`
	ExpiresAt        *int64  `json:"expires_at"`
	TrackName        *string `json:"track_name"`
	SFDCAccountID    *string `json:"sfdc_account_id"`
}

type markResponse struct {
	SandboxID           string `json:"sandbox_id"`
	Status              string `json:"status"`
	DeletionRequestedAt int64  `json:"deletion_requested_at"`
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func nullableTime(t time.Time) *int64 {
	if t.IsZero() {
		return nil
	}
	u := t.Unix()
	return &u
}

func unix(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

// wireStatus hides the internal "deleting" claim from track clients, who
// know the reference's statuses only.
func wireStatus(st broker.Status) string {
	if st == broker.StatusDeleting {
		return string(broker.StatusPendingDeletion)
	}
	return string(st)
}

func toSandboxResponse(sb broker.Sandbox, status string) sandboxResponse {
	return sandboxResponse{
		SandboxID: sb.ID, Name: sb.Name, ExternalID: sb.ExternalID, Status: status,
		AllocatedToTrack: nullable(sb.Owner), AllocatedAt: nullableTime(sb.AllocatedAt),
		ExpiresAt: nullableTime(sb.ExpiresAt), TrackName: nullable(sb.TrackName), SFDCAccountID: nullable(sb.SFDCAccountID),
	}
}

func (s *Server) allocate(w http.ResponseWriter, r *http.Request) {
	info := requestInfo(r.Context())
	info.action = "allocate"
	start := time.Now()
	who, ok := owner(w, r)
	if !ok {
		return
	}
	in := service.AllocateInput{Owner: who}
	for _, h := range []struct {
		name string
		dst  *string
	}{{"X-Instruqt-Track-ID", &in.TrackName}, {"X-Sandbox-Name-Prefix", &in.NamePrefix}, {"Idempotency-Key", &in.Key}} {
		if *h.dst, ok = optionalHeader(w, r, h.name); !ok {
			return
		}
	}
	info.track = in.TrackName
	ctx := broker.WithActor(r.Context(), broker.Actor{Name: "owner:" + who, RequestID: info.requestID})
	a, err := s.cfg.Service.Allocate(ctx, in)
	outcome := allocateOutcome(a, err)
	info.outcome = outcome
	if s.cfg.Observer != nil {
		s.cfg.Observer.ObserveAllocate(outcome, time.Since(start))
	}
	if err != nil {
		s.failed(w, r, err)
		return
	}
	info.sandboxID = a.Sandbox.ID
	status := http.StatusCreated
	if a.Replayed {
		status = http.StatusOK
	}
	sb := a.Sandbox
	writeJSON(w, status, allocateResponse{
		SandboxID: sb.ID, Name: sb.Name, ExternalID: sb.ExternalID,
		AllocatedAt: unix(sb.AllocatedAt), ExpiresAt: unix(sb.ExpiresAt), SFDCAccountID: nullable(sb.SFDCAccountID),
	})
}

// allocateOutcome is the reference's broker_allocate_total outcome label.
func allocateOutcome(a broker.Allocation, err error) string {
	switch {
	case err == nil && a.Replayed:
		return "idempotent"
	case err == nil:
		return "success"
	case broker.ErrorCode(err) == broker.ENOSANDBOX:
		return "no_sandboxes"
	default:
		return "error"
	}
}

func (s *Server) getSandbox(w http.ResponseWriter, r *http.Request) {
	requestInfo(r.Context()).action = "get_sandbox"
	who, ok := owner(w, r)
	if !ok {
		return
	}
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	sb, err := s.cfg.Service.Get(r.Context(), id, who)
	if err != nil {
		s.failed(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toSandboxResponse(sb, wireStatus(sb.Status)))
}

func (s *Server) markForDeletion(w http.ResponseWriter, r *http.Request) {
	info := requestInfo(r.Context())
	info.action = "mark_for_deletion"
	who, ok := owner(w, r)
	if !ok {
		return
	}
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	ctx := broker.WithActor(r.Context(), broker.Actor{Name: "owner:" + who, RequestID: info.requestID})
	sb, err := s.cfg.Service.MarkForDeletion(ctx, id, who)
	if s.cfg.Observer != nil {
		s.cfg.Observer.ObserveMark(markOutcome(err))
	}
	if err != nil {
		s.failed(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, markResponse{SandboxID: sb.ID, Status: string(broker.StatusPendingDeletion), DeletionRequestedAt: unix(sb.DeletionRequestedAt)})
}

// markOutcome is the reference's broker_deletion_marked_total outcome label.
func markOutcome(err error) string {
	switch broker.ErrorCode(err) {
	case "":
		return "success"
	case broker.ENOTFOUND:
		return "not_found"
	case broker.ENOTOWNER:
		return "not_owner"
	case broker.ECONFLICT:
		return "not_allocated"
	default:
		return "error"
	}
}
