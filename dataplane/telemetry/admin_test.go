package telemetry

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	. "github.com/onsi/gomega"
	"google.golang.org/protobuf/types/known/structpb"
)

// newAdmin returns the admin handler with every option set, the logging it changes and the number of
// shutdown calls.
func newAdmin(t *testing.T, dump func() any) (http.Handler, *Logging, *atomic.Int32) {
	t.Helper()
	l, err := NewLogging(&bytes.Buffer{}, "info")
	if err != nil {
		t.Fatal(err)
	}
	var quits atomic.Int32
	h := NewAdminHandler(AdminOptions{ConfigDump: dump, Logging: l, Shutdown: func() { quits.Add(1) }})
	return h, l, &quits
}

func TestAdminConfigDump(t *testing.T) {
	s, err := structpb.NewStruct(map[string]any{"workloads": []any{"default/sleep"}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		dump     any
		method   string
		wantCode int
		wantJSON any // decoded body, when 200
		wantBody string
	}{
		{
			name:     "struct",
			dump:     struct{ Version string }{"v7"},
			method:   http.MethodGet,
			wantCode: http.StatusOK,
			wantJSON: map[string]any{"Version": "v7"},
		},
		{
			name:     "proto message",
			dump:     s,
			method:   http.MethodGet,
			wantCode: http.StatusOK,
			wantJSON: map[string]any{"workloads": []any{"default/sleep"}},
		},
		{
			name:     "nil",
			dump:     nil,
			method:   http.MethodGet,
			wantCode: http.StatusOK,
			wantJSON: nil,
		},
		{
			name:     "not encodable",
			dump:     map[string]any{"c": make(chan int)},
			method:   http.MethodGet,
			wantCode: http.StatusInternalServerError,
			wantBody: "encoding the config dump",
		},
		{
			name:     "POST",
			dump:     1,
			method:   http.MethodPost,
			wantCode: http.StatusMethodNotAllowed,
			wantBody: "use GET or HEAD",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			h, _, _ := newAdmin(t, func() any { return tt.dump })
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(tt.method, "/config_dump", nil))
			g.Expect(rec.Code).To(Equal(tt.wantCode))
			if tt.wantCode != http.StatusOK {
				g.Expect(rec.Body.String()).To(ContainSubstring(tt.wantBody))
				return
			}
			g.Expect(rec.Header().Get("Content-Type")).To(Equal("application/json"))
			g.Expect(rec.Body.String()).To(HaveSuffix("\n"))
			var got any
			g.Expect(json.Unmarshal(rec.Body.Bytes(), &got)).To(Succeed())
			if tt.wantJSON == nil {
				g.Expect(got).To(BeNil())
				return
			}
			g.Expect(got).To(Equal(tt.wantJSON))
			g.Expect(rec.Body.String()).To(ContainSubstring("\n  "), "pretty-printed")
		})
	}
}

func TestAdminLogging(t *testing.T) {
	tests := []struct {
		name      string
		method    string
		target    string
		body      string // form body
		wantCode  int
		wantBody  string
		wantLevel string
	}{
		{name: "get", method: http.MethodGet, target: "/logging", wantCode: 200,
			wantBody: `{"level":"info"}`, wantLevel: "info"},
		{name: "envoy-style post", method: http.MethodPost, target: "/logging?level=debug", wantCode: 200,
			wantBody: `{"level":"debug"}`, wantLevel: "debug"},
		{name: "put", method: http.MethodPut, target: "/logging?level=WARN", wantCode: 200,
			wantBody: `{"level":"warn"}`, wantLevel: "warn"},
		{name: "form body", method: http.MethodPost, target: "/logging", body: "level=error", wantCode: 200,
			wantBody: `{"level":"error"}`, wantLevel: "error"},
		{name: "invalid level", method: http.MethodPost, target: "/logging?level=trace", wantCode: 400,
			wantBody: "unknown log level: want one of error, warn, info, debug", wantLevel: "info"},
		{name: "missing level", method: http.MethodPost, target: "/logging", wantCode: 400,
			wantBody:  "missing the level: use /logging?level=<level>, one of error, warn, info, debug",
			wantLevel: "info"},
		{name: "delete", method: http.MethodDelete, target: "/logging", wantCode: 405,
			wantBody: "method not allowed: use GET or HEAD or POST or PUT", wantLevel: "info"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			h, l, _ := newAdmin(t, nil)
			req := httptest.NewRequest(tt.method, tt.target, strings.NewReader(tt.body))
			if tt.body != "" {
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			g.Expect(rec.Code).To(Equal(tt.wantCode))
			g.Expect(strings.TrimSpace(rec.Body.String())).To(Equal(tt.wantBody))
			g.Expect(l.Level()).To(Equal(tt.wantLevel))
		})
	}
}

