package telemetry

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

// TestServeAllServers runs the three servers on real sockets and stops them with the context.
func TestServeAllServers(t *testing.T) {
	g := NewWithT(t)
	l, err := NewLogging(io.Discard, "info")
	g.Expect(err).NotTo(HaveOccurred())
	m := NewMetrics()
	c := m.Open(outboundLabels())
	c.AddSent(42)
	c.Close()
	r := NewReadiness()

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	handlers := map[string]http.Handler{
		"admin":   NewAdminHandler(AdminOptions{Logging: l, Shutdown: cancel}),
		"metrics": m.Handler(),
		"ready":   r.Handler(),
	}
	addrs := map[string]string{}
	errc := make(chan error, len(handlers))
	for name, h := range handlers {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		g.Expect(err).NotTo(HaveOccurred())
		addrs[name] = "http://" + ln.Addr().String()
		go func() { errc <- Serve(ctx, NewServer(ln.Addr().String(), h), ln) }()
	}

	client := &http.Client{Timeout: 10 * time.Second}
	fetch := func(method, url string, header http.Header) (*http.Response, string) {
		req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
		g.Expect(err).NotTo(HaveOccurred())
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := client.Do(req)
		g.Expect(err).NotTo(HaveOccurred())
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		g.Expect(err).NotTo(HaveOccurred())
		return resp, string(b)
	}

	resp, body := fetch(http.MethodGet, addrs["metrics"]+"/metrics", nil)
	g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
	g.Expect(body).To(ContainSubstring(`istio_tcp_sent_bytes_total{`))
	g.Expect(body).To(ContainSubstring(`reporter="source"`))
	g.Expect(body).To(ContainSubstring("go_goroutines"))

	resp, body = fetch(http.MethodGet, addrs["metrics"]+"/metrics",
		http.Header{"Accept": {"application/openmetrics-text; version=1.0.0"}})
	g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
	g.Expect(resp.Header.Get("Content-Type")).To(HavePrefix("application/openmetrics-text"))
	g.Expect(strings.TrimSpace(body)).To(HaveSuffix("# EOF"))

	resp, body = fetch(http.MethodGet, addrs["ready"]+"/healthz/ready", nil)
	g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
	g.Expect(body).To(Equal("ready\n"))

	resp, _ = fetch(http.MethodGet, addrs["admin"]+"/logging", nil)
	g.Expect(resp.StatusCode).To(Equal(http.StatusOK))

	// /quitquitquit cancels the context, which stops all three servers.
	resp, _ = fetch(http.MethodPost, addrs["admin"]+"/quitquitquit", nil)
	g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
	for range handlers {
		g.Expect(<-errc).To(Succeed())
	}
	client.CloseIdleConnections()
}

func TestRunReportsListenErrors(t *testing.T) {
	g := NewWithT(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	defer ln.Close()
	err = Run(t.Context(), NewServer(ln.Addr().String(), http.NotFoundHandler()))
	g.Expect(err).To(MatchError(ContainSubstring("address already in use")))
}

func TestNewServerTimeouts(t *testing.T) {
	g := NewWithT(t)
	s := NewServer(DefaultAdminAddr, http.NotFoundHandler())
	g.Expect(s.Addr).To(Equal("localhost:15000"))
	g.Expect(s.ReadHeaderTimeout).To(BeNumerically(">", 0))
	g.Expect(s.ReadTimeout).To(BeNumerically(">", 0))
	g.Expect(s.WriteTimeout).To(BeNumerically(">", 30*time.Second), "room for a 30 s CPU profile")
	g.Expect(s.IdleTimeout).To(BeNumerically(">", 0))
}
