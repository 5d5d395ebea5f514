package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambient-dev/ambient-operator/dataplane/identity"
)

// NetnsEnv is set in the environment of the harness re-executed inside its network namespace.
const NetnsEnv = "AMBIENT_BENCH_NETNS"

// Phases of a run, in the order they run.
const (
	PhaseMemory     = "memory"
	PhaseThroughput = "throughput"
	PhaseConnRate   = "connrate"
	PhaseLatency    = "latency"
	PhasePinned     = "pinned"
)

// AllPhases lists every phase.
var AllPhases = []string{PhaseMemory, PhaseThroughput, PhaseConnRate, PhaseLatency, PhasePinned}

// Options configure a run.
type Options struct {
	// DataplaneBin is the binary the node proxies run (ambient-proxy, or ambient-dataplane, which has the
	// same node command); when empty ambient-proxy is built from the module in the
	// working directory.
	DataplaneBin string
	// Markdown, if set, is a file the tables are also written to, in Markdown.
	Markdown string
	// Phases to run (see [AllPhases]).
	Phases []string
	// Repeats is how many times each throughput and connection-rate measurement runs per path, the
	// paths interleaved; the median is reported.
	Repeats int
	// ThroughputBytes and ThroughputDuration bound one bulk transfer: whichever comes first.
	ThroughputBytes    int64
	ThroughputDuration time.Duration
	// LatencyCount round trips (after LatencyWarmup) make one latency run; LatencyRuns unpinned runs
	// and PinnedRuns pinned runs are made per path, and the medians reported.
	LatencyCount, LatencyWarmup, LatencyRuns, PinnedRuns int
	// ConnRateClients concurrent clients open connections for ConnRateDuration (at most ConnRateMax
	// connections per run).
	ConnRateClients  int
	ConnRateDuration time.Duration
	ConnRateMax      int64
	// MemoryConns are the numbers of open idle connections at which memory is sampled, ascending.
	MemoryConns []int
	// CPUs is the taskset CPU list of the pinned phase.
	CPUs string
	// ProxyLogLevel is the node proxies' --log-level ("info" writes the access log, as shipped).
	ProxyLogLevel string
	// KeepDir keeps the working directory (configuration, certificates, process logs).
	KeepDir bool
	// ProfileDir, if set, receives CPU profiles of node-a and node-b taken during the first hbone
	// throughput and connection-rate runs (for `go tool pprof`).
	ProfileDir string
}

// DefaultOptions are the settings of `make bench`.
func DefaultOptions() Options {
	return Options{
		Phases:             slices.Clone(AllPhases),
		Repeats:            3,
		ThroughputBytes:    2 << 30,
		ThroughputDuration: 5 * time.Second,
		LatencyCount:       20000,
		LatencyWarmup:      1000,
		LatencyRuns:        5,
		PinnedRuns:         3,
		ConnRateClients:    16,
		ConnRateDuration:   5 * time.Second,
		ConnRateMax:        1_000_000,
		MemoryConns:        []int{1000, 2000},
		CPUs:               "0",
		ProxyLogLevel:      "info",
	}
}

func (o Options) validate() error {
	for _, p := range o.Phases {
		if !slices.Contains(AllPhases, p) {
			return fmt.Errorf("--phases: unknown phase %q (want some of %s)", p, strings.Join(AllPhases, ","))
		}
	}
	switch {
	case o.Repeats < 1 || o.LatencyRuns < 1 || o.PinnedRuns < 1:
		return errors.New("--repeats, --latency-runs and --pinned-runs must be at least 1")
	case o.LatencyCount < 1 || o.ConnRateClients < 1 || o.ConnRateMax < 1 || o.ThroughputBytes < 1:
		return errors.New("--latency-count, --connrate-clients, --connrate-max and --throughput-bytes must be positive")
	case o.ThroughputDuration <= 0 || o.ConnRateDuration <= 0:
		return errors.New("--throughput-duration and --connrate-duration must be positive")
	case !slices.IsSorted(o.MemoryConns) || len(o.MemoryConns) == 0 || o.MemoryConns[0] < 1:
		return errors.New("--memory-conns must be positive and ascending")
	}
	return nil
}