func TestAdminPprof(t *testing.T) {
	g := NewWithT(t)
	h, _, _ := newAdmin(t, nil)
	code, body := get(t, h, http.MethodGet, "/debug/pprof/")
	g.Expect(code).To(Equal(http.StatusOK))
	g.Expect(body).To(ContainSubstring("goroutine"))
	code, body = get(t, h, http.MethodGet, "/debug/pprof/goroutine?debug=1")
	g.Expect(code).To(Equal(http.StatusOK))
	g.Expect(body).To(ContainSubstring("goroutine profile"))
	code, _ = get(t, h, http.MethodGet, "/debug/pprof/cmdline")
	g.Expect(code).To(Equal(http.StatusOK))

	// Importing net/http/pprof also registers its handlers on http.DefaultServeMux, but a server from
	// NewServer never serves that mux.
	code, _ = get(t, NewServer(DefaultAdminAddr, nil).Handler, http.MethodGet, "/debug/pprof/")
	g.Expect(code).To(Equal(http.StatusNotFound))
}

func TestAdminQuitQuitQuit(t *testing.T) {
	g := NewWithT(t)
	h, _, quits := newAdmin(t, nil)

	code, _ := get(t, h, http.MethodGet, "/quitquitquit")
	g.Expect(code).To(Equal(http.StatusMethodNotAllowed))
	g.Expect(quits.Load()).To(BeZero())

	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/quitquitquit", nil))
	g.Expect(rec.Header().Get("Allow")).To(Equal("POST"))

	for range 3 {
		code, body := get(t, h, http.MethodPost, "/quitquitquit")
		g.Expect(code).To(Equal(http.StatusOK))
		g.Expect(body).To(Equal("OK\n"))
	}
	g.Expect(quits.Load()).To(BeEquivalentTo(1), "shutdown is called once")
}

func TestAdminIndex(t *testing.T) {
	g := NewWithT(t)
	h, _, _ := newAdmin(t, func() any { return nil })
	code, body := get(t, h, http.MethodGet, "/")
	g.Expect(code).To(Equal(http.StatusOK))
	for _, e := range []string{"/config_dump", "/logging", "/debug/pprof/", "/quitquitquit"} {
		g.Expect(body).To(ContainSubstring(e))
	}
	code, _ = get(t, h, http.MethodGet, "/nope")
	g.Expect(code).To(Equal(http.StatusNotFound))

	// Endpoints without their option are not served.
	bare := NewAdminHandler(AdminOptions{})
	code, body = get(t, bare, http.MethodGet, "/")
	g.Expect(code).To(Equal(http.StatusOK))
	g.Expect(body).To(ContainSubstring("/debug/pprof/"))
	g.Expect(body).NotTo(ContainSubstring("/config_dump"))
	for _, path := range []string{"/config_dump", "/logging", "/quitquitquit"} {
		code, _ = get(t, bare, http.MethodPost, path)
		g.Expect(code).To(Equal(http.StatusNotFound), path)
	}
}
