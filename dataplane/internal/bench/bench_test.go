package bench

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestPercentileAndMedian(t *testing.T) {
	us := func(vs ...int) []time.Duration {
		out := make([]time.Duration, len(vs))
		for i, v := range vs {
			out[i] = time.Duration(v) * time.Microsecond
		}
		return out
	}
	for _, tc := range []struct {
		name     string
		samples  []time.Duration
		p        float64
		expected time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one", us(7), 99, 7 * time.Microsecond},
		{"p50 of ten, unsorted", us(10, 1, 9, 2, 8, 3, 7, 4, 6, 5), 50, 5 * time.Microsecond},
		{"p99 of ten is the largest", us(10, 1, 9, 2, 8, 3, 7, 4, 6, 5), 99, 10 * time.Microsecond},
		{"p100", us(3, 1, 2), 100, 3 * time.Microsecond},
		{"p0 is the smallest", us(3, 1, 2), 0, 1 * time.Microsecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			NewWithT(t).Expect(Percentile(tc.samples, tc.p)).To(Equal(tc.expected))
		})
	}
	g := NewWithT(t)
	g.Expect(Median(nil)).To(BeZero())
	g.Expect(Median([]float64{3, 1, 2})).To(Equal(2.0))
	vs := []float64{4, 1, 3, 2}
	g.Expect(Median(vs)).To(Equal(2.5))
	g.Expect(vs).To(Equal([]float64{4, 1, 3, 2}), "Median must not reorder its input")
	g.Expect(Mean(us(1, 2, 3, 6))).To(Equal(3 * time.Microsecond))
}

// TestClientsThroughRelays runs every client measurement against the server, directly and through two
// relays, in this process, with small bounds.
func TestClientsThroughRelays(t *testing.T) {
	g := NewWithT(t)
	ctx, cancel := context.WithCancel(context.Background())
	var stopped []chan error
	serve := func(run func(net.Listener) error) netip.AddrPort {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		g.Expect(err).NotTo(HaveOccurred())
		done := make(chan error, 1)
		go func() { done <- run(l) }()
		stopped = append(stopped, done)
		return netip.MustParseAddrPort(l.Addr().String())
	}
	t.Cleanup(func() {
		cancel()
		for _, done := range stopped {
			NewWithT(t).Expect(<-done).NotTo(HaveOccurred())
		}
	})
	srv := serve(func(l net.Listener) error { return Serve(ctx, l) })
	second := serve(func(l net.Listener) error { return Relay(ctx, l, srv.String()) })
	first := serve(func(l net.Listener) error { return Relay(ctx, l, second.String()) })
	src := netip.MustParseAddr("127.0.0.1")

	for _, dst := range []netip.AddrPort{srv, first} {
		t.Run(dst.String(), func(t *testing.T) {
			g := NewWithT(t)
			r, err := Throughput(ctx, src, dst, 3<<20, 10*time.Second)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(r.Bytes).To(BeEquivalentTo(3 << 20))
			g.Expect(r.Gbps()).To(BeNumerically(">", 0))

			r, err = Throughput(ctx, netip.Addr{}, dst, 1<<40, 200*time.Millisecond)
			g.Expect(err).NotTo(HaveOccurred(), "a transfer bounded by time")
			g.Expect(r.Bytes).To(BeNumerically(">", 0))

			r, err = Latency(ctx, src, dst, 10, 200, 10*time.Second)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(r.Samples).To(Equal(200))
			g.Expect(r.P50us).To(And(BeNumerically(">", 0), BeNumerically("<=", r.P99us)))

			r, err = ConnRate(ctx, src, dst, 4, 5*time.Second, 100)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(r.Conns).To(BeEquivalentTo(100), "bounded by count before time")
			g.Expect(r.Errors).To(BeZero())
			g.Expect(r.PerSecond()).To(BeNumerically(">", 0))

			var reached []int
			err = Hold(ctx, src, dst, []int{3, 20}, 10*time.Second, func(open int) error {
				reached = append(reached, open)
				return nil
			})
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(reached).To(Equal([]int{3, 20}))
		})
	}
}

func TestClientsReportFailures(t *testing.T) {
	g := NewWithT(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	closed := netip.MustParseAddrPort(l.Addr().String())
	g.Expect(l.Close()).To(Succeed())
	ctx := context.Background()

	_, err = Throughput(ctx, netip.Addr{}, closed, 1, time.Second)
	g.Expect(err).To(HaveOccurred())
	_, err = Latency(ctx, netip.Addr{}, closed, 1, 1, time.Second)
	g.Expect(err).To(HaveOccurred())
	r, err := ConnRate(ctx, netip.Addr{}, closed, 2, 50*time.Millisecond, 1000)
	g.Expect(err).To(MatchError(ContainSubstring("no connection succeeded")))
	g.Expect(r.Errors).To(BeNumerically(">", 0))
	g.Expect(r.Error).To(ContainSubstring("refused"))
	err = Hold(ctx, netip.Addr{}, closed, []int{2}, time.Second, func(int) error { return nil })
	g.Expect(err).To(MatchError(ContainSubstring("open connection 1")))
}

func TestMemStat(t *testing.T) {
	g := NewWithT(t)
	heap := []byte("heap profile: 1: 2 [3: 4] @ heap/1048576\n# runtime.MemStats\n# Alloc = 123\n# HeapInuse = 4567\n# Stack = 98304 / 98304\n")
	g.Expect(memStat(heap, "# HeapInuse = ")).To(BeEquivalentTo(4567))
	g.Expect(memStat(heap, "# Stack = ")).To(BeEquivalentTo(98304))
	g.Expect(memStat([]byte("goroutine profile: total 42\n1 @ 0x1\n"), "goroutine profile: total ")).To(BeEquivalentTo(42))
	g.Expect(memStat(heap, "# Missing = ")).To(BeZero())
}

func TestOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*Options)
		err    string
	}{
		{"defaults", func(*Options) {}, ""},
		{"unknown phase", func(o *Options) { o.Phases = []string{"memory", "speed"} }, `unknown phase "speed"`},
		{"no repeats", func(o *Options) { o.Repeats = 0 }, "--repeats"},
		{"memory steps descending", func(o *Options) { o.MemoryConns = []int{2000, 1000} }, "--memory-conns"},
		{"zero duration", func(o *Options) { o.ConnRateDuration = 0 }, "--connrate-duration"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			o := DefaultOptions()
			tc.change(&o)
			if tc.err == "" {
				g.Expect(o.validate()).To(Succeed())
				return
			}
			g.Expect(o.validate()).To(MatchError(ContainSubstring(tc.err)))
		})
	}
}