// Run checks the prerequisites, builds ambient-proxy if needed, creates a network namespace,
// re-executes this program inside it with args (plus --dataplane-bin) and removes the namespace when
// done or when ctx ends (Ctrl-C).
func Run(ctx context.Context, opts Options, args []string, stdout, stderr io.Writer) error {
	if err := opts.validate(); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("root is required: the benchmark creates a network namespace and iptables rules in it (run `sudo make bench`)")
	}
	for _, tool := range []string{"ip", "iptables", "taskset"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is required (iproute2, iptables, util-linux): %w", tool, err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	bin := opts.DataplaneBin
	if bin == "" {
		dir, err := os.MkdirTemp("", "ambient-bench-bin-")
		if err != nil {
			return err
		}
		defer func() { _ = os.RemoveAll(dir) }()
		bin = filepath.Join(dir, "ambient-proxy")
		fmt.Fprintln(stderr, "Building ambient-proxy, the node proxies' binary (pass --dataplane-bin to use a built one)")
		build := exec.CommandContext(ctx, "go", "build", "-tags", "proxyonly", "-o", bin, "github.com/ambient-dev/ambient-operator/dataplane/cmd/ambient-dataplane") // #nosec G204 -- fixed arguments
		if out, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("build ambient-dataplane (run from the dataplane module, or pass --dataplane-bin): %w\n%s", err, out)
		}
	}
	if bin, err = filepath.Abs(bin); err != nil {
		return err
	}
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("--dataplane-bin: %w", err)
	}

	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	ns := "ambient-bench-" + hex.EncodeToString(suffix)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil { // #nosec G204 -- our own namespace name
		return fmt.Errorf("ip netns add %s: %w\n%s", ns, err, out)
	}
	defer func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil { // #nosec G204 -- our own namespace name
			fmt.Fprintf(stderr, "Removing the network namespace %s failed: %v\n%s", ns, err, out)
		}
	}()
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil { // #nosec G204 -- our own namespace name
		return fmt.Errorf("bring up lo in %s: %w\n%s", ns, err, out)
	}

	inner := append([]string{"netns", "exec", ns, self}, args...)
	inner = append(inner, "--dataplane-bin="+bin)
	cmd := exec.CommandContext(ctx, "ip", inner...) // #nosec G204 -- this program, re-executed
	cmd.Env = append(os.Environ(), NetnsEnv+"="+ns)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	// On Ctrl-C (or SIGTERM) the inner harness stops its processes and removes its files itself; it is
	// killed only if it does not finish in time.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 20 * time.Second
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("interrupted: %w", ctx.Err())
		}
		return fmt.Errorf("the benchmark failed inside %s: %w", ns, err)
	}
	return nil
}

// Addresses inside the namespace (all on its loopback interface).
var (
	// meshClient is the client workload, on node-a; its connections are captured to node-a.
	meshClient = netip.MustParseAddr("127.0.1.5")
	// plainClient is where the direct and relay2 clients connect from.
	plainClient = netip.MustParseAddr("127.0.0.2")
	// server is the server workload, on node-b.
	server = netip.MustParseAddrPort("127.0.2.5:8080")
	relay1 = netip.MustParseAddrPort("127.0.3.1:9001")
	relay2 = netip.MustParseAddrPort("127.0.3.2:9002")
)

// Paths compared, in the order they are printed.
const (
	PathDirect = "direct"
	PathRelay2 = "relay2"
	PathHBONE  = "hbone"
)

type path struct {
	name string
	src  netip.Addr
	dst  netip.AddrPort
}

var paths = []path{
	{PathDirect, plainClient, server},
	{PathRelay2, plainClient, relay1},
	{PathHBONE, meshClient, server},
}

