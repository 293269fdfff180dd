package httpapi

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"html/template"
	"net/http"
	"sync"
	"time"
)

// docsFS holds the documentation page: an HTML shell plus its own script and
// stylesheet. The page fetches openapi.json and renders it in the browser; it
// loads nothing from other origins and uses no inline script or style, so it
// works offline under the docs Content-Security-Policy (script-src 'self').
//
//go:embed docs/docs.html docs/docs.js docs/docs.css
var docsFS embed.FS

// docsAssets maps an asset's file name to its Content-Type.
var docsAssets = map[string]string{
	"docs.js":  "text/javascript; charset=utf-8",
	"docs.css": "text/css; charset=utf-8",
}

var docsPage = template.Must(template.ParseFS(docsFS, "docs/docs.html"))

// docs serves the documentation page, with the asset and document URLs
// following the base path.
func (s *Server) docs() http.HandlerFunc {
	render := sync.OnceValues(func() ([]byte, error) {
		var buf bytes.Buffer
		err := docsPage.Execute(&buf, map[string]string{
			"Spec":   s.cfg.BasePath + "/openapi.json",
			"Script": s.cfg.BasePath + "/docs/assets/docs.js",
			"Styles": s.cfg.BasePath + "/docs/assets/docs.css",
		})
		return buf.Bytes(), err
	})
	return func(w http.ResponseWriter, r *http.Request) {
		requestInfo(r.Context()).action = "docs"
		page, err := render()
		if err != nil {
			s.failed(w, r, err)
			return
		}
		serveStatic(w, r, "docs.html", "text/html; charset=utf-8", page)
	}
}

// docsAsset serves one embedded asset of the documentation page.
func (s *Server) docsAsset(name string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		requestInfo(r.Context()).action = "docs"
		b, err := docsFS.ReadFile("docs/" + name)
		if err != nil {
			s.failed(w, r, err)
			return
		}
		serveStatic(w, r, name, docsAssets[name], b)
	}
}

// serveStatic sends an in-memory file with a content ETag, so browsers
// revalidate cheaply (304) and never run a stale script after an upgrade.
func serveStatic(w http.ResponseWriter, r *http.Request, name, contentType string, body []byte) {
	sum := sha256.Sum256(body)
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Cache-Control", "no-cache")
	h.Set("ETag", `"`+hex.EncodeToString(sum[:12])+`"`)
	http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(body))
}
