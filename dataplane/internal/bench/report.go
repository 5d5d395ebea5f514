package bench

import (
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"
)

// Report holds the measurements of a run.
type Report struct {
	Options Options
	Host    string
	Started time.Time
	Elapsed time.Duration
	// Per path, one value per run.
	Throughput     map[string][]float64 // Gbit/s
	ConnRate       map[string][]float64 // connections/s
	ConnErrors     map[string]int64
	ConnFirstError map[string]string
	Latency        map[string][]Result // unpinned
	Pinned         map[string][]Result
	Memory         Memory
}

// Memory holds the memory samples of the memory phase.
type Memory struct {
	// Idle: per process, right after startup.
	Idle map[string]MemSample
	// Rounds of open idle connections: on the fresh processes, then after the load phases.
	Rounds []MemoryRound
}

// MemoryRound is one round of holding open idle connections through hbone and relay2.
type MemoryRound struct {
	// AfterLoad: the throughput, connection-rate and latency phases ran before.
	AfterLoad bool
	// Base: per path, per process, after the warm-up and before the connections are opened.
	Base map[string]map[string]MemSample
	// Steps: per path, one map (per process) per entry of Options.MemoryConns.
	Steps map[string][]map[string]MemSample
}

func (m MemoryRound) label() string {
	if m.AfterLoad {
		return "after the load phases"
	}
	return "fresh processes"
}

// perConn is the growth of f per open connection, in KiB, of process proc on path at step i.
func (m MemoryRound) perConn(path, proc string, i, n int, f func(MemSample) int64) float64 {
	steps := m.Steps[path]
	if i >= len(steps) {
		return 0
	}
	return float64(f(steps[i][proc])-f(m.Base[path][proc])) / float64(n) / 1024
}

func newReport(opts Options) *Report {
	return &Report{
		Options: opts, Started: time.Now(),
		Throughput: map[string][]float64{}, ConnRate: map[string][]float64{},
		ConnErrors: map[string]int64{}, ConnFirstError: map[string]string{},
		Latency: map[string][]Result{}, Pinned: map[string][]Result{},
		Memory: Memory{Idle: map[string]MemSample{}},
	}
}

// The bars of DESIGN.md section 7.
const (
	throughputBar = 0.65 // hbone >= 0.65 x relay2
	latencyBar    = 1.2  // hbone p50 <= 1.2 x relay2
	connRateBar   = 0.8  // hbone >= 0.8 x relay2
	idleRSSBar    = 20 << 20
	perConnBar    = 16 << 10
)

// Verdicts.
const (
	pass = "PASS"
	fail = "FAIL"
	info = "info"
)

type table struct {
	title  string
	header []string
	rows   [][]string
}

