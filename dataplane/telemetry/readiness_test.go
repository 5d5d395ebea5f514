package telemetry

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	. "github.com/onsi/gomega"
)

func get(t *testing.T, h http.Handler, method, target string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, target, nil))
	body, err := io.ReadAll(rec.Result().Body)
	if err != nil {
		t.Fatal(err)
	}
	return rec.Code, string(body)
}

func TestReadinessTransitions(t *testing.T) {
	g := NewWithT(t)
	r := NewReadiness("config")
	h := r.Handler()
	ready := func() (int, string) { return get(t, h, http.MethodGet, "/healthz/ready") }

	r.Pending("certificates for default/sleep")
	r.Pending("config") // already pending: stays first
	g.Expect(r.Ready()).To(BeFalse())
	g.Expect(r.PendingItems()).To(Equal([]string{"config", "certificates for default/sleep"}))
	code, body := ready()
	g.Expect(code).To(Equal(http.StatusServiceUnavailable))
	g.Expect(body).To(Equal("not ready: pending: config, certificates for default/sleep\n"))

	r.Done("config")
	r.Done("never registered")
	code, body = ready()
	g.Expect(code).To(Equal(http.StatusServiceUnavailable))
	g.Expect(body).To(Equal("not ready: pending: certificates for default/sleep\n"))

	r.Done("certificates for default/sleep")
	g.Expect(r.Ready()).To(BeTrue())
	g.Expect(r.PendingItems()).To(BeEmpty())
	code, body = ready()
	g.Expect(code).To(Equal(http.StatusOK))
	g.Expect(body).To(Equal("ready\n"))

	// A new workload's certificates make the proxy wait again.
	r.Pending("certificates for apps/httpbin")
	code, body = ready()
	g.Expect(code).To(Equal(http.StatusServiceUnavailable))
	g.Expect(body).To(ContainSubstring("certificates for apps/httpbin"))
	r.Done("certificates for apps/httpbin")
	code, _ = ready()
	g.Expect(code).To(Equal(http.StatusOK))

	r.Draining()
	g.Expect(r.IsDraining()).To(BeTrue())
	g.Expect(r.Ready()).To(BeFalse())
	code, body = ready()
	g.Expect(code).To(Equal(http.StatusServiceUnavailable))
	g.Expect(body).To(Equal("draining\n"))

	code, body = get(t, h, http.MethodGet, "/healthz/live")
	g.Expect(code).To(Equal(http.StatusOK))
	g.Expect(body).To(Equal("live\n"))
	code, _ = get(t, h, http.MethodGet, "/other")
	g.Expect(code).To(Equal(http.StatusNotFound))
}

func TestReadinessEmptyIsReady(t *testing.T) {
	g := NewWithT(t)
	r := NewReadiness()
	g.Expect(r.Ready()).To(BeTrue())
	code, _ := get(t, r.Handler(), http.MethodGet, "/healthz/ready")
	g.Expect(code).To(Equal(http.StatusOK))
}
