package httpapi

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
)

// openAPIDoc is the OpenAPI 3 description of every route, written for the
// default base path /v1. Keep it in step with routeTable and the response
// types: TestOpenAPI walks both ways and validates real responses against it.
//
//go:embed openapi.json
var openAPIDoc []byte

// docBasePath is the base path the embedded document is written for.
const docBasePath = "/v1"

// OpenAPI returns the OpenAPI document for basePath (API_BASE_PATH): the
// embedded document with its /v1 path keys moved under basePath.
func OpenAPI(basePath string) ([]byte, error) {
	basePath = strings.TrimRight(basePath, "/")
	if basePath == docBasePath {
		return openAPIDoc, nil
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(openAPIDoc, &doc); err != nil {
		return nil, fmt.Errorf("embedded openapi.json: %w", err)
	}
	var paths map[string]json.RawMessage
	if err := json.Unmarshal(doc["paths"], &paths); err != nil {
		return nil, fmt.Errorf("embedded openapi.json paths: %w", err)
	}
	moved := make(map[string]json.RawMessage, len(paths))
	for p, item := range paths {
		if rest, ok := strings.CutPrefix(p, docBasePath+"/"); ok {
			p = basePath + "/" + rest
		}
		moved[p] = item
	}
	raw, err := json.Marshal(moved)
	if err != nil {
		return nil, err
	}
	doc["paths"] = raw
	var buf bytes.Buffer
	out, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	if err := json.Indent(&buf, out, "", "  "); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// openAPI serves the document for the configured base path. It is built on
// first use and then served from memory.
func (s *Server) openAPI() http.HandlerFunc {
	build := sync.OnceValues(func() ([]byte, error) { return OpenAPI(s.cfg.BasePath) })
	return func(w http.ResponseWriter, r *http.Request) {
		requestInfo(r.Context()).action = "openapi"
		doc, err := build()
		if err != nil {
			s.failed(w, r, err)
			return
		}
		serveStatic(w, r, "openapi.json", "application/json", doc)
	}
}
