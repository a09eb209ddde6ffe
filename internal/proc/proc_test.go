package proc

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStartStop(t *testing.T) {
	p, err := Start(exec.Command("sh", "-c", "echo started; exec sleep 30"), filepath.Join(t.TempDir(), "p.log"))
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(p.Log(), "started"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("log = %q, want the process's output", p.Log())
		}
	}
	if p.Exited() || p.ExitCode() != -1 {
		t.Fatal("a sleeping process reported as exited")
	}
	start := time.Now()
	p.Stop()
	if !p.Exited() {
		t.Fatal("Stop returned before the process exited")
	}
	if took := time.Since(start); took >= StopTimeout {
		t.Errorf("a process that honours SIGTERM took %v to stop", took)
	}
	p.Stop() // stopping again does nothing
}

// TestKillTakesTheGroup: Kill ends the process and what it started, even
// when they ignore SIGTERM.
func TestKillTakesTheGroup(t *testing.T) {
	p, err := Start(exec.Command("sh", "-c", `trap "" TERM; sleep 30 & echo $!; wait`), filepath.Join(t.TempDir(), "p.log"))
	if err != nil {
		t.Fatal(err)
	}
	var child string
	for deadline := time.Now().Add(5 * time.Second); child == ""; time.Sleep(10 * time.Millisecond) {
		child = strings.TrimSpace(p.Log())
		if time.Now().After(deadline) {
			t.Fatal("the child's pid never appeared")
		}
	}
	p.Kill()
	if !p.Exited() || p.ExitCode() != -1 {
		t.Fatalf("after Kill: exited %v, exit code %d", p.Exited(), p.ExitCode())
	}
	for deadline := time.Now().Add(5 * time.Second); exec.Command("kill", "-0", child).Run() == nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("child %s outlived Kill of its group", child)
		}
	}
}

func TestForTestStopsAtCleanup(t *testing.T) {
	var p *Proc
	t.Run("inner", func(t *testing.T) {
		p = ForTest(t, "sleeper", exec.Command("sleep", "30"))
	})
	if !p.Exited() {
		t.Error("the process outlived its test")
	}
}
