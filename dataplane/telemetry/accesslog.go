package telemetry

import (
	"net/netip"
	"time"

	"github.com/go-logr/logr"

	"github.com/ambient-dev/ambient-operator/dataplane/identity"
)

// AccessLogMessage is the message of every access-log line.
const AccessLogMessage = "Connection closed"

// AccessLogEntry describes one finished connection for the access log.
type AccessLogEntry struct {
	// Direction is DirectionOutbound for the proxy on the source's side, else DirectionInbound.
	Direction string

	SrcAddr      netip.AddrPort
	SrcWorkload  string // workload (pod) name
	SrcNamespace string
	SrcIdentity  identity.Identity // from the peer's certificate; zero for plaintext

	DstAddr netip.AddrPort // the address the proxy connected to (a peer's HBONE port, or the workload)
	// DstHBONEAddr is the target inside the tunnel (the CONNECT authority), when there is one.
	DstHBONEAddr netip.AddrPort
	DstService   string // service hostname, when the connection was addressed to a service
	DstWorkload  string
	DstNamespace string
	DstIdentity  identity.Identity

	// BytesSent and BytesReceived are as in Istio's metrics and Envoy's access log: received are the
	// bytes read from the source side (request direction), sent the bytes written back to it (response
	// direction). [ConnMetrics.Sent] and [ConnMetrics.Received] give them.
	BytesSent     int64
	BytesReceived int64
	Duration      time.Duration

	// Result is ResultOK or the failure reason (a Failure* constant); [ConnMetrics.Result] gives it.
	Result string
	// Policy names the authorization policy that decided, "namespace/name", if any.
	Policy string
	// Error is the error that ended the connection, if any.
	Error error
}

// AccessLog writes one line per connection, at its end, to a logger (name "access", level Info). Lines
// are never written per packet or per chunk.
type AccessLog struct {
	log logr.Logger
}

// NewAccessLog returns an access log writing to log. The lines are Info lines, so a level of "warn" or
// "error" turns the access log off.
func NewAccessLog(log logr.Logger) *AccessLog {
	return &AccessLog{log: log.WithName("access")}
}

// Log writes the line of one connection with the message "Connection closed" and the keys direction,
// srcAddr, srcWorkload, srcNamespace, srcIdentity, dstAddr, dstHboneAddr, dstService, dstWorkload,
// dstNamespace, dstIdentity, bytesSent, bytesReceived, durationMs, result, policy and error. Keys of
// empty optional fields (workloads, namespaces, identities, service, HBONE address, policy, error) are
// left out. A nil *AccessLog writes nothing.
func (a *AccessLog) Log(e AccessLogEntry) {
	if a == nil || !a.log.Enabled() {
		return
	}
	result := e.Result
	if result == "" {
		result = ResultOK
	}
	kv := make([]any, 0, 34)
	kv = append(kv, "direction", e.Direction, "srcAddr", addrString(e.SrcAddr))
	kv = appendNonEmpty(kv, "srcWorkload", e.SrcWorkload)
	kv = appendNonEmpty(kv, "srcNamespace", e.SrcNamespace)
	kv = appendNonEmpty(kv, "srcIdentity", e.SrcIdentity.String())
	kv = append(kv, "dstAddr", addrString(e.DstAddr))
	if e.DstHBONEAddr.IsValid() {
		kv = append(kv, "dstHboneAddr", e.DstHBONEAddr.String())
	}
	kv = appendNonEmpty(kv, "dstService", e.DstService)
	kv = appendNonEmpty(kv, "dstWorkload", e.DstWorkload)
	kv = appendNonEmpty(kv, "dstNamespace", e.DstNamespace)
	kv = appendNonEmpty(kv, "dstIdentity", e.DstIdentity.String())
	kv = append(kv,
		"bytesSent", e.BytesSent,
		"bytesReceived", e.BytesReceived,
		"durationMs", float64(e.Duration.Microseconds())/1000,
		"result", result,
	)
	kv = appendNonEmpty(kv, "policy", e.Policy)
	if e.Error != nil {
		kv = append(kv, "error", e.Error.Error())
	}
	a.log.Info(AccessLogMessage, kv...)
}

func appendNonEmpty(kv []any, key, value string) []any {
	if value == "" {
		return kv
	}
	return append(kv, key, value)
}

func addrString(a netip.AddrPort) string {
	if !a.IsValid() {
		return Unknown
	}
	return a.String()
}
