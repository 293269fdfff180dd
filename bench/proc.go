package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
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

// buildBroker compiles cmd/sandbox-broker once into dir and returns the
// binary's path.
func buildBroker(ctx context.Context, dir string) (string, error) {
	root, err := moduleRoot(ctx)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "sandbox-broker")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/sandbox-broker")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/sandbox-broker: %v\n%s", err, out)
	}
	return bin, nil
}

func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run the bench from inside the module (go run ./bench)")
	}
	return filepath.Dir(mod), nil
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// proc is a child process (broker, fake provider, floor server, dynalite).
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string // file holding stdout and stderr
	done chan struct{}
	err  error // valid once done is closed
}

// startProc starts bin with args and env (added to the bench's
// environment, later entries winning), output to logPath.
func startProc(name, bin string, args, env []string, logPath string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = f
	cmd.Stderr = f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// tail returns the last n lines of the process's output.
func (p *proc) tail(n int) string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// stop sends SIGTERM, waits up to grace, then kills the process group.
func (p *proc) stop(grace time.Duration) error {
	if p == nil {
		return nil
	}
	if !p.exited() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
			<-p.done
			return fmt.Errorf("%s did not stop within %s and was killed", p.name, grace)
		}
	}
	var ee *exec.ExitError
	if p.err != nil && !errors.As(p.err, &ee) {
		return p.err
	}
	return nil
}

// waitHTTP polls url until it answers 200, the process exits or timeout.
func (p *proc) waitHTTP(url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	c := &http.Client{Timeout: 2 * time.Second}
	for {
		if p.exited() {
			return fmt.Errorf("%s exited before it was ready (%v):\n%s", p.name, p.err, p.tail(15))
		}
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready at %s after %s:\n%s", p.name, url, timeout, p.tail(15))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitTCP polls addr until it accepts a connection.
func (p *proc) waitTCP(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if p.exited() {
			return fmt.Errorf("%s exited before it was ready (%v):\n%s", p.name, p.err, p.tail(15))
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening on %s after %s", p.name, addr, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// rssKB reads VmRSS and VmHWM (peak) of pid from /proc, in KiB.
func rssKB(pid int) (rss, hwm int64) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		for _, k := range []string{"VmRSS:", "VmHWM:"} {
			if strings.HasPrefix(line, k) {
				fields := strings.Fields(line[len(k):])
				if len(fields) > 0 {
					n, _ := strconv.ParseInt(fields[0], 10, 64)
					if k == "VmRSS:" {
						rss = n
					} else {
						hwm = n
					}
				}
			}
		}
	}
	return rss, hwm
}

// machineInfo describes the machine for the report.
func machineInfo(ctx context.Context) map[string]string {
	info := map[string]string{}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		n := 0
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "processor") {
				n++
			}
			if strings.HasPrefix(line, "model name") && info["cpu"] == "" {
				_, v, _ := strings.Cut(line, ":")
				info["cpu"] = strings.TrimSpace(v)
			}
		}
		info["cpuinfo_processors"] = strconv.Itoa(n)
	}
	if out, err := exec.CommandContext(ctx, "nproc").Output(); err == nil {
		info["nproc"] = strings.TrimSpace(string(out))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "MemTotal:") {
				f := strings.Fields(line)
				if len(f) >= 2 {
					kb, _ := strconv.ParseFloat(f[1], 64)
					info["ram"] = fmt.Sprintf("%.1f GiB", kb/1024/1024)
				}
			}
		}
	}
	if out, err := exec.CommandContext(ctx, "go", "version").Output(); err == nil {
		info["go"] = strings.TrimSpace(string(out))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		info["loadavg_at_start"] = strings.Join(strings.Fields(string(bytes.TrimSpace(b)))[:3], " ")
	}
	info["date"] = time.Now().UTC().Format("2006-01-02 15:04 MST")
	return info
}