// pathTable compares the three paths on every measurement that ran.
func (r *Report) pathTable() table {
	t := table{
		title:  "Data plane: hbone against direct and relay2 (each proxy a separate process)",
		header: []string{"measurement", PathDirect, PathRelay2, PathHBONE, "hbone/relay2", "hbone/direct", "bar", "result"},
	}
	add := func(name, format string, values map[string]float64, bar string, ok func(ratio float64) bool) {
		row := []string{name}
		for _, p := range []string{PathDirect, PathRelay2, PathHBONE} {
			row = append(row, fmt.Sprintf(format, values[p]))
		}
		relay, direct := ratio(values[PathHBONE], values[PathRelay2]), ratio(values[PathHBONE], values[PathDirect])
		verdict := info
		if ok != nil {
			verdict = verdictOf(ok(relay))
		}
		t.rows = append(t.rows, append(row, fmt.Sprintf("%.2f", relay), fmt.Sprintf("%.2f", direct), bar, verdict))
	}
	if len(r.Throughput) > 0 {
		add(fmt.Sprintf("bulk throughput, 1 stream, Gbit/s (median of %d)", r.Options.Repeats), "%.2f", medians(r.Throughput),
			fmt.Sprintf(">= %.2f x relay2", throughputBar), func(x float64) bool { return x >= throughputBar })
	}
	if len(r.Pinned) > 0 {
		n := r.Options.PinnedRuns
		add(fmt.Sprintf("1-byte round trip p50, pinned to CPU %s, us (median of %d)", r.Options.CPUs, n), "%.1f", latencyMedians(r.Pinned, p50),
			fmt.Sprintf("<= %.1f x relay2", latencyBar), func(x float64) bool { return x <= latencyBar })
		add(fmt.Sprintf("1-byte round trip p99, pinned, us (median of %d)", n), "%.1f", latencyMedians(r.Pinned, p99), "", nil)
	}
	if len(r.Latency) > 0 {
		n := r.Options.LatencyRuns
		add(fmt.Sprintf("1-byte round trip p50, unpinned, us (median of %d)", n), "%.1f", latencyMedians(r.Latency, p50),
			fmt.Sprintf("(<= %.1f x relay2 when pinned)", latencyBar), nil)
		add(fmt.Sprintf("1-byte round trip p99, unpinned, us (median of %d)", n), "%.1f", latencyMedians(r.Latency, p99), "", nil)
	}
	if len(r.ConnRate) > 0 {
		add(fmt.Sprintf("new connections/s, %d clients (median of %d)", r.Options.ConnRateClients, r.Options.Repeats), "%.0f", medians(r.ConnRate),
			fmt.Sprintf(">= %.2f x relay2", connRateBar), func(x float64) bool { return x >= connRateBar })
	}
	return t
}

func p50(r Result) float64 { return r.P50us }
func p99(r Result) float64 { return r.P99us }

func medians(runs map[string][]float64) map[string]float64 {
	m := map[string]float64{}
	for p, vs := range runs {
		m[p] = Median(vs)
	}
	return m
}

