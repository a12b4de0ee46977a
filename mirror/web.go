package mirror

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strings"
	"time"

	_ "embed"
)

//go:embed web/index.html
var indexHTML []byte

// AsyncAPI is the AsyncAPI 3 document of the websocket protocol
// (asyncapi.yaml), for qbod to serve.
//
//go:embed asyncapi.yaml
var AsyncAPI []byte

// pageCSP allows the page's own inline script and style (by hash, so nothing
// injected could run) and nothing else but the websocket back to its host.
var pageCSP = "default-src 'none'; script-src " + inlineHash(indexHTML, "script") +
	"; style-src " + inlineHash(indexHTML, "style") +
	"; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; connect-src 'self'"

// inlineHash returns the CSP source for the content of the first <tag>
// element of page.
func inlineHash(page []byte, tag string) string {
	_, rest, ok := bytes.Cut(page, []byte("<"+tag+">"))
	if !ok {
		return "'none'"
	}
	body, _, ok := bytes.Cut(rest, []byte("</"+tag+">"))
	if !ok {
		return "'none'"
	}
	sum := sha256.Sum256(body)
	return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
}

// WebHandler serves the mirror web page at "/" (and "/index.html"): a
// single self-contained file that lists the mirrors, shows the live table of
// the one picked and a log of its deltas. It connects to /ws on the same
// host and passes a ?token= from its own URL along.
func WebHandler() http.Handler {
	modTime := time.Now()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" && r.URL.Path != "/index.html" {
			http.NotFound(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		csp := pageCSP
		// Older browsers do not count ws: URLs as 'self'; name the host.
		if validHost(r.Host) {
			csp += " ws://" + r.Host + " wss://" + r.Host
		}
		h := w.Header()
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer") // the URL may carry a token
		h.Set("Cache-Control", "no-cache")
		h.Set("Content-Type", "text/html; charset=utf-8")
		http.ServeContent(w, r, "index.html", modTime, bytes.NewReader(indexHTML))
	})
}

// validHost reports whether host can go into a CSP header as is.
func validHost(host string) bool {
	if host == "" || len(host) > 255 {
		return false
	}
	return strings.Trim(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]") == ""
}
