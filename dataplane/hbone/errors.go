package hbone

import (
	"errors"
	"fmt"
	"net/http"
)

// Error is an HBONE answer other than 200. A [Handler] returns it to choose the status sent to the
// client; [Pool.Connect] returns it when the server refused the tunnel.
type Error struct {
	// Status is the HTTP status: 400 (bad request: not CONNECT, bad authority, target not local),
	// 401 (denied by policy) or 503 (upstream failure, unknown workload).
	Status int
	// Reason says why, for logs. The server sends it as a short text body; the client fills it from
	// that body.
	Reason string
}

// Error implements error.
func (e *Error) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("hbone: %d %s", e.Status, http.StatusText(e.Status))
	}
	return fmt.Sprintf("hbone: %d %s: %s", e.Status, http.StatusText(e.Status), e.Reason)
}

// BadRequest returns an [Error] with status 400.
func BadRequest(reason string) *Error { return &Error{Status: http.StatusBadRequest, Reason: reason} }

// Denied returns an [Error] with status 401, for a connection that policy denies.
func Denied(reason string) *Error { return &Error{Status: http.StatusUnauthorized, Reason: reason} }

// Unavailable returns an [Error] with status 503, for an upstream failure or an unknown workload.
func Unavailable(reason string) *Error {
	return &Error{Status: http.StatusServiceUnavailable, Reason: reason}
}

// StatusOf returns the HBONE status of an error: the Status of an [*Error] in its chain, 200 for nil,
// else 503.
func StatusOf(err error) int {
	if err == nil {
		return http.StatusOK
	}
	var he *Error
	if errors.As(err, &he) {
		return he.Status
	}
	return http.StatusServiceUnavailable
}

// ErrServerClosed is returned by [Server.Serve] after [Server.Shutdown] or [Server.Close].
var ErrServerClosed = errors.New("hbone: server closed")

// ErrPoolClosed is returned by [Pool.Connect] after [Pool.Close].
var ErrPoolClosed = errors.New("hbone: pool closed")