func latencyMedians(runs map[string][]Result, f func(Result) float64) map[string]float64 {
	m := map[string]float64{}
	for p, rs := range runs {
		vs := make([]float64, len(rs))
		for i, r := range rs {
			vs[i] = f(r)
		}
		m[p] = Median(vs)
	}
	return m
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func verdictOf(ok bool) string {
	if ok {
		return pass
	}
	return fail
}

// memoryTable shows the node proxies' memory idle and per open idle connection, with the relays' as a
// reference.
func (r *Report) memoryTable() (table, bool) {
	m := r.Memory
	if len(m.Idle) == 0 {
		return table{}, false
	}
	t := table{
		title:  "Node proxy memory (VmRSS of fresh processes; per connection = RSS growth / open idle connections, from the warmed-up baseline)",
		header: []string{"measurement", "node-a", "node-b", "node-a + node-b", "relay1 + relay2 (reference)", "bar", "result"},
	}
	idle := func(name string) float64 { return float64(m.Idle[name].RSS) / (1 << 20) }
	t.rows = append(t.rows, []string{"idle after startup, MiB",
		fmt.Sprintf("%.1f", idle("node-a")), fmt.Sprintf("%.1f", idle("node-b")),
		fmt.Sprintf("%.1f", idle("node-a")+idle("node-b")), fmt.Sprintf("%.1f", idle("relay1")+idle("relay2")),
		"<= 20 MiB per proxy", verdictOf(m.Idle["node-a"].RSS <= idleRSSBar && m.Idle["node-b"].RSS <= idleRSSBar)})
	rssOf := func(s MemSample) int64 { return s.RSS }
	perConnRow := func(name string, a, b, relays float64) {
		t.rows = append(t.rows, []string{name, fmt.Sprintf("%.1f", a), fmt.Sprintf("%.1f", b), fmt.Sprintf("%.1f", a+b), fmt.Sprintf("%.1f", relays),
			"<= 16 KiB per proxy", verdictOf(a*1024 <= perConnBar && b*1024 <= perConnBar)})
	}
	conns := r.Options.MemoryConns
	for _, round := range m.Rounds {
		// After the load phases the processes hold memory they used and freed, which the first
		// connections reuse: only the growth between the last two steps is shown, for information.
		if !round.AfterLoad {
			for i, n := range conns {
				if i >= len(round.Steps[PathHBONE]) || i >= len(round.Steps[PathRelay2]) {
					break
				}
				perConnRow(fmt.Sprintf("per open idle connection, N=%d, KiB", n),
					round.perConn(PathHBONE, "node-a", i, n, rssOf), round.perConn(PathHBONE, "node-b", i, n, rssOf),
					round.perConn(PathRelay2, "relay1", i, n, rssOf)+round.perConn(PathRelay2, "relay2", i, n, rssOf))
			}
		}
		// The marginal cost between the last two steps: what one more connection costs once the memory
		// the process already held is used up.
		if last := len(conns) - 1; last >= 1 && last < len(round.Steps[PathHBONE]) && last < len(round.Steps[PathRelay2]) {
			slope := func(path, proc string) float64 {
				steps := round.Steps[path]
				return float64(steps[last][proc].RSS-steps[last-1][proc].RSS) / float64(conns[last]-conns[last-1]) / 1024
			}
			name := fmt.Sprintf("  growth per connection from N=%d to N=%d, KiB", conns[last-1], conns[last])
			if round.AfterLoad {
				name = fmt.Sprintf("growth per connection from N=%d to N=%d after the load phases, KiB", conns[last-1], conns[last])
			}
			perConnRow(name, slope(PathHBONE, "node-a"), slope(PathHBONE, "node-b"), slope(PathRelay2, "relay1")+slope(PathRelay2, "relay2"))
			if round.AfterLoad {
				t.rows[len(t.rows)-1][6] = info
			}
		}
	}
	// Where the memory goes, from the Go runtime, at the largest step on the fresh processes (the
	// runtime's figures do not depend on which pages were touched before).
	if len(m.Rounds) > 0 {
		round := m.Rounds[0]
		last := len(round.Steps[PathHBONE]) - 1
		if last >= 0 {
			n := conns[last]
			for _, d := range []struct {
				name string
				f    func(MemSample) int64
				unit float64
			}{
				{fmt.Sprintf("  Go heap in use after GC, N=%d, KiB/conn", n), func(s MemSample) int64 { return s.HeapInuse }, 1},
				{fmt.Sprintf("  goroutine stacks, N=%d, KiB/conn", n), func(s MemSample) int64 { return s.StackInuse }, 1},
				{fmt.Sprintf("  goroutines per connection, N=%d", n), func(s MemSample) int64 { return s.Goroutines }, 1024},
			} {
				a, b := round.perConn(PathHBONE, "node-a", last, n, d.f)*d.unit, round.perConn(PathHBONE, "node-b", last, n, d.f)*d.unit
				t.rows = append(t.rows, []string{d.name, fmt.Sprintf("%.1f", a), fmt.Sprintf("%.1f", b), fmt.Sprintf("%.1f", a+b), "", "", info})
			}
		}
	}
	return t, true
}

// runsTable lists every run's value, for judging the noise.
func (r *Report) runsTable() table {
	t := table{title: "Every run", header: []string{"measurement", PathDirect, PathRelay2, PathHBONE}}
	join := func(vs []float64, format string) string {
		s := make([]string, len(vs))
		for i, v := range vs {
			s[i] = fmt.Sprintf(format, v)
		}
		return strings.Join(s, " ")
	}
	addRuns := func(name, format string, runs map[string][]float64) {
		if len(runs) == 0 {
			return
		}
		t.rows = append(t.rows, []string{name, join(runs[PathDirect], format), join(runs[PathRelay2], format), join(runs[PathHBONE], format)})
	}
	lat := func(runs map[string][]Result, f func(Result) float64) map[string][]float64 {
		out := map[string][]float64{}
		for p, rs := range runs {
			for _, x := range rs {
				out[p] = append(out[p], f(x))
			}
		}
		return out
	}
	addRuns("throughput, Gbit/s", "%.2f", r.Throughput)
	addRuns("round trip p50 pinned, us", "%.1f", lat(r.Pinned, p50))
	addRuns("round trip p50 unpinned, us", "%.1f", lat(r.Latency, p50))
	addRuns("round trip p99 unpinned, us", "%.1f", lat(r.Latency, p99))
	addRuns("new connections/s", "%.0f", r.ConnRate)
	return t
}

func (r *Report) notes() []string {
	var notes []string
	for _, p := range []string{PathDirect, PathRelay2, PathHBONE} {
		if n := r.ConnErrors[p]; n > 0 {
			notes = append(notes, fmt.Sprintf("%s: %d connections failed during the connection-rate runs (first: %s)", p, n, r.ConnFirstError[p]))
		}
	}
	return notes
}

func (r *Report) settings() string {
	o := r.Options
	return fmt.Sprintf("throughput: %d MiB or %s per run; round trips: %d per run after %d warm-up; connection rate: %d clients for %s; "+
		"memory at %v open idle connections; node proxies at --log-level=%s",
		o.ThroughputBytes>>20, o.ThroughputDuration, o.LatencyCount, o.LatencyWarmup, o.ConnRateClients, o.ConnRateDuration,
		o.MemoryConns, o.ProxyLogLevel)
}

// Text writes the report as aligned plain-text tables.
func (r *Report) Text(w io.Writer) {
	fmt.Fprintf(w, "\nambient-bench, %s: %s\n%s\nTotal time %s.\n\n", r.Started.Format(time.RFC3339), r.Host, r.settings(), r.Elapsed.Round(time.Second))
	tables := []table{r.pathTable()}
	if mt, ok := r.memoryTable(); ok {
		tables = append(tables, mt)
	}
	tables = append(tables, r.runsTable())
	for _, t := range tables {
		if len(t.rows) == 0 {
			continue
		}
		t.text(w)
		fmt.Fprintln(w)
	}
	for _, n := range r.notes() {
		fmt.Fprintf(w, "Note: %s\n", n)
	}
}

// Markdown writes the report as Markdown tables.
func (r *Report) Markdown(w io.Writer) {
	fmt.Fprintf(w, "Run of %s on %s.\n%s. Total time %s.\n\n", r.Started.Format(time.RFC3339), r.Host, r.settings(), r.Elapsed.Round(time.Second))
	tables := []table{r.pathTable()}
	if mt, ok := r.memoryTable(); ok {
		tables = append(tables, mt)
	}
	tables = append(tables, r.runsTable())
	for _, t := range tables {
		if len(t.rows) == 0 {
			continue
		}
		t.markdown(w)
		fmt.Fprintln(w)
	}
	for _, n := range r.notes() {
		fmt.Fprintf(w, "- %s\n", n)
	}
}

func (t table) text(w io.Writer) {
	widths := make([]int, len(t.header))
	for _, row := range append([][]string{t.header}, t.rows...) {
		for i, c := range row {
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	line := func(row []string) {
		var b strings.Builder
		for i, c := range row {
			pad := widths[i] - utf8.RuneCountInString(c)
			if i == 0 {
				b.WriteString(c + strings.Repeat(" ", pad))
			} else {
				b.WriteString("  " + strings.Repeat(" ", pad) + c)
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
	fmt.Fprintln(w, t.title)
	line(t.header)
	for _, row := range t.rows {
		line(row)
	}
}

func (t table) markdown(w io.Writer) {
	fmt.Fprintf(w, "**%s**\n\n", t.title)
	fmt.Fprintf(w, "| %s |\n", strings.Join(t.header, " | "))
	seps := make([]string, len(t.header))
	for i := range seps {
		seps[i] = "---:"
		if i == 0 {
			seps[i] = "---"
		}
	}
	fmt.Fprintf(w, "| %s |\n", strings.Join(seps, " | "))
	for _, row := range t.rows {
		cells := make([]string, len(row))
		for i, c := range row {
			cells[i] = strings.ReplaceAll(strings.TrimSpace(c), "|", `\|`)
			if strings.HasPrefix(c, "  ") {
				cells[i] = "&nbsp;&nbsp;" + cells[i]
			}
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
	}
}