// The configuration of both node proxies: the client workload on node-a, the server on node-b.
const proxyConfig = `trustDomain: cluster.local
workloads:
- {name: client, namespace: default, addresses: ["127.0.1.5"], node: node-a, serviceAccount: client}
- {name: server, namespace: default, addresses: ["127.0.2.5"], node: node-b, serviceAccount: server}
`

// The node proxies' endpoints: admin, metrics, readiness.
var nodeEndpoints = map[string]string{"node-a": "127.0.1.1", "node-b": "127.0.2.1"}

type harness struct {
	opts   Options
	self   string
	dir    string
	out    io.Writer // progress
	start  time.Time
	cpus   string // the current chain's pinning, "" for none
	chain  map[string]*process
	report *Report
}

// Inside runs the benchmark in the network namespace Run created: it configures the namespace, starts
// the processes, runs the phases, and prints the tables to stdout (progress goes to stderr).
func Inside(ctx context.Context, opts Options, stdout, stderr io.Writer) (err error) {
	if err := opts.validate(); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "ambient-bench-")
	if err != nil {
		return err
	}
	h := &harness{opts: opts, self: self, dir: dir, out: stderr, start: time.Now(), report: newReport(opts)}
	defer func() {
		h.stopChain()
		if ctx.Err() != nil {
			err = fmt.Errorf("interrupted: %w", ctx.Err())
		}
		if opts.KeepDir || (err != nil && ctx.Err() == nil) {
			fmt.Fprintf(stderr, "Configuration, certificates and process logs are in %s\n", dir)
			return
		}
		_ = os.RemoveAll(dir)
	}()
	if err := h.setup(); err != nil {
		return err
	}
	if err := h.phases(ctx); err != nil {
		return err
	}
	h.report.Elapsed = time.Since(h.start)
	h.report.Text(stdout)
	if opts.Markdown != "" {
		var b bytes.Buffer
		h.report.Markdown(&b)
		if err := os.WriteFile(opts.Markdown, b.Bytes(), 0o644); err != nil { // #nosec G306 -- a report, meant to be read
			return fmt.Errorf("--markdown: %w", err)
		}
		fmt.Fprintf(stderr, "Wrote %s\n", opts.Markdown)
	}
	return nil
}

func (h *harness) logf(format string, args ...any) {
	fmt.Fprintf(h.out, "[%6.1fs] %s\n", time.Since(h.start).Seconds(), fmt.Sprintf(format, args...))
}

// setup writes the certificates and the configuration, widens the ephemeral port range (a connection
// rate run opens tens of thousands of connections from one address) and installs the capture rule.
func (h *harness) setup() error {
	for _, sub := range []string{"logs", "certs"} {
		if err := os.MkdirAll(filepath.Join(h.dir, sub), 0o700); err != nil {
			return err
		}
	}
	rootPEM, err := writePKI(h.dir, identity.New("cluster.local", "default", "client"), identity.New("cluster.local", "default", "server"))
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(h.dir, "root-cert.pem"), rootPEM, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(h.dir, "config.yaml"), []byte(proxyConfig), 0o600); err != nil {
		return err
	}
	// Per network namespace: this changes nothing outside ours.
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte("20000 64999"), 0o600); err != nil {
		return fmt.Errorf("widen the ephemeral port range: %w", err)
	}
	// The client's connections, but not the proxy's own (marked), go to node-a's outbound port.
	rule := []string{"-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-s", meshClient.String(), "-m", "mark", "!", "--mark", "0x539",
		"!", "-d", meshClient.String(), "-j", "DNAT", "--to-destination", netip.AddrPortFrom(meshClient, 15001).String()}
	if out, err := exec.Command("iptables", rule...).CombinedOutput(); err != nil { // #nosec G204 -- fixed arguments
		return fmt.Errorf("iptables %s: %w\n%s", strings.Join(rule, " "), err, out)
	}
	h.report.Host = hostDescription()
	return nil
}

