package localcluster

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Process is a program the cluster runs: the operator, or a container of a pod.
type Process struct {
	Name string
	cmd  *exec.Cmd
	done chan struct{}
	mu   sync.Mutex
	err  error
	log  string
}

type processSpec struct {
	name  string
	bin   string
	args  []string
	env   []string
	netns string // empty: the cluster namespace
	dir   string
}

// startProcess starts a program, inside a network namespace when given (through `ip netns exec`, which
// also bind-mounts /etc/netns/<ns>/hosts over /etc/hosts for it), with its output in a log file.
func (c *Cluster) startProcess(s processSpec) (*Process, error) {
	logPath := filepath.Join(c.opts.WorkDir, "logs", s.name+".log")
	if err := os.MkdirAll(filepath.Dir(logPath), 0o750); err != nil {
		return nil, err
	}
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	var cmd *exec.Cmd
	if s.netns != "" {
		cmd = exec.Command("ip", append([]string{"netns", "exec", s.netns, s.bin}, s.args...)...) // #nosec G204 -- our binaries
	} else {
		cmd = exec.Command(s.bin, s.args...) // #nosec G204 -- our binaries
	}
	cmd.Env = append(os.Environ(), s.env...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Dir = s.dir
	// Its own process group: Ctrl-C reaches the cluster, which stops processes in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return nil, fmt.Errorf("start %s: %w", s.name, err)
	}
	p := &Process{Name: s.name, cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() {
		err := cmd.Wait()
		_ = logFile.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return p, nil
}

// Exited reports whether the process ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Signal sends a signal to the process.
func (p *Process) Signal(sig syscall.Signal) { _ = p.cmd.Process.Signal(sig) }

// Stop sends SIGTERM and waits up to grace for the process to end, then kills it.
func (p *Process) Stop(grace time.Duration) {
	if p.Exited() {
		return
	}
	p.Signal(syscall.SIGTERM)
	waitExit(p.cmd, p.done, grace)
}

// Kill ends the process at once.
func (p *Process) Kill() {
	if p.Exited() {
		return
	}
	p.Signal(syscall.SIGKILL)
	<-p.done
}

// LogPath is the file with the process's output.
func (p *Process) LogPath() string { return p.log }

// waitHTTP polls a URL until it answers 200, the process dies, or the timeout passes.
func waitHTTP(ctx context.Context, url string, timeout time.Duration, p *Process) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if p != nil && p.Exited() {
			return fmt.Errorf("%s exited; see %s", p.Name, p.log)
		}
		if httpOK(ctx, url) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not ready after %s (%s); see its log", url, timeout, p.Name)
}

func httpOK(ctx context.Context, url string) bool {
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
