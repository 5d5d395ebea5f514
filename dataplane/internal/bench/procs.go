package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// process is one process of a chain: a server, a relay or a node proxy.
type process struct {
	name  string
	cmd   *exec.Cmd
	log   string
	admin string // node proxies: the admin address, for heap statistics
	done  chan struct{}
	err   error
}

// startProcess runs argv (pinned to cpus with taskset when cpus is set) with its output in logPath. The
// process gets its own process group, so that a Ctrl-C reaches only the harness, which stops it, and
// it is killed if the harness dies.
func startProcess(name, cpus, logPath string, argv ...string) (*process, error) {
	if cpus != "" {
		argv = append([]string{"taskset", "-c", cpus}, argv...)
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600) // #nosec G304 -- our own temporary directory
	if err != nil {
		return nil, err
	}
	defer func() { _ = logf.Close() }()
	cmd := exec.Command(argv[0], argv[1:]...) // #nosec G204 -- the harness runs its own binaries
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *process) pid() int { return p.cmd.Process.Pid }

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop kills the process and waits for it.
func (p *process) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
	}
}

// failure describes why a process is not usable, with the end of its log.
func (p *process) failure(err error) error {
	msg := fmt.Sprintf("%s: %v", p.name, err)
	if p.exited() {
		msg = fmt.Sprintf("%s exited (%v) while %v", p.name, p.err, err)
	}
	return fmt.Errorf("%s\n--- last lines of %s ---\n%s", msg, p.log, tail(p.log, 20))
}

func tail(path string, lines int) string {
	b, err := os.ReadFile(path) // #nosec G304 -- our own log file
	if err != nil {
		return err.Error()
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(all[max(0, len(all)-lines):], "\n")
}

// waitTCP waits until addr accepts connections.
func (p *process) waitTCP(ctx context.Context, addr string, timeout time.Duration) error {
	return p.poll(ctx, timeout, func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// waitReady waits until url answers 200.
func (p *process) waitReady(ctx context.Context, url string, timeout time.Duration) error {
	return p.poll(ctx, timeout, func() error {
		code, _, err := httpGet(ctx, url, 10*time.Second)
		if err == nil && code != http.StatusOK {
			err = fmt.Errorf("%s answered %d", url, code)
		}
		return err
	})
}

func (p *process) poll(ctx context.Context, timeout time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if p.exited() || time.Now().After(deadline) || ctx.Err() != nil {
			return p.failure(fmt.Errorf("not ready after %s: %w", timeout, err))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// httpGet fetches url within timeout.
func httpGet(ctx context.Context, url string, timeout time.Duration) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	return resp.StatusCode, body, err
}

// MemSample is the memory of a process at one moment.
type MemSample struct {
	// RSS is VmRSS from /proc/<pid>/status, in bytes.
	RSS int64 `json:"rss"`
	// HeapInuse and StackInuse come from the Go runtime after a forced GC, Goroutines from the
	// goroutine profile (node proxies only, through the admin endpoint; zero otherwise).
	HeapInuse  int64 `json:"heapInuse,omitempty"`
	StackInuse int64 `json:"stackInuse,omitempty"`
	Goroutines int64 `json:"goroutines,omitempty"`
}

// rss reads VmRSS of pid in bytes.
func rss(pid int) (int64, error) {
	f, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, err
	}
	defer func() { _ = f.Close() }()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			fields := strings.Fields(rest) // "12345 kB"
			if len(fields) != 2 || fields[1] != "kB" {
				return 0, fmt.Errorf("unexpected VmRSS line %q", s.Text())
			}
			kb, err := strconv.ParseInt(fields[0], 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.Join(s.Err(), fmt.Errorf("no VmRSS in /proc/%d/status", pid))
}

// sample reads the memory of p: RSS first (the figure the bar is about), then, for a process with an
// admin endpoint, the runtime's heap and stack in use after a forced GC, and its goroutine count.
func (p *process) sample(ctx context.Context) (MemSample, error) {
	var m MemSample
	r, err := rss(p.pid())
	if err != nil {
		return m, p.failure(err)
	}
	m.RSS = r
	if p.admin == "" {
		return m, nil
	}
	_, heap, err := httpGet(ctx, "http://"+p.admin+"/debug/pprof/heap?debug=1&gc=1", 10*time.Second)
	if err != nil {
		return m, p.failure(err)
	}
	m.HeapInuse = memStat(heap, "# HeapInuse = ")
	m.StackInuse = memStat(heap, "# Stack = ")
	_, gr, err := httpGet(ctx, "http://"+p.admin+"/debug/pprof/goroutine?debug=1", 10*time.Second)
	if err != nil {
		return m, p.failure(err)
	}
	m.Goroutines = memStat(gr, "goroutine profile: total ")
	return m, nil
}

// memStat finds the line starting with prefix in a runtime profile and returns the number after it.
func memStat(profile []byte, prefix string) int64 {
	for line := range bytes.Lines(profile) {
		if rest, ok := bytes.CutPrefix(line, []byte(prefix)); ok {
			fields := strings.Fields(string(rest))
			if len(fields) > 0 {
				v, _ := strconv.ParseInt(fields[0], 10, 64)
				return v
			}
		}
	}
	return 0
}

// settledSample waits until p's RSS stops moving (two reads 250 ms apart within 64 KiB, at most 5 s),
// then samples it.
func (p *process) settledSample(ctx context.Context) (MemSample, error) {
	prev, err := rss(p.pid())
	if err != nil {
		return MemSample{}, p.failure(err)
	}
	for range 20 {
		time.Sleep(250 * time.Millisecond)
		cur, err := rss(p.pid())
		if err != nil {
			return MemSample{}, p.failure(err)
		}
		if d := cur - prev; d > -64<<10 && d < 64<<10 {
			break
		}
		prev = cur
	}
	return p.sample(ctx)
}
