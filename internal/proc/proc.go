// Package proc runs the helper processes of the root test suites and the
// demo (deciders, queuers): each in its own process group, killed by the
// kernel if the parent dies, its output in a log file, and stopped with
// SIGTERM, then SIGKILL to the whole group if it has not exited within
// StopTimeout.
package proc

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/testenv"
)

// StopTimeout is how long Stop waits after SIGTERM before SIGKILL.
const StopTimeout = 5 * time.Second

// Proc is a started process.
type Proc struct {
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed once the process was waited for
}

// Start starts cmd with its standard output and error appended to logPath.
// Other SysProcAttr settings of cmd (a Credential, say) are kept.
func Start(cmd *exec.Cmd, logPath string) (*Proc, error) {
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("log of %s: %w", cmd.Path, err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	p := &Proc{cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		log.Close()
		close(p.done)
	}()
	return p, nil
}

// ForTest starts cmd for the running test, logging to name.log in a
// temporary directory of the test. The process is stopped when the test
// ends, and its log printed if the test failed.
func ForTest(t testing.TB, name string, cmd *exec.Cmd) *Proc {
	t.Helper()
	p, err := Start(cmd, filepath.Join(t.TempDir(), name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("--- %s log ---\n%s", name, p.Log())
		}
	})
	return p
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitCode is the process's exit code once it has exited, -1 before or
// when a signal ended it.
func (p *Proc) ExitCode() int {
	if !p.Exited() {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// Stop sends SIGTERM and waits; after StopTimeout it kills the process
// group. Stopping an exited process does nothing.
func (p *Proc) Stop() {
	if p.Exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(StopTimeout):
		p.Kill()
	}
}

// Kill sends SIGKILL to the process group and waits for the process.
func (p *Proc) Kill() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// LogPath is the file the process writes to.
func (p *Proc) LogPath() string { return p.logPath }

// Log returns what the process has written so far.
func (p *Proc) Log() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(log unreadable: %v)", err)
	}
	return string(b)
}

// RunAsRoot runs a root-only test binary's tests: without root it skips
// them all (testenv.SkipMain: a failure under CI=true).
// suite names the tests in those messages. If binDir is not nil, the
// decider and queuer are built first into a temporary directory whose path
// is stored there, removed afterwards. It returns the exit code for
// TestMain.
func RunAsRoot(m *testing.M, suite string, binDir *string) int {
	if os.Geteuid() != 0 {
		return testenv.SkipMain("%s need root (network namespaces, nftables)", suite)
	}
	if binDir != nil {
		dir, err := os.MkdirTemp("", "tollgate-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		for _, b := range []string{"decider", "queuer"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(dir, b), "github.com/tollgate/tollgate/"+b)
			if out, err := cmd.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "build %s: %v\n%s", b, err, out)
				return 1
			}
		}
		*binDir = dir
	}
	return m.Run()
}