func hostDescription() string {
	var uts unix.Utsname
	kernel := "?"
	if unix.Uname(&uts) == nil {
		kernel = unix.ByteSliceToString(uts.Release[:])
	}
	load, _ := os.ReadFile("/proc/loadavg")
	fields := strings.Fields(string(load))
	if len(fields) > 3 {
		fields = fields[:3]
	}
	return fmt.Sprintf("%d CPUs, Linux %s, %s, load average at start %s", runtime.NumCPU(), kernel, runtime.Version(), strings.Join(fields, " "))
}

// startChain starts the server, the two relays and the two node proxies, pinned to cpus if set, and
// waits until all of them serve.
func (h *harness) startChain(ctx context.Context, cpus string) error {
	h.cpus = cpus
	h.chain = map[string]*process{}
	logName := func(name string) string {
		if cpus != "" {
			name += "-pinned"
		}
		return filepath.Join(h.dir, "logs", name+".log")
	}
	start := func(name string, argv ...string) (*process, error) {
		p, err := startProcess(name, cpus, logName(name), argv...)
		if err == nil {
			h.chain[name] = p
		}
		return p, err
	}
	type wait struct {
		p    *process
		addr string
	}
	var tcp []wait
	for _, r := range []struct {
		name   string
		listen netip.AddrPort
		argv   []string
	}{
		{"server", server, []string{"server", "--listen", server.String()}},
		{"relay2", relay2, []string{"relay", "--listen", relay2.String(), "--target", server.String()}},
		{"relay1", relay1, []string{"relay", "--listen", relay1.String(), "--target", relay2.String()}},
	} {
		p, err := start(r.name, append([]string{h.self}, r.argv...)...)
		if err != nil {
			return err
		}
		tcp = append(tcp, wait{p, r.listen.String()})
	}
	for _, node := range []string{"node-a", "node-b"} {
		host := nodeEndpoints[node]
		p, err := start(node, h.opts.DataplaneBin, "node", "--node-name="+node,
			"--config="+filepath.Join(h.dir, "config.yaml"), "--cert-dir="+filepath.Join(h.dir, "certs"),
			"--root-cert="+filepath.Join(h.dir, "root-cert.pem"), "--log-level="+h.opts.ProxyLogLevel,
			"--admin-address="+host+":15000", "--metrics-address="+host+":15020", "--readiness-address="+host+":15021")
		if err != nil {
			return err
		}
		p.admin = host + ":15000"
	}
	for _, w := range tcp {
		if err := w.p.waitTCP(ctx, w.addr, 10*time.Second); err != nil {
			return err
		}
	}
	for _, node := range []string{"node-a", "node-b"} {
		if err := h.chain[node].waitReady(ctx, "http://"+nodeEndpoints[node]+":15021/healthz/ready", 20*time.Second); err != nil {
			return err
		}
	}
	return nil
}

func (h *harness) stopChain() {
	for _, p := range h.chain {
		p.stop()
	}
	h.chain = nil
}

// checkPaths sends a few bytes through every path and expects them back; it also warms the paths up
// (the HBONE pool holds an HTTP/2 connection from node-a to node-b afterwards).
func (h *harness) checkPaths(ctx context.Context) error {
	for _, p := range paths {
		if err := exchange(ctx, p.src, p.dst, "ping"); err != nil {
			proc := h.chain["node-a"]
			if p.name != PathHBONE {
				proc = h.chain["relay1"]
			}
			return proc.failure(fmt.Errorf("the %s path does not work: %w", p.name, err))
		}
	}
	return nil
}

