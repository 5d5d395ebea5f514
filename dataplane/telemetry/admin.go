package telemetry

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// AdminOptions are what the admin endpoints serve. Endpoints whose option is nil are not served.
type AdminOptions struct {
	// ConfigDump returns the proxy's current configuration for /config_dump, encoded as indented JSON
	// (protojson for a proto.Message). It is called once per request.
	ConfigDump func() any
	// Logging is read and changed by /logging.
	Logging *Logging
	// Shutdown is called, once, by POST /quitquitquit; it should start a graceful shutdown and return.
	Shutdown func()
}

// maxAdminBody bounds the body of admin requests (only /logging reads one, as a form).
const maxAdminBody = 64 << 10

// NewAdminHandler returns the admin endpoints (bind them to localhost:15000, they are not authenticated):
//   - GET /config_dump: the configuration, as JSON.
//   - GET /logging: the log level, as {"level":"info"}; POST or PUT /logging?level=debug changes it
//     (Envoy style) and answers with the new level; 400 for a missing or unknown level.
//   - /debug/pprof/: the net/http/pprof profiles.
//   - POST /quitquitquit: starts the shutdown (once); 405 for other methods.
//   - GET /: the list of endpoints.
func NewAdminHandler(opts AdminOptions) http.Handler {
	mux := http.NewServeMux()
	var index []string
	handle := func(pattern, doc string, h http.HandlerFunc) {
		mux.HandleFunc(pattern, h)
		index = append(index, fmt.Sprintf("%-16s %s", pattern, doc))
	}
	if opts.ConfigDump != nil {
		handle("/config_dump", "GET: the current configuration (JSON)", configDump(opts.ConfigDump))
	}
	if opts.Logging != nil {
		handle("/logging", "GET: the log level; POST ?level=error|warn|info|debug: change it", logging(opts.Logging))
	}
	handle("/debug/pprof/", "profiles (net/http/pprof)", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	if opts.Shutdown != nil {
		handle("/quitquitquit", "POST: shut the proxy down gracefully", quit(opts.Shutdown))
	}
	body := "admin endpoints:\n  " + strings.Join(index, "\n  ") + "\n"
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, r *http.Request) {
		if !allow(w, r, http.MethodGet, http.MethodHead) {
			return
		}
		writeText(w, http.StatusOK, body)
	})
	return mux
}

func configDump(dump func() any) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !allow(w, r, http.MethodGet, http.MethodHead) {
			return
		}
		var (
			b   []byte
			err error
		)
		switch v := dump().(type) {
		case proto.Message:
			b, err = protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(v)
		default:
			b, err = json.MarshalIndent(v, "", "  ")
		}
		if err != nil {
			writeText(w, http.StatusInternalServerError, "encoding the config dump: "+err.Error()+"\n")
			return
		}
		writeJSONBytes(w, http.StatusOK, append(b, '\n'))
	}
}

// levelBody is the JSON body of /logging.
type levelBody struct {
	Level string `json:"level"`
}

func logging(l *Logging) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !allow(w, r, http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut) {
			return
		}
		if r.Method == http.MethodPost || r.Method == http.MethodPut {
			r.Body = http.MaxBytesReader(w, r.Body, maxAdminBody)
			level := r.FormValue("level")
			if level == "" {
				writeText(w, http.StatusBadRequest,
					"missing the level: use /logging?level=<level>, one of "+validLevels+"\n")
				return
			}
			if l.SetLevel(level) != nil {
				// The message does not echo the request's level: it is the client's to know.
				writeText(w, http.StatusBadRequest, "unknown log level: want one of "+validLevels+"\n")
				return
			}
		}
		b, _ := json.Marshal(levelBody{Level: l.Level()}) // cannot fail
		writeJSONBytes(w, http.StatusOK, append(b, '\n'))
	}
}

func quit(shutdown func()) http.HandlerFunc {
	var once sync.Once
	return func(w http.ResponseWriter, r *http.Request) {
		if !allow(w, r, http.MethodPost) {
			return
		}
		once.Do(shutdown)
		writeText(w, http.StatusOK, "OK\n")
	}
}

// allow answers 405 with an Allow header and returns false unless the request's method is one of methods.
func allow(w http.ResponseWriter, r *http.Request, methods ...string) bool {
	for _, m := range methods {
		if r.Method == m {
			return true
		}
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	writeText(w, http.StatusMethodNotAllowed, "method not allowed: use "+strings.Join(methods, " or ")+"\n")
	return false
}

func writeJSONBytes(w http.ResponseWriter, code int, b []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(b)
}
