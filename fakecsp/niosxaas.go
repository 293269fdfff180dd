package fakecsp

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"time"
)

// session is what a JWT issued by the fake stands for.
type session struct {
	account string // account uuid; "" for a signed-in user before a switch
	expires time.Time
}

// issueJWTLocked returns a new unsigned JWT whose exp claim the client can
// read, and remembers it.
func (s *Server) issueJWTLocked(sub, account string) string {
	s.serial++
	now := time.Now()
	exp := now.Add(s.opts.JWTTTL)
	claims, _ := json.Marshal(map[string]any{
		"sub": sub, "account": account, "exp": exp.Unix(), "jti": s.serial,
	})
	enc := base64.RawURLEncoding
	jwt := enc.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." +
		enc.EncodeToString(claims) + ".fake"
	if len(s.sessions)%1024 == 1023 {
		for k, v := range s.sessions {
			if now.After(v.expires) {
				delete(s.sessions, k)
			}
		}
	}
	s.sessions[jwt] = session{account: account, expires: exp}
	return jwt
}

// bearerLocked returns the live session of the request's Bearer JWT.
func (s *Server) bearerLocked(r *http.Request) (session, bool) {
	jwt, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return session{}, false
	}
	sess, ok := s.sessions[jwt]
	if !ok || time.Now().After(sess.expires) {
		return session{}, false
	}
	return sess, true
}

func (s *Server) handleSignIn(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Email    string `json:"email"`
		Password string `json:"password"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.Email == "" || body.Password == "" {
		writeError(w, http.StatusBadRequest, "email and password are required")
		return
	}
	if (s.opts.Email != "" && body.Email != s.opts.Email) ||
		(s.opts.Password != "" && body.Password != s.opts.Password) {
		writeError(w, http.StatusUnauthorized, "invalid credentials")
		return
	}
	s.mu.Lock()
	jwt := s.issueJWTLocked(body.Email, "")
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]string{"jwt": jwt})
}

func (s *Server) handleAccountSwitch(w http.ResponseWriter, r *http.Request) {
	var body struct {
		ID string `json:"id"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.ID == "" {
		writeError(w, http.StatusBadRequest, "id is required")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.bearerLocked(r)
	if !ok || sess.account != "" {
		writeError(w, http.StatusUnauthorized, "invalid or expired jwt")
		return
	}
	a, ok := s.lookupLocked(body.ID)
	if !ok {
		writeError(w, http.StatusNotFound, "account not found")
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"jwt": s.issueJWTLocked("switch", a.UUID)})
}

// accountOfLocked returns the account the request's JWT was switched to,
// or writes the error answer.
func (s *Server) accountOfLocked(w http.ResponseWriter, r *http.Request) (*Account, bool) {
	sess, ok := s.bearerLocked(r)
	if !ok || sess.account == "" {
		writeError(w, http.StatusUnauthorized, "invalid or expired jwt")
		return nil, false
	}
	i, ok := s.index[sess.account]
	if !ok {
		writeError(w, http.StatusNotFound, "account not found")
		return nil, false
	}
	return s.accounts[i], true
}

func (s *Server) handleListServices(w http.ResponseWriter, r *http.Request) {
	type wireService struct {
		ID   string `json:"id"`
		Name string `json:"name"`
	}
	s.mu.Lock()
	a, ok := s.accountOfLocked(w, r)
	if !ok {
		s.mu.Unlock()
		return
	}
	from, to := s.page(r, len(a.Services))
	results := make([]wireService, 0, to-from)
	for _, svc := range a.Services[from:to] {
		results = append(results, wireService{ID: svc.ID(), Name: svc.Name})
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"results": results})
}

func (s *Server) handleDeleteService(w http.ResponseWriter, r *http.Request) {
	uuid := r.PathValue("uuid")
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.accountOfLocked(w, r)
	if !ok {
		return
	}
	i := slices.IndexFunc(a.Services, func(svc Service) bool { return svc.UUID == uuid })
	if i < 0 {
		writeError(w, http.StatusNotFound, "service not found")
		return
	}
	a.Services = slices.Delete(a.Services, i, i+1)
	w.WriteHeader(http.StatusNoContent)
}
