package localcluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/internal/testenv"
)

func TestNodeConfigsDoNotOverlap(t *testing.T) {
	nodes := NodeConfigs(Options{Dir: "/c"})
	if len(nodes) != 2 {
		t.Fatalf("%d nodes, want 2 by default", len(nodes))
	}
	seen := map[string]string{}
	for _, n := range nodes {
		for _, v := range []string{n.Name, n.Dir, n.Netns, n.HostVeth, n.HostIP.String(), n.NodeIP.String(), n.PodCIDR.String(), n.CgroupRoot()} {
			if other, ok := seen[v]; ok {
				t.Errorf("%s: %q also belongs to %s", n.Name, v, other)
			}
			seen[v] = n.Name
		}
		if !ClusterCIDR.Contains(n.PodCIDR.Addr()) || ClusterCIDR.Contains(n.NodeIP) || ServiceCIDR.Contains(n.NodeIP) {
			t.Errorf("%s: pod CIDR %s, node IP %s against cluster %s and services %s", n.Name, n.PodCIDR, n.NodeIP, ClusterCIDR, ServiceCIDR)
		}
		if len(n.HostVeth) > 15 || len(n.Netns) > 15 {
			t.Errorf("%s: interface or namespace name too long", n.Name)
		}
	}
}

func TestNetfilterSections(t *testing.T) {
	state := "== iptables-nft-save\n*filter\n== ip -o link show\n1: lo\n== nft list ruleset\ntable inet x\n== sysctl\nvm = 1\n"
	got := Netfilter(state)
	want := "== iptables-nft-save\n*filter\n== nft list ruleset\ntable inet x\n"
	if got != want {
		t.Errorf("Netfilter = %q, want %q", got, want)
	}
}

func TestHostPathsRemovedOnlyWhenNew(t *testing.T) {
	dir := t.TempDir()
	old, created := filepath.Join(dir, "old"), filepath.Join(dir, "created")
	saved := HostPaths
	HostPaths = []string{old, created}
	t.Cleanup(func() { HostPaths = saved })
	if err := os.Mkdir(old, 0o755); err != nil {
		t.Fatal(err)
	}
	record := filepath.Join(dir, "record")
	if err := RecordHostPaths(record); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(created, "s"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := RemoveNewHostPaths(record); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old); err != nil {
		t.Errorf("a path that existed before was removed: %v", err)
	}
	if _, err := os.Stat(created); !os.IsNotExist(err) {
		t.Errorf("a path the cluster created is still there: %v", err)
	}
	if err := RemoveNewHostPaths(record); err != nil {
		t.Errorf("second removal: %v", err)
	}
}

// TestKernelTunablesRoundTrip saves and restores the real values (writing
// back what is there), as root only.
func TestKernelTunablesRoundTrip(t *testing.T) {
	testenv.NeedRoot(t, "to write /proc/sys")
	file := filepath.Join(t.TempDir(), "saved")
	before := HostState()
	if err := SaveKernelTunables(file); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(data), "\n"); n != len(KernelTunables) {
		t.Errorf("saved %d values, want %d:\n%s", n, len(KernelTunables), data)
	}
	if err := RestoreKernelTunables(file); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Error("the saved file stays after restoring")
	}
	if after := HostState(); Netfilter(after) != Netfilter(before) || !strings.Contains(after, "== sysctl") {
		t.Errorf("host state changed:\n%s\n---\n%s", before, after)
	}
}
