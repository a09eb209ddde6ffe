package api

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/tollgate/tollgate/internal/testenv"
)

// TestMain lets the test binary act as a plain socket client, so that a
// child running as another user can try the socket.
func TestMain(m *testing.M) {
	if sock := os.Getenv("TOLLGATE_TEST_DIAL"); sock != "" {
		c, err := net.Dial("unix", sock)
		if err != nil {
			os.Stdout.WriteString("dial: " + err.Error())
			os.Exit(3)
		}
		c.Close()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestSocketRefusesOtherUsers: a process of another user, not in the
// socket's group, cannot connect; one in the group can.
func TestSocketRefusesOtherUsers(t *testing.T) {
	testenv.NeedRoot(t, "to run a child as another user")
	// Not t.TempDir: its parent is private to root.
	dir, err := os.MkdirTemp("", "tollgate-perm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "d.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := os.Chown(sock, 0, 65532); err != nil {
		t.Fatal(err)
	}
	// The test binary lives in a private build directory: copy it where
	// the other users may run it.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	self := filepath.Join(dir, "client")
	if err := os.WriteFile(self, b, 0o755); err != nil {
		t.Fatal(err)
	}
	dial := func(uid, gid uint32, groups ...uint32) (string, error) {
		cmd := exec.Command(self)
		cmd.Env = append(os.Environ(), "TOLLGATE_TEST_DIAL="+sock)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: groups}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := dial(65534, 65534); err == nil || !strings.Contains(out, "permission denied") {
		t.Errorf("uid 65534 outside the group: err=%v out=%q, want permission denied", err, out)
	}
	if out, err := dial(65534, 65534, 65532); err != nil {
		t.Errorf("uid 65534 in group 65532: %v %q", err, out)
	}
}
