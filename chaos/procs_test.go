package chaos

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// natsProc is a nats-server process with JetStream on a fixed port and
// store directory, so a restart finds its data and its clients.
type natsProc struct {
	bin, storeDir, logDir string
	port                  int

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	gen  int
	logs []string
}

// freePort picks a free port below the kernel's ephemeral range
// (32768–60999 on Linux). The nats-server is restarted on the same port:
// a port from the ephemeral range could be handed meanwhile to any other
// process asking for port 0 (another test package's embedded server, a
// client socket), and the workers would reconnect to the wrong server.
func freePort() (int, error) {
	for range 200 {
		port := 20000 + rand.IntN(12000)
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		ln.Close()
		return port, nil
	}
	return 0, fmt.Errorf("no free port between 20000 and 32000")
}

func (n *natsProc) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.port) }

// start launches the server and waits until its port accepts connections.
func (n *natsProc) start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.gen++
	path := filepath.Join(n.logDir, fmt.Sprintf("nats-server-%d.log", n.gen))
	logf, err := os.Create(path)
	if err != nil {
		return err
	}
	n.logs = append(n.logs, path)
	cmd := exec.Command(n.bin, "-js", "-sd", n.storeDir, "-p", strconv.Itoa(n.port), "-a", "127.0.0.1")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	n.cmd, n.done = cmd, done
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", n.port), 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("nats-server exited at start; see %s", path)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nats-server not listening on %d after 30s; see %s", n.port, path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill ends the server with sig and waits for it to exit.
func (n *natsProc) kill(sig syscall.Signal) {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// workerProc is one replica slot: a `tmc-runner worker` process that the
// chaos driver kills and starts again with the same settings.
type workerProc struct {
	idx         int
	bin, logDir string
	env         []string

	mu         sync.Mutex
	cmd        *exec.Cmd
	done       chan struct{}
	expectExit bool
	gen        int
	logs       []string
	unexpected []string // exits nobody asked for
}

func (w *workerProc) start() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cmd != nil {
		select {
		case <-w.done:
		default:
			return fmt.Errorf("worker %d still running", w.idx)
		}
	}
	w.gen++
	path := filepath.Join(w.logDir, fmt.Sprintf("worker-%d.%02d.log", w.idx, w.gen))
	logf, err := os.Create(path)
	if err != nil {
		return err
	}
	w.logs = append(w.logs, path)
	cmd := exec.Command(w.bin, "worker")
	cmd.Env = w.env
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	done := make(chan struct{})
	w.cmd, w.done, w.expectExit = cmd, done, false
	go func() {
		err := cmd.Wait()
		logf.Close()
		w.mu.Lock()
		if !w.expectExit {
			w.unexpected = append(w.unexpected, fmt.Sprintf("worker %d (%s) exited by itself: %v", w.idx, path, err))
		}
		w.mu.Unlock()
		close(done)
	}()
	return nil
}

func (w *workerProc) running() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cmd == nil {
		return false
	}
	select {
	case <-w.done:
		return false
	default:
		return true
	}
}

// signal sends sig to a running worker and waits up to wait for its exit.
func (w *workerProc) signal(sig syscall.Signal, wait time.Duration) error {
	w.mu.Lock()
	cmd, done := w.cmd, w.done
	if cmd == nil {
		w.mu.Unlock()
		return errors.New("not started")
	}
	w.expectExit = true
	w.mu.Unlock()
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
		return nil
	case <-time.After(wait):
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("worker %d did not exit within %s of %v", w.idx, wait, sig)
	}
}

func (w *workerProc) currentLog() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.logs) == 0 {
		return ""
	}
	return w.logs[len(w.logs)-1]
}

func (w *workerProc) allLogs() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.logs...)
}

// waitStarted waits for the current process's "worker started" line.
func (w *workerProc) waitStarted(timeout time.Duration) error {
	path := w.currentLog()
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(path)
		if bytes.Contains(b, []byte("worker started")) {
			return nil
		}
		if !w.running() {
			return fmt.Errorf("worker %d exited at start:\n%s", w.idx, tail(path, 30))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("worker %d not started within %s:\n%s", w.idx, timeout, tail(path, 30))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
