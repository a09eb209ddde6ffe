package conformance

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
	"github.com/tollgate/tollgate/test/cluster"
)

// TestZZCRDRemovedAndReinstalled runs an extra decider that checks discovery
// every second, removes the ClusterNetworkPolicy CRD under it and installs
// it again: the decider stays up, drops the kind's policies, and picks the
// kind up again.
func TestZZCRDRemovedAndReinstalled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	sock := filepath.Join(dir, "d.sock")
	cmd := exec.Command(filepath.Join(sys.workDir, "decider"), "--kubeconfig", sys.cluster.Kubeconfig(), "--socket", sock,
		"--node-name", "node-1", "--metrics-bind-address", "", "--crd-check-interval", "1s")
	logPath := filepath.Join(dir, "decider.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("decider log:\n%s", b)
		}
	}()
	if err := waitFor(30*time.Second, func() bool {
		return exec.Command(filepath.Join(sys.workDir, "decider"), "healthcheck", "--socket", sock).Run() == nil
	}); err != nil {
		t.Fatal("extra decider never SERVING")
	}
	conn, err := grpcDial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := tollgatev1.NewDeciderServiceClient(conn)
	verdict := func() tollgatev1.Verdict {
		r, err := client.Decide(ctx, &tollgatev1.DecideRequest{SrcIp: sys.addr("z/a", false).String(), DstIp: sys.addr("x/a", false).String(), Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80})
		if err != nil {
			t.Fatalf("decider stopped answering: %v", err)
		}
		return r.GetVerdict()
	}
	policy := cnp("crd-test", `tier: Admin
priority: 1
subject: {namespaces: {matchLabels: {ns: x}}}
ingress: [{action: Deny, from: [{namespaces: {matchLabels: {ns: z}}}]}]`)
	if out, err := sys.cluster.KubectlWithInput(policy, "apply", "-f", "-"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if err := waitFor(10*time.Second, func() bool { return verdict() == tollgatev1.Verdict_VERDICT_DENY }); err != nil {
		t.Fatal("the ClusterNetworkPolicy never took effect")
	}
	if err := sys.cluster.RemoveCRDs(ctx, cluster.ClusterNetworkPolicyCRDs); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(20*time.Second, func() bool { return verdict() == tollgatev1.Verdict_VERDICT_ALLOW }); err != nil {
		t.Fatal("the removed CRD's policy still applies")
	}
	if err := sys.cluster.InstallCRDs(ctx, cluster.ClusterNetworkPolicyCRDs); err != nil {
		t.Fatal(err)
	}
	if out, err := sys.cluster.KubectlWithInput(policy, "apply", "-f", "-"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if err := waitFor(20*time.Second, func() bool { return verdict() == tollgatev1.Verdict_VERDICT_DENY }); err != nil {
		t.Fatal("the reinstalled kind was not picked up")
	}
	if _, err := sys.cluster.KubectlWithInput(policy, "delete", "-f", "-"); err != nil {
		t.Error(err)
	}
	if cmd.ProcessState != nil {
		t.Fatal("the decider exited")
	}
}
