package telemetry

import (
	"net/http"
	"slices"
	"strings"
	"sync"
)

// Readiness tracks what the proxy still waits for before it can serve traffic (the first config, the
// certificates of each local workload, ...), and whether it is draining. It is safe for concurrent use.
type Readiness struct {
	mu       sync.Mutex
	pending  []string // in the order they were registered
	draining bool
}

// NewReadiness returns a readiness with the given items pending.
func NewReadiness(pending ...string) *Readiness {
	r := &Readiness{}
	for _, name := range pending {
		r.Pending(name)
	}
	return r
}

// Pending registers an item the proxy waits for, e.g. "config" or "certificates for default/sleep".
// An item that was done becomes pending again; one already pending stays as it is.
func (r *Readiness) Pending(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !slices.Contains(r.pending, name) {
		r.pending = append(r.pending, name)
	}
}

// Done marks an item as done; unknown items are ignored.
func (r *Readiness) Done(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pending = slices.DeleteFunc(r.pending, func(p string) bool { return p == name })
}

// Draining makes the proxy not ready for good: from now on /healthz/ready answers 503 "draining", so
// that no new traffic is sent to it while open connections finish.
func (r *Readiness) Draining() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.draining = true
}

// IsDraining reports whether Draining was called.
func (r *Readiness) IsDraining() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.draining
}

// Ready reports whether every item is done and the proxy is not draining.
func (r *Readiness) Ready() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.draining && len(r.pending) == 0
}

// PendingItems returns the items not done yet, in the order they were registered.
func (r *Readiness) PendingItems() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.pending)
}

// Handler serves the health endpoints (port 15021):
//   - /healthz/ready: 200 "ready" when [Readiness.Ready]; else 503 with "draining" or
//     "not ready: pending: <item>, <item>".
//   - /healthz/live: 200 "live" as long as the process serves HTTP.
func (r *Readiness) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		r.mu.Lock()
		draining, pending := r.draining, strings.Join(r.pending, ", ")
		r.mu.Unlock()
		switch {
		case draining:
			writeText(w, http.StatusServiceUnavailable, "draining\n")
		case pending != "":
			writeText(w, http.StatusServiceUnavailable, "not ready: pending: "+pending+"\n")
		default:
			writeText(w, http.StatusOK, "ready\n")
		}
	})
	mux.HandleFunc("/healthz/live", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "live\n")
	})
	return mux
}

// writeText writes a plain-text response.
func writeText(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(body))
}
