package telemetry

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

func TestAccessLog(t *testing.T) {
	full := AccessLogEntry{
		Direction:     DirectionOutbound,
		SrcAddr:       netip.MustParseAddrPort("10.0.0.5:41234"),
		SrcWorkload:   "sleep-7d9f",
		SrcNamespace:  "default",
		SrcIdentity:   sleepID,
		DstAddr:       netip.MustParseAddrPort("10.0.1.9:15008"),
		DstHBONEAddr:  netip.MustParseAddrPort("10.0.1.7:8080"),
		DstService:    "httpbin.apps.svc.cluster.local",
		DstWorkload:   "httpbin-5c4d",
		DstNamespace:  "apps",
		DstIdentity:   httpbinID,
		BytesSent:     2048,
		BytesReceived: 77,
		Duration:      1500 * time.Microsecond,
		Result:        ResultOK,
		Policy:        "apps/allow-sleep",
	}
	tests := []struct {
		name    string
		entry   AccessLogEntry
		want    map[string]any
		missing []string
	}{
		{
			name:  "all fields",
			entry: full,
			want: map[string]any{
				"msg":           "Connection closed",
				"level":         "INFO",
				"logger":        "access",
				"direction":     "outbound",
				"srcAddr":       "10.0.0.5:41234",
				"srcWorkload":   "sleep-7d9f",
				"srcNamespace":  "default",
				"srcIdentity":   "spiffe://cluster.local/ns/default/sa/sleep",
				"dstAddr":       "10.0.1.9:15008",
				"dstHboneAddr":  "10.0.1.7:8080",
				"dstService":    "httpbin.apps.svc.cluster.local",
				"dstWorkload":   "httpbin-5c4d",
				"dstNamespace":  "apps",
				"dstIdentity":   "spiffe://cluster.local/ns/apps/sa/httpbin",
				"bytesSent":     2048.0,
				"bytesReceived": 77.0,
				"durationMs":    1.5,
				"result":        "ok",
				"policy":        "apps/allow-sleep",
			},
			missing: []string{"error"},
		},
		{
			name: "plaintext inbound, denied",
			entry: AccessLogEntry{
				Direction: DirectionInbound,
				SrcAddr:   netip.MustParseAddrPort("[fd00::1]:5000"),
				DstAddr:   netip.MustParseAddrPort("10.0.1.7:8080"),
				Duration:  2 * time.Second,
				Result:    FailureDenied,
				Policy:    "apps/deny-all",
				Error:     errors.New("denied by apps/deny-all"),
			},
			want: map[string]any{
				"direction":     "inbound",
				"srcAddr":       "[fd00::1]:5000",
				"dstAddr":       "10.0.1.7:8080",
				"bytesSent":     0.0,
				"bytesReceived": 0.0,
				"durationMs":    2000.0,
				"result":        "denied",
				"policy":        "apps/deny-all",
				"error":         "denied by apps/deny-all",
			},
			missing: []string{"srcWorkload", "srcNamespace", "srcIdentity", "dstHboneAddr", "dstService",
				"dstWorkload", "dstNamespace", "dstIdentity"},
		},
		{
			name:  "defaults",
			entry: AccessLogEntry{Direction: DirectionInbound},
			want: map[string]any{
				"srcAddr": "unknown",
				"dstAddr": "unknown",
				"result":  "ok",
			},
			missing: []string{"policy", "error"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			var buf bytes.Buffer
			l, err := NewLogging(&buf, "info")
			g.Expect(err).NotTo(HaveOccurred())
			NewAccessLog(l.Logger()).Log(tt.entry)

			lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
			g.Expect(lines).To(HaveLen(1))
			var got map[string]any
			g.Expect(json.Unmarshal([]byte(lines[0]), &got)).To(Succeed())
			for k, v := range tt.want {
				g.Expect(got).To(HaveKeyWithValue(k, v))
			}
			for _, k := range tt.missing {
				g.Expect(got).NotTo(HaveKey(k))
			}
		})
	}
}

func TestAccessLogOffBelowInfo(t *testing.T) {
	g := NewWithT(t)
	var buf bytes.Buffer
	l, err := NewLogging(&buf, "warn")
	g.Expect(err).NotTo(HaveOccurred())
	a := NewAccessLog(l.Logger())
	a.Log(AccessLogEntry{Direction: DirectionInbound})
	g.Expect(buf.String()).To(BeEmpty())

	var nilLog *AccessLog
	nilLog.Log(AccessLogEntry{})
}

// TestAccessLogFromConnMetrics is how a proxy fills the entry from the connection's handle.
func TestAccessLogFromConnMetrics(t *testing.T) {
	g := NewWithT(t)
	var buf bytes.Buffer
	l, err := NewLogging(&buf, "info")
	g.Expect(err).NotTo(HaveOccurred())
	c := NewMetrics().Open(outboundLabels())
	c.AddReceived(10)
	c.AddSent(20)
	c.Fail(FailureUpstreamConnect)
	NewAccessLog(l.Logger()).Log(AccessLogEntry{Direction: DirectionOutbound, BytesSent: c.Sent(),
		BytesReceived: c.Received(), Result: c.Result()})
	var got map[string]any
	g.Expect(json.Unmarshal(buf.Bytes(), &got)).To(Succeed())
	g.Expect(got).To(HaveKeyWithValue("bytesSent", 20.0))
	g.Expect(got).To(HaveKeyWithValue("bytesReceived", 10.0))
	g.Expect(got).To(HaveKeyWithValue("result", "upstream_connect"))
}