func exchange(ctx context.Context, src netip.Addr, dst netip.AddrPort, msg string) error {
	c, err := Dial(ctx, src, dst)
	if err != nil {
		return err
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != msg {
		return fmt.Errorf("sent %q, got %q back", msg, got)
	}
	return nil
}

func (h *harness) has(phase string) bool { return slices.Contains(h.opts.Phases, phase) }

func (h *harness) phases(ctx context.Context) error {
	if h.has(PhaseMemory) || h.has(PhaseThroughput) || h.has(PhaseConnRate) || h.has(PhaseLatency) {
		h.logf("Starting server, relays and node proxies")
		if err := h.startChain(ctx, ""); err != nil {
			return err
		}
		if h.has(PhaseMemory) {
			if err := h.idleMemory(ctx); err != nil {
				return err
			}
		}
		if err := h.checkPaths(ctx); err != nil {
			return err
		}
		if h.has(PhaseMemory) {
			if err := h.memory(ctx, false); err != nil {
				return err
			}
		}
		if h.has(PhaseThroughput) {
			if err := h.throughput(ctx); err != nil {
				return err
			}
		}
		if h.has(PhaseConnRate) {
			if err := h.connRate(ctx); err != nil {
				return err
			}
		}
		if h.has(PhaseLatency) {
			if err := h.latency(ctx, h.opts.LatencyRuns, h.report.Latency); err != nil {
				return err
			}
		}
		if h.has(PhaseMemory) && (h.has(PhaseThroughput) || h.has(PhaseConnRate) || h.has(PhaseLatency)) {
			if err := h.memory(ctx, true); err != nil {
				return err
			}
		}
		h.stopChain()
	}
	if h.has(PhasePinned) {
		h.logf("Starting server, relays and node proxies pinned to CPU %s", h.opts.CPUs)
		if err := h.startChain(ctx, h.opts.CPUs); err != nil {
			return err
		}
		if err := h.checkPaths(ctx); err != nil {
			return err
		}
		if err := h.latency(ctx, h.opts.PinnedRuns, h.report.Pinned); err != nil {
			return err
		}
		h.stopChain()
	}
	return nil
}

// idleMemory samples the processes right after startup, before any traffic.
func (h *harness) idleMemory(ctx context.Context) error {
	for _, name := range []string{"node-a", "node-b", "relay1", "relay2"} {
		m, err := h.chain[name].settledSample(ctx)
		if err != nil {
			return err
		}
		h.report.Memory.Idle[name] = m
	}
	h.logf("Idle after startup: node-a %s, node-b %s", mib(h.report.Memory.Idle["node-a"].RSS), mib(h.report.Memory.Idle["node-b"].RSS))
	return nil
}

// memory holds open idle connections through hbone, then through relay2, and samples the processes of
// the path after the warm-up (the baseline) and at every step. afterLoad says whether the load phases
// ran before: the proxies' heaps have then been used and freed, so new buffers cost their full size in
// RSS (the Go runtime zeroes reused memory), where on a fresh heap untouched parts of a buffer cost none.
func (h *harness) memory(ctx context.Context, afterLoad bool) error {
	round := MemoryRound{AfterLoad: afterLoad, Base: map[string]map[string]MemSample{}, Steps: map[string][]map[string]MemSample{}}
	for _, pc := range []struct {
		path  path
		procs []string
	}{
		{paths[2], []string{"node-a", "node-b"}},
		{paths[1], []string{"relay1", "relay2"}},
	} {
		base := map[string]MemSample{}
		for _, name := range pc.procs {
			m, err := h.chain[name].settledSample(ctx)
			if err != nil {
				return err
			}
			base[name] = m
		}
		round.Base[pc.path.name] = base
		steps := make([]string, len(h.opts.MemoryConns))
		for i, n := range h.opts.MemoryConns {
			steps[i] = strconv.Itoa(n)
		}
		err := h.hold(ctx, pc.path, strings.Join(steps, ","), func(open int) error {
			step := map[string]MemSample{}
			var line []string
			for _, name := range pc.procs {
				m, err := h.chain[name].settledSample(ctx)
				if err != nil {
					return err
				}
				step[name] = m
				line = append(line, fmt.Sprintf("%s %s (%+.1f KiB/conn)", name, mib(m.RSS), float64(m.RSS-base[name].RSS)/1024/float64(open)))
			}
			round.Steps[pc.path.name] = append(round.Steps[pc.path.name], step)
			h.logf("%s with %d open idle connections (%s): %s", pc.path.name, open, round.label(), strings.Join(line, ", "))
			return nil
		})
		if err != nil {
			return err
		}
	}
	h.report.Memory.Rounds = append(h.report.Memory.Rounds, round)
	return nil
}

// hold runs a client that holds connections open through p, calling reached at every step.
func (h *harness) hold(ctx context.Context, p path, steps string, reached func(open int) error) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cmd := h.clientCommand(ctx, "hold", "--src", p.src.String(), "--dst", p.dst.String(), "--steps", steps)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	err = h.holdSteps(stdin, stdout, reached)
	_ = stdin.Close() // the client closes its connections and exits
	if werr := cmd.Wait(); werr != nil && err == nil {
		err = fmt.Errorf("hold client through %s: %w\n%s", p.name, werr, stderr.String())
	}
	return err
}

