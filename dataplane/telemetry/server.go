package telemetry

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"
)

// The default addresses of the telemetry servers (DESIGN.md, section 3).
const (
	DefaultAdminAddr     = "localhost:15000"
	DefaultMetricsAddr   = ":15020"
	DefaultReadinessAddr = ":15021"
)

// ShutdownTimeout bounds how long [Serve] and [Run] wait for requests in flight once their context ends.
const ShutdownTimeout = 5 * time.Second

// NewServer returns an HTTP server for one of the telemetry handlers, with timeouts that keep slow or
// idle clients from holding it: 5 s to read the headers, 30 s for the whole request, 2 minutes to write
// the response (so CPU profiles of up to about 2 minutes work) and 2 minutes for idle keep-alive
// connections. A nil h serves nothing (404), never http.DefaultServeMux, on which importing net/http/pprof
// registers the profiles.
func NewServer(addr string, h http.Handler) *http.Server {
	if h == nil {
		h = http.NotFoundHandler()
	}
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      2 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
}

// Run listens on srv.Addr and serves until ctx ends; see [Serve].
func Run(ctx context.Context, srv *http.Server) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", srv.Addr)
	if err != nil {
		return err
	}
	return Serve(ctx, srv, ln)
}

// Serve serves on ln until ctx ends, then shuts srv down, waiting up to [ShutdownTimeout] for requests
// in flight. It returns nil after a shutdown caused by ctx, else the error that stopped the server.
func Serve(ctx context.Context, srv *http.Server, ln net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(shutdownCtx)
	if errors.Is(err, context.DeadlineExceeded) {
		err = srv.Close()
	}
	if serveErr := <-errc; !errors.Is(serveErr, http.ErrServerClosed) && err == nil {
		err = serveErr
	}
	return err
}