func TestReport(t *testing.T) {
	g := NewWithT(t)
	opts := DefaultOptions()
	opts.MemoryConns = []int{1000, 2000}
	r := newReport(opts)
	r.Host = "2 CPUs"
	r.Throughput = map[string][]float64{PathDirect: {20, 21, 22}, PathRelay2: {8, 9, 10}, PathHBONE: {4, 5, 6}} // 5/9: FAIL
	r.ConnRate = map[string][]float64{PathDirect: {10000}, PathRelay2: {2000}, PathHBONE: {1800}}               // 0.9: PASS
	r.Pinned = map[string][]Result{
		PathDirect: {{P50us: 30, P99us: 90}}, PathRelay2: {{P50us: 100, P99us: 300}}, PathHBONE: {{P50us: 110, P99us: 500}}, // 1.1: PASS
	}
	r.Latency = map[string][]Result{PathDirect: {{P50us: 40}, {P50us: 30}, {P50us: 50}}, PathRelay2: {{P50us: 150}}, PathHBONE: {{P50us: 300}}}
	r.ConnErrors[PathHBONE], r.ConnFirstError[PathHBONE] = 3, "connection reset"
	mem := func(rssKiB int64) MemSample {
		return MemSample{RSS: rssKiB << 10, HeapInuse: rssKiB << 10, Goroutines: rssKiB}
	}
	r.Memory.Idle = map[string]MemSample{"node-a": mem(17 << 10), "node-b": mem(25 << 10), "relay1": mem(8 << 10), "relay2": mem(8 << 10)}
	for _, afterLoad := range []bool{false, true} {
		r.Memory.Rounds = append(r.Memory.Rounds, MemoryRound{
			AfterLoad: afterLoad,
			Base: map[string]map[string]MemSample{
				PathHBONE:  {"node-a": mem(20000), "node-b": mem(20000)},
				PathRelay2: {"relay1": mem(9000), "relay2": mem(9000)},
			},
			Steps: map[string][]map[string]MemSample{
				PathHBONE: {
					{"node-a": mem(20000 + 40*1000), "node-b": mem(20000 + 10*1000)},
					{"node-a": mem(20000 + 40*2000), "node-b": mem(20000 + 10*2000)},
				},
				PathRelay2: {
					{"relay1": mem(9000 + 8*1000), "relay2": mem(9000 + 8*1000)},
					{"relay1": mem(9000 + 8*2000), "relay2": mem(9000 + 8*2000)},
				},
			},
		})
	}

	var text bytes.Buffer
	r.Text(&text)
	lines := strings.Split(text.String(), "\n")
	line := func(prefix string) string {
		for _, l := range lines {
			if strings.HasPrefix(l, prefix) {
				return l
			}
		}
		return ""
	}
	g.Expect(line("bulk throughput")).To(And(ContainSubstring("21.00"), ContainSubstring("9.00"), ContainSubstring("5.00"),
		ContainSubstring("0.56"), ContainSubstring("0.24"), HaveSuffix("FAIL")))
	g.Expect(line("new connections/s")).To(And(ContainSubstring("0.90"), HaveSuffix("PASS")))
	g.Expect(line("1-byte round trip p50, pinned")).To(And(ContainSubstring("1.10"), HaveSuffix("PASS")))
	g.Expect(line("1-byte round trip p50, unpinned")).To(And(ContainSubstring("40.0"), HaveSuffix("info")))
	g.Expect(line("idle after startup")).To(And(ContainSubstring("17.0"), ContainSubstring("25.0"), HaveSuffix("FAIL")), "node-b is above 20 MiB")
	g.Expect(line("per open idle connection, N=1000")).To(And(ContainSubstring("40.0"), ContainSubstring("10.0"), ContainSubstring("16.0"), HaveSuffix("FAIL")))
	g.Expect(line("  growth per connection from N=1000 to N=2000")).To(And(ContainSubstring("40.0"), HaveSuffix("FAIL")))
	g.Expect(line("growth per connection from N=1000 to N=2000 after the load phases")).To(And(ContainSubstring("40.0"), HaveSuffix("info")))
	g.Expect(line("  goroutines per connection")).To(ContainSubstring("40.0"))
	g.Expect(text.String()).To(ContainSubstring("hbone: 3 connections failed during the connection-rate runs (first: connection reset)"))

	var md bytes.Buffer
	r.Markdown(&md)
	g.Expect(md.String()).To(And(
		ContainSubstring("| measurement | direct | relay2 | hbone | hbone/relay2 | hbone/direct | bar | result |"),
		ContainSubstring("| --- | ---: |"),
		ContainSubstring("| &nbsp;&nbsp;growth per connection"),
		ContainSubstring("- hbone: 3 connections failed"),
	))
}