// holdSteps reads the hold client's step lines, calls reached for each and then lets the client go on.
func (h *harness) holdSteps(stdin io.Writer, stdout io.Reader, reached func(open int) error) error {
	lines := bufio.NewScanner(stdout)
	for lines.Scan() {
		var r Result
		if err := json.Unmarshal(lines.Bytes(), &r); err != nil {
			return fmt.Errorf("hold client: %q: %w", lines.Text(), err)
		}
		if err := reached(r.Open); err != nil {
			return err
		}
		if _, err := io.WriteString(stdin, "next\n"); err != nil {
			return err
		}
	}
	return lines.Err()
}

// clientCommand is a client process of this program, pinned like the chain.
func (h *harness) clientCommand(ctx context.Context, args ...string) *exec.Cmd {
	argv := append([]string{h.self, "client"}, args...)
	if h.cpus != "" {
		argv = append([]string{"taskset", "-c", h.cpus}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...) // #nosec G204 -- this program
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	return cmd
}

// runClient runs one client measurement and returns its result.
func (h *harness) runClient(ctx context.Context, bound time.Duration, args ...string) (Result, error) {
	ctx, cancel := context.WithTimeout(ctx, bound+time.Minute)
	defer cancel()
	cmd := h.clientCommand(ctx, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var r Result
	if err != nil {
		return r, fmt.Errorf("client %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	if err := json.Unmarshal(bytes.TrimSpace(stdout.Bytes()), &r); err != nil {
		return r, fmt.Errorf("client %s: %q: %w", strings.Join(args, " "), stdout.String(), err)
	}
	return r, nil
}

// The measurements run every path in turn, repeatedly, so that a noisy neighbour spreads over all of
// them rather than over one. A short pause separates runs.
const pause = 500 * time.Millisecond

func (h *harness) throughput(ctx context.Context) error {
	for i := range h.opts.Repeats {
		for _, p := range paths {
			stopProfile := h.profile(ctx, p, i, "throughput", h.opts.ThroughputDuration)
			r, err := h.runClient(ctx, h.opts.ThroughputDuration, "throughput", "--src", p.src.String(), "--dst", p.dst.String(),
				"--bytes", strconv.FormatInt(h.opts.ThroughputBytes, 10), "--duration", h.opts.ThroughputDuration.String())
			if err != nil {
				return h.pathFailure(p, err)
			}
			stopProfile()
			h.report.Throughput[p.name] = append(h.report.Throughput[p.name], r.Gbps())
			h.logf("throughput %-6s run %d/%d: %.2f Gbit/s (%d MiB in %.2fs)", p.name, i+1, h.opts.Repeats, r.Gbps(), r.Bytes>>20, r.Seconds)
			time.Sleep(pause)
		}
	}
	return nil
}

func (h *harness) connRate(ctx context.Context) error {
	for i := range h.opts.Repeats {
		for _, p := range paths {
			stopProfile := h.profile(ctx, p, i, "connrate", h.opts.ConnRateDuration)
			r, err := h.runClient(ctx, h.opts.ConnRateDuration, "connrate", "--src", p.src.String(), "--dst", p.dst.String(),
				"--clients", strconv.Itoa(h.opts.ConnRateClients), "--duration", h.opts.ConnRateDuration.String(),
				"--max", strconv.FormatInt(h.opts.ConnRateMax, 10))
			if err != nil {
				return h.pathFailure(p, err)
			}
			stopProfile()
			h.report.ConnRate[p.name] = append(h.report.ConnRate[p.name], r.PerSecond())
			h.report.ConnErrors[p.name] += r.Errors
			if r.Errors > 0 && h.report.ConnFirstError[p.name] == "" {
				h.report.ConnFirstError[p.name] = r.Error
			}
			h.logf("connrate   %-6s run %d/%d: %.0f connections/s (%d in %.2fs, %d failed)", p.name, i+1, h.opts.Repeats, r.PerSecond(), r.Conns, r.Seconds, r.Errors)
			// Let the closing connections of this run finish before the next one.
			time.Sleep(2 * pause)
		}
	}
	return nil
}

func (h *harness) latency(ctx context.Context, runs int, into map[string][]Result) error {
	bound := 30 * time.Second
	for i := range runs {
		for _, p := range paths {
			r, err := h.runClient(ctx, bound, "latency", "--src", p.src.String(), "--dst", p.dst.String(),
				"--count", strconv.Itoa(h.opts.LatencyCount), "--warmup", strconv.Itoa(h.opts.LatencyWarmup), "--max-duration", bound.String())
			if err != nil {
				return h.pathFailure(p, err)
			}
			into[p.name] = append(into[p.name], r)
			pin := "unpinned"
			if h.cpus != "" {
				pin = "pinned to CPU " + h.cpus
			}
			h.logf("latency    %-6s run %d/%d (%s): p50 %.1f us, p99 %.1f us, mean %.1f us (%d round trips)", p.name, i+1, runs, pin, r.P50us, r.P99us, r.MeanUs, r.Samples)
			time.Sleep(pause)
		}
	}
	return nil
}

// profile starts CPU profiles of the node proxies for the first hbone run of a measurement when
// --profile-dir is set; the returned function waits for them.
func (h *harness) profile(ctx context.Context, p path, run int, what string, d time.Duration) func() {
	if h.opts.ProfileDir == "" || p.name != PathHBONE || run != 0 {
		return func() {}
	}
	seconds := max(1, int(d.Seconds())-1)
	done := make(chan struct{}, 2)
	for _, node := range []string{"node-a", "node-b"} {
		go func() {
			defer func() { done <- struct{}{} }()
			_, body, err := httpGet(ctx, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", h.chain[node].admin, seconds), time.Duration(seconds)*time.Second+30*time.Second)
			file := filepath.Join(h.opts.ProfileDir, fmt.Sprintf("%s-%s.pprof", node, what))
			if err == nil {
				err = os.WriteFile(file, body, 0o600)
			}
			if err != nil {
				h.logf("CPU profile of %s during %s: %v", node, what, err)
				return
			}
			h.logf("Wrote %s", file)
		}()
	}
	return func() { <-done; <-done }
}

// pathFailure adds the state of the path's processes to a failed measurement.
func (h *harness) pathFailure(p path, err error) error {
	names := []string{"server"}
	switch p.name {
	case PathRelay2:
		names = append(names, "relay1", "relay2")
	case PathHBONE:
		names = append(names, "node-a", "node-b")
	}
	for _, n := range names {
		if proc := h.chain[n]; proc != nil && proc.exited() {
			return proc.failure(err)
		}
	}
	return fmt.Errorf("%s: %w", p.name, err)
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
